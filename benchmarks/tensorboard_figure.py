"""The README's picture of `pyro-vae fit --tensorboard`: the scalars of a run's event
files, read back with TensorBoard's own ``EventAccumulator`` and drawn with matplotlib
(a screenshot of TensorBoard's page cannot be taken offline; these are the same curves).

``python benchmarks/tensorboard_figure.py`` trains the digits VAE of the README for 30
epochs with KL warm-up over the first 5 and ``--tensorboard`` into a temporary folder
(about a minute on a CPU), then writes ``docs/images/tensorboard-scalars.png``;
``--run RUN`` draws an existing run's ``RUN/tensorboard/`` instead, into
``RUN/tensorboard-scalars.png`` (the README's picture is left as it is); ``--out`` names the
PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # pyro_vae and models beside it

from matplotlib.figure import Figure  # noqa: E402
from report_common import output_file  # noqa: E402

OUT = HERE.parent / "docs" / "images" / "tensorboard-scalars.png"
# (tags, title, y label, log scale): one panel each, in TensorBoard's groups
PANELS = [
    (["step/loss"], "training loss (per step)", "nats per datapoint", False),
    (["step/grad_norm"], "gradient norm ‖∇‖₂ (per step)", "", True),
    (["step/beta"], "KL warm-up β (per step)", "", False),
    (["epoch/train_elbo", "epoch/val_elbo"], "ELBO (per epoch)", "nats per datapoint", False),
    (["epoch/log_likelihood"], "E_q log p(x | z), first ≤ 256 validation images", "nats", False),
    (["epoch/kl"], "KL(q(z | x) ‖ p(z)), first ≤ 256 validation images", "nats", False),
]


def read_scalars(folder: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` of every scalar in the event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
        for tag in events.Tags()["scalars"]
    }


def draw(scalars: dict[str, tuple[list[int], list[float]]], source: str) -> Figure:
    """The panels of :data:`PANELS` that ``scalars`` has, against the optimizer step."""
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (tags, title, ylabel, log) in zip(axes, PANELS, strict=True):
        for tag in (t for t in tags if t in scalars):
            steps, values = scalars[tag]
            marker = "o" if tag.startswith("epoch/") else None
            ax.plot(steps, values, marker=marker, ms=3, label=tag)
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        if len(tags) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"TensorBoard scalars of {source}, drawn from its event files")
    return fig


def train_digits(folder: Path) -> Path:
    """A 30-epoch digits run with ``--tensorboard`` in ``folder``; its event folder."""
    from pyro_vae.cli import main

    run = folder / "digits"
    argv = ["fit", "--data", "digits", "--epochs", "30", "--kl-warmup", "5"]
    if main([*argv, "--tensorboard", "--no-progress", "--ll-samples", "100", "--out", str(run)]):
        raise SystemExit("the digits run failed")
    return run / "tensorboard"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder written with --tensorboard")
    parser.add_argument(
        "--out", type=output_file, help=f"the PNG (default: {OUT.name} in --run, else {OUT})"
    )
    args = parser.parse_args(argv)
    if args.out is None:  # tester CM: a user's run was drawn over the README's picture
        args.out = OUT if args.run is None else args.run / OUT.name
    if args.run is not None and not (args.run / "tensorboard").is_dir():
        # tester CO: TensorBoard's "Directory ... has been permanently deleted" traceback
        parser.error(f"--run: {args.run} has no tensorboard/ folder; expected a run fit with "
                     "--tensorboard")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            folder, source = args.run / "tensorboard", str(args.run)
        else:
            folder, source = train_digits(Path(tmp)), "a 30-epoch digits run"
        draw(read_scalars(folder), source).savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
