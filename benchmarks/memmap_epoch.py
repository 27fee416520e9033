"""One training epoch from a memory-mapped .npy against the same data held in memory.

Makes a float32 array of intensities in [0, 1] on disk (in a temporary directory, deleted
afterwards; the free disk space is checked first), then trains a small MLP VAE (Gaussian
likelihood on the intensities, 1024 -> 256 -> 16) for one epoch with ``pyro_vae.fit``,
each run in a process of its own, and samples that process's anonymous resident memory
(``RssAnon`` in /proc/self/status: heap and tensors, not the file pages the kernel maps
and may drop) every 20 ms in a thread; ``RssAnon`` has no peak counter of its own.

- the large array (4 GB by default: 1,000,000 rows of 1,024 float32) is trained from the
  map only, which is what the memory target is about (peak RssAnon under 1 GB);
- a smaller array is trained both ways, memory-mapped and loaded into memory
  (``np.load`` without a map), for the ratio of seconds per epoch.

``--max-batches`` stops an epoch after that many batches (the up-front checks, which read
every row, and validation still run whole); the table says when it did.

    python benchmarks/memmap_epoch.py                 # writes benchmarks/memmap_epoch.md
    python benchmarks/memmap_epoch.py --rows 20000 --small-rows 5000   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from report_common import output_file

HERE = Path(__file__).resolve().parent
MARGIN = 1 << 30  # free bytes left over after the array is written


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("RssAnon: not in /proc/self/status (Linux only)")


class PeakSampler:
    """The largest ``RssAnon`` seen, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak = interval, rss_anon_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon_kib())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kib())


def make_array(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A ``[rows, dim]`` float32 .npy of uniform intensities, written a chunk at a time."""
    need = rows * dim * 4 + MARGIN
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise SystemExit(
            f"disk: {path.parent} has {free / 2**30:.1f} GiB free; the array needs "
            f"{need / 2**30:.1f} GiB (with 1 GiB to spare). Use --rows to make it smaller"
        )
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    step = max(1, (64 << 20) // (dim * 4))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        out[start:stop] = rng.random((stop - start, dim), dtype=np.float32)
    out.flush()
    del out


class FirstBatches:
    """A data source's first ``limit`` batches of each epoch (the rest of it unchanged)."""

    def __init__(self, data, limit: int | None) -> None:
        self.data, self.limit, self.per_datapoint = data, limit, data.per_datapoint

    @property
    def num_train(self) -> int:
        return self.data.num_train

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        steps = self.data.steps_per_epoch(batch_size, drop_last)
        return steps if self.limit is None else min(steps, self.limit)

    def indexed_batches(self, batch_size, epoch, seed, drop_last=False):
        batches = self.data.indexed_batches(batch_size, epoch, seed, drop_last)
        return batches if self.limit is None else itertools.islice(batches, self.limit)

    def check_training_data(self, check) -> None:
        self.data.check_training_data(check)

    def validation_set(self, local_guide, check):
        return self.data.validation_set(local_guide, check)


def child(path: str, mode: str, batch_size: int, max_batches: int | None) -> dict:
    """One epoch in this process: load (mapped or in memory), fit, report the peak."""
    import pyro
    import torch
    from pyro.infer import Trace_ELBO

    from models.vae import VAE
    from pyro_vae import TrainConfig, fit
    from pyro_vae.data import Preprocessing, load_data

    torch.set_num_threads(2)
    base = rss_anon_kib()
    with PeakSampler() as peak:
        started = time.perf_counter()
        source = path if mode == "mapped" else np.load(path)
        data = load_data(source, Preprocessing("gaussian"), val_fraction=0.01, test_fraction=0.01)
        loaded = time.perf_counter() - started
        pyro.set_rng_seed(0)  # the same initial weights in every run
        model = VAE(data.x_dim, latent_dim=16, hidden_dims=(256,), likelihood="gaussian")
        config = TrainConfig(epochs=1, batch_size=batch_size, progress=False, seed=0)
        result = fit(
            model, model.make_guide(), FirstBatches(data, max_batches), Trace_ELBO(), config
        )
        total = time.perf_counter() - started
    steps = FirstBatches(data, max_batches).steps_per_epoch(batch_size)
    return {
        "mode": mode,
        "rows": int(data.num_train),
        "steps": steps,
        "epoch_seconds": result.history[0]["seconds"],
        "load_seconds": loaded,
        "total_seconds": total,
        "peak_rss_anon_mib": peak.peak / 1024,
        "start_rss_anon_mib": base / 1024,
        "train_elbo": result.history[0]["train_elbo"],
    }


def run_child(path: Path, mode: str, args) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--path", str(path)]
    command += ["--batch-size", str(args.batch_size)]
    if args.max_batches:
        command += ["--max-batches", str(args.max_batches)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], args, sizes: dict[str, float]) -> str:
    lines = [
        "| data | held | training rows | batches | peak RssAnon (MiB) | epoch (s) | "
        "load + checks + epoch (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} ({sizes[r['label']]:.2f} GiB) | {r['mode']} | {r['rows']:,} | "
            f"{r['steps']:,} | {r['peak_rss_anon_mib']:.0f} | {r['epoch_seconds']:.1f} | "
            f"{r['total_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--small-rows", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--out", type=output_file, default=HERE / "memmap_epoch.md")
    p.add_argument("--child", choices=("mapped", "memory"), default=None)
    p.add_argument("--path", default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.path, args.child, args.batch_size, args.max_batches)))
        return
    results, sizes = [], {}
    with tempfile.TemporaryDirectory(prefix="memmap_epoch_") as folder:
        for label, rows, modes in (
            ("small", args.small_rows, ("memory", "mapped")),
            ("large", args.rows, ("mapped",)),
        ):
            path = Path(folder) / f"{label}.npy"
            make_array(path, rows, args.dim)
            sizes[label] = path.stat().st_size / 2**30
            for mode in modes:
                results.append({"label": label, **run_child(path, mode, args)})
                print(json.dumps(results[-1]), flush=True)
            path.unlink()
    small = {r["mode"]: r for r in results if r["label"] == "small"}
    ratio = small["mapped"]["epoch_seconds"] / small["memory"]["epoch_seconds"]
    stopped = (
        f" Each epoch stopped after {args.max_batches} batches (`--max-batches`); the "
        "up-front checks still read every row."
        if args.max_batches
        else ""
    )
    text = (
        "# One epoch from a memory-mapped .npy (`benchmarks/memmap_epoch.py`)\n\n"
        f"float32 intensities, {args.dim} per row; MLP VAE {args.dim} -> 256 -> 16, Gaussian "
        f"likelihood, batch {args.batch_size}, `pyro_vae.fit` for one epoch (1% validation, "
        "1% test held out), 2 torch threads, each run in its own process. Peak `RssAnon` "
        'sampled every 20 ms; "epoch" is the fit loop\'s own epoch time (steps and '
        f"validation).{stopped}\n\n"
        f"{table(results, args, sizes)}\n\n"
        f"Memory-mapped / in memory, seconds per epoch on the small array: {ratio:.2f}x.\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
