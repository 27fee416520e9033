"""Step overhead: one training step of pyro_vae, per estimator, over a hand-written PyTorch step.

All contenders train the same networks (identical initial weights) on the same
minibatches with Adam at the same learning rate, interleaved in one process: each
repetition runs every contender for ``steps`` steps, in a rotated order, and the ratio of
a contender to the hand-written step is taken within the repetition; the table gives the
median over repetitions (ratios from adjacent blocks are steadier than ratios of medians
on a shared machine). pyro_vae's step is :func:`pyro_vae.train.make_svi`, the very step
``fit`` takes, run as ``fit`` runs all but the first step of an epoch (Pyro's validation
checks off); the plain Pyro script keeps Pyro's default (checks on), and a row rebuilds
the step ``fit`` took before issue 7 (``SVI`` with ``pyro.optim.Adam``, the KL warm-up
handler at β = 1, checks on every step). Every estimator that keeps no state between
steps runs a second time recorded (``compiled``: :class:`pyro_vae.compiled.CompiledELBO`,
what ``fit`` runs with ``compile=True`` and the CLI by default), beside Pyro's own
recorded path, ``JitTrace_ELBO`` (TorchScript), on the plain Pyro script. Estimators with
K particles are also compared with ``trace`` at K particles (vectorized) in the same mode,
the cost the issue's targets are stated against.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Collection

import pyro
import pyro.optim
import torch
from perf_common import (
    LR,
    PlainPyroVAE,
    build_networks,
    build_pyro_vae,
    fashion_available,
    hand_loss,
    hand_loss_particles,
    load,
    set_threads,
)
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from report_common import output_file

from pyro_vae import estimators
from pyro_vae.annealing import ScaleLatents
from pyro_vae.estimators.compiled import CompiledELBO, compilable
from pyro_vae.train import make_svi

HAND = "hand-written PyTorch (analytic KL)"
BEFORE = "pyro_vae trace before issue 7 (SVI, pyro.optim.Adam, warm-up handler, checks)"


def _unchecked(svi, x: torch.Tensor, num_data: int) -> float:
    """A step as ``fit`` takes all but the first of each epoch: Pyro's checks off."""
    with pyro.validation_enabled(False):
        return svi.step(x, num_data=num_data)


def _hand_step(x_dim: int, seed: int, particles: int = 1) -> Callable[[torch.Tensor], float]:
    encoder, decoder = build_networks(x_dim, seed)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)

    def step(x: torch.Tensor) -> float:
        if particles == 1:
            loss = hand_loss(encoder, decoder, x)
        else:
            loss = hand_loss_particles(encoder, decoder, x, particles)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _plain_pyro_step(x_dim: int, seed: int, jit: bool = False) -> Callable[[torch.Tensor], float]:
    vae = PlainPyroVAE(*build_networks(x_dim, seed), prefix="jit_" if jit else "")
    elbo = JitTrace_ELBO(ignore_jit_warnings=True) if jit else Trace_ELBO()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=elbo)
    if not jit:
        return svi.step

    def step(x: torch.Tensor) -> float:
        # Pyro's advice for its JIT: validation off. TorchScript's tracer warns that it is
        # deprecated (torch 2.13) on every new recording.
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return svi.step(x)

    return step


def estimator_specs(k: int) -> dict[str, tuple[str, dict]]:
    """Label -> (registry name, options) for every estimator in the registry."""
    vectorized = {"num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1}
    specs = {
        "trace": ("trace", {}),
        "analytic-kl": ("analytic-kl", {}),
        "enum": ("enum", {"max_plate_nesting": 1, "strict_enumeration_warning": False}),
        "tracegraph": ("tracegraph", {}),
        "score (ema)": ("score", {"control_variate": "ema", "max_plate_nesting": 1}),
        f"trace, K={k}": ("trace", vectorized),
        f"iwae, K={k}": ("iwae", {"num_particles": k, "max_plate_nesting": 1}),
        f"score (leave-one-out), K={k}": (
            "score",
            {"num_particles": k, "control_variate": "leave-one-out", "max_plate_nesting": 1},
        ),
        f"vimco, K={k}": ("vimco", {"num_particles": k, "max_plate_nesting": 1}),
    }
    missing = set(estimators.names()) - {name for name, _ in specs.values()}
    if missing:
        raise RuntimeError(f"estimators {sorted(missing)} have no step-overhead contender")
    return specs


def measure(
    x_dim: int,
    batches: list[torch.Tensor],
    num_data: int,
    reps: int,
    steps: int,
    k: int = 8,
    seed: int = 0,
    only: Collection[str] | None = None,
    inductor: bool = False,
) -> list[dict]:
    """Rows ``{contender, ms, ratio, ratio_to_trace_k}`` for one model size (the contenders
    named in ``only`` and the hand-written step, when ``only`` is given)."""
    pyro.clear_param_store()
    model, guide = build_pyro_vae(x_dim, seed)
    steps_by_name: dict[str, Callable[[torch.Tensor], float]] = {
        HAND: _hand_step(x_dim, seed),
        f"hand-written PyTorch, K={k}": _hand_step(x_dim, seed, k),
        "plain Pyro script (Trace_ELBO)": _plain_pyro_step(x_dim, seed),
        "plain Pyro script (JitTrace_ELBO)": _plain_pyro_step(x_dim, seed, jit=True),
    }
    annealer = ScaleLatents()
    before = SVI(annealer(model), annealer(guide), pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    steps_by_name[BEFORE] = lambda x: before.step(x, num_data=num_data)
    specs = estimator_specs(k)

    def add(label: str, elbo) -> None:
        svi = make_svi(model, guide, elbo, LR)
        steps_by_name[f"pyro_vae {label}"] = lambda x: _unchecked(svi, x, num_data)

    for label, (name, options) in specs.items():
        add(label, estimators.get(name, **options))
    for label, (name, options) in specs.items():
        elbo = estimators.get(name, **options)
        if compilable(elbo) is None:
            add(f"{label}, compiled", CompiledELBO(elbo))
    for label in ("trace", "analytic-kl") if inductor else ():
        name, options = specs[label]
        elbo = CompiledELBO(estimators.get(name, **options), backend="inductor")
        add(f"{label}, compiled + inductor", elbo)

    if only is not None:
        unknown = set(only) - set(steps_by_name)
        if unknown:
            raise ValueError(f"only: {sorted(unknown)} are not contenders")
        steps_by_name = {n: f for n, f in steps_by_name.items() if n == HAND or n in only}
    names = list(steps_by_name)
    cursor = 0

    faults: dict[str, int] = dict.fromkeys(names, 0)

    def run(name: str, count: int) -> float:
        nonlocal cursor
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        for _ in range(count):
            steps_by_name[name](batches[cursor % len(batches)])
            cursor += 1
        seconds = (time.perf_counter() - started) / count
        faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return seconds

    warmup = {}  # warm-up: lazy parameter registration, recording, compilation, caches
    for name in names:
        warmup[name] = 3 * run(name, 3)
    faults = dict.fromkeys(names, 0)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            seconds[name].append(run(name, steps))
    trace_k = f"pyro_vae trace, K={k}"
    rows = []
    for name in names:
        ratios = [a / b for a, b in zip(seconds[name], seconds[HAND], strict=True)]
        row = {
            "contender": name,
            "ms": 1000 * statistics.median(seconds[name]),
            "ratio": statistics.median(ratios),
            "ratio_to_trace_k": None,
            # page faults: memory the allocator handed back to the kernel and took again
            "faults_per_step": faults[name] / (reps * steps),
            "warmup_s": warmup[name],
        }
        reference = f"{trace_k}, compiled" if name.endswith(", compiled") else trace_k
        if f"K={k}" in name and name != reference and reference in seconds:
            row["ratio_to_trace_k"] = statistics.median(
                a / b for a, b in zip(seconds[name], seconds[reference], strict=True)
            )
        rows.append(row)
    return rows


def markdown(results: dict[str, list[dict]]) -> list[str]:
    """One table, a column pair per model size."""
    sizes = list(results)
    head = "| contender | " + " | ".join(f"{s}: ms/step | {s}: ratio" for s in sizes)
    lines = [
        head + " | vs trace at the same K |",
        "|---|" + "---:|---:|" * len(sizes) + "---:|",
    ]
    for i, row in enumerate(results[sizes[0]]):
        cells = []
        for s in sizes:
            r = results[s][i]
            cells.append(f"{r['ms']:.2f} | {r['ratio']:.2f}x")
        vs_k = " / ".join(
            f"{results[s][i]['ratio_to_trace_k']:.2f}x"
            for s in sizes
            if results[s][i]["ratio_to_trace_k"] is not None
        )
        lines.append(f"| {row['contender']} | " + " | ".join(cells) + f" | {vs_k} |")
    for row in results[sizes[0]]:
        name = row["contender"]
        if "inductor" in name:
            warmup = {s: next(r for r in results[s] if r["contender"] == name) for s in sizes}
            first = ", ".join(f"{warmup[s]['warmup_s']:.1f} s at {s}" for s in sizes)
            lines += [
                "",
                f"{name}: its first three steps (recording, then inductor's compilation on "
                f"the first replay) took {first}; the rows above are after them.",
            ]
    return lines


def step_batches(size: str, data: str | None) -> tuple[list[torch.Tensor], int]:
    """Up to 16 full batches of 128 images of ``data`` (random binary images of the size's
    width when ``data`` is None), and the training-set size the steps scale to."""
    if data is None:
        x_dim = int(size.split("-")[0])
        g = torch.Generator().manual_seed(0)
        train_x = (torch.rand(4 * 128, x_dim, generator=g) < 0.3).float()
        num_data = 60_000
    else:
        splits = load(data)
        train_x, num_data = splits.train_x, int(splits.train_x.shape[0])
    batches = [train_x[i : i + 128] for i in range(0, min(len(train_x), 16 * 128), 128)]
    return [b for b in batches if b.shape[0] == 128], num_data


def main(argv: list[str] | None = None) -> None:
    """A worker for ``performance.py``: some contenders of one size in a fresh process (so
    its environment, e.g. the allocator's settings, can differ), rows to ``--json``."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("784-400-20", "64-400-20"), required=True)
    parser.add_argument("--random-images", action="store_true")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", action="append", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=output_file, required=True)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    data = {"784-400-20": "fashion-mnist", "64-400-20": "digits"}[args.size]
    if args.random_images or (data == "fashion-mnist" and not fashion_available()):
        data = None
    batches, num_data = step_batches(args.size, data)
    rows = measure(batches[0].shape[1], batches, num_data, args.reps, args.steps, only=args.only)
    args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
