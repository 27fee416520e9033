"""Data-parallel buffer broadcast: one ``dist.broadcast`` per buffer against ours, coalesced.

After every step of ``fit --nproc N`` each rank takes rank 0's buffers (a BatchNorm's
running statistics, as ``DistributedDataParallel(broadcast_buffers=True)`` keeps them one
set). A BatchNorm layer holds three: ``running_mean`` and ``running_var`` (float32) and
``num_batches_tracked`` (int64). Side by side in one run, for networks of 1, 10 and 50
BatchNorm1d layers of 64 and 512 features, two processes, gloo on loopback, one thread
each:

- one ``torch.distributed.broadcast`` per buffer (hand-written PyTorch, and this package's
  first version);
- ``pyro_vae.distributed.Group.broadcast_buffers``: one broadcast per dtype of the buffers
  flattened into one tensor, as DDP coalesces its own.

Each time is the median of 200 calls (after 20 unmeasured), in milliseconds per step, on
rank 0, the ranks aligned by a barrier before each batch of calls; the two ways take
turns, three rounds, and the table keeps each one's least median. ::

    python benchmarks/buffer_broadcast.py      # writes benchmarks/buffer_broadcast.md
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
LAYERS, WIDTHS, CALLS, WARMUP, ROUNDS = (1, 10, 50), (64, 512), 200, 20, 3


def batchnorm_buffers(layers: int, width: int) -> list[torch.Tensor]:
    """The buffers of ``layers`` BatchNorm1d layers of ``width`` features, in the order
    ``named_buffers`` lists them."""
    net = torch.nn.Sequential(*[torch.nn.BatchNorm1d(width) for _ in range(layers)])
    return [buffer for _, buffer in net.named_buffers()]


def one_per_buffer(buffers: list[torch.Tensor]) -> None:
    """Rank 0's values into every buffer, one broadcast each."""
    for buffer in buffers:
        torch.distributed.broadcast(buffer, src=0)


def _median_ms(call, buffers: list[torch.Tensor]) -> float:
    for _ in range(WARMUP):
        call(buffers)
    times = []
    torch.distributed.barrier()
    for _ in range(CALLS):
        start = time.perf_counter()
        call(buffers)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def worker(out: Path) -> None:
    """One rank: the least of :data:`ROUNDS` medians of each way for every size; rank 0
    writes them to ``out`` as JSON, after checking both ways left rank 0's values."""
    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT)]
    from pyro_vae.distributed import session

    rows = []
    with session() as group:
        for layers in LAYERS:
            for width in WIDTHS:
                buffers = batchnorm_buffers(layers, width)
                best = {"one_per_buffer": float("inf"), "coalesced": float("inf")}
                for _ in range(ROUNDS):
                    ways = [("one_per_buffer", one_per_buffer),
                            ("coalesced", group.broadcast_buffers)]  # fmt: skip
                    for name, call in ways:
                        with torch.no_grad():
                            for i, buffer in enumerate(buffers):  # rank-own values
                                buffer.fill_(group.rank + i)
                        best[name] = min(best[name], _median_ms(call, buffers))
                        same = all(bool((b == i).all()) for i, b in enumerate(buffers))
                        if not same:
                            raise RuntimeError(f"{name} left rank {group.rank} its own values")
                rows.append({"layers": layers, "width": width, **best})
        if group.rank == 0:
            out.write_text(json.dumps(rows))


def run(world: int = 2) -> list[dict]:
    """``world`` worker processes on loopback; rank 0's rows."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(out)],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            )
            for rank in range(world)
        ]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"a rank of {world} failed")
        return json.loads(out.read_text())


def table(rows: list[dict], load_before, load_after) -> str:
    """The Markdown report of :func:`run`'s rows."""
    lines = [
        "# Buffer broadcast under data-parallel training (`benchmarks/buffer_broadcast.py`)",
        "",
        f"Two processes, gloo on loopback, one thread each; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}. "
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}. Milliseconds per step, the "
        f"median of {CALLS} calls, the least of {ROUNDS} rounds.",
        "",
        "| BatchNorm1d layers | features | buffers | one broadcast per buffer (ms) "
        "| `Group.broadcast_buffers`, coalesced (ms) | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        one, ours = row["one_per_buffer"], row["coalesced"]
        lines.append(
            f"| {row['layers']} | {row['width']} | {3 * row['layers']} | {one:.3f} "
            f"| {ours:.3f} | {one / ours:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=output_file, default=HERE / "buffer_broadcast.md")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    load_before = os.getloadavg()
    rows = run()
    report = table(rows, load_before, os.getloadavg())
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
