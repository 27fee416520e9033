"""The performance suite: one command that measures everything and writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/performance.py            # full run, ~15-25 min on 2 cores
    .venv/bin/python benchmarks/performance.py --quick    # tiny sizes (the CI smoke test)

Sections (each module's docstring says exactly what it times):

1. step overhead (``perf_step``): a ``fit`` training step per registered estimator over a
   hand-written PyTorch step, 784-400-20 and 64-400-20 VAEs, interleaved in one process;
2. epochs and quality (``perf_epoch``): Fashion-MNIST, pyro_vae vs a plain Pyro script vs
   hand-written PyTorch vs pythae, one process per contender and repetition (interleaved),
   seconds per epoch, peak memory, test ELBO and K-sample log p(x) by one evaluator;
3. evaluation throughput (``perf_eval``): the log-likelihood's FLOP rate over the
   machine's measured matmul rate;
4. scaling (``perf_scaling``): ``fit`` seconds per epoch and memory from 10^3 to 6·10^4
   images, ``pyro_vae.cavi`` from 10^4 to 10^6 points.

Every number in RESULTS.md comes from the run that wrote it; the README's "Performance"
table is rewritten from the same numbers (``--readme``, skipped under ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import perf_epoch
import perf_eval
import perf_profile
import perf_scaling
import perf_step
import torch
from perf_common import fashion_available, load, machine_lines, set_threads
from report_common import load_average, output_file, positive_int

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
LABELS = {
    "pyro_vae": "pyro_vae (`fit`, `trace`, compiled)",
    "pyro_vae-uncompiled": "pyro_vae (`fit`, `trace`, uncompiled)",
    "pyro_vae-inductor": "pyro_vae (`fit`, `trace`, compiled + inductor)",
    "plain-pyro": "plain Pyro script (examples/vae style)",
    "pytorch": "hand-written PyTorch",
    "pythae": "pythae `VAE` + `BaseTrainer`",
}


def pythae_status() -> str | None:
    """None when pythae imports, else the error (the contender is then left out)."""
    try:
        import pythae.models  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(err).__name__}: {err}"
    return None


IN_PROCESS = False


def worker(script: str, args: list[str], threads: int, env: dict | None = None):
    """Run a benchmark worker in a fresh process (in this one under ``--in-process``, which
    mixes memory peaks and ignores ``env``: for smoke tests only); its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        if IN_PROCESS:
            module = {
                "perf_epoch.py": perf_epoch,
                "perf_scaling.py": perf_scaling,
                "perf_step.py": perf_step,
            }[script]
            module.main([*args, "--json", str(out)])
            return json.loads(out.read_text())
        env = dict(os.environ, **(env or {}), OMP_NUM_THREADS=str(threads))
        env["PYTHONWARNINGS"] = "ignore"
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args, "--json", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def run_epochs(args, contenders: list[str]) -> dict[str, list[dict]]:
    """Interleaved repetitions of every contender; only the first is evaluated."""
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for rep in range(args.epoch_repeats):
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for contender in order:
            extra = [] if rep == 0 else ["--no-eval"]
            print(f"  epochs: {contender}, repetition {rep + 1}", flush=True)
            runs[contender].append(
                worker(
                    "perf_epoch.py",
                    [
                        "--contender", contender,
                        "--data", args.data,
                        "--epochs", str(args.epochs),
                        "--threads", str(args.threads),
                        "--eval-images", str(args.eval_images),
                        "--iwae-samples", str(args.iwae_samples),
                        *(["--num-train", str(args.num_train)] if args.num_train else []),
                        *extra,
                    ],
                    args.threads,
                )
            )  # fmt: skip
    return runs


def epoch_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per contender: median s/epoch over all epochs of all repetitions (the first epoch
    of each process left out as warm-up when there are more), ratio, memory, quality."""

    def epochs(run: dict) -> list[float]:
        return run["seconds"][1:] if len(run["seconds"]) > 1 else run["seconds"]

    base = statistics.median(s for run in runs["pytorch"] for s in epochs(run))
    base_fastest = min(s for run in runs["pytorch"] for s in epochs(run))
    rows = []
    for contender, reps in runs.items():
        seconds = statistics.median(s for run in reps for s in epochs(run))
        first = reps[0]
        rows.append(
            {
                "contender": contender,
                "seconds": seconds,
                "ratio": seconds / base,
                "fastest": min(s for run in reps for s in epochs(run)),
                "ratio_fastest": min(s for run in reps for s in epochs(run)) / base_fastest,
                "all_seconds": [round(s, 3) for run in reps for s in run["seconds"]],
                "peak_training_mb": max(r["peak_rss_training_mb"] for r in reps),
                "working_mb": max(
                    r["peak_rss_training_mb"] - r["rss_before_training_mb"] for r in reps
                ),
                "peak_mb": max(r["peak_rss_mb"] for r in reps),
                "test_elbo": first.get("test_elbo"),
                "log_px": first.get("log_px"),
                "eval_seconds": first.get("eval_seconds"),
            }
        )
    return rows


def epoch_markdown(rows: list[dict], args) -> list[str]:
    lines = [
        "| contender | s/epoch (median) | ratio to hand-written PyTorch | fastest epoch s "
        "(ratio) | peak RSS while "
        "training MB | training working set MB | test ELBO (nats) "
        f"| log p(x), K={args.iwae_samples}, first {args.eval_images} test images (nats) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS[r['contender']]} | {r['seconds']:.3f} | {r['ratio']:.2f}x "
            f"| {r['fastest']:.3f} ({r['ratio_fastest']:.2f}x) "
            f"| {r['peak_training_mb']:.0f} | {r['working_mb']:.0f} | {r['test_elbo']:.2f} "
            f"| {r['log_px']:.2f} |"
        )
    lines += ["", "Every epoch's seconds, in order, repetitions one after another:", ""]
    lines += [f"- {LABELS[r['contender']]}: {r['all_seconds']}" for r in rows]
    lines += ["", "Evaluation seconds (first repetition): "]
    lines[-1] += "; ".join(f"{r['contender']} {r['eval_seconds']:.1f}" for r in rows)
    return lines


def profile_section(args, step_batch: torch.Tensor, num_data: int) -> list[str]:
    print("  profile of one step", flush=True)
    result = perf_profile.measure(step_batch, num_data, steps=30 if not args.quick else 2)
    return perf_profile.markdown(result, f"{step_batch.shape[1]}-400-20")


def step_section(args) -> tuple[list[str], dict, list[str]]:
    results = {}
    sizes = [
        ("784-400-20", "fashion-mnist" if fashion_available() else None),
        ("64-400-20", "digits"),
    ]
    for label, name in sizes:
        if args.quick and label.startswith("784"):
            name = None
        batches, num_data = perf_step.step_batches(label, name)
        print(f"  step overhead: {label} ({name or 'random binary images'})", flush=True)
        results[label] = perf_step.measure(
            batches[0].shape[1],
            batches,
            num_data,
            args.step_repeats,
            args.steps,
            k=args.k,
            inductor=not args.quick,
        )
        if label.startswith("784"):
            profile = profile_section(args, batches[0], num_data)
    return perf_step.markdown(results), results, profile


# glibc returns freed memory at the top of the heap to the kernel once it exceeds the trim
# threshold, and serves large blocks with mmap; the next allocation of that size then
# page-faults fresh zeroed pages. Raising both keeps freed blocks for reuse, which is
# what a caching allocator (jemalloc, tcmalloc) does.
TUNED_MALLOC = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TOP_PAD_": str(64 * 2**20),
}
ALLOCATOR_CONTENDERS = [
    "plain Pyro script (Trace_ELBO)",
    "pyro_vae trace",
    "pyro_vae trace, compiled",
    "pyro_vae analytic-kl, compiled",
]


def allocator_section(args) -> list[str]:
    """The main step contenders in fresh processes, with glibc's malloc as it comes and
    with its trim and mmap thresholds raised (:data:`TUNED_MALLOC`), side by side."""
    lines = [
        "| contender | " + " | ".join(
            f"{size}, {how}: ratio (page faults/step)" for size in ("784-400-20", "64-400-20")
            for how in ("default malloc", "thresholds raised")
        ) + " |",
        "|---|" + "---:|" * 4,
    ]  # fmt: skip
    columns = []
    for size in ("784-400-20", "64-400-20"):
        for env in ({}, TUNED_MALLOC):
            print(f"  allocator: {size}, {'tuned' if env else 'default'} malloc", flush=True)
            options = ["--size", size, "--reps", str(args.step_repeats)]
            options += ["--steps", str(args.steps), "--threads", str(args.threads)]
            options += [f"--only={name}" for name in ALLOCATOR_CONTENDERS]
            if args.quick:
                options.append("--random-images")
            rows = worker("perf_step.py", options, args.threads, env)
            columns.append({r["contender"]: r for r in rows})
    for name in [perf_step.HAND, *ALLOCATOR_CONTENDERS]:
        cells = [f"{c[name]['ratio']:.2f}x ({c[name]['faults_per_step']:.0f})" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def scaling_section(args) -> tuple[list[str], list[str]]:
    fit_rows = []
    for n in args.scaling_sizes:
        print(f"  scaling: fit on {n:,} images", flush=True)
        fit_rows.append(
            worker(
                "perf_epoch.py",
                [
                    "--contender", "pyro_vae", "--data", args.data, "--num-train", str(n),
                    "--epochs", str(args.scaling_epochs), "--threads", str(args.threads),
                    "--no-eval",
                ],
                args.threads,
            )
        )  # fmt: skip
    cavi_rows = []
    for n in args.cavi_sizes:
        print(f"  scaling: CAVI on {n:,} points", flush=True)
        cavi_rows.append(
            worker(
                "perf_scaling.py", ["--cavi", str(n), "--threads", str(args.threads)], args.threads
            )
        )
    return perf_scaling.fit_markdown(fit_rows), perf_scaling.cavi_markdown(cavi_rows)


def targets(step: dict, epoch_rows_: list[dict], eval_result: dict, k: int) -> list[str]:
    """The issue's targets, met or not, from this run's numbers."""

    def row(size: str, contender: str) -> dict:
        return next(r for r in step[size] if r["contender"] == contender)

    lines = ["| target | measured | met |", "|---|---:|:---:|"]

    def add(text: str, value: float, limit: float, fmt: str = "{:.2f}x", above=False) -> None:
        ok = value >= limit if above else value <= limit
        lines.append(f"| {text} | {fmt.format(value)} | {'yes' if ok else 'no'} |")

    for size, limit in (("784-400-20", 1.05), ("64-400-20", 1.2)):
        if size not in step:
            continue
        for est in ("trace", "analytic-kl"):
            add(
                f"{est} step, compiled / hand-written, {size} (≤ {limit}x)",
                row(size, f"pyro_vae {est}, compiled")["ratio"],
                limit,
            )
        for est in ("trace", "analytic-kl"):
            name = f"pyro_vae {est}, compiled + inductor"
            if any(r["contender"] == name for r in step[size]):
                add(
                    f"{est} step, compiled + inductor (after compiling) / hand-written, "
                    f"{size} (≤ {limit}x)",
                    row(size, name)["ratio"],
                    limit,
                )
        add(
            f"score leave-one-out / trace at K={k}, compiled, {size} (≤ 1.5x)",
            row(size, f"pyro_vae score (leave-one-out), K={k}, compiled")["ratio_to_trace_k"],
            1.5,
        )
    by = {r["contender"]: r for r in epoch_rows_}
    add("epoch time / hand-written PyTorch, medians (≤ 1.05x)", by["pyro_vae"]["ratio"], 1.05)
    add(
        "epoch time / hand-written PyTorch, fastest epochs (≤ 1.05x)",
        by["pyro_vae"]["ratio_fastest"],
        1.05,
    )
    if "pyro_vae-inductor" in by:
        add(
            "epoch time, compiled + inductor (first epoch left out; the last, partial "
            "batch compiles in epoch 2) / hand-written, medians (≤ 1.05x)",
            by["pyro_vae-inductor"]["ratio"],
            1.05,
        )
    add(
        "peak RSS while training / hand-written PyTorch's (≤ 1.00x)",
        by["pyro_vae"]["peak_training_mb"] / by["pytorch"]["peak_training_mb"],
        1.0,
    )
    add(
        "test log p(x) gap to hand-written PyTorch, nats (≥ −0.5)",
        by["pyro_vae"]["log_px"] - by["pytorch"]["log_px"],
        -0.5,
        "{:+.2f}",
        above=True,
    )
    add(
        "log-likelihood evaluation / matmul FLOP rate (≥ 50%)",
        eval_result["gflops"] / eval_result["peak_gflops"],
        0.5,
        "{:.0%}",
        above=True,
    )
    return lines


def update_readme(path: Path, summary: list[str]) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"--readme: {path} has no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + "\n".join(summary) + "\n" + END + tail)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--output", type=output_file, default=HERE / "RESULTS.md")
    parser.add_argument("--readme", type=output_file, default=ROOT / "README.md")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument(
        "--in-process", action="store_true", help="no worker processes (smoke tests only)"
    )
    args = parser.parse_args(argv)
    full = not args.quick
    args.data = "fashion-mnist" if full else "digits"
    args.num_train = None if full else 200
    args.epochs = 5 if full else 1
    args.epoch_repeats = 2 if full else 1
    args.eval_images = 200 if full else 20
    args.iwae_samples = 5000 if full else 50
    args.step_repeats, args.steps, args.k = (7, 10, 8) if full else (1, 1, 2)
    args.eval_k, args.eval_n = (5000, 50) if full else (20, 10)
    args.scaling_sizes = [1_000, 3_000, 10_000, 30_000, 60_000] if full else [100, 200]
    args.scaling_epochs = 3 if full else 1
    args.cavi_sizes = [10_000, 100_000, 1_000_000] if full else [500, 1_000]
    if full and not fashion_available():
        parser.error("the full run needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    return args


def main(argv: list[str] | None = None) -> None:
    global IN_PROCESS
    args = parse_args(argv)
    IN_PROCESS = args.in_process
    set_threads(args.threads)
    load_start, started = load_average(), time.perf_counter()
    missing_pythae = pythae_status()
    contenders = ["pyro_vae", "pyro_vae-uncompiled", "plain-pyro", "pytorch"]
    contenders += [] if missing_pythae else ["pythae"]
    contenders += [] if args.quick else ["pyro_vae-inductor"]  # minutes of compiling

    print("step overhead ...", flush=True)
    step_lines, step, profile_lines = step_section(args)
    allocator_lines = allocator_section(args)
    print("epochs and quality ...", flush=True)
    rows = epoch_rows(run_epochs(args, contenders))
    print("evaluation throughput ...", flush=True)
    eval_x = load(args.data).test_x[: args.eval_n]
    eval_result = perf_eval.measure(eval_x, args.eval_k, repeats=2)
    print("scaling ...", flush=True)
    fit_scaling, cavi_scaling = scaling_section(args)
    load_end, minutes = load_average(), (time.perf_counter() - started) / 60

    target_lines = targets(step, rows, eval_result, args.k)
    epoch_lines = epoch_markdown(rows, args)
    lines = [
        "# Performance: pyro_vae against hand-written PyTorch, Pyro and pythae",
        "",
        f"Written by `python benchmarks/performance.py{' --quick' if args.quick else ''}` "
        f"in {minutes:.1f} minutes. Every figure below comes from that one run.",
        "",
        "## Machine and settings",
        "",
        *machine_lines(),
        f"- torch threads: {torch.get_num_threads()} (set explicitly in every process; "
        f"OMP_NUM_THREADS={args.threads})",
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end} "
        f"(on {os.cpu_count()} CPUs; other people's jobs share this machine, so trust ratios "
        "taken in one run more than absolute seconds)",
        f"- step overhead: {args.step_repeats} interleaved repetitions of {args.steps} steps "
        f"per contender (after 3 warm-up steps), batch 128, Adam 1e-3; multi-particle "
        f"estimators at K = {args.k}",
        f"- epochs: {args.data}, {args.epochs} epochs x {args.epoch_repeats} interleaved "
        "repetitions, one process each, batch 128, Adam 1e-3, static binarization at 0.5, "
        "identical initial weights; s/epoch is the median over epochs (each process's first "
        "epoch left out as warm-up)",
        f"- quality: test ELBO with 10 samples on all test images; log p(x) by importance "
        f"sampling with K = {args.iwae_samples} on the first {args.eval_images} test images; "
        "all contenders' weights are copied into `models.vae.VAE` and scored by "
        "`pyro_vae.evaluate`",
        "- memory: resident set polled every 20 ms while training (includes the interpreter, "
        "torch and the data); the working set is the peak minus the resident set just "
        "before training",
    ]
    if missing_pythae:
        lines.append(f"- pythae left out: it does not import here ({missing_pythae})")
    lines += [
        "",
        "## Targets",
        "",
        *target_lines,
        "",
        "## Step overhead (ratio to the hand-written PyTorch step, median over repetitions)",
        "",
        *step_lines,
        "",
        "## Step overhead and the memory allocator",
        "",
        "The same steps in fresh processes, once with glibc's malloc as it comes and once "
        "with `" + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + "`, which keep "
        "freed blocks for reuse instead of handing them back to the kernel and faulting "
        "fresh pages in on the next step (ratios to the hand-written step in the same "
        "process; medians over repetitions).",
        "",
        *allocator_lines,
        "",
        "## Profile of one training step (cProfile; where the overhead is)",
        "",
        *profile_lines,
        "## Epochs and quality",
        "",
        *epoch_lines,
        "",
        "## Evaluation throughput",
        "",
        *perf_eval.markdown(eval_result),
        "",
        f"## Scaling: `fit` (compiled) on growing training sets ({args.scaling_epochs} epochs "
        "each)",
        "",
        *fit_scaling,
        "",
        "## Scaling: `pyro_vae.cavi.BayesianGaussianMixture` (K = 5, 2-D)",
        "",
        *cavi_scaling,
        "",
    ]
    notes = HERE / "RESULTS_NOTES.md"
    if notes.is_file() and not args.quick:
        lines += [notes.read_text().strip(), ""]
    args.output.write_text("\n".join(lines))
    if not args.quick and args.readme:
        update_readme(
            args.readme,
            [
                "Measured by `python benchmarks/performance.py` (full tables, machine and "
                "load in `benchmarks/RESULTS.md`).",
                "",
                *epoch_lines[: 2 + len(rows)],
                "",
                *target_lines,
            ],
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
