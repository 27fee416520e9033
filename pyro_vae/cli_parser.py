"""The ``pyro-vae`` command line: its commands, their flags with their defaults and help,
and the checks of the flags' values made before any work (counts, pixel levels, widths,
the learning rate, the device, TensorBoard being installed).

:func:`build_parser` reads ``argv`` into an :class:`argparse.Namespace`; what a ``fit``
namespace describes is built in :mod:`pyro_vae.cli_config`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

from pyro_vae import estimators
from pyro_vae.array_source import LAYOUTS
from pyro_vae.checks import check_seed
from pyro_vae.convnets import ARCHITECTURES, DEFAULT_CHANNELS
from pyro_vae.data import BINARIZATIONS
from pyro_vae.devices import resolve_device
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.precision import PRECISIONS
from pyro_vae.provenance import ALLOW_FLAG, CODE_FLAG
from pyro_vae.run_config import (
    DataConfig,
    EstimatorConfig,
    EvaluationConfig,
    TrainingConfig,
    check_count,
    check_learning_rate,
    check_levels,
    check_widths,
)
from pyro_vae.tensorboard_log import require_tensorboard

#: The command's help text, above its list of commands.
DESCRIPTION = """The ``pyro-vae`` command: fit, evaluate and sample from run folders.

pyro-vae fit --data digits --out runs/digits
pyro-vae fit --resume runs/digits --epochs 300
pyro-vae evaluate runs/digits --ll-samples 5000
pyro-vae sample runs/digits --num 64
pyro-vae diagnose runs/digits
"""

# The application names the model it fits by default; the library names none. The flags'
# defaults are the RunConfig dataclasses' own.
DEFAULT_MODEL = "models.vae:VAE"
_TRAINING, _DATA, _EVALUATION = TrainingConfig(), DataConfig(), EvaluationConfig()


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


def _free_bits_groups(text: str) -> int | str:
    if text == "dims":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of groups K >= 1 or 'dims'"
        ) from None


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder path")
    return Path(text)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, refusing a bad command line in one line on stderr (argparse's own refusal
    prints the whole usage text first); subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser: one subcommand per command, each refusing a bad command
    line in one line on stderr with exit status 2 (argparse's ``SystemExit``)."""
    parser = _OneLineParser(
        prog="pyro-vae",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser(
        "fit", help="train a model/guide pair by SVI and write a run folder", allow_abbrev=False
    )
    _add_fit_target(f)
    _add_fit_model(f)
    _add_fit_data(f)
    _add_fit_training(f)
    _add_fit_evaluation(f)
    f.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train data-parallel in this many processes on this machine (torchrun's agent)",
    )
    _add_evaluate(sub)
    _add_sample(sub)
    _add_amortization_gap(sub)
    _add_diagnose(sub)
    _add_grad_variance(sub)
    _add_compare(sub)
    return parser


def _add_fit_target(f: argparse.ArgumentParser) -> None:
    target = f.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=_folder, help="new run folder to write")
    target.add_argument("--resume", type=_folder, metavar="RUN", help="continue this run folder")
    f.add_argument(
        "--restart",
        action="store_true",
        help="with --out: start over in a folder whose earlier fit failed or was killed before "
        "its first epoch ended (a folder with a checkpoint is never overwritten)",
    )


def _add_fit_model(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="import spec 'module:attr' or 'file.py:attr' (default %(default)s)",
    )
    f.add_argument(
        "--guide",
        default=None,
        help="import spec of the guide (default: the model's make_guide()); a class is "
        "given those of the model's x_dim, latent_dim, hidden widths and activation it takes; "
        "its own options (num_flows, rank, ...) are --guide-opt's",
    )
    f.add_argument(
        "--latent-dim", type=int, default=None, help="default: the model constructor's own, else 20"
    )
    f.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=None,
        help="decoder hidden widths, the encoder's reversed (none: linear, as a classic SBN; "
        "default: the model constructor's own, else 400)",
    )
    f.add_argument(
        "--activation",
        default=None,
        help="default: the model constructor's own, else softplus (mlp), elu (--arch conv)",
    )
    f.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default=None,
        help="decoder and encoder networks: mlp (default) or conv (stride-2 convolutions on "
        "the images, then the --hidden layers; pyro_vae.convnets)",
    )
    f.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=None,
        help="with --arch conv: the convolutions' widths, each halving the image "
        f"(default {' '.join(map(str, DEFAULT_CHANNELS))})",
    )
    f.add_argument(
        "--model-opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another model constructor argument (JSON value)",
    )
    f.add_argument(
        "--guide-opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --guide: an argument of the guide class's own (JSON value), e.g. "
        "num_flows=4 for AmortizedIAF, rank=4 for AmortizedLowRankNormal; over the "
        "standard ones (hidden_dims=[64] gives the encoder its own widths)",
    )


def _add_fit_data(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "--data",
        default=_DATA.name,
        help="digits, fashion-mnist, idx:PATH (a folder of IDX files), PATH.npy "
        "(memory-mapped; labels from PATH.labels.npy), PATH.npz (x, y; read into memory), "
        "images:DIR (one sub-folder of PNG/JPEG images per class), PATH.csv, PATH.parquet "
        "or table:PATH (default %(default)s)",
    )
    f.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=_DATA.image_size,
        help="images:DIR: resize every image to H x W (default: keep their one size)",
    )
    f.add_argument(
        "--crop",
        action="store_true",
        help="images:DIR with --image-size: keep the aspect ratio, cutting the centre",
    )
    f.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=_DATA.layout,
        help="PATH.npy/.npz of 4-D images: [N, C, H, W] (channels-first) or [N, H, W, C] "
        "(channels-last); default: told by the shape, a shape that could be either refused",
    )
    f.add_argument(
        "--columns",
        nargs="+",
        metavar="NAME",
        default=_DATA.columns,
        help="tables: the feature columns (default: every numeric column but the label)",
    )
    f.add_argument(
        "--label-column",
        metavar="NAME",
        default=_DATA.label_column,
        help="tables: the column of class labels (default: none, every label 0)",
    )
    f.add_argument(
        "--labels-fraction",
        type=float,
        metavar="F",
        default=_DATA.labels_fraction,
        help="a model that uses labels observes this share (0 < F <= 1) of each class's "
        "training labels, a seeded draw (default: all)",
    )
    f.add_argument(
        "--labelled",
        type=int,
        metavar="N",
        default=_DATA.labelled,
        help="a model that uses labels observes N training labels, equally many per class, "
        "a seeded draw (default: all)",
    )
    f.add_argument("--likelihood", choices=LIKELIHOODS, default=_DATA.likelihood)
    f.add_argument(
        "--binarize",
        choices=BINARIZATIONS,
        default=_DATA.binarize,
        help="for bernoulli: threshold once, or draw afresh each batch",
    )
    f.add_argument("--threshold", type=float, default=_DATA.threshold)
    f.add_argument(
        "--levels",
        type=int,
        default=_DATA.levels,
        help="pixel levels for categorical (default: 17 for digits, 8 for 8-bit)",
    )
    f.add_argument("--val-fraction", type=float, default=_DATA.val_fraction)
    f.add_argument(
        "--test-fraction",
        type=float,
        default=_DATA.test_fraction,
        help="held out when the dataset has no official test split",
    )


def _add_fit_objective(f: argparse.ArgumentParser) -> None:
    """--beta (a training setting) and --free-bits (the estimator option free_bits)."""
    f.add_argument(
        "--beta",
        type=float,
        default=_TRAINING.beta,
        help="β of the β-VAE objective E[log p(x|z)] - β KL (Higgins et al. 2017), every "
        "estimator; with --kl-warmup it rises to β; reported ELBOs stay β = 1 (default 1)",
    )
    f.add_argument(
        "--free-bits",
        type=float,
        default=None,
        metavar="NATS",
        help="free bits (Kingma et al. 2016): each latent site's minibatch-mean KL counts as "
        "max(NATS, KL); the estimator option free_bits of trace, analytic-kl, score, enum",
    )
    f.add_argument(
        "--free-bits-groups",
        type=_free_bits_groups,
        default=None,
        metavar="K|dims",
        help="with --free-bits, split each latent site into K groups of its dimensions (or "
        "'dims': one per dimension), each held at NATS; needs a guide and prior that factorize "
        "over dimensions (diagonal Normal); the estimator option free_bits_groups",
    )


def _add_fit_training(f: argparse.ArgumentParser) -> None:
    f.add_argument("--estimator", default=EstimatorConfig().name, choices=estimators.names())
    f.add_argument(
        "--estimator-opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="estimator option, e.g. num_particles=8",
    )
    f.add_argument(
        "--gradient",
        choices=sorted(estimators.GRADIENTS),
        default=None,
        help="the estimator's gradient option: iwae takes reparam (default), dreg (doubly "
        "reparameterized, Tucker et al. 2018) or stl; trace takes reparam or stl (sticking the "
        "landing, Roeder et al. 2017)",
    )
    f.add_argument("--epochs", type=int, default=None, help=f"default {_TRAINING.epochs}")
    f.add_argument("--batch-size", type=int, default=_TRAINING.batch_size)
    f.add_argument("--lr", type=float, default=_TRAINING.lr)
    f.add_argument("--seed", type=int, default=_TRAINING.seed)
    f.add_argument(
        "--patience",
        type=int,
        default=_TRAINING.patience,
        help="epochs without validation improvement before stopping (0: never)",
    )
    f.add_argument("--kl-warmup", type=float, default=_TRAINING.kl_warmup_epochs, metavar="EPOCHS")
    _add_fit_objective(f)
    f.add_argument(
        "--compile",
        choices=("auto", "on", "off", "inductor"),
        default="auto",
        help="record the training step once per batch shape and replay it (same results, "
        "less Python per step); auto: when model and guide declare recordable = True (the "
        "shipped ones do) and the estimator can be recorded, with no KL warm-up; inductor: "
        "on, and fuse the recording with torch.compile (needs a C++ compiler; ~30 s per "
        "batch shape; pays on long runs)",
    )
    f.add_argument(
        "--drop-last",
        action="store_true",
        help="leave out each epoch's last partial batch (needed by TraceGraph's "
        "decaying-average baseline when the batch size does not divide the data)",
    )
    f.add_argument(
        "--data-plate",
        default=None,
        metavar="NAME",
        help="the model's per-datapoint plate, when more than one plate of the batch's size "
        "encloses observed sites (default: found from the model)",
    )
    f.add_argument(
        "--vectorize-particles",
        choices=("auto", "on", "off"),
        default="auto",
        help="draw validation particles under one plate (on), in a loop for models that cannot "
        "broadcast (off), or on unless that fails (auto)",
    )
    f.add_argument("--no-progress", action="store_true")
    _add_device(f, "default: auto; with --resume, the run's own")
    f.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=_TRAINING.precision,
        help="what training steps compute in: 32 (float32), bf16 (networks under bfloat16 "
        "autocast, densities and the ELBO in float32; CPU or GPU), 16-mixed (float16 autocast "
        "with gradient scaling; GPU only); weights stay float32",
    )
    f.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files into RUN/tensorboard/ (losses, gradient "
        "norms, the ELBO's terms, reconstructions; watch with tensorboard --logdir); needs "
        "pip install 'pyro_vae[tensorboard]'; with --resume, turns it on for the rest of the run",
    )


def _add_allow_changed_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="go on when the data differ from those the run recorded in config.json: the "
        "checksum of the files' names and sizes, the shape, a table's columns, or, for a "
        "table or an image folder, the values read (an array or IDX file edited in place "
        "at the same size is not noticed)",
    )
    parser.add_argument(
        CODE_FLAG,
        action="store_true",
        help="go on when the model's or guide's own file (a path.py:attr spec), or a module "
        "of your own it imports, differs from the one the run recorded in config.json",
    )


def _add_device(parser: argparse.ArgumentParser, default: str = "default: auto") -> None:
    parser.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps "
        f"(untested); {default}",
    )


def _add_fit_evaluation(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "--ll-samples",
        type=int,
        default=_EVALUATION.ll_samples,
        help="K for the importance-weighted log-likelihood (0: skip)",
    )
    f.add_argument(
        "--ll-points",
        type=int,
        default=_EVALUATION.ll_points,
        help="test images it is estimated on (0: all)",
    )


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="test metrics of a run folder", allow_abbrev=False)
    e.add_argument("run", type=Path)
    e.add_argument("--ll-samples", type=int, default=None, help="default: the run's setting")
    e.add_argument(
        "--ll-points", type=int, default=None, help="default: the run's setting (0: all)"
    )
    e.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the Monte Carlo draws, recorded in the test block (default: one fixed "
        "stream, the same numbers every time at the same settings; another --ll-samples or "
        "--ll-points moves the draws of every figure after it); other seeds show the "
        "estimates' spread",
    )
    _add_allow_changed_data(e)
    _add_device(e)


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="images from the prior of a run's model", allow_abbrev=False)
    s.add_argument("run", type=Path)
    s.add_argument(
        "--num",
        type=int,
        default=64,
        help="images drawn in all (default 64); a model that uses labels draws them class by "
        "class, image i of class i mod C (classes cycled)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG path (default RUN/sample_seedSEED_NUM.png; the fit's own samples.png is kept)",
    )
    _add_allow_changed_data(s)
    _add_device(s)


def _add_amortization_gap(sub) -> None:
    a = sub.add_parser(
        "amortization-gap",
        allow_abbrev=False,
        help="ELBO of per-datapoint guides vs the encoder's, on test images (Cremer et al. 2018)",
    )
    a.add_argument("run", type=Path)
    a.add_argument(
        "--points", type=int, default=100, help="first test images to use (default: 100)"
    )
    a.add_argument(
        "--steps",
        type=int,
        default=500,
        help="Adam steps of the per-image guides, step size annealed to 0 (default: 500)",
    )
    a.add_argument(
        "--lr", type=float, default=1e-2, help="their first Adam step size (default: 0.01)"
    )
    a.add_argument(
        "--iwae-samples",
        type=int,
        default=1000,
        help="K of the IWAE estimate of log p(x), at least 2; its rise from K/2 to K is "
        "reported, about its remaining bias (default: 1000)",
    )
    a.add_argument(
        "--family",
        choices=("normal", "lowrank", "flow"),
        default="normal",
        help="the per-image guides' family, the encoder's own (default: normal)",
    )
    a.add_argument("--seed", type=int, default=0)
    _add_allow_changed_data(a)
    _add_device(a)


def _add_diagnose(sub) -> None:
    g = sub.add_parser(
        "diagnose",
        allow_abbrev=False,
        help="ArviZ diagnostics on test images (rows): PSIS k̂ each, InferenceData, plots",
    )
    g.add_argument("run", type=Path)
    g.add_argument("--points", type=int, default=1000, help="first test images for k̂ (0: all)")
    g.add_argument("--samples", type=int, default=1000, help="guide draws per test row for k̂")
    g.add_argument(
        "--idata-points", type=int, default=100, help="first test images in diagnostics.nc"
    )
    g.add_argument("--idata-samples", type=int, default=200, help="draws in diagnostics.nc")
    g.add_argument("--worst", type=int, default=12, help="highest-k̂ images to show")
    g.add_argument("--seed", type=int, default=0)
    _add_allow_changed_data(g)
    _add_device(g)


def _add_grad_variance(sub) -> None:
    v = sub.add_parser(
        "grad-variance",
        allow_abbrev=False,
        help="compare estimators' gradient variance at a run's fitted weights",
    )
    v.add_argument("run", type=Path)
    v.add_argument(
        "--estimators",
        default="score,trace,tracegraph",
        help="comma-separated NAME[:key=value...], e.g. "
        "score:control_variate=leave-one-out:num_particles=4",
    )
    v.add_argument(
        "--num-draws",
        type=int,
        default=100,
        help="gradient draws per estimator, each on the same batch (default: 100)",
    )
    v.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="training images in the one batch the gradients are of (default: 128; at "
        "most the training set)",
    )
    v.add_argument(
        "--seed", type=int, default=0, help="seed of the batch and the draws (default: 0)"
    )
    v.add_argument(
        "--out", type=Path, default=None, help="PNG path (default RUN/gradient_variance.png)"
    )
    _add_allow_changed_data(v)
    _add_device(v)


def _add_compare(sub) -> None:
    c = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="runs side by side: one table of test metrics and one figure of validation curves",
    )
    c.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders")
    c.add_argument(
        "--out",
        type=Path,
        default=Path("comparison"),
        help="folder for comparison.csv and comparison.png (default: ./comparison)",
    )


def command_flags(command: str) -> dict[str, str]:
    """{destination: flag} of ``command``'s options (``{"image_size": "--image-size"}``):
    how a refusal worded for Python callers (an argument's name) is typed on the command
    line."""
    parser = build_parser()
    choices = next(a.choices for a in parser._actions if a.dest == "command")
    return {
        action.dest: max(action.option_strings, key=len)
        for action in choices[command]._actions
        if action.option_strings and action.dest != "help"
    }


def given_flags(argv: list[str]) -> set[str]:
    """The ``--flags`` typed after the command in ``argv`` (``--epochs=3`` as ``--epochs``):
    what a resume may not change, and which defaults the user left alone."""
    return {token.split("=", 1)[0] for token in argv[1:] if token.startswith("--")}


# The counts each command takes, and the smallest value each may have (0 where 0 means
# "skip" or "all"), checked before any work.
_COUNTS = {
    "fit": {
        "epochs": 1,
        "batch_size": 1,
        "latent_dim": 1,
        "patience": 0,
        "ll_samples": 0,
        "ll_points": 0,
        "seed": 0,
        "nproc": 1,
    },
    "evaluate": {"ll_samples": 0, "ll_points": 0, "seed": 0},
    "sample": {"num": 1, "seed": 0},
    "amortization-gap": {"points": 1, "steps": 1, "iwae_samples": 1, "seed": 0},
    "diagnose": {
        "points": 0,
        "samples": 21,
        "idata_points": 1,
        "idata_samples": 2,
        "worst": 0,
        "seed": 0,
    },
    "grad-variance": {"num_draws": 2, "batch_size": 1, "seed": 0},
}
_MEANING = {0: {"ll_samples": " (0 skips it)", "ll_points": " (0: all)", "points": " (0: all)"}}
# Why a minimum is what it is, where that is not plain from the flag.
_WHY = {
    ("diagnose", "samples"): (
        " draws per image: PSIS (Vehtari et al. 2024; ArviZ's psislw) fits a generalized "
        "Pareto to the largest ceil(min(S/5, 3·sqrt(S))) of the S importance ratios and needs "
        "at least 5 of them, which takes S >= 21"
    ),
    ("diagnose", "idata_samples"): (
        " draws: ArviZ's summary (sd, HDI) needs 2 or more to have a spread"
    ),
}


def check_counts(args: argparse.Namespace) -> None:
    """Refuse a count below its minimum (or levels outside 2..256), naming the flag, with
    the run configuration's own checks."""
    for dest, minimum in _COUNTS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        if dest == "seed" and value is not None:
            check_seed("--seed", value)
        elif value is not None:
            meaning = _MEANING.get(minimum, {}).get(dest, "")
            meaning += _WHY.get((args.command, dest), "")
            check_count("--" + dest.replace("_", "-"), value, minimum, meaning)
    if args.command == "fit":
        check_levels("--levels", args.levels)
        check_widths("--hidden", args.hidden or [])
        check_widths("--channels", args.channels or [])
    if getattr(args, "lr", None) is not None:
        check_learning_rate("--lr", args.lr)
    if getattr(args, "device", None) is not None:
        resolve_device(args.device, "--device")  # a device this machine lacks: before any work
    if getattr(args, "tensorboard", False):
        require_tensorboard("--tensorboard")  # the package missing: before any work
