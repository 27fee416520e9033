"""What ``pyro-vae fit --resume`` may change: the run's own config.json and checkpoint, read
once; the flags a resume may change (``--epochs``, ``--patience``, ``--device``, ...); the
run's own flags, which go through only with the values recorded there; and the processes
each stretch of the run's epochs trained on.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import replace
from shlex import quote
from typing import Any

from pyro_vae import estimators
from pyro_vae.checkpoint import RunFolder, RunFolderError, flat_settings, processes_by_epoch
from pyro_vae.cli_config import MODEL_DEFAULTS, MODEL_FLAGS, run_config_from_args
from pyro_vae.devices import available_devices, resolve_device
from pyro_vae.distributed import Group, run_from_rank_0
from pyro_vae.early_stopping import EarlyStopping, last_validated
from pyro_vae.run_config import RunConfig, settings_as_read
from pyro_vae.spec import load_object

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
    "--compile",
}


def changeable_on_resume(flag: str) -> bool:
    """Whether ``flag`` may go with ``fit --resume`` to change the run."""
    return flag in _RESUMABLE


_DATA_FLAGS = (
    "image_size", "crop", "columns", "label_column", "labels_fraction", "labelled", "layout",
    "likelihood", "binarize", "threshold", "levels", "val_fraction", "test_fraction",
)  # fmt: skip
_TRAINING_FLAGS = ("batch_size", "lr", "seed", "beta", "drop_last", "data_plate", "precision")
# The config.json settings (flat_settings keys) each of the run's own flags decides, to
# compare a resume's flag with the run's value; --model-opt, --guide-opt and --estimator-opt
# decide those of the keys they give. A flag not listed is refused on a resume whatever its
# value.
_FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    "--model": ("model",),
    "--guide": ("guide",),
    **{f"--{f.replace('_', '-')}": (f"model_options.{key}",) for key, f in MODEL_FLAGS.items()},
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


def resume_config(
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
    else:
        _refuse_a_recorded_device_missing_here(run, training.device)
    return replace(config, training=_recompiled(training, args, given)), state


def _refuse_a_recorded_device_missing_here(run: RunFolder, device: str) -> None:
    """A resume without ``--device`` of a run trained on a device this machine does not
    have is refused naming the run's device and the flag that resumes it here (tester
    EE: "--device: 'cuda' is not available", of a flag the user had not given)."""
    try:
        resolve_device(device)
    except ValueError:
        raise ValueError(
            f"resume: the run in {run.path} trained on --device {device} (its config.json), "
            f"which this machine does not have (it has {', '.join(available_devices())}); "
            "expected --device cpu or auto with --resume to continue it here (nothing was "
            "changed)"
        ) from None


def _recompiled(training, args: argparse.Namespace, given: set[str]) -> Any:
    """``training`` with ``--compile`` as given: how the steps run, as ``--device`` is
    where. The recorded step's weights are the uncompiled step's bit for bit, and
    inductor's within float32 rounding of them, so a resume may change it (tester BE: a
    fit whose step could not be recorded left its config.json saying ``compile: true``,
    and the ``--compile off`` a resume needed was refused; tester EE: an inductor run
    could not be resumed on a machine without a C++ compiler, the ``--compile on`` it
    needed refused as a change to the run). ``auto`` keeps the run's own."""
    if "--compile" not in given or args.compile == "auto":
        return training
    backend = "inductor" if args.compile == "inductor" else None
    return replace(training, compile=args.compile != "off", compile_backend=backend)


def _resumed_patience(config: RunConfig, args: argparse.Namespace, given: set[str]) -> int | None:
    """The patience a resume trains on with: ``--patience`` where given (0: none), which
    only decides when training stops, so the epochs trained before are those it would
    have trained; else the run's own."""
    return (args.patience or None) if "--patience" in given else config.training.patience


def _refuse_unknown_resume_flags(given: set[str]) -> None:
    """Refuse a flag a resume can neither change nor compare with the run's value."""
    options = {"--model-opt", "--guide-opt", "--estimator-opt"}
    unknown = sorted(given - _RESUMABLE - set(_FLAG_SETTINGS) - options)
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
    run_config, new_config = RunConfig.from_json(written), run_config_from_args(args)
    then, now = flat_settings(run_config.to_json()), flat_settings(new_config.to_json())
    plate = ((state or {}).get("fit_info") or {}).get("data_plate")
    changed = []
    for flag in fixed:
        for key in _settings_of(flag, args):
            if flag != "--model-opt" and not _model_takes(run_config, key):
                _note_not_taken(flag, key, run_config)
                continue
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
            f"To change them, start a new run with --out{_evaluation_hint(flags, args)} "
            "(nothing was changed)"
        )


def _evaluation_hint(flags: list[str], args) -> str:
    """Where only evaluation flags were changed, the command that scores the weights with
    them (tester BM: a fit interrupted in its final IWAE of K = 50,000 could be finished
    only by waiting it out again, or by ``evaluate``, which the refusal did not name)."""
    if not set(flags) <= _EVALUATION_FLAGS:
        return ""
    given = " ".join(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}" for flag in flags)
    run = quote(str(args.resume))
    return f", or score the run's weights with them: pyro-vae evaluate {run} {given}"


#: The flags of the final evaluation, which ``evaluate`` takes too.
_EVALUATION_FLAGS = {"--ll-samples", "--ll-points"}


def _effective(key: str, value: Any, config: RunConfig, plate: str | None) -> Any:
    """Setting ``key``'s ``value`` (a ``flat_settings`` key of ``config``'s) as the run uses
    it: left unset (``None``), a model option is its constructor's default (else the
    command's), a guide option its class's, an estimator option the estimator's default,
    the data plate the one the run
    found (``plate``); a list option's single width (``hidden_dims=16``) is ``[16]``, and a
    tuple a list."""
    section, _, name = key.partition(".")
    if value is None and section == "model_options":
        value = _parameter_default(lambda: load_object(config.model.spec, "model"), name)
        value = MODEL_DEFAULTS.get(name) if value is None else value
    elif value is None and key.startswith("estimator.options."):
        option = key.removeprefix("estimator.options.")
        value = _parameter_default(lambda: type(estimators.get(config.estimator.name)), option)
    elif value is None and section == "guide_options" and config.guide.spec:
        # the guide class's default (tester FL: num_flows=2 repeated was refused as a change)
        value = _parameter_default(lambda: load_object(config.guide.spec, "guide"), name)
        value = _derived_default(config, name) if value is None else value
    elif value is None and key == "train.data_plate":
        value = plate
    if section in ("model_options", "guide_options") and name in (
        "hidden_dims",
        "channels",
        "flow_hidden_dims",
    ):
        value = [value] if isinstance(value, int) else value
    return list(value) if isinstance(value, tuple) else value


def _derived_default(config: RunConfig, name: str) -> Any:
    """A guide option whose default is made from the latent size (a flow's
    ``flow_hidden_dims``, 10·latent_dim: ``default_<name>(latent_dim)`` on the class), for
    the run's recorded ``latent_dim``; else None (tester FL: the flows' widths given as the
    run had them were refused as a change from "None (its default, None)")."""
    derive = getattr(load_object(config.guide.spec, "guide"), f"default_{name}", None)
    latent_dim = config.model.options.get("latent_dim")
    if not callable(derive) or not isinstance(latent_dim, int) or isinstance(latent_dim, bool):
        return None
    return derive(latent_dim)


def _model_takes(config: RunConfig, key: str) -> bool:
    """Whether setting ``key`` reaches the model: not a model option, or one its
    constructor names (or takes by ``**kwargs``); one it does not take was never passed,
    as a new run notes (:func:`pyro_vae.cli_config.note_unaccepted`)."""
    section, _, name = key.partition(".")
    if section != "model_options":
        return True
    model = load_object(config.model.spec, "model")  # its own error where it is gone
    if not inspect.isclass(model):
        return False  # a function model is given no options (tester DC)
    try:
        parameters = inspect.signature(model).parameters
    except (TypeError, ValueError):
        return True
    kinds = {p.kind for p in parameters.values()}
    return name in parameters or inspect.Parameter.VAR_KEYWORD in kinds


def _note_not_taken(flag: str, key: str, config: RunConfig) -> None:
    """Say, as a new run says it, that ``flag`` does not reach the resumed run's model
    (tester CZ: ``--latent-dim`` on a resume of a model taking ``z_dim`` was refused as a
    change of "the run's None (its default, 20)", a size the run never had)."""
    name = key.partition(".")[2]
    function = not inspect.isclass(load_object(config.model.spec, "model"))
    why = (
        "a function, given no options"
        if function
        else f"whose constructor has no {name!r} argument"
    )
    print(
        f"note: {flag} was not passed to {config.model.spec}, {why}, and goes unused by "
        "the resumed run"
    )


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
    if flag in ("--model-opt", "--guide-opt", "--estimator-opt"):
        section = {
            "--model-opt": ["model_options"],
            "--guide-opt": ["guide_options"],
            "--estimator-opt": ["estimator", "options"],
        }
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
    done, validated = int(state["epoch"]), last_validated(state["history"])
    if EarlyStopping(patience, state.get("best"), validated).out_of_patience():
        wait = validated - state["best"]["epoch"]
        raise ValueError(
            f"resume: {run.path} is at epoch {done}, its last validation (epoch {validated}) "
            f"{wait} epochs after its best validation ELBO (epoch {state['best']['epoch']}), "
            f"where --patience {patience} stops it, so "
            f"--epochs {epochs} would train no epoch; give --patience above {wait} too to train "
            "on (0: no early stopping), or score it again with "
            f"`pyro-vae evaluate {quote(str(run.path))}` (nothing was changed)"
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
        run.refuse_edited_config(written, state, settings_as_read)
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


def processes_by_epoch_record(metrics: dict[str, Any], world: int) -> list[dict[str, int]]:
    """metrics.json's ``processes_by_epoch``: ``{"from_epoch": e, "processes": n}`` for
    each stretch of epochs trained on n processes, this start's appended where it differs
    from the last (tester AA: ``processes`` alone said 1 for a run trained on 2 and
    resumed on 1). A run written before it was recorded starts from its ``processes``."""
    stretches = list(metrics.get("processes_by_epoch") or [])
    if not stretches and isinstance(metrics.get("processes"), int):
        stretches = [{"from_epoch": 1, "processes": metrics["processes"]}]
    return processes_by_epoch(stretches, len(metrics.get("epochs") or []) + 1, world)


def recorded_processes(run: RunFolder) -> int:
    """The processes the run last trained on (metrics.json's ``processes``; 1 when it has
    none or cannot be read), which its resume should use to draw what an uninterrupted
    run would (tester L: the hint left out --nproc, and a 2-process run resumed on one
    drew other numbers, silently)."""
    try:
        processes = run.read_metrics().get("processes", 1)
    except RunFolderError:
        return 1
    return processes if isinstance(processes, int) and processes > 0 else 1
