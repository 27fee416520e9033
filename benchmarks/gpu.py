"""Epoch time and peak GPU memory of one VAE written four ways, side by side in one run.

``python benchmarks/gpu.py [--device cuda] [--data IDX_DIR] [--epochs 3]`` trains the
Fashion-MNIST VAE of the other benchmarks (784-400-20, Softplus, Bernoulli, batch 128,
Adam 1e-3, statically binarized, all 60,000 training images, the same initial weights):

- ``pytorch``: hand-written (closed-form KL, ``torch.optim.Adam``), data on the device;
- ``plain-pyro``: a script in the style of Pyro's ``examples/vae/vae.py`` (``SVI``,
  ``Trace_ELBO``, ``pyro.optim.Adam``), data on the device;
- ``pyro_vae``: ``fit`` with ``trace``, uncompiled, and with the step recorded
  (``compile=True``, the CLI's default for the shipped models).

It reports the median seconds per epoch after the first (which carries warm-up and the
recording), its ratio to the hand-written one, and the peak memory each contender
allocated on the device (``torch.cuda.max_memory_allocated``), and writes
``benchmarks/gpu.md`` with the device's name and the versions it ran with.

A GPU machine may have another Python and torch than CI and no network: give it the
wheels of pyro-ppl, pyro-api and opt_einsum (``pip download --no-deps``) and the four
Fashion-MNIST IDX files, install the wheels with ``--no-deps`` and point ``--data`` at the
files. ``--device cpu --num-train 256 --epochs 2`` runs the same code on a CPU in
seconds (the test of this script); CPU numbers say nothing about a GPU. Replaying the
recorded step through a CUDA graph is not built yet; its row says so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # perf_common, models and pyro_vae beside it

import perf_epoch  # noqa: E402
import pyro  # noqa: E402
import pyro.optim  # noqa: E402
import torch  # noqa: E402
from perf_common import (  # noqa: E402
    BATCH_SIZE,
    LR,
    PlainPyroVAE,
    build_networks,
    hand_loss,
)
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from report_common import output_file  # noqa: E402

from pyro_vae.data import Preprocessing, load_data  # noqa: E402
from pyro_vae.datasets import FASHION_MNIST_DIR  # noqa: E402

CUDA_GRAPH_NOTE = "not built: the recorded step is not yet replayed through a CUDA graph"


def _batches(x: torch.Tensor, seed: int, epoch: int):
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
    order = order.to(x.device)
    for start in range(0, x.shape[0], BATCH_SIZE):
        yield x[order[start : start + BATCH_SIZE]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_pytorch(x, epochs, seed, device):
    encoder, decoder = build_networks(x.shape[1], seed)
    encoder, decoder = encoder.to(device), decoder.to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        for batch in _batches(x, seed, epoch):
            loss = hand_loss(encoder, decoder, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def train_plain_pyro(x, epochs, seed, device):
    encoder, decoder = build_networks(x.shape[1], seed)
    vae = PlainPyroVAE(encoder.to(device), decoder.to(device))
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        for batch in _batches(x, seed, epoch):
            svi.step(batch)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def train_pyro_vae(data, epochs, seed, device, compile):
    return perf_epoch.train_pyro_vae(data, epochs, seed, compile=compile, device=str(device))[0]


def _measure(name, run, device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = run()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    later = seconds[1:] or seconds
    print(f"{name:<28} {statistics.median(later):8.3f} s/epoch", flush=True)
    return {"name": name, "seconds": statistics.median(later), "peak_mb": peak}


def _versions() -> str:
    import importlib.metadata as md

    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {md.version('pyro-ppl')}, pyro_vae at {commit}"
    )


def _table(rows, device, args) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    base = next(r["seconds"] for r in rows if r["name"] == "pytorch")
    lines = [
        "# Epoch time and peak memory on one device",
        "",
        f"Written by `python benchmarks/gpu.py` on **{name or device}** (`{device}`), "
        f"{args.epochs} epochs of {args.num_train} images, batch {BATCH_SIZE}; median "
        f"seconds per epoch after the first. {_versions()}.",
        "",
        "| implementation | s/epoch | / hand-written | peak device memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        peak = "n/a (CPU)" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['name']} | {r['seconds']:.3f} | {r['seconds'] / base:.2f}x | {peak} |")
    lines.append(f"| pyro_vae (recorded + CUDA graph) | | | {CUDA_GRAPH_NOTE} |")
    if device.type != "cuda":
        lines += ["", "Run on a CPU: these numbers say nothing about a GPU."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=FASHION_MNIST_DIR, help="IDX folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=None, help="first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=output_file, default=HERE / "gpu.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {args.device!r}, but this machine has no CUDA device")
    data = load_data(
        f"idx:{args.data}", Preprocessing("bernoulli", "static", 0.5), val_fraction=0.0
    )
    if args.num_train is not None:  # a smoke test
        data.train_x = data.train_x[: args.num_train].clone()
        data.train_y = data.train_y[: args.num_train].clone()
    args.num_train = data.train_x.shape[0]
    x = data.train_x.to(device)
    contenders = [
        ("pytorch", lambda: train_pytorch(x, args.epochs, args.seed, device)),
        ("plain-pyro", lambda: train_plain_pyro(x, args.epochs, args.seed, device)),
        (
            "pyro_vae (uncompiled)",
            lambda: train_pyro_vae(data, args.epochs, args.seed, device, False),
        ),
        ("pyro_vae (recorded)", lambda: train_pyro_vae(data, args.epochs, args.seed, device, True)),
    ]
    rows = [_measure(name, run, device) for name, run in contenders]
    args.out.write_text(_table(rows, device, args))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
