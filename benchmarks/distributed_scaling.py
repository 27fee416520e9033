"""Weak scaling of data-parallel training: examples per second on 1 and 2 ranks.

Each rank trains a D-400-20 VAE (``models.vae.VAE``, ``trace`` estimator, Adam; D = 784,
Fashion-MNIST's size, and 64, the digits') on its share of synthetic binary images, 128
rows per rank per step (a global batch of 128 on one rank, 256 on two), one thread per
process, gloo over loopback, started with torchrun's variables as ``python -m pyro_vae``
would be. Each run is 4 epochs of 100 steps; a rate is the rows of one epoch over its
seconds (rank 0's history, validation excluded), the median of epochs 2-4 (epoch 1
records the step). Both sizes run side by side in one invocation, for the uncompiled step
and the recorded one (``compile=True``). The table ends with how much arithmetic the
machine's CPUs do at once (two single-thread matrix-product processes against one): the
ceiling for the 784-pixel VAE, whose step is mostly matrix products.

    python benchmarks/distributed_scaling.py          # writes benchmarks/distributed_scaling.md

Target (issue 15): 2 ranks >= 1.6x one rank on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PER_RANK_BATCH, STEPS, EPOCHS = 128, 100, 4
SIZES = (784, 64)  # Fashion-MNIST's pixels and the digits'; 400 hidden, 20 latent


def worker(out: Path, compile_step: bool, pixels: int) -> None:
    """One rank: fit and write rank 0's per-epoch seconds to ``out``."""
    torch.set_num_threads(1)
    sys.path[:0] = [str(HERE), str(ROOT)]
    from perf_common import build_pyro_vae

    from pyro_vae import estimators
    from pyro_vae.distributed import session
    from pyro_vae.tensor_data import TensorData
    from pyro_vae.train import TrainConfig, fit

    with session() as group:
        rows = PER_RANK_BATCH * STEPS * group.world
        x = torch.bernoulli(
            torch.full((rows, pixels), 0.3), generator=torch.Generator().manual_seed(0)
        )
        model, guide = build_pyro_vae(pixels, seed=0)
        config = TrainConfig(
            epochs=EPOCHS,
            batch_size=PER_RANK_BATCH * group.world,
            progress=False,
            val_samples=1,
            validate_every=EPOCHS,
            compile=compile_step,
        )
        result = fit(model, guide, TensorData(x), estimators.get("trace"), config)
        if group.rank == 0:
            seconds = [r["seconds"] for r in result.history]
            out.write_text(json.dumps({"world": group.world, "rows": rows, "seconds": seconds}))


def run(world: int, compile_step: bool, pixels: int) -> dict:
    """``world`` worker processes on loopback; their rank 0's record."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--worker", str(out), "--pixels", str(pixels)]
        command += ["--compile"] if compile_step else []
        procs = [
            subprocess.Popen(
                command,
                env={
                    **os.environ,
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    "OMP_NUM_THREADS": "1",
                },
            )
            for rank in range(world)
        ]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"a rank of {world} failed")
        record = json.loads(out.read_text())
    record["rate"] = record["rows"] / statistics.median(record["seconds"][1:])
    return record


def _matmuls(seconds: float = 2.0) -> None:
    torch.set_num_threads(1)
    a, w = torch.randn(128, 784), torch.randn(784, 400)
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ w
        done += 1
    print(done)


def matmul_concurrency() -> float:
    """Matrix products per second of two single-thread processes at once over one alone:
    2 where the CPUs are two cores' worth of arithmetic, 1 where they share one."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import distributed_scaling as d; "
    code += "d._matmuls()"

    def start():
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    alone = int(start().communicate()[0])
    pair = [start(), start()]
    return sum(int(p.communicate()[0]) for p in pair) / alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pixels", type=int, default=784, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "distributed_scaling.md")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.compile, args.pixels)
        return
    load_before = os.getloadavg()
    rows = []
    for pixels in SIZES:
        for compile_step in (False, True):
            one, two = run(1, compile_step, pixels), run(2, compile_step, pixels)
            rows.append((pixels, compile_step, one["rate"], two["rate"]))
            print(f"{pixels} px, compile={compile_step}: {one['rate']:.0f}/s, {two['rate']:.0f}/s")
    matmul = matmul_concurrency()
    load_after = os.getloadavg()
    lines = [
        "# Data-parallel weak scaling (`benchmarks/distributed_scaling.py`)",
        "",
        f"D-400-20 VAE, `trace`, {PER_RANK_BATCH} rows per rank per step, {STEPS} steps per "
        f"epoch, one thread per rank, gloo on loopback; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}.",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}.",
        "",
        "| D (pixels) | step | 1 rank (examples/s) | 2 ranks (examples/s) | speed-up |",
        "|---:|---|---:|---:|---:|",
    ]
    for pixels, compile_step, one, two in rows:
        name = "recorded (compile=True)" if compile_step else "uncompiled"
        lines.append(f"| {pixels} | {name} | {one:.0f} | {two:.0f} | {two / one:.2f}x |")
    lines += [
        "",
        f"The machine itself: two single-thread processes doing 128x784 @ 784x400 matrix "
        f"products at once get {matmul:.2f}x the products per second of one alone.",
    ]
    lines += ["", "Target: 2 ranks >= 1.6x one rank."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
