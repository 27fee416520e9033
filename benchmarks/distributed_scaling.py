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
from report_common import output_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PER_RANK_BATCH, LARGE_BATCH, STEPS, EPOCHS = 128, 1024, 100, 4
SIZES = (784, 64)  # Fashion-MNIST's pixels and the digits'; 400 hidden, 20 latent


def worker(out: Path, compile_step: bool, pixels: int, batch: int = PER_RANK_BATCH) -> None:
    """One rank: fit and write rank 0's per-epoch seconds to ``out``, and the milliseconds
    of one gloo all-reduce of a gradient-sized tensor alone (50 of them, the median)."""
    torch.set_num_threads(1)
    sys.path[:0] = [str(HERE), str(ROOT)]
    from perf_common import build_pyro_vae

    from pyro_vae import estimators
    from pyro_vae.distributed import session
    from pyro_vae.tensor_data import TensorData
    from pyro_vae.train import TrainConfig, fit

    with session() as group:
        rows = batch * STEPS * group.world
        x = torch.bernoulli(
            torch.full((rows, pixels), 0.3), generator=torch.Generator().manual_seed(0)
        )
        model, guide = build_pyro_vae(pixels, seed=0)
        config = TrainConfig(
            epochs=EPOCHS,
            batch_size=batch * group.world,
            progress=False,
            val_samples=1,
            validate_every=EPOCHS,
            compile=compile_step,
        )
        result = fit(model, guide, TensorData(x), estimators.get("trace"), config)
        size = sum(p.numel() for module in (model, guide) for p in module.parameters())
        reduce_ms = _all_reduce_ms(group, size)
        if group.rank == 0:
            seconds = [r["seconds"] for r in result.history]
            record = {"world": group.world, "rows": rows, "seconds": seconds}
            out.write_text(json.dumps({**record, "reduce_ms": reduce_ms}))


def _all_reduce_ms(group, size: int) -> float:
    """Median milliseconds of a lone ``all_reduce`` of ``size`` float32 values (0: one rank)."""
    if group.world == 1:
        return 0.0
    import torch.distributed as dist

    flat, times = torch.zeros(size), []
    dist.barrier()
    for _ in range(50):
        started = time.perf_counter()
        dist.all_reduce(flat)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def run(world: int, compile_step: bool, pixels: int, batch: int = PER_RANK_BATCH) -> dict:
    """``world`` worker processes on loopback; their rank 0's record."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--worker", str(out), "--pixels", str(pixels)]
        command += ["--batch", str(batch)]
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
    parser.add_argument("--batch", type=int, default=PER_RANK_BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=output_file, default=HERE / "distributed_scaling.md")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.compile, args.pixels, args.batch)
        return
    load_before = os.getloadavg()
    rows = []
    cases = [(p, c, PER_RANK_BATCH) for p in SIZES for c in (False, True)]
    cases += [(784, False, LARGE_BATCH)]  # where a step's arithmetic outweighs the reduce
    for pixels, compile_step, batch in cases:
        one, two = run(1, compile_step, pixels, batch), run(2, compile_step, pixels, batch)
        step_ms = 1000 * batch / one["rate"]
        rows.append((pixels, batch, compile_step, one["rate"], two["rate"], step_ms, two))
        print(
            f"{pixels} px, {batch} rows, compile={compile_step}: {one['rate']:.0f}/s, "
            f"{two['rate']:.0f}/s"
        )
    matmul = matmul_concurrency()
    load_after = os.getloadavg()
    lines = [
        "# Data-parallel weak scaling (`benchmarks/distributed_scaling.py`)",
        "",
        f"D-400-20 VAE, `trace`, a fixed number of rows per rank per step, {STEPS} steps per "
        f"epoch, one thread per rank, gloo on loopback; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}.",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}.",
        "",
        "| D (pixels) | rows per rank | step | 1 rank (examples/s) | 2 ranks (examples/s) "
        "| speed-up | 1-rank step (ms) | all-reduce alone (ms) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for pixels, batch, compile_step, one, two, step_ms, record in rows:
        name = "recorded (compile=True)" if compile_step else "uncompiled"
        lines.append(
            f"| {pixels} | {batch} | {name} | {one:.0f} | {two:.0f} | {two / one:.2f}x "
            f"| {step_ms:.1f} | {record['reduce_ms']:.2f} |"
        )
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
