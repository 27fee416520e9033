"""Where a training step's time goes: cProfile of pyro_vae's ``trace`` step, uncompiled and
recorded (:class:`pyro_vae.compiled.CompiledELBO`), and of a hand-written one.

All run ``steps`` steps on the same batch after a warm-up. The table lists, per
contender, the Python function calls per step and the functions with the most time of
their own (ms per step, under the profiler, which inflates Python-heavy code more than
kernels), so the difference between the two columns is the overhead to remove.
"""

from __future__ import annotations

import cProfile
import pstats

import pyro
import torch
from perf_common import LR, build_networks, build_pyro_vae, hand_loss
from pyro.infer import Trace_ELBO

from pyro_vae.estimators.compiled import CompiledELBO
from pyro_vae.train import make_svi


def _profile(step, steps: int) -> tuple[float, float, list[tuple[str, float]]]:
    for _ in range(5):
        step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, calls, own, _, _) in stats.stats.items():
        short = filename.rsplit("site-packages/", 1)[-1].rsplit("/work/main/", 1)[-1]
        label = name if filename == "~" else f"{short}:{line}({name})"
        rows.append((label, 1000 * own / steps, calls))
    rows.sort(key=lambda r: -r[1])
    total_calls = sum(r[2] for r in rows) / steps
    return 1000 * stats.total_tt / steps, total_calls, [(r[0], r[1]) for r in rows]


def measure(x: torch.Tensor, num_data: int, steps: int = 50, top: int = 12) -> dict:
    pyro.clear_param_store()
    model, guide = build_pyro_vae(x.shape[1], 0)
    svi = make_svi(model, guide, Trace_ELBO(), LR)
    compiled = make_svi(model, guide, CompiledELBO(Trace_ELBO()), LR)
    encoder, decoder = build_networks(x.shape[1], 0)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)

    def hand() -> float:
        loss = hand_loss(encoder, decoder, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    result = {}
    for name, step in (
        ("pyro_vae trace", lambda: svi.step(x, num_data=num_data)),
        ("pyro_vae trace, compiled", lambda: compiled.step(x, num_data=num_data)),
        ("hand-written PyTorch", hand),
    ):
        with pyro.validation_enabled(False):  # as fit runs all but an epoch's first step
            ms, calls, rows = _profile(step, steps)
        result[name] = {"ms": ms, "calls": calls, "top": rows[:top]}
    return result


def markdown(result: dict, size: str) -> list[str]:
    lines = []
    for name, r in result.items():
        lines += [
            f"**{name}**, {size}: {r['ms']:.2f} ms per step under cProfile, "
            f"{r['calls']:.0f} Python-level calls per step.",
            "",
            "| function (own time) | ms/step |",
            "|---|---:|",
            *[f"| `{label}` | {ms:.3f} |" for label, ms in r["top"]],
            "",
        ]
    return lines
