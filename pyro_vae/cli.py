"""The ``pyro-vae`` command: fit, evaluate and sample from run folders.

pyro-vae fit --data digits --out runs/digits
pyro-vae fit --resume runs/digits --epochs 300
pyro-vae evaluate runs/digits --ll-samples 5000
pyro-vae sample runs/digits --num 64
pyro-vae diagnose runs/digits
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pyro_vae import estimators
from pyro_vae.checkpoint import (
    CONFIG,
    EVALUATED_ON_TRAINING_SET,
    DiskFullError,
    FolderNotWritableError,
    RunFolder,
    RunFolderError,
    check_writable,
    flat_settings,
    processes_by_epoch,
)
from pyro_vae.convnets import ARCHITECTURES, DEFAULT_CHANNELS, default_activation
from pyro_vae.data import BINARIZATIONS, DatasetNotFoundError, resolved_name, row_unit
from pyro_vae.devices import resolve_device, to_device
from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.distributed import (
    LAUNCHED_VARIABLE,
    Group,
    RankLost,
    current,
    launch,
    refuse_batch_terms,
    refuse_before_launch,
    refuse_disagreeing_ranks,
    run_from_rank_0,
    session,
    started_by_torchrun,
)
from pyro_vae.early_stopping import EarlyStopping
from pyro_vae.estimators.compiled import CaptureError, compilable, should_record
from pyro_vae.experiment import (
    Experiment,
    build,
    code_of,
    evaluate_test_set,
    label_samples,
    load,
    num_classes,
    write_figures,
)
from pyro_vae.idx import IDXFormatError
from pyro_vae.labels import refuse_unused_subset
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.model_protocol import uses_labels
from pyro_vae.plots import plot_gradient_variance, plot_samples
from pyro_vae.precision import PRECISIONS, refuse_on_device
from pyro_vae.predictive import prior_mean_images
from pyro_vae.prior_model import RECORD as IMAGE_RECORD
from pyro_vae.prior_model import image_record, load_for_prior
from pyro_vae.provenance import ALLOW_FLAG, CODE_FLAG, code_changes
from pyro_vae.run_config import (
    DataConfig,
    EstimatorConfig,
    EvaluationConfig,
    GuideConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    check_count,
    check_learning_rate,
    check_levels,
    check_widths,
)
from pyro_vae.spec import load_object
from pyro_vae.tables import is_table_path, refuse_binarization
from pyro_vae.tensorboard_log import require_tensorboard
from pyro_vae.train import TrainingDiverged, fit, labelled_data

# `fit` parses its flags into one RunConfig, whose dataclasses hold the defaults, builds the
# experiment from it once and writes it to config.json. The application names the model it
# fits by default; the library names none.
DEFAULT_MODEL = "models.vae:VAE"
_MODEL_DEFAULTS = {"latent_dim": 20, "hidden_dims": [400]}
_MODEL_FLAGS = {
    "latent_dim": "latent_dim",
    "hidden_dims": "hidden",
    "activation": "activation",
    "arch": "arch",
    "channels": "channels",
}
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


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="pyro-vae",
        description=__doc__,
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
        "--guide", default=None, help="import spec of the guide (default: the model's make_guide())"
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
        help="go on when the data's checksum (file names and sizes) differs from the one "
        "the run recorded in config.json",
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
    e.add_argument("--ll-points", type=int, default=None, help="default: the run's setting")
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
    a.add_argument("--points", type=int, default=100, help="first test images to use")
    a.add_argument("--steps", type=int, default=500)
    a.add_argument("--lr", type=float, default=1e-2)
    a.add_argument("--iwae-samples", type=int, default=1000)
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
        help="ArviZ diagnostics on test images: PSIS k̂ per image, InferenceData, summaries, plots",
    )
    g.add_argument("run", type=Path)
    g.add_argument("--points", type=int, default=1000, help="first test images for k̂ (0: all)")
    g.add_argument("--samples", type=int, default=1000, help="draws from the guide per image for k̂")
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
    v.add_argument("--num-draws", type=int, default=100)
    v.add_argument("--batch-size", type=int, default=128)
    v.add_argument("--seed", type=int, default=0)
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


def _run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run ``fit`` flags describe. With ``--compile auto`` the step is not recorded
    here; :func:`_should_compile` decides once the experiment is built."""
    training = TrainingConfig(
        epochs=_TRAINING.epochs if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        patience=args.patience or None,
        kl_warmup_epochs=args.kl_warmup,
        beta=args.beta,
        progress=not args.no_progress,
        compile=args.compile in ("on", "inductor"),
        compile_backend="inductor" if args.compile == "inductor" else None,
        data_plate=args.data_plate,
        drop_last=args.drop_last,
        vectorize_particles={"auto": None, "on": True, "off": False}[args.vectorize_particles],
        device=args.device or _TRAINING.device,
        precision=args.precision,
        tensorboard=args.tensorboard,
    )
    data = DataConfig(
        name=_resolved_data(args.data),
        likelihood=args.likelihood,
        binarize=args.binarize,
        threshold=args.threshold,
        levels=args.levels,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        image_size=args.image_size,
        crop=args.crop,
        columns=args.columns,
        label_column=args.label_column,
        labels_fraction=args.labels_fraction,
        labelled=args.labelled,
    )
    spec = _resolved(args.model)
    own = _constructor_defaults(spec)
    options = {key: _default(args, key, own) for key in _MODEL_FLAGS}
    options = {key: value for key, value in options.items() if value is not None}
    return RunConfig(
        model=ModelConfig(spec, {**options, **dict(args.model_opt)}),
        data=data,
        guide=GuideConfig(_resolved(args.guide)),
        estimator=EstimatorConfig(args.estimator, _estimator_options(args)),
        training=training,
        evaluation=EvaluationConfig(args.ll_samples, args.ll_points or None),
    )


def _estimator_options(args: argparse.Namespace) -> dict[str, Any]:
    """--estimator-opt pairs, with --free-bits, --free-bits-groups and --gradient as the
    options ``free_bits``, ``free_bits_groups`` and ``gradient`` when given (a run without
    them keeps the estimator's defaults, and its config.json is as before)."""
    options = dict(args.estimator_opt)
    for flag, key, what in (
        ("--free-bits", "free_bits", "free bits"),
        ("--free-bits-groups", "free_bits_groups", "the groups"),
        ("--gradient", "gradient", "the gradient"),
    ):
        value = getattr(args, key)
        if value is None:
            continue
        if key in options and options[key] != value:
            raise ValueError(
                f"{flag}: {value!r} disagrees with --estimator-opt {key}={options[key]!r}; "
                f"give {what} once"
            )
        options[key] = value
    return options


def _should_compile(args: argparse.Namespace, elbo, model, guide) -> bool:
    """Whether ``fit`` records its training step: the one place it is decided.

    ``--compile on``/``inductor``/``off`` decide; ``auto`` records when
    :func:`pyro_vae.estimators.compiled.should_record` finds nothing against it: the
    estimator declares it can be recorded, there is no KL warm-up, and model and guide
    declare ``recordable = True`` (no branching on tensor values; the shipped ones do, a
    user's file opts in with the declaration or with ``--compile on``). ``model`` and
    ``guide`` are the built objects; the guide a model makes itself is covered by the
    model's declaration.
    """
    if args.compile != "auto":
        return args.compile in ("on", "inductor")
    made = None if args.guide is None else guide
    return should_record(elbo, model, made, kl_warmup_epochs=args.kl_warmup) is None


def _default(args: argparse.Namespace, key: str, own: dict[str, Any]) -> Any:
    """The value of standard option ``key``: its flag's; else the model constructor's own
    default (``own``, where it is not None: a user's ``latent_dim=3`` had been replaced by
    the command's 20, silently, tester P); else the command's default."""
    value = getattr(args, _MODEL_FLAGS[key])
    if value is not None:
        return value
    if own.get(key) is _NOT_JSON:  # nn.Tanh, say: not passed, so the constructor's stands
        return None
    if own.get(key) is not None:
        default = own[key]
        return list(default) if isinstance(default, tuple) else default
    if key == "activation":  # softplus for an MLP, ELU for conv networks
        arch = dict(args.model_opt).get("arch", args.arch) or "mlp"
        return default_activation(arch, None)
    return _MODEL_DEFAULTS.get(key)


def _constructor_defaults(spec: str) -> dict[str, Any]:
    """The defaults the model ``spec`` names gives the standard options in its signature
    (``{}`` where it has no signature to read, or does not load: ``build`` then says why)."""
    try:
        signature = inspect.signature(load_object(spec, "model"))
    except (ValueError, TypeError):
        return {}
    return {
        name: parameter.default if _is_json(parameter.default) else _NOT_JSON
        for name, parameter in signature.parameters.items()
        if name in _MODEL_DEFAULTS_OF_ITS_OWN and parameter.default is not inspect.Parameter.empty
    }


#: A constructor default config.json cannot hold (``activation=nn.Tanh``: tester Q's crash
#: at the first write): that option is left out, and the constructor's default stands.
_NOT_JSON = object()


def _is_json(value: Any) -> bool:
    """Whether config.json can hold ``value`` as it is (None, numbers, strings, and lists
    or tuples of them)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(_is_json(item) for item in value)


#: The options whose flags, left out, leave the constructor's own default (``arch`` and
#: ``channels`` are passed only when set in any case).
_MODEL_DEFAULTS_OF_ITS_OWN = ("latent_dim", "hidden_dims", "activation")


def _note_unaccepted(args: argparse.Namespace, exp: Experiment, config: RunConfig) -> RunConfig:
    """``config`` without the standard options the model does not take (it records what
    the model received), saying so for those the user set."""
    for key in exp.not_accepted:
        flag = "--" + _MODEL_FLAGS[key].replace("_", "-")
        if getattr(args, _MODEL_FLAGS[key], None) is not None:
            print(
                f"note: {flag} was not passed to {config.model.spec}, whose constructor has no "
                f"{key!r} argument; pass its own with --model-opt NAME=VALUE "
                f"(it received {sorted(exp.model_arguments)})"
            )
    options = {k: v for k, v in config.model.options.items() if k not in exp.not_accepted}
    _note_none_defaults(args, config.model.spec, options)
    return replace(config, model=replace(config.model, options=options))


def _note_none_defaults(args: argparse.Namespace, spec: str, options: dict[str, Any]) -> None:
    """Say which of a user's constructor defaults of None ("my own choice") the command's
    defaults replaced, where their flags were left out (tester Q: nothing was printed).
    The shipped models' None defaults are the command's, so they go unnoted."""
    if spec.startswith("models."):
        return
    own = _constructor_defaults(spec)
    replaced = {
        key: options[key]
        for key in _MODEL_DEFAULTS_OF_ITS_OWN
        if key in own and own[key] is None and key in options
        and getattr(args, _MODEL_FLAGS[key]) is None and key not in dict(args.model_opt)
    }  # fmt: skip
    if replaced:
        flags = ", ".join("--" + _MODEL_FLAGS[key].replace("_", "-") for key in replaced)
        given = ", ".join(f"{key}={value!r}" for key, value in replaced.items())
        print(
            f"note: {spec} defaults {', '.join(replaced)} to None, and received the command's "
            f"{given}; give {flags} to choose"
        )


def _rows_not_images(data) -> bool:
    """Whether ``data``'s rows are not images (:func:`pyro_vae.data.row_unit` of its
    ``image_shape``: a table's, or vectors)."""
    return row_unit(data.image_shape) == "rows"


def _print_test(test: dict[str, Any], table: bool = False) -> None:
    """The test metrics, per image, or per row with ``table`` (data whose rows are not
    images: a table's, whose nats are those of the standardized columns when they were
    standardized, then also in the file's units, or vectors')."""
    unit = "row" if table else "image"
    standardized = " of the standardized columns" if "units" in test else ""
    if test.get("evaluated_on") == EVALUATED_ON_TRAINING_SET:
        print(
            "note: the guide has free per-datapoint parameters, so it has no posterior for "
            f"test {unit}s; these are the training {unit}s' metrics"
        )
    # a model that uses labels: its bounds are of log p(x | y) (CVAE) or log p(x, y) (M2)
    given = {"conditioned": " | y", "joint": ", y"}.get(test.get("labels_in_bound"), "")
    if not given and test.get("conditioned_on_labels"):  # metrics.json written before
        given = " | y"
    for key, value in test.items():
        if key == "elbo":
            print(f"test ELBO{given:<17}{value:10.3f} nats per {unit}{standardized}")
        elif key == "reconstruction_mse_original_units":
            scale = "per column, file's units squared (error² × training std_j²)"
            print(f"reconstruction MSE        {value:10.6g} {scale}")
        elif key in ("elbo_original_units", "log_likelihood_original_units"):
            what = f"ELBO{given}" if key == "elbo_original_units" else f"log p(x{given}) (IWAE)"
            print(f"test {what:<20} {value:10.3f} nats per row in the file's units")
        elif key.endswith("_original_units"):  # a model's own log-density of x
            what = key.removesuffix("_original_units").replace("_", " ")
            print(f"{what:<25} {value:10.3f} nats per row in the file's units")
        elif key == "reconstruction_log_likelihood":
            print(f"test log Pr(x | z)        {value:10.3f} nats per {unit} (autoencoder)")
        elif key == "log_likelihood":
            print(
                f"{'test log p(x' + given + ') (IWAE)':<26}{value:10.3f} nats per {unit}"
                f"{standardized} "
                f"(K={test['log_likelihood_samples']}, {test['log_likelihood_points']} {unit}s)"
            )
        elif key == "kl":
            kl = {" | y": "test KL(q(z | x, y) ‖ p(z))", ", y": "test KL(q(y, z | x) ‖ p(y, z))"}
            kl = kl.get(given, "test KL(q(z | x) ‖ p(z))")
            # E_q[log q − log p] from the ELBO's draws: near 0 it can come out negative
            print(f"{kl:<26}{value:10.3f} nats per {unit} (Monte Carlo estimate)")
        elif key == "reconstruction_mse":
            scale = "per pixel, [0, 1] scale"
            if table:
                scale = "per column, as observed"
                if "reconstruction_mse_original_units" in test:
                    scale = "per column, standardized (mean over columns and rows)"
            print(f"reconstruction MSE        {value:10.4f} {scale}")
        elif key == "active_units":
            print(f"active latent units       {value:>5} of {test['latent_dim']}")
        elif key in test.get("label_metrics", ()):
            number = f"{value:>10}" if isinstance(value, int) else f"{value:10.4f}"
            print(f"{key.replace('_', ' '):<26}{number}")
        elif key == "skipped":
            for metric, why in value.items():
                print(f"skipped {metric}: {why}")


# The flags that can go with --resume whatever their value: everything else is the run's
# own, in its config.json, and may be given only with the value recorded there.
_RESUMABLE = {
    "--resume",
    "--epochs",
    "--patience",
    "--no-progress",
    "--device",
    "--nproc",
    "--tensorboard",
}
_DATA_FLAGS = (
    "image_size", "crop", "columns", "label_column", "labels_fraction", "labelled",
    "likelihood", "binarize", "threshold", "levels", "val_fraction", "test_fraction",
)  # fmt: skip
_TRAINING_FLAGS = ("batch_size", "lr", "seed", "beta", "drop_last", "data_plate", "precision")
# The config.json settings (flat_settings keys) each of the run's own flags decides, to
# compare a resume's flag with the run's value; --model-opt and --estimator-opt decide those
# of the keys they give. A flag not listed is refused on a resume whatever its value.
_FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    "--model": ("model",),
    "--guide": ("guide",),
    **{f"--{f.replace('_', '-')}": (f"model_options.{key}",) for key, f in _MODEL_FLAGS.items()},
    "--data": ("data.name",),
    **{f"--{f.replace('_', '-')}": (f"data.{f}",) for f in _DATA_FLAGS},
    "--estimator": ("estimator.name",),
    "--gradient": ("estimator.options.gradient",),
    "--free-bits": ("estimator.options.free_bits",),
    "--free-bits-groups": ("estimator.options.free_bits_groups",),
    **{f"--{f.replace('_', '-')}": (f"train.{f}",) for f in _TRAINING_FLAGS},
    "--kl-warmup": ("train.kl_warmup_epochs",),
    "--vectorize-particles": ("train.vectorize_particles",),
    "--compile": ("train.compile", "train.compile_backend"),
    "--ll-samples": ("evaluation.ll_samples",),
    "--ll-points": ("evaluation.ll_points",),
}


def _fit(args: argparse.Namespace, given: set[str]) -> int:
    if args.restart and args.resume:
        raise ValueError(
            "restart: --restart starts a run over in --out; it does not go with --resume"
        )
    # bad flags: refused before any work
    config = None if args.resume else _run_config_from_args(args)
    if config is not None:
        _refuse_unused_labels(config)
    if config is not None and is_table_path(str(config.data.name)):
        flags = ("--binarize", "--threshold")
        refuse_binarization({f: getattr(args, f[2:]) for f in flags if f in given})
    if config is not None:
        _refuse_ignored_data_flags(config, args, given)
    run = RunFolder(args.resume or args.out)
    group = current()
    if not group.is_writer:  # ranks after 0 of a torchrun group neither read nor write it
        state = None
        if args.resume:  # rank 0's config and checkpoint: this machine may have no copy
            config, state = _resume_config(run, args, given, run_from_rank_0(group))
        return _train_and_report(run, config, state, args)
    if args.resume and not run.path.is_dir():
        # rank 0 resumes from the folder and writes it: on several machines, the one that
        # holds it must be rank 0 (tester Q: c10d gave rank 0 to the other machine)
        several = (
            f"; rank 0 of {group.world} reads and writes the run folder, so the machine "
            "holding it must be rank 0 (torchrun's c10d rendezvous gives rank 0 to the "
            "first agent to join: start that machine's first, or use --rdzv-backend static "
            "with --node-rank 0 there)"
            if group.world > 1
            else ""
        )
        raise RunFolderError(
            f"resume: {run.path} is not a directory; expected a run folder written by "
            f"`pyro-vae fit --out RUN`{several}"
        )
    with run.claim():
        run.remove_stale_temporaries()
        if args.resume:
            config, state = _resume_config(run, args, given, share=group)
        else:
            _check_new_folder(run, args.restart)
            state = None
        return _train_and_report(run, config, state, args)


def _refuse_ignored_data_flags(config: RunConfig, args: argparse.Namespace, given) -> None:
    """Refuse, before any work, a data flag the run would ignore yet record in config.json
    (tester P: ``--binarize dynamic`` on a gaussian run changed nothing, and ``compare``
    then called the run's data other than its twin's): binarization for a likelihood other
    than bernoulli, a threshold for dynamic binarization, levels for one other than
    categorical, and a test fraction for a dataset with an official test split."""
    data = config.data
    ignored = []
    if data.likelihood != "bernoulli":
        why = f"applies to --likelihood bernoulli, and this run's is {data.likelihood}"
        ignored += [(flag, why) for flag in ("--binarize", "--threshold") if flag in given]
    elif "--threshold" in given and data.binarize == "dynamic":
        ignored.append(("--threshold", "is static binarization's, and this run's is dynamic"))
    if "--levels" in given and data.likelihood != "categorical":
        why = f"applies to --likelihood categorical, and this run's is {data.likelihood}"
        ignored.append(("--levels", why))
    official = data.name == "fashion-mnist" or str(data.name).startswith("idx:")
    if "--test-fraction" in given and official:
        why = f"applies to data without an official test split, and {data.name} has one"
        ignored.append(("--test-fraction", why))
    if ignored:
        flag, why = ignored[0]
        value = getattr(args, flag[2:].replace("-", "_"))
        raise ValueError(
            f"{flag}: {value!r} would be ignored but recorded in config.json: {flag} {why}; "
            "leave it out (nothing was written)"
        )


def _check_new_folder(run: RunFolder, restart: bool, clear: bool = True) -> None:
    """A folder with a checkpoint is never overwritten; one whose fit failed or was killed
    before its first epoch ended (config.json, no checkpoint) is started over only when
    asked to (``--restart``; ``clear``: False to check only, as ``--nproc`` does before it
    starts the processes); a folder of other files is not written into."""
    if run.has_checkpoint:
        raise RunFolderError(
            f"out: {run.path} already holds a run; continue it with `pyro-vae fit --resume "
            f"{run.path}` or choose another --out (nothing was overwritten)"
        )
    ours = run.holds_run_config()  # a config.json of the user's own is theirs (tester L)
    if ours and not restart:
        raise RunFolderError(
            f"out: {run.path} holds a run that failed or was stopped before its first epoch "
            f"ended (a config.json, no checkpoint); start it over with `--restart`, continue it "
            f"with `pyro-vae fit --resume {run.path}`, or choose another --out (nothing was "
            "overwritten)"
        )
    own = set(run.unfinished_outputs()) if ours else set()
    others = [p.name for p in run.path.iterdir() if not p.name.startswith(".") and p not in own]
    if others:  # refused before anything is cleared
        raise RunFolderError(
            f"out: {run.path} already holds other files ({', '.join(sorted(others)[:3])}...); "
            "expected a new or empty folder for the run (nothing was written or removed)"
        )
    if ours and clear:
        run.clear_unfinished()


def _resume_config(
    run: RunFolder,
    args: argparse.Namespace,
    given: set[str],
    received: tuple[dict[str, Any], dict[str, Any] | None] | None = None,
    share: Group | None = None,
) -> tuple[RunConfig, dict[str, Any] | None]:
    """The run's own config, with only what --resume may change, and its checkpoint (read
    here, once; ``None`` for a run stopped before its first epoch ended). ``received``:
    rank 0's (config.json, checkpoint), on the other ranks, instead of reading the folder;
    ``share``: rank 0's group, to send them to the others once they have passed its
    checks (:func:`~pyro_vae.distributed.run_from_rank_0`)."""
    _refuse_unknown_resume_flags(given)
    written, state = _read_run(run) if received is None else received
    _refuse_changed_settings(args, given, written, state)
    config = RunConfig.from_json(written)
    if share is not None:
        run_from_rank_0(share, written, state)
    done = 0 if state is None else int(state["epoch"])
    epochs = config.training.epochs
    if args.epochs is not None:
        if args.epochs < done:
            raise ValueError(
                f"epochs: {args.epochs} is fewer than the {done} epochs the run has done; expected "
                f"at least {done} (the total to train to, not how many more)"
            )
        epochs = args.epochs
    patience = _resumed_patience(config, args, given)
    if args.epochs is not None or "--patience" in given:  # a finished run's is scored again
        _refuse_nothing_to_train(run, epochs, patience, state)
    training = replace(
        config.training,
        epochs=epochs,
        patience=patience,
        progress=not args.no_progress,
        tensorboard=config.training.tensorboard or args.tensorboard,
    )
    if args.device is not None:  # run folders are device-independent
        training = replace(training, device=args.device)
    return replace(config, training=training), state


def _resumed_patience(config: RunConfig, args: argparse.Namespace, given: set[str]) -> int | None:
    """The patience a resume trains on with: ``--patience`` where given (0: none), which
    only decides when training stops, so the epochs trained before are those it would
    have trained; else the run's own."""
    return (args.patience or None) if "--patience" in given else config.training.patience


def _refuse_unknown_resume_flags(given: set[str]) -> None:
    """Refuse a flag a resume can neither change nor compare with the run's value."""
    unknown = sorted(given - _RESUMABLE - set(_FLAG_SETTINGS) - {"--model-opt", "--estimator-opt"})
    if unknown:
        raise ValueError(
            f"resume: {', '.join(unknown)} cannot change a run being resumed, which continues "
            "with the settings in its config.json; only "
            f"{', '.join(sorted(_RESUMABLE - {'--resume'}))} go with --resume. To change "
            "them, start a new run with --out (nothing was changed)"
        )


def _refuse_changed_settings(
    args: argparse.Namespace,
    given: set[str],
    written: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> None:
    """Refuse, before any work, the run's own flags given to a resume with another value
    than config.json's (``written``), naming each flag, the run's value and the one given.
    The same value goes through: a user re-running the command that made the run, with
    ``--resume`` for ``--out``, gives the run's own (a tester: ``--ll-samples 10`` on a run
    made with it was refused). The value given is read as a new run reads it, and both are
    compared as the run uses them (:func:`_effective`: ``--arch mlp`` on a run that left
    the model its default mlp was refused, tester); ``state``, the checkpoint, gives the
    per-datapoint plate the run found."""
    fixed = sorted(given - _RESUMABLE)
    if not fixed:
        return
    run_config, new_config = RunConfig.from_json(written), _run_config_from_args(args)
    then, now = flat_settings(run_config.to_json()), flat_settings(new_config.to_json())
    plate = ((state or {}).get("fit_info") or {}).get("data_plate")
    changed = []
    for flag in fixed:
        for key in _settings_of(flag, args):
            if key == "train.compile" and args.compile == "auto":
                continue  # auto decides from the run's own model and estimator
            theirs = _effective(key, then.get(key), run_config, plate)
            if _effective(key, now.get(key), new_config, plate) != theirs:
                default = f" (its default, {theirs!r})" if then.get(key) is None else ""
                why = f"{flag} gives {key} = {now.get(key)!r}, the run's is {then.get(key)!r}"
                changed.append((flag, why + default))
    if changed:
        flags = sorted({flag for flag, _ in changed})
        raise ValueError(
            f"resume: {', '.join(flags)} cannot change a run being resumed: "
            f"{'; '.join(why for _, why in changed)}. A resumed run continues with the settings "
            "in its config.json, so the run's own flags go with --resume only with the values "
            f"recorded there (only {', '.join(sorted(_RESUMABLE - {'--resume'}))} may change). "
            "To change them, start a new run with --out (nothing was changed)"
        )


def _effective(key: str, value: Any, config: RunConfig, plate: str | None) -> Any:
    """Setting ``key``'s ``value`` (a ``flat_settings`` key of ``config``'s) as the run uses
    it: left unset (``None``), a model option is its constructor's default (else the
    command's), an estimator option the estimator's default, the data plate the one the run
    found (``plate``); a list option's single width (``hidden_dims=16``) is ``[16]``, and a
    tuple a list."""
    section, _, name = key.partition(".")
    if value is None and section == "model_options":
        value = _parameter_default(lambda: load_object(config.model.spec, "model"), name)
        value = _MODEL_DEFAULTS.get(name) if value is None else value
    elif value is None and key.startswith("estimator.options."):
        option = key.removeprefix("estimator.options.")
        value = _parameter_default(lambda: type(estimators.get(config.estimator.name)), option)
    elif value is None and key == "train.data_plate":
        value = plate
    if section == "model_options" and name in ("hidden_dims", "channels"):
        value = [value] if isinstance(value, int) else value
    return list(value) if isinstance(value, tuple) else value


def _parameter_default(owner, name: str) -> Any:
    """The default of parameter ``name`` of what ``owner()`` returns (a class or function);
    ``None`` where it has none or cannot be read."""
    try:
        parameter = inspect.signature(owner()).parameters.get(name)
    except (TypeError, ValueError):
        return None
    default = None if parameter is None else parameter.default
    return None if default is inspect.Parameter.empty else default


def _settings_of(flag: str, args: argparse.Namespace) -> list[str]:
    """The config.json settings (``flat_settings`` keys) ``flag`` decides."""
    if flag in ("--model-opt", "--estimator-opt"):
        section = {"--model-opt": ["model_options"], "--estimator-opt": ["estimator", "options"]}
        options = {key: 0 for key, _ in getattr(args, flag[2:].replace("-", "_"))}
        for name in reversed(section[flag]):
            options = {name: options}
        return list(flat_settings(options))
    return list(_FLAG_SETTINGS[flag])


def _refuse_nothing_to_train(
    run: RunFolder, epochs: int, patience: int | None, state: dict[str, Any] | None
) -> None:
    """Refuse, before anything is recomputed, a resume asked to train to ``epochs`` (more
    than the run has done) that early stopping with ``patience`` would let train no epoch
    (a tester: an early-stopped run given more ``--epochs`` trained 0 epochs, said it had
    stopped early, and replaced its test block)."""
    if state is None or epochs <= int(state["epoch"]):
        return
    done = int(state["epoch"])
    if EarlyStopping(patience, state.get("best")).out_of_patience(done):
        wait = done - state["best"]["epoch"]
        raise ValueError(
            f"resume: {run.path} is at epoch {done}, {wait} epochs past its best validation "
            f"ELBO (epoch {state['best']['epoch']}), where --patience {patience} stops it, so "
            f"--epochs {epochs} would train no epoch; give --patience above {wait} too to train "
            f"on (0: no early stopping), or score it again with `pyro-vae evaluate {run.path}` "
            "(nothing was changed)"
        )


def _read_run(run: RunFolder) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(config.json, the checkpoint's state or None) of a run to resume, refused where
    config.json was edited after the checkpoint, or where the checkpoint is gone but
    metrics.json records finished epochs. None: a run stopped before its first epoch ended,
    whose resume starts that epoch again."""
    written = run.read_config()
    RunConfig.from_json(written)  # a config this version cannot read: refused first
    state = run.load_checkpoint() if run.has_checkpoint else None
    if state is not None:
        run.refuse_edited_config(written, state)
        return written, state
    metrics = run.read_metrics()
    done = len(metrics.get("epochs", []))
    if done or "test" in metrics:
        raise RunFolderError(
            f"resume: {run.file('checkpoint.pt')} is missing, but metrics.json records {done} "
            "finished epochs; resuming would train again from scratch over them. Nothing "
            "was changed; start a new run with --out"
        )
    return written, None


def _train_and_report(
    run: RunFolder, config: RunConfig, state: dict[str, Any] | None, args: argparse.Namespace
) -> int:
    _refuse_precision(config)  # 16-mixed on the CPU: before the data are loaded
    exp = build(config)
    if not args.resume:
        # with the data's provenance and the model's and guide's files' checksums
        config = replace(config, data=exp.config.data, code=exp.config.code)
        config = _note_unaccepted(args, exp, config)
        compile_step = _should_compile(args, exp.elbo, exp.model, exp.guide)
        config = replace(config, training=replace(config.training, compile=compile_step))
        exp.config = config
    reason = compilable(exp.elbo) if config.training.compile else None
    if reason is not None:
        raise ValueError(
            f"--compile on: the {config.estimator.name} estimator cannot be compiled "
            f"({reason}); use --compile auto or off (nothing was written)"
        )

    refuse_disagreeing_ranks(config.to_json(), current())  # before anything is written
    writer = current().is_writer
    if not writer:  # one progress bar, from rank 0
        config = replace(config, training=replace(config.training, progress=False))

    def ready() -> None:  # fit's checks have all passed: now the folder is written
        _write_run_start(run, config, exp, state)

    _TRAINING_BEGUN["begun"] = True
    try:
        result = fit(
            exp.model,
            exp.guide,
            exp.data,
            exp.elbo,
            config.training,
            run,
            resume=state is not None,
            resume_state=state,
            on_ready=ready if writer else None,
            evaluated_per_datapoint=True,  # evaluate_test_set: refused before training
        )
    except TrainingDiverged as err:
        if writer:
            run.update_metrics(stop_reason="diverged")
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    if writer:
        print(
            f"stopped: {result.stop_reason.replace('_', ' ')}; kept the weights of epoch "
            f"{result.best_epoch or len(result.history)}"
        )
    exp.local_guide = result.local_guide
    ev = exp.config.evaluation
    progress = config.training.progress
    test = evaluate_test_set(exp, ev.ll_samples, ev.ll_points, progress=progress, group=current())
    if writer:  # every rank scores its part of the test set; rank 0 writes
        _report(run, exp, result, test)
    return 0


def _write_run_start(run: RunFolder, config: RunConfig, exp, state) -> None:
    """Once fit's checks have passed: config.json, the data's and estimator's records and
    the processes in metrics.json, a resumed run's earlier test block set aside, and the
    line saying what trains on what."""
    rows = "rows" if _rows_not_images(exp.data) else "images"
    # metrics.json read first: one that does not read is refused with config.json as it
    # was (it was rewritten first, a refused resume's --epochs left in it: tester L2); one
    # whose epochs are not the checkpoint's is rebuilt from it
    before = run.read_metrics(state)
    processes, world = before.get("processes"), current().world
    written = config.to_json()
    run.write_config(written)
    metrics = run.update_metrics(
        data=exp.data.info, estimator=written["estimator"], processes=world,
        processes_by_epoch=_processes_by_epoch(before, world),
    )  # fmt: skip
    if state is not None:
        _set_aside_test_block(run, metrics)
        if processes is not None and processes != world:  # tester L
            print(
                f"note: {run.path} was trained on {processes} process(es) and resumes on "
                f"{world}: each process draws its own random numbers, so from here the "
                f"run draws other numbers than an uninterrupted one would (resume with "
                f"--nproc {processes} to draw the same)"
            )
    print(
        f"{config.model.spec} on {exp.data.info['dataset']} "
        f"({exp.data.info['num_train']} train, {exp.data.info['num_val']} validation, "
        f"{exp.data.info['num_test']} test {rows}), "
        f"{config.estimator.name} "
        f"estimator -> {run.path}"
    )
    _note_image_folder(exp.data.info)
    if "columns" in exp.data.info:  # a table: which columns became the features
        label = config.data.label_column
        print(
            f"features: {', '.join(exp.data.info['columns'])}"
            + (f" (labels: {label})" if label else "")
        )


def _note_image_folder(info: dict[str, Any]) -> None:
    """Say which files of an image folder were left out (not class images, tester P) and
    which colour files made a grey folder RGB (tester Q: one ``.webp``, which Pillow always
    decodes as colour, tripled the input of a grey folder unnamed)."""

    def shown(files: list[str]) -> str:
        return ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")

    left_out = info.get("left_out")
    if left_out:
        print(
            f"note: {len(left_out)} file(s) in the folder are not class images, left out: "
            f"{shown(left_out)}"
        )
    colour = info.get("colour_files")
    if colour:
        images = sum(info[f"num_{split}"] for split in ("train", "val", "test"))
        print(
            f"note: {len(colour)} of the folder's {images} images are colour "
            f"({shown(colour)}), so "
            "every image is read as RGB, 3 channels; convert those to greyscale to train "
            "on one channel"
        )


def _set_aside_test_block(run: RunFolder, metrics: dict[str, Any]) -> None:
    """A resumed fit's earlier test block and stop reason, set aside before it trains on:
    they belong to the weights it had (tester L: a resumed run interrupted later showed, in
    ``compare``, the test ELBO of epoch 4 beside 29 epochs, with no note). The block is
    kept in ``test_previous``, marked with the epoch it scored; ``compare`` shows the run
    as not evaluated until the fit ends and writes its own. ``metrics``: metrics.json as
    it is now."""
    if not metrics.get("test") and metrics.get("stop_reason") is None:
        return
    kept = _with_previous(metrics, "test")
    if metrics.get("test") and "scored_weights_of_epoch" not in kept[-1]:  # an older block
        kept[-1] = {**kept[-1], "scored_weights_of_epoch": metrics.get("best_epoch")}
    run.update_metrics(test=None, stop_reason=None, test_previous=kept)


def _report(run: RunFolder, exp: Experiment, result, test: dict) -> None:
    """Record the test-set evaluation in metrics.json, print it, draw the figures."""
    test = {**test, "scored_weights_of_epoch": result.best_epoch or len(result.history)}
    metrics = run.read_metrics()  # an evaluate's block written while it trained is kept
    kept = {"test_previous": _with_previous(metrics, "test")} if metrics.get("test") else {}
    run.update_metrics(
        stop_reason=result.stop_reason,
        best_epoch=result.best_epoch,
        test=test,
        model_arguments=_jsonable(exp.model_arguments),
        **{IMAGE_RECORD: image_record(exp)},
        **kept,
        **result.info(),
    )
    _print_test(test, _rows_not_images(exp.data))
    figures, skipped = write_figures(exp, run, result.history, test)
    print("figures: " + ", ".join(str(p) for p in figures))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _writable_run(path: str | Path) -> RunFolder:
    """The run folder ``path``, refused before any work when this process cannot write it
    (tester U: ``evaluate`` and ``diagnose`` computed for minutes, then died at their first
    write with a ``PermissionError`` traceback). A path that is not a folder is left to
    :func:`~pyro_vae.experiment.load`, which says so.

    Raises:
        FolderNotWritableError: ``run: cannot create or write to PATH (reason)``, as
            ``fit --resume`` refuses such a folder.
    """
    run = RunFolder(path)
    if run.path.is_dir():
        check_writable(run.path)
    return run


def _evaluate(args: argparse.Namespace) -> int:
    run = _writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    ev = exp.config.evaluation
    samples = ev.ll_samples if args.ll_samples is None else args.ll_samples
    points = ev.ll_points if args.ll_points is None else (args.ll_points or None)
    test = evaluate_test_set(exp, samples, points, progress=True)
    # the weights it scored: a fit still training may have moved on (tester L2)
    test["scored_weights_of_epoch"] = exp.weights_epoch
    changed = _changed_inputs(exp)
    if changed is not None:  # --allow-changed-data or -code on inputs that did change
        key, extra, what = changed
        run.update_metrics(**{key: {**test, **extra}})
        _print_test(test, _rows_not_images(exp.data))
        print(
            f"note: {what} changed since the run was trained; these results went to "
            f"{run.file('metrics.json')}'s {key}, and its test block (the run's own) was kept"
        )
        return 0
    metrics = _metrics_or_history(run)
    previous = metrics.get("test") or {}
    if samples == 0:  # skipped this time: keep the estimate saved before, with its K
        test.update({k: v for k, v in previous.items() if k.startswith("log_likelihood")})
    replaced = _replaced_estimate(previous, test)
    redrawn = _redrawn(previous, test)
    if replaced or redrawn:  # nothing saved is lost: the blocks it replaced stay beside it
        run.update_metrics(test=test, test_previous=_with_previous(metrics, "test"))
    else:
        run.update_metrics(test=test)
    _print_test(test, _rows_not_images(exp.data))
    if replaced:
        print(
            f"note: log p(x) is now {replaced}, in {run.file('metrics.json')}'s test block "
            "(what compare shows); the block it replaced is kept in test_previous"
        )
    elif redrawn:
        print(
            f"note: {redrawn}: other Monte Carlo draws than the saved test block's; "
            f"{run.file('metrics.json')}'s test block (what compare shows) now holds these, "
            "and the block it replaced is kept in test_previous"
        )
    return 0


def _metrics_or_history(run: RunFolder) -> dict[str, Any]:
    """metrics.json; where it is gone, the epochs and best epoch the checkpoint holds,
    written back first (tester P: an evaluate wrote a metrics.json of its test block alone,
    and compare then showed a 30-epoch run as of 0 epochs), as ``fit --resume`` does."""
    if run.file("metrics.json").is_file() or not run.has_checkpoint:
        return run.read_metrics()
    state = run.load_checkpoint()
    best = state.get("best")
    restored = run.update_metrics(
        epochs=list(state.get("history") or []),
        best_epoch=best.get("epoch") if isinstance(best, dict) else None,
    )
    print(f"note: {run.file('metrics.json')} was missing; its epochs came back from the checkpoint")
    return restored


def _redrawn(previous: dict, test: dict) -> str:
    """'test ELBO -24.938 nats per image, where it was -24.946' where ``test`` gives other
    numbers than the saved block ``previous`` at the same settings (other draws: fit scores
    with the random streams training left, evaluate with its own; tester P: evaluate
    replaced the numbers fit had printed, silently); else ''."""
    numbers = [
        key
        for key in sorted(set(previous) & set(test))
        if isinstance(test[key], float) and previous[key] != test[key] and key != "seconds"
    ]
    if not numbers:
        return ""
    key = "elbo" if "elbo" in numbers else numbers[0]
    return f"test {key} {test[key]:.6g}, where it was {previous[key]:.6g}"


def _with_previous(metrics: dict, key: str) -> list:
    """``metrics[key + "_previous"]`` (every block ``key`` held before, oldest first; an
    older run's single block taken as a list of one) with ``metrics[key]`` appended: what
    to keep when ``key`` is replaced (tester H: a second evaluate dropped the fit's own
    test block, the first one kept only the last). A block equal to the last one kept but
    for its ``seconds`` is not kept twice (tester U: each ``fit --resume`` of a finished
    run scored the same weights again, and kept one more copy of the same numbers)."""
    kept = metrics.get(f"{key}_previous") or []
    kept = [kept] if isinstance(kept, dict) else list(kept)
    if not metrics.get(key) or (kept and _untimed(kept[-1]) == _untimed(metrics[key])):
        return kept
    return [*kept, metrics[key]]


def _untimed(block: Any) -> Any:
    """A metrics block without its wall time (``seconds``), to tell a repeat of it."""
    return {k: v for k, v in block.items() if k != "seconds"} if isinstance(block, dict) else block


def _changed_inputs(exp) -> tuple[str, dict, str] | None:
    """(metrics key, what to record beside the results, what changed) where the run was
    rebuilt on data or a model/guide file, or a module of the user's own they import, other
    than it recorded (the flags that allow it); its own test block then stays. None where
    nothing changed."""
    recorded, current = exp.config.data.provenance, exp.data.info.get("provenance")
    if recorded and current and recorded.get("checksum") != current.get("checksum"):
        return "test_on_changed_data", {"provenance": current}, "the data"
    code = exp.code if exp.code is not None else code_of(exp.config)  # build's, once run
    if code_changes(exp.config.code, code):
        return "test_on_changed_code", {"code": code}, "the model's or guide's code"
    return None


def _replaced_estimate(previous: dict, test: dict) -> str:
    """'K=7 over 20 rows, where it was K=50 over 180 rows' where ``test`` estimates log p(x)
    with other draws or rows than the saved block ``previous``; else '' (tester B's F6: an
    evaluate with fewer draws replaced the fit's estimate without a word)."""
    keys = ("log_likelihood_samples", "log_likelihood_points")
    if "log_likelihood" not in previous or all(previous.get(k) == test.get(k) for k in keys):
        return ""

    def described(block: dict) -> str:
        return f"K={block.get(keys[0])} over {block.get(keys[1])} rows"

    return f"{described(test)}, where it was {described(previous)}"


def _check_png_out(out: Path, own: str) -> None:
    """Refuse, before any work, an ``--out`` that is not a .png file path, or that names an
    existing file of a run folder (one holding config.json) other than this command's own
    figures there (``own``, a glob: written again, as its default is): the run's config,
    weights, metrics and fit figures are the run's (tester H: ``grad-variance --out
    RUN/config.json`` wrote its PNG over the config, and the run was lost).

    Raises:
        ValueError: naming ``--out``, the path and what was expected."""
    if out.is_dir() or out.suffix.lower() != ".png":
        raise ValueError(f"--out: {out} is not a .png file path; expected where to write the PNG")
    where = out.resolve()  # RUN/new/../elbo.png is RUN/elbo.png (tester J)
    in_run = (where.parent / CONFIG).is_file()
    if in_run and where.exists() and not fnmatch.fnmatch(where.name, own):
        raise ValueError(
            f"--out: {out} is {where}, a file of the run folder {where.parent}, which this "
            f"command does not write ({own} are its own there); expected a new path, or one "
            "of those"
        )


def _sample(args: argparse.Namespace) -> int:
    """``pyro-vae sample``: ``--num`` images E[x | z], z ~ p(z), in all, as one grid; a
    model that uses labels draws E[x | z, y] with image i of class i mod C (C classes,
    cycled). Refuses a model with no prior and data whose rows are not images."""
    import pyro
    import torch

    # its own name: samples.png is the fit's figure, which a sample run must not replace
    out = args.out or RunFolder(args.run).file(f"sample_seed{args.seed}_{args.num}.png")
    _check_png_out(out, "sample_seed*_*.png")
    exp = _load_for_sampling(RunFolder(args.run), args)
    if not exp.generative:
        raise ValueError(
            f"run: {exp.config.model.spec} has no prior to sample from (it is not a generative "
            "model)"
        )
    if _rows_not_images(exp.data):
        raise ValueError(
            f"run: its data {exp.config.data.name!r} are a table's rows or vectors "
            f"(shape {exp.data.image_shape}), not images to draw"
        )
    pyro.set_rng_seed(args.seed)
    if uses_labels(exp.model) is not None:  # --num in all (ten for --num 8 had been drawn)
        classes = num_classes(exp.data)
        with torch.no_grad():
            images = label_samples(exp, args.num).cpu()
        title = f"conditional samples E[x | z, y], z ~ p(z), image i of class i mod {classes}"
        path = plot_samples(images, exp.data.image_shape, exp.data.pixel_max, out, title)
        print(f"wrote {args.num} conditional samples, classes cycled (of {classes}), to {path}")
        return 0
    with torch.no_grad():
        like = to_device(exp.data.test_x[: args.num], exp.device)
        images = prior_mean_images(exp.model, like, args.num).cpu()
    path = plot_samples(images, exp.data.image_shape, exp.data.pixel_max, out)
    print(f"wrote {args.num} samples to {path}")
    return 0


def _load_for_sampling(run: RunFolder, args: argparse.Namespace) -> Experiment:
    """The run's model with its kept weights, rebuilt from the folder alone where fit
    recorded its data's image facts (:func:`pyro_vae.prior_model.load_for_prior`), else
    with the data loaded; the data's refusal then says why they are needed."""
    device = args.device or "auto"
    exp = load_for_prior(run, device, args.allow_changed_code)
    if exp is not None:
        return exp
    try:
        return load(run, device, args.allow_changed_data, args.allow_changed_code)
    except (FileNotFoundError, ValueError) as err:
        if not (isinstance(err, FileNotFoundError) or str(err).startswith("data:")):
            raise
        name = run.read_config().get("data", {}).get("name")
        raise type(err)(
            f"data: {name!r} could not be read, and `pyro-vae sample` needs it: {run.path}'s "
            f"metrics.json records no image facts (its '{IMAGE_RECORD}': the row width, image "
            "shape, pixel scale and classes, which fit writes when it ends), so the model is "
            f"built from the data; restore the data file, or sample a finished run ({err})"
        ) from err


def _refuse_label_model(exp: Experiment, command: str) -> None:
    """A run of a model that uses labels, refused by a command that calls it on images alone."""
    if uses_labels(exp.model) is not None:
        raise ValueError(
            f"run: {exp.config.model.spec} conditions on labels (uses_labels), and "
            f"`pyro-vae {command}` calls the model on images alone; expected a model without "
            "labels"
        )


def _grad_variance(args: argparse.Namespace) -> int:
    import pyro

    run = _writable_run(args.run)
    out = args.out or run.file("gradient_variance.png")
    _check_png_out(out, "gradient_variance.png")
    # "trace, iwae" as "trace,iwae": a space after a comma is no part of a name
    given = [s.strip() for s in args.estimators.split(",") if s.strip()]
    specs = [estimators.parse(s) for s in given]
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "grad-variance")
    for name, options in specs:
        estimators.get(name, **options)  # reject bad names and options before any work
    x, _ = next(iter(exp.data.train_batches(args.batch_size, 0, args.seed)))
    x = to_device(x, exp.device)
    num_data = exp.data.train_x.shape[0]
    print(
        f"{args.num_draws} gradient draws at the weights of {run.path}, one batch of "
        f"{x.shape[0]} of {num_data} training images"
    )
    print(f"{'estimator':<48} {'group':<8} {'variance':>11} {'SNR':>9} {'ms/draw':>8}")
    rows = []
    for (name, options), spec in zip(specs, given, strict=True):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        try:
            stats = gradient_variance(
                exp.model,
                exp.guide,
                estimators.get(name, **options),
                x,
                num_data=num_data,
                num_draws=args.num_draws,
                progress=True,
            )
        except (ValueError, NotImplementedError) as err:
            print(f"{spec:<48} cannot run here: {err}")
            continue
        for group, st in stats.items():
            rows.append(
                {
                    "estimator": spec,
                    "group": group,
                    "variance": st.variance,
                    "snr": st.snr,
                    "seconds_per_draw": st.seconds_per_draw,
                }
            )
            print(
                f"{spec:<48} {group:<8} {st.variance:11.4g} {st.snr:9.4g} "
                f"{1000 * st.seconds_per_draw:8.2f}"
            )
    if not rows:
        raise ValueError("estimators: none of them could run on this model and guide")
    path = plot_gradient_variance(rows, out)
    run.update_metrics(gradient_variance=rows)
    print(f"wrote {path}")
    return 0


def _amortization_gap(args: argparse.Namespace) -> int:
    import pyro

    from pyro_vae.amortization import amortization_gap
    from pyro_vae.guides import AmortizedFlow

    run = _writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "amortization-gap")
    if not exp.generative:
        raise ValueError(f"run: {exp.config.model.spec} has no latent variables to fit guides to")
    _refuse_local_guide(
        exp,
        "the amortization gap compares an amortized encoder with "
        "per-datapoint guides, and this guide is already per-datapoint",
    )
    if args.points < 1:
        raise ValueError(f"points: {args.points} is not a positive number of test images")
    pyro.set_rng_seed(args.seed)
    x = to_device(exp.data.test_x[: args.points], exp.device)
    result = amortization_gap(
        exp.model,
        exp.guide,
        x,
        steps=args.steps,
        lr=args.lr,
        iwae_samples=args.iwae_samples,
        family=args.family,
        progress=True,
    )
    kept = _with_previous(run.read_metrics(), "amortization_gap")  # earlier results stay
    run.update_metrics(
        amortization_gap=result, **({"amortization_gap_previous": kept} if kept else {})
    )
    if args.family == "normal" and isinstance(exp.guide, AmortizedFlow):
        print(
            "note: the encoder is a flow and the per-image guides are Normal (--family "
            "normal), so the gaps compare two families; --family flow compares like with like"
        )
    print(f"on {result['num_points']} test images (nats per image):")
    print(f"  log p(x), IWAE K={args.iwae_samples}    {result['log_likelihood']:10.3f}")
    print(f"  ELBO, local guides            {result['elbo_local']:10.3f}")
    print(f"  ELBO, amortized encoder       {result['elbo_amortized']:10.3f}")
    print(f"  approximation gap             {result['approximation_gap']:10.3f}")
    print(f"  amortization gap              {result['amortization_gap']:10.3f}")
    if result["amortization_gap_se"] is not None:
        print(
            f"  (standard errors over the images: approximation gap "
            f"{result['approximation_gap_se']:.3f}, amortization gap "
            f"{result['amortization_gap_se']:.3f})"
        )
    if "note" in result:
        print(f"note: {result['note']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pyro_vae.compare import compare_runs, format_table, write_comparison

    comparison = compare_runs(args.runs)
    csv, png = write_comparison(comparison, args.out)
    print(
        "nats per datapoint; evaluated_on: the split the test_elbo, log_px and kl are of; "
        "K: draws of the log p(x) estimate; s_per_epoch: median"
    )
    print(format_table(comparison))
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"wrote {csv} and {png}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    import pyro

    from pyro_vae.diagnostics import write_report

    run = _writable_run(args.run)
    exp = load(run, args.device or "auto", args.allow_changed_data, args.allow_changed_code)
    _refuse_label_model(exp, "diagnose")
    if not exp.generative:
        raise ValueError(f"run: {exp.config.model.spec} has no latent variables to diagnose")
    _refuse_local_guide(exp, "k̂ per test image needs a posterior for test images")
    if args.points < 0:
        raise ValueError(f"points: {args.points} is negative; expected a number of test images")
    x = exp.data.test_x[: args.points or None]  # 0: all (gathered, when memory-mapped)
    x = to_device(x, exp.device)
    pyro.set_rng_seed(args.seed)
    result = write_report(
        exp.model,
        exp.guide,
        x,
        run.path,
        num_samples=args.samples,
        idata_points=args.idata_points,
        idata_samples=args.idata_samples,
        num_worst=args.worst,
        image_shape=exp.data.image_shape,
        pixel_max=exp.data.pixel_max,
    )
    run.update_metrics(diagnostics={k: v for k, v in result.items() if k != "files"})
    _print_khat(result)
    print("wrote " + ", ".join(result["files"]))
    for name, why in result.get("skipped", {}).items():
        print(f"skipped {name}: {why}")
    return 0


def _print_khat(result: dict[str, Any]) -> None:
    if "num_states" in result:  # a discrete guide small enough to enumerate
        print(
            f"q(z | x) has {result['num_states']} states per test image, enumerated on "
            f"{result['num_points']} images: k̂ does not apply (no Pareto tail); exactly:"
        )
        print(f"  median KL(q ‖ p(z | x))     {result['kl_median']:10.4f} nats")
        print(
            f"  median, max χ²(p ‖ q)       {result['chi2_median']:10.4g}, {result['chi2_max']:.4g}"
        )
        return
    print(f"PSIS k̂ on {result['num_points']} test images, {result['num_samples']} draws each:")
    print(f"  share above 0.5             {100 * result['share_above_0.5']:6.1f}%")
    print(f"  share above 0.7             {100 * result['share_above_0.7']:6.1f}%")
    print(f"  median k̂, max k̂             {result['khat_median']:6.2f}, {result['khat_max']:.2f}")
    if result.get("khat_not_applicable"):
        print(
            f"  k̂ not applicable            {result['khat_not_applicable']} images (few "
            "distinct ratios: a discrete q)"
        )


def _refuse_local_guide(exp, why: str) -> None:
    if exp.local_guide:
        raise ValueError(
            f"run: its guide has free per-datapoint parameters (one q per training image, "
            f"none for others); {why}. From Python, pyro_vae.psis_khat_per_datapoint and "
            "to_inference_data take the training images the guide was fitted to"
        )


def _resolved_data(name: str) -> str:
    """Paths in ``--data`` made absolute (``idx:PATH``, ``PATH.npy``, ``images:DIR``,
    tables), so the run evaluates from any folder (:func:`pyro_vae.data.resolved_name`)."""
    return resolved_name(name)


def _resolved(spec: str | None) -> str | None:
    """A ``file.py:attr`` spec with the file's absolute path, so the run folder rebuilds
    the model from anywhere; module specs are left as they are."""
    if spec is None:
        return None
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return f"{Path(path).expanduser().resolve()}:{attr}"
    return spec


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
    "evaluate": {"ll_samples": 0, "ll_points": 0},
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


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse a count below its minimum (or levels outside 2..256), naming the flag, with
    the run configuration's own checks."""
    for dest, minimum in _COUNTS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
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


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line: a refusal is one line on stderr, even when it quotes
    a multi-line message of torch's (a state-dict mismatch lists one line per tensor)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _refuse_unused_labels(config: RunConfig) -> None:
    """``--labelled`` or ``--labels-fraction`` for a model that uses no labels, refused by
    name before any work (they were recorded and never read)."""
    d = config.data
    given = {"--labelled": d.labelled, "--labels-fraction": d.labels_fraction}
    if all(value is None for value in given.values()):
        return
    mode = uses_labels(load_object(config.model.spec, "--model"))
    refuse_unused_subset(mode, config.model.spec, given)


def _refuse_labels_before_launch(config: RunConfig) -> None:
    """For a model that uses labels, the refusals of its labels each rank's ``fit`` makes
    (:func:`pyro_vae.train.labelled_data`: a subset for a model that conditions on every
    label, data without labels, labels outside its classes), made once here before any
    process starts: made on the ranks, each printed its own copy, then the launcher its
    line. Loads the data and builds the model, as a rank does, for such a model only."""
    if uses_labels(load_object(config.model.spec, "--model")) is None:
        return
    exp = build(config)
    labelled_data(exp.model, exp.data)


def _refuse_precision(config: RunConfig) -> None:
    """``--precision 16-mixed`` on a run that computes on the CPU, refused by name."""
    device = resolve_device(config.training.device, "--device")
    refuse_on_device(config.training.precision, device, "--precision")


def _given_flags(argv: list[str]) -> set[str]:
    """The ``--flags`` typed after the command in ``argv`` (``--epochs=3`` as ``--epochs``):
    what a resume may not change, and which defaults the user left alone."""
    return {token.split("=", 1)[0] for token in argv[1:] if token.startswith("--")}


def _launch(argv: list[str], args: argparse.Namespace) -> int:
    """``fit --nproc N``: the same command in N processes through torchrun's agent, once
    the flags have passed their checks here (a refusal exits 2 before any process starts)."""
    nproc = args.nproc
    # the folder's refusals too, read-only, here: refused on a rank, they were followed by
    # the other ranks' "terminated" and torchrun's traceback, and exit 1 (tester L2)
    run = RunFolder(args.resume or args.out)
    given = _given_flags(argv)
    if args.resume:
        config, _ = _resume_config(run, args, given)
    else:
        config = _run_config_from_args(args)
        _refuse_unused_labels(config)
        _refuse_ignored_data_flags(config, args, given)
        if run.path.is_dir():
            _check_new_folder(run, args.restart, clear=False)
        _refuse_labels_before_launch(config)
    _refuse_precision(config)
    refuse_before_launch(config.estimator.build(), config.training.batch_size, nproc)
    # a model's class declares its batch_terms: refused here, once, not on every rank
    refuse_batch_terms(load_object(config.model.spec, "--model"), nproc)
    if "WORLD_SIZE" in os.environ:
        raise ValueError(
            f"--nproc: {nproc} under torchrun, which has started the processes already; "
            "expected --nproc only outside torchrun"
        )
    rest, skip = [], False
    for token in argv:
        if skip or token == "--nproc" or token.startswith("--nproc="):
            skip = token == "--nproc"
            continue
        rest.append(token)
    # from here the ranks may train and checkpoint: a stop reads the folder, not "it had
    # not begun" (after a Ctrl-C the launcher's last line said so beside the ranks' own
    # "holds the checkpoint of epoch 99")
    _TRAINING_BEGUN["begun"] = True
    return launch(rest, nproc)


class _Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so the command can say where it stopped."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


#: Whether this process stopped because another rank had (:class:`RankLost`): it then
#: leaves after that rank, so that torchrun's agent names the rank that failed first
#: (``python -m pyro_vae``).
FOLLOWED_A_LOST_RANK = {"followed": False}

#: Whether this process's fit has passed its checks and begun training (a stop before then
#: changed nothing: a rank stopped by torchrun's agent when another refused named the old
#: run's checkpoint as if it had trained: tester L2).
_TRAINING_BEGUN = {"begun": False}


def _where_it_stopped(args: argparse.Namespace) -> str:
    if args.command != "fit":
        return "its run folder is as it was: files are only ever replaced whole"
    run = RunFolder(args.resume or args.out)
    if not _TRAINING_BEGUN["begun"]:
        return f"it had not begun training, so {run.path} is as it was"
    if not run.path.is_dir():
        if int(os.environ.get("RANK", "0")) > 0:  # another machine's rank 0 writes it
            return f"rank 0 writes {run.path} on its own machine; the folder there holds the run"
        return f"nothing was written: {run.path} does not exist"
    if run.has_checkpoint:
        try:
            epoch = run.load_checkpoint()["epoch"]
        except RunFolderError:
            epoch = "?"
        processes = _recorded_processes(run)
        nproc = f" --nproc {processes}" if processes > 1 else ""
        return (
            f"{run.path} holds the checkpoint of epoch {epoch}; continue with "
            f"`pyro-vae fit --resume {run.path}{nproc}`"
        )
    return (
        f"no epoch of {run.path} had finished, so there is no checkpoint; start it over with "
        f"`pyro-vae fit --restart --out {run.path} ...`"
    )


def _where_it_stopped_readable(args: argparse.Namespace) -> str:
    """:func:`_where_it_stopped`, or that the folder cannot be read either."""
    try:
        return _where_it_stopped(args)
    except OSError as err:
        return f"{args.resume or args.out} cannot be read either ({err.strerror})"


def _processes_by_epoch(metrics: dict[str, Any], world: int) -> list[dict[str, int]]:
    """metrics.json's ``processes_by_epoch``: ``{"from_epoch": e, "processes": n}`` for
    each stretch of epochs trained on n processes, this start's appended where it differs
    from the last (tester AA: ``processes`` alone said 1 for a run trained on 2 and
    resumed on 1). A run written before it was recorded starts from its ``processes``."""
    stretches = list(metrics.get("processes_by_epoch") or [])
    if not stretches and isinstance(metrics.get("processes"), int):
        stretches = [{"from_epoch": 1, "processes": metrics["processes"]}]
    return processes_by_epoch(stretches, len(metrics.get("epochs") or []) + 1, world)


def _recorded_processes(run: RunFolder) -> int:
    """The processes the run last trained on (metrics.json's ``processes``; 1 when it has
    none or cannot be read), which its resume should use to draw what an uninterrupted
    run would (tester L: the hint left out --nproc, and a 2-process run resumed on one
    drew other numbers, silently)."""
    try:
        processes = run.read_metrics().get("processes", 1)
    except RunFolderError:
        return 1
    return processes if isinstance(processes, int) and processes > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyro-vae`` command. Returns the exit status: 0 done, 1 training diverged
    or its folder could no longer be written (a full disk, permissions: the last
    checkpoint is kept), 2 refused (the message says why; nothing was overwritten), 130
    interrupted (Ctrl-C), 143 terminated (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    # Pyro's "INFO Guessed max_plate_nesting = 2" (what its ELBO guessed at its first
    # step) is a note for a Python session; in a command's output a stray line (tester H)
    logging.getLogger("pyro.infer.elbo").setLevel(logging.WARNING)
    given = _given_flags(argv)
    handler = {
        "fit": lambda a: _fit(a, given),
        "evaluate": _evaluate,
        "sample": _sample,
        "grad-variance": _grad_variance,
        "amortization-gap": _amortization_gap,
        "diagnose": _diagnose,
        "compare": _compare,
    }[args.command]
    _TRAINING_BEGUN["begun"] = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    interrupts = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        return _run_command(handler, args, argv)
    except _Terminated:  # a SIGTERM while a stop or a refusal was being reported
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # exiting now: any more are moot
        if _says_where_it_stopped():
            print(f"\nterminated (SIGTERM); {_where_it_stopped(args)}", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, interrupts)


def _error() -> str:
    """``error``, or under torchrun with several ranks ``error (rank R)``: each rank that
    refuses says so, and two ranks' identical lines read as one said twice (tester U)."""
    if started_by_torchrun():
        return f"error (rank {os.environ.get('RANK', '?')})"
    return "error"


def _says_where_it_stopped() -> bool:
    """Whether this process reports where a Ctrl-C or SIGTERM stopped the run: one process
    does. Under torchrun that is rank 0; under ``fit --nproc`` the launcher, its ranks
    quiet (a Ctrl-C there printed the launcher's line, rank 0's, and another rank's
    "terminated (SIGTERM)" from torchrun's agent, all three naming the same checkpoint:
    tester U)."""
    if not started_by_torchrun():
        return True
    return not os.environ.get(LAUNCHED_VARIABLE) and os.environ.get("RANK") == "0"


def _run_command(handler, args: argparse.Namespace, argv: list[str]) -> int:
    """:func:`main`'s command with its exit status, each stop reported in one line."""
    try:
        _check_counts(args)
        if getattr(args, "nproc", 1) > 1:
            return _launch(argv, args)
        with session():
            return handler(args)
    except (DiskFullError, FolderNotWritableError) as err:
        if args.command != "fit" or not _TRAINING_BEGUN["begun"]:  # nothing was computed
            print(f"{_error()}: {_one_line(err)}", file=sys.stderr)
            return 2
        # a fit stopped mid-run by its folder (tester U: a 40-line traceback): what the
        # folder holds, as a Ctrl-C says it
        print(f"{_error()}: {_one_line(err)}; {_where_it_stopped_readable(args)}", file=sys.stderr)
        return 1
    except (ValueError, RunFolderError, DatasetNotFoundError, IDXFormatError) as err:
        print(f"{_error()}: {_one_line(err)}", file=sys.stderr)
        return 2
    except RankLost as err:
        print(f"{_error()}: {err}; {_where_it_stopped(args)}", file=sys.stderr)
        FOLLOWED_A_LOST_RANK["followed"] = True
        return 1
    except CaptureError as err:  # --compile on for a step that cannot be recorded
        print(
            f"{_error()}: {_one_line(err)} On the command line: --compile off. "
            f"{_where_it_stopped(args)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        # a second Ctrl-C while the stop is reported (reading the checkpoint's epoch) left
        # tracebacks, "lost sys.stderr" and exit -2 (tester U): the first one is the stop
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _says_where_it_stopped():
            print(f"\ninterrupted (Ctrl-C); {_where_it_stopped(args)}", file=sys.stderr)
        return 130
    except _Terminated:
        if _says_where_it_stopped():
            print(f"terminated (SIGTERM); {_where_it_stopped(args)}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
