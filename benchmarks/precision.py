"""Epoch time and test ELBO of `fit` at each precision, side by side in one run.

``python benchmarks/precision.py [--device cpu|cuda] [--epochs 4]`` trains the
Fashion-MNIST VAE of the other benchmarks (784-400-20, Softplus, Bernoulli, batch 128,
Adam 1e-3, statically binarized, all 60,000 training images, the same initial weights
and seed) with ``pyro_vae.fit`` and the ``trace`` estimator at ``precision="32"`` and
``"bf16"`` (and ``"16-mixed"`` on a GPU), the step recorded (``compile=True``, the CLI's
default for the shipped models) unless ``--uncompiled``. For each it reports the median
seconds per epoch after the first (which carries the recording) and the test ELBO (nats
per image, 10 draws per image, all 10,000 test images, computed in float32 on the trained
float32 weights), with the load average before and after.

It rewrites only its device's block of ``benchmarks/precision.md`` (CPU or CUDA), so a
run on a GPU machine leaves the CPU table and the reverse. ``--num-train 256 --epochs 2
--test-images 100`` runs it in seconds (the test of this script).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # perf_common, models and pyro_vae beside it

import pyro  # noqa: E402
import torch  # noqa: E402
from perf_common import (  # noqa: E402
    BATCH_SIZE,
    LR,
    build_pyro_vae,
    load,
    machine_lines,
    set_threads,
)
from report_common import load_average, output_file  # noqa: E402

from pyro_vae.estimators import get  # noqa: E402
from pyro_vae.evaluate import elbo_per_datapoint  # noqa: E402
from pyro_vae.train import TrainConfig, fit  # noqa: E402

OUT = HERE / "precision.md"
NOT_MEASURED = "not measured: no GPU lent to this task"


def train(data, precision: str, args, device: torch.device) -> dict:
    """One fit at ``precision``: seconds per epoch and the test ELBO."""
    model, guide = build_pyro_vae(data.x_dim, args.seed)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=args.seed,
        patience=None,
        progress=False,
        compile=not args.uncompiled,
        device=str(device),
        precision=precision,
    )
    history = fit(model, guide, data, get("trace"), config).history
    seconds = [h["seconds"] for h in history]
    torch.manual_seed(args.seed)
    test_x = data.test_x[: args.test_images]
    elbo = elbo_per_datapoint(model, guide, test_x, num_samples=10, device=_streamed(device))
    later = seconds[1:] or seconds
    row = {"precision": precision, "seconds": statistics.median(later), "test_elbo": elbo.mean()}
    print(f"{precision:<9} {row['seconds']:7.3f} s/epoch  test ELBO {row['test_elbo']:.2f}")
    return row


def _streamed(device: torch.device) -> torch.device | None:
    return None if device.type == "cpu" else device


def _block(rows: list[dict], device: torch.device, args, loads: tuple[str, str]) -> str:
    if device.type == "cuda":
        where = f"**{torch.cuda.get_device_name(device)}** (`{device}`)"
    else:
        where = f"the CPU, {torch.get_num_threads()} threads"
    base = rows[0]
    step = "uncompiled" if args.uncompiled else "recorded (`compile=True`)"
    lines = [
        f"On {where}: {args.epochs} epochs of {args.num_train} images, batch {BATCH_SIZE}, "
        f"the {step} `trace` step; median seconds per epoch after the first; test ELBO on "
        f"{args.test_images} test images, 10 draws each, in float32. Load average "
        f"{loads[0]} before, {loads[1]} after.",
        "",
        "| precision | s/epoch | / float32 | test ELBO (nats) | − float32's |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f}x "
            f"| {r['test_elbo']:.2f} | {r['test_elbo'] - base['test_elbo']:+.2f} |"
        )
    return "\n".join(lines)


def _unmeasured_gpu_block() -> str:
    lines = ["| precision | s/epoch | / float32 | test ELBO (nats) | − float32's |"]
    lines.append("|---|---:|---:|---:|---:|")
    lines += [f"| {p} | {NOT_MEASURED} | | | |" for p in ("32", "bf16", "16-mixed")]
    return "\n".join(lines)


def write(out: Path, kind: str, block: str) -> None:
    """Replace the ``kind`` ("cpu" or "cuda") block of ``out``, keeping the other."""
    blocks = {"cpu": "Not measured yet.", "cuda": _unmeasured_gpu_block()}
    if out.exists():
        for name in blocks:
            found = re.search(
                rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", out.read_text(), re.S
            )
            if found:
                blocks[name] = found.group(1)
    blocks[kind] = block
    text = [
        "# Mixed precision: epoch time and test ELBO",
        "",
        "Written by `python benchmarks/precision.py` (CPU) and `python benchmarks/precision.py "
        "--device cuda` (GPU); each rewrites its own block. Fashion-MNIST, 784-400-20 VAE, "
        "`pyro_vae.fit` with the same seed and initial weights at each precision.",
        "",
        machine_lines()[0],
        f"- Python {platform.python_version()}, torch {torch.__version__}, pyro-ppl "
        f"{pyro.__version__}",
        "",
        "## CPU",
        "",
        "<!-- cpu:begin -->",
        blocks["cpu"],
        "<!-- cpu:end -->",
        "",
        "## GPU",
        "",
        "<!-- cuda:begin -->",
        blocks["cuda"],
        "<!-- cuda:end -->",
    ]
    out.write_text("\n".join(text) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=None, help="first N images only")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uncompiled", action="store_true")
    parser.add_argument("--out", type=output_file, default=OUT)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {args.device!r}, but this machine has no CUDA device")
    set_threads(args.threads)
    data = load(args.data, args.num_train)
    args.num_train = data.train_x.shape[0]
    args.test_images = min(args.test_images, data.test_x.shape[0])
    precisions = ["32", "bf16"] + (["16-mixed"] if device.type == "cuda" else [])
    before = load_average()
    print(f"load average {before}; {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    rows = [train(data, p, args, device) for p in precisions]
    after = load_average()
    print(f"load average {after}; {time.perf_counter() - started:.0f} s in all")
    write(args.out, device.type, _block(rows, device, args, (before, after)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
