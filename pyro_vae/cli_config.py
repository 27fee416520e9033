"""The run a ``pyro-vae fit`` command line describes: its :class:`RunConfig` built from the
parsed flags (each standard model option the flag's value, else the model constructor's
own default, else the command's), the notes on the defaults it chose, and the refusals,
before any work, of a run that could not train as described.
"""

from __future__ import annotations

import argparse
import inspect
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro

from pyro_vae.convnets import default_activation
from pyro_vae.datasets import resolved_name
from pyro_vae.devices import resolve_device
from pyro_vae.estimators.compiled import should_record
from pyro_vae.experiment import Experiment, build
from pyro_vae.labels import refuse_unused_subset
from pyro_vae.model_protocol import uses_labels
from pyro_vae.precision import refuse_on_device
from pyro_vae.run_config import (
    DataConfig,
    EstimatorConfig,
    EvaluationConfig,
    GuideConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)
from pyro_vae.spec import load_object
from pyro_vae.train import labelled_data

# `fit` parses its flags into one RunConfig, whose dataclasses hold the defaults, builds the
# experiment from it once and writes it to config.json.
_TRAINING = TrainingConfig()
#: The command's defaults of the standard model options, where the model's constructor
#: has none of its own.
MODEL_DEFAULTS = {"latent_dim": 20, "hidden_dims": [400]}
#: Each standard model option and the ``fit`` flag (its ``argparse`` dest) that sets it.
MODEL_FLAGS = {
    "latent_dim": "latent_dim",
    "hidden_dims": "hidden",
    "activation": "activation",
    "arch": "arch",
    "channels": "channels",
}


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run ``fit`` flags describe. With ``--compile auto`` the step is not recorded
    here; :func:`should_compile` decides once the experiment is built.

    Raises:
        ValueError: ``--compile on`` or ``inductor`` with ``--kl-warmup``, naming both
            flags as given (TrainingConfig's own refusal names its fields), and the
            refusals of the configurations built."""
    if args.compile in ("on", "inductor") and args.kl_warmup:
        raise ValueError(
            f"--compile {args.compile} with --kl-warmup {args.kl_warmup:g}: warm-up changes "
            "β on every step and a recorded step would keep its first β; turn one of them "
            "off (--compile auto records only without warm-up)"
        )
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
        layout=args.layout,
    )
    _refuse_contradicting_options(args)
    spec = _resolved(args.model)
    # the model file runs here first: what it draws at import (a module-level network)
    # follows --seed (tester CJ: two runs of seed 0 had every such weight differ)
    pyro.set_rng_seed(args.seed)
    own = _constructor_defaults(spec)
    options = {key: _default(args, key, own) for key in MODEL_FLAGS}
    options = {key: value for key, value in options.items() if value is not None}
    return RunConfig(
        model=ModelConfig(spec, {**options, **dict(args.model_opt)}),
        data=data,
        guide=GuideConfig(_resolved(args.guide), dict(args.guide_opt)),
        estimator=EstimatorConfig(args.estimator, _estimator_options(args)),
        training=training,
        evaluation=EvaluationConfig(args.ll_samples, args.ll_points or None),
    )


def _refuse_contradicting_options(args: argparse.Namespace) -> None:
    """Refuse a key given twice, with other values, in ``--model-opt`` or
    ``--estimator-opt``, and an option whose flag says otherwise: a ``--model-opt`` of a
    standard option, ``--estimator-opt vectorize_particles`` against
    ``--vectorize-particles`` (tester CJ: ``--latent-dim 4 --model-opt latent_dim=5``
    trained with 5; tester CK: the last of two ``num_particles`` won; tester CO: both
    vectorizations recorded): the run would record one value where the user wrote two.

    Raises:
        ValueError: naming the flag, the key and both values."""
    given = (
        ("--model-opt", args.model_opt),
        ("--guide-opt", args.guide_opt),
        ("--estimator-opt", args.estimator_opt),
    )
    for flag, pairs in given:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise ValueError(
                    f"{flag}: {key} is given twice, as {seen[key]!r} and {value!r}; expected "
                    "each key once"
                )
            seen[key] = value
    flag = {"on": True, "off": False}.get(getattr(args, "vectorize_particles", "auto"))
    given = dict(args.estimator_opt).get("vectorize_particles", flag)
    if flag is not None and given != flag:  # tester CO: both recorded, contradicting
        raise ValueError(
            f"--estimator-opt: vectorize_particles={given!r} disagrees with "
            f"--vectorize-particles {args.vectorize_particles}; give it once"
        )
    for key, value in args.model_opt:
        dest = MODEL_FLAGS.get(key)
        flagged = None if dest is None else getattr(args, dest, None)
        if flagged is not None and _as_json(flagged) != _as_json(value):
            raise ValueError(
                f"--model-opt: {key}={value!r} disagrees with --{dest.replace('_', '-')} "
                f"{flagged!r}; give {key} once"
            )


def _as_json(value: Any) -> Any:
    """``value`` as config.json holds it (tuples as lists), for comparing two spellings."""
    return [_as_json(v) for v in value] if isinstance(value, list | tuple) else value


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


def _rank_zero() -> bool:
    """Whether this process says the notes a fit command prints once: rank 0, or the one
    process (tester BK: each rank of ``fit --nproc 2`` said them); read from torchrun's
    ``RANK``, as the group is not yet formed when the run is configured."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def should_compile(args: argparse.Namespace, elbo, model, guide) -> bool:
    """Whether ``fit`` records its training step: the one place it is decided.

    ``--compile on``/``inductor``/``off`` decide; ``auto`` records when
    :func:`pyro_vae.estimators.compiled.should_record` finds nothing against it: the
    estimator declares it can be recorded, there is no KL warm-up, and model and guide
    declare ``recordable = True`` (no branching on tensor values; the shipped ones do, a
    user's file opts in with the declaration or with ``--compile on``). ``model`` and
    ``guide`` are the built objects; the guide a model makes itself is covered by the
    model's declaration. Where ``auto`` does not record, a note says why (rank 0).
    """
    if args.compile != "auto":
        return args.compile in ("on", "inductor")
    made = None if args.guide is None else guide
    reason = should_record(elbo, model, made, kl_warmup_epochs=args.kl_warmup)
    if reason is not None and _rank_zero():
        # tester EY: the fallback was said nowhere but config.json's train.compile
        print(f"note: --compile auto trains this run's steps unrecorded: {reason}")
    return reason is None


def _default(args: argparse.Namespace, key: str, own: dict[str, Any]) -> Any:
    """The value of standard option ``key``: its flag's; else the model constructor's own
    default (``own``, where it is not None: a user's ``latent_dim=3`` had been replaced by
    the command's 20, silently, tester P); else the command's default."""
    value = getattr(args, MODEL_FLAGS[key])
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
    return MODEL_DEFAULTS.get(key)


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


def note_unaccepted(args: argparse.Namespace, exp: Experiment, config: RunConfig) -> RunConfig:
    """``config`` without the standard options the model does not take (it records what
    the model received), saying so for those the user set."""
    for key in exp.not_accepted:
        flag = "--" + MODEL_FLAGS[key].replace("_", "-")
        if getattr(args, MODEL_FLAGS[key], None) is not None:
            why = (  # (tester DC: said of a function model too)
                f"whose constructor has no {key!r} argument; pass its own with --model-opt "
                f"NAME=VALUE (it received {sorted(exp.model_arguments)})"
                if inspect.isclass(load_object(config.model.spec, "--model"))
                else "a function, given no options"
            )
            print(f"note: {flag} was not passed to {config.model.spec}, {why}")
    options = {k: v for k, v in config.model.options.items() if k not in exp.not_accepted}
    _note_none_defaults(args, config.model.spec, options)
    return replace(config, model=replace(config.model, options=options))


def _note_none_defaults(args: argparse.Namespace, spec: str, options: dict[str, Any]) -> None:
    """Say which of a user's constructor defaults of None ("my own choice") the command's
    defaults replaced, where their flags were left out (tester Q: nothing was printed).
    The shipped models' None defaults are the command's, so they go unnoted."""
    if spec.startswith("models.") or not _rank_zero():
        return  # one rank says it (tester BK: said by each rank of fit --nproc 2)
    own = _constructor_defaults(spec)
    replaced = {
        key: options[key]
        for key in _MODEL_DEFAULTS_OF_ITS_OWN
        if key in own and own[key] is None and key in options
        and getattr(args, MODEL_FLAGS[key]) is None and key not in dict(args.model_opt)
    }  # fmt: skip
    if replaced:
        flags = ", ".join("--" + MODEL_FLAGS[key].replace("_", "-") for key in replaced)
        given = ", ".join(f"{key}={value!r}" for key, value in replaced.items())
        print(
            f"note: {spec} defaults {', '.join(replaced)} to None, and received the command's "
            f"{given}; give {flags} to choose"
        )


def _resolved_data(name: str) -> str:
    """Paths in ``--data`` made absolute (``idx:PATH``, ``PATH.npy``, ``images:DIR``,
    tables), so the run evaluates from any folder (:func:`pyro_vae.datasets.resolved_name`)."""
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


def refuse_ignored_data_flags(config: RunConfig, args: argparse.Namespace, given) -> None:
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


def refuse_unused_labels(config: RunConfig) -> None:
    """``--labelled`` or ``--labels-fraction`` for a model that uses no labels, refused by
    name before any work (they were recorded and never read)."""
    d = config.data
    given = {"--labelled": d.labelled, "--labels-fraction": d.labels_fraction}
    if all(value is None for value in given.values()):
        return
    mode = uses_labels(load_object(config.model.spec, "--model"))
    refuse_unused_subset(mode, config.model.spec, given)


def refuse_labels_before_launch(config: RunConfig) -> None:
    """For a model that uses labels, the refusals of its labels each rank's ``fit`` makes
    (:func:`pyro_vae.train.labelled_data`: a subset for a model that conditions on every
    label, data without labels, labels outside its classes), made once here before any
    process starts: made on the ranks, each printed its own copy, then the launcher its
    line. Loads the data and builds the model, as a rank does, for such a model only."""
    if uses_labels(load_object(config.model.spec, "--model")) is None:
        return
    exp = build(config)
    labelled_data(exp.model, exp.data)


def refuse_precision(config: RunConfig) -> None:
    """``--precision 16-mixed`` on a run that computes on the CPU, refused by name."""
    device = resolve_device(config.training.device, "--device")
    refuse_on_device(config.training.precision, device, "--precision")
