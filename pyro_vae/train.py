"""The SVI fit loop: any model, any guide, any ``pyro.infer.ELBO``.

:func:`fit` reads as the algorithm; each part is a named piece with its own tests:

1. set-up, before any step: the data's batches (:class:`~pyro_vae.data_source.
   TrainingBatches`), the pair (:class:`~pyro_vae.training_pair.TrainingPair`: plate,
   rows, weights, data checks, validation), the estimator's own refusals on one dry loss;
2. start: seeded, or resumed from the checkpoint (:class:`~pyro_vae.fit_checkpoint.
   FitCheckpoint`: weights, Adam state, RNG state, history and the estimator's state);
3. each epoch: one pass of steps (:class:`TrainStep`: KL warm-up's β, an Adam step on the
   minibatch estimate of the negative ELBO, the NaN guard of :mod:`pyro_vae.divergence`),
   then validation, early stopping (:class:`~pyro_vae.early_stopping.EarlyStopping`,
   which keeps the best weights) and the checkpoint; with ``TrainConfig(tensorboard=True)``
   TensorBoard's event files on the way (:class:`~pyro_vae.tensorboard_log.TensorBoardLog`).

Each step draws a minibatch B of a training set of N points; the data plate scales its
loss by N/|B|, so it is unbiased for the full-data objective (Hoffman et al. 2013). The
pair's weights are every parameter it reads from Pyro's param store
(:class:`pyro_vae.weights.PairWeights`), all of which go into checkpoints.

Every check is made before the first step: the pair's set-up, the data's rows, the
estimator's own refusals (one loss on a forked random stream, so nothing later draws
differently) and, when resuming, that the checkpoint fits. ``on_ready()`` is called once
they have all passed (the command line writes config.json there, so a refused command
writes nothing).

``data`` is a data source (:mod:`pyro_vae.data_source`): image
:class:`~pyro_vae.data.DataSplits` (the model is called on minibatches ``x``; validation
is the held-out ELBO per datapoint, or the training set's for a guide with free
per-datapoint parameters) or a :class:`~pyro_vae.tensor_data.TensorData` for models with
global latents (the model is called as ``model(*tensors)``; "validation" is the
whole-data ELBO, a total in nats, since it does not split into datapoints, estimated with
``val_samples`` draws, 100 by default, that are the same at every validation).
``num_data=N`` is passed to models that take it. A model that declares ``uses_labels``
is called on ``(x, y, observed)`` instead (:mod:`pyro_vae.labels`).

With Pyro's validation on (its default), the first step of each epoch runs Pyro's
checks (distribution arguments, sample supports, model/guide match) and the other steps
run without them, as ``pyro.enable_validation(False)`` would: they cost 5-10% of a step
and see batches of the same shapes from the same data. With ``TrainConfig(compile=True)``
the checks run on the step that records each batch shape, and the replays after it skip
them.

A non-finite loss stops training at once with :class:`TrainingDiverged`, after putting
back the weights of the last completed epoch (the checkpoint on disk is never
overwritten by a diverged state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from shlex import quote
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceTMC_ELBO
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from pyro_vae import labels
from pyro_vae.annealing import KLWarmup, ScaleLatents, unwrap
from pyro_vae.checkpoint import (
    RESUMABLE_SETTINGS,
    FolderNotWritableError,
    RunFolder,
    RunFolderError,
    flat_settings,
)
from pyro_vae.data_source import (
    TRAINING_SET,
    WHOLE_DATA,
    DataSource,
    ShardedSource,
    TrainingBatches,
)
from pyro_vae.devices import forked_streams, move_modules, on_device, resolve_device
from pyro_vae.distributed import (
    SynchronizedELBO,
    current,
    refuse_batch_terms,
    refuse_torchrun_without_group,
)
from pyro_vae.divergence import DivergenceGuard, TrainingDiverged
from pyro_vae.early_stopping import EarlyStopping, last_validated
from pyro_vae.estimators import names as estimator_names
from pyro_vae.estimators.compiled import CaptureError, CompiledELBO, path_gradient_reason
from pyro_vae.estimators.trace_elbo import refuse_scored_guide_factors
from pyro_vae.evaluate import eval_mode
from pyro_vae.fit_checkpoint import FitCheckpoint, Resumed
from pyro_vae.interruptions import raise_if_stopped
from pyro_vae.model_protocol import objective_revision, training_terms, uses_labels
from pyro_vae.plates import DataPlateError, describe_plates
from pyro_vae.pointwise import outside_plate, outside_plate_message
from pyro_vae.precision import (
    Precision,
    modules_run,
    own_parameters,
    refuse_float64_networks,
    refuse_float64_parameters,
    refuse_on_device,
)
from pyro_vae.progress import bar as progress_bar
from pyro_vae.progress import interactive
from pyro_vae.pyro_compat import guess_max_plate_nesting
from pyro_vae.svi_step import GroupedAdam, SVIStep
from pyro_vae.tensorboard_log import (
    TensorBoardLog,
    TensorBoardMissing,
    TensorBoardWarning,
    require_tensorboard,
)
from pyro_vae.traces import (
    buffers_kept,
    drawn_factor,
    refuse_guide_only_latents,
    refuse_parameter_dependent_drawn_factors,
    refuse_unscorable_draws,
    run_pair,
    sample_sites,
)
from pyro_vae.training_config import TrainingConfig as TrainConfig
from pyro_vae.training_pair import TrainingPair

__all__ = ["FitResult", "TrainConfig", "TrainStep", "TrainingDiverged", "fit", "make_svi"]


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch records, the epoch whose weights were kept, and why.

    ``data_plate``, ``validation``, ``vectorized_particles`` and ``local_guide`` say how
    the pair was treated (:meth:`info`). Each record has ``epoch``, ``train_elbo`` (the
    running average of the training estimates), ``seconds`` and ``beta``, and on
    validation epochs ``val_elbo``. With ``DataSplits`` both ELBOs are nats per
    datapoint; with ``TensorData`` they are whole-data totals.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str = ""
    data_plate: str | None = None
    validation: str | None = None
    vectorized_particles: bool | None = None
    local_guide: bool = False
    objective: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """How the fit went about it, for metrics.json: the per-datapoint plate, what
        validation measured, whether validation particles were vectorized, and the
        training objective (``objective``: β, free bits, and what ``train_elbo`` and
        ``val_elbo`` measure)."""
        return {
            "data_plate": self.data_plate,
            "validation": self.validation,
            "vectorized_particles": self.vectorized_particles,
            "local_guide": self.local_guide,
            "objective": self.objective,
        }


def make_svi(
    model,
    guide,
    elbo: ELBO,
    lr: float,
    annealer: ScaleLatents | None = None,
    precision: Precision | None = None,
) -> SVIStep:
    """The SVI step :func:`fit` takes: Adam at ``lr`` on ``elbo``'s loss, with the latent
    sites scaled by ``annealer`` (the model's, and its :meth:`~pyro_vae.annealing.
    ScaleLatents.for_guide` on the guide) when β ≠ 1 or KL warm-up is on (otherwise the
    handler is left out rather than run as a no-op on every site), at ``precision``
    (:class:`pyro_vae.precision.Precision`; default float32)."""
    if annealer is not None:
        model, guide = annealer(model), annealer.for_guide()(guide)
    return SVIStep(model, guide, GroupedAdam({"lr": lr}), elbo, precision)


def fit(
    model,
    guide,
    data: DataSource,
    elbo: ELBO,
    config: TrainConfig | None = None,
    run: RunFolder | str | os.PathLike | None = None,
    resume: bool = False,
    on_ready: Callable[[], None] | None = None,
    *,
    resume_state: dict[str, Any] | None = None,
    evaluated_per_datapoint: bool = False,
) -> FitResult:
    """Train ``model`` and ``guide`` on ``data``'s training set by SVI with ``elbo``.

    ``model`` and ``guide`` are any Pyro model/guide callables, as ``pyro.infer.SVI``
    takes them, called on minibatches (plus ``num_data=N`` when they accept it); their
    per-datapoint plate gets the full size N and the batch's rows (:mod:`pyro_vae.minibatch`).
    Every check is made before the first step, then ``on_ready()`` is called (with
    ``evaluated_per_datapoint``, the caller's per-datapoint evaluation's too:
    :func:`_refuse_sites_outside_the_plate`). With a ``run`` folder (a
    :class:`~pyro_vae.checkpoint.RunFolder` or a path) a checkpoint and metrics.json are
    written after every validation (config.json only by ``pyro-vae fit``: ``compare``
    reads such a folder, ``evaluate`` cannot); ``resume=True`` continues from it (or from
    ``resume_state``, the checkpoint already read) exactly as an uninterrupted run would
    have gone on. Clears Pyro's param store first. Computes on ``config.device`` (a
    checkpoint of any device resumes on it); trains at ``config.precision``
    (:mod:`pyro_vae.precision`), validates in float32. In a
    ``torch.distributed`` group (:mod:`pyro_vae.distributed`) each rank trains on its part
    of every global batch of ``config.batch_size`` rows, takes the single-process step on
    the whole batch, and only rank 0 writes to ``run`` and shows progress; with
    ``config.tensorboard``, TensorBoard event files in ``run``'s ``tensorboard/`` too.

    Returns:
        the per-epoch history; ``model`` and ``guide`` hold the best validation weights
        (or the last, without a validation set).

    Raises:
        TypeError: ``model``/``guide`` not callable, ``data`` of another kind, or ``elbo``
            not an estimator instance (``pyro_vae.estimators.get("trace")``, ``Trace_ELBO()``).
        ValueError: bad settings or data (named), before anything is trained (16-mixed on a CPU,
            mixed precision on float64 networks, ``config.tensorboard`` without ``run``).
        pyro_vae.estimators.compiled.CaptureError: ``config.compile`` with ``stl`` or
            ``dreg`` on a flow guide (its inverse cannot be recorded), before any work.
        pyro_vae.tensorboard_log.TensorBoardMissing: ``config.tensorboard`` without the
            ``tensorboard`` package (an ``ImportError``), before anything is trained.
        pyro_vae.plates.DataPlateError: minibatches of a model without a per-datapoint plate.
        pyro_vae.checkpoint.RunFolderError: ``run`` holds a checkpoint, without ``resume``.
        pyro_vae.checkpoint.RunInUseError: another process holds ``run`` (a fit claims it
            with an ``flock`` before any work).
        ValueError: one of several processes torchrun started, outside
            :func:`pyro_vae.distributed.session` (each would train its own model).
        TrainingDiverged: the loss became NaN or infinite.
    """
    config = config or TrainConfig()
    run = RunFolder(run) if isinstance(run, (str, os.PathLike)) else run
    refuse_torchrun_without_group(run)
    with _held(run):
        return _fit(
            model, guide, data, elbo, config, run, resume, on_ready, resume_state,
            evaluated_per_datapoint,
        )  # fmt: skip


@contextlib.contextmanager
def _held(run: RunFolder | None):
    """``run`` claimed for a fit from Python (``pyro-vae fit`` claims it first), by the
    rank that writes it: a second fit into the folder, even one started at the same
    moment, is refused with :class:`~pyro_vae.checkpoint.RunInUseError` (tester DD: two
    Python fits started together both trained, and both wrote it)."""
    if run is None or run.claimed or not current().is_writer:
        yield
        return
    try:
        lock = run.claim(command=False)
    except FolderNotWritableError:
        if not run.has_checkpoint:
            raise
        # a finished run on a read-only path, loaded by resume=True (the command line's
        # advice for scoring a Python run): nothing can be written there, nor lost
        # (tester DE: refused once fit took the lock)
        yield
        return
    with lock:
        yield


def _fit(
    model, guide, data, elbo, config, run, resume, on_ready, resume_state,
    evaluated_per_datapoint,
) -> FitResult:  # fmt: skip
    """:func:`fit`, ``run`` held."""
    terms = training_terms(model)  # training-objective factors beyond the ELBO (M2's α)
    revision = objective_revision(model)
    model, guide, config = _beta_from_handlers(model, guide, config)
    config = _tensorboard_if_installed(config, resume)  # resumed without the package: off
    _refuse_bad_arguments(model, guide, elbo, run, resume, resume_state, config)
    whole = labelled_data(model, data)  # (x, y, observed) batches for a model that uses labels
    placed = _placed(whole, model, guide, config, run, resume, resume_state)
    data, group, resume_state, config = placed
    batches = TrainingBatches(data, config.batch_size, config.seed, config.drop_last)
    pyro.clear_param_store()
    first = _whole_first_batch(whole, group, config)
    pair = TrainingPair.set_up(model, guide, batches, config, first)
    _refuse_what_cannot_train(elbo, model, pair, batches, group, evaluated_per_datapoint)
    elbo = _estimator_ready_to_train(elbo, pair, batches, config, first)
    warmup = KLWarmup(config.kl_warmup_epochs, batches.steps_per_epoch, config.beta)
    modules = pair.weights.modules()
    step_elbo = SynchronizedELBO(elbo, group, modules) if group.world > 1 else elbo
    precision = Precision(config.precision, resolve_device(config.device))
    svi = make_svi(pair.model, pair.guide, step_elbo, config.lr, warmup.handler, precision)
    checkpoint = FitCheckpoint(run if group.is_writer else None, pair.weights, svi, elbo, config)
    start = _start(checkpoint, config.seed, resume, resume_state, revision)
    group.broadcast_params()
    if on_ready is not None:
        on_ready()
    board = None  # TensorBoard's event files (pyro_vae.tensorboard_log), from rank 0
    if config.tensorboard and group.is_writer:  # of the whole data, not rank 0's shard
        # (tester EA: its ELBO terms were rank 0's half of the validation rows', and did
        # not add up to the val_elbo logged beside them, the mean over the ranks)
        whole_data = on_device(whole, resolve_device(config.device))
        board = TensorBoardLog.for_fit(run, model, guide, whole_data, pair, batches, start.step)
    step = TrainStep(svi, warmup, DivergenceGuard(pair.weights, run), start.step, board)
    with board or contextlib.nullcontext():  # closed however the fit ends
        return _train_epochs(
            step, batches, pair, data, group, checkpoint, start, config, (terms, revision)
        )


def _train_epochs(
    step: TrainStep,
    batches: TrainingBatches,
    pair: TrainingPair,
    data: DataSource,
    group,
    checkpoint: FitCheckpoint,
    start: Resumed,
    config: TrainConfig,
    declared: tuple = ((), 1),
) -> FitResult:
    """Step 3 of the module docstring, from where ``start`` left off to ``config.epochs``
    or early stopping: each epoch's steps, validation (averaged over the ``group`` of
    ranks), the record of the epoch and the checkpoint; then the best weights put back.
    ``declared``: the model's ``training_terms``, factors of its training objective only,
    and its ``objective_revision``."""
    result = _new_result(pair, start.history)
    free_bits, groups = _free_bits_of(getattr(step.svi, "elbo", None))
    terms, revision = declared
    bound = _multi_sample_bound(getattr(step.svi, "elbo", None))
    result.objective = _objective(config, free_bits, pair.handler_beta, terms, groups, bound)
    if revision != 1:  # runs of models that never revised theirs record nothing new
        result.objective["model_objective_revision"] = revision
    validated = last_validated(start.history)
    guard, stopping = step.guard, EarlyStopping(config.patience, start.best, validated)
    for epoch in range(start.epoch, config.epochs):
        if stopping.out_of_patience():
            result.stop_reason = "early_stopping"
            break
        group.seed_epoch(config.seed, epoch, pair.weights.generators())
        record = _train_epoch(epoch, batches, step, pair, config)
        due = _validation_due(epoch, config)
        if due and pair.validate is not None:
            with _validation_stream(epoch, config):
                estimate = pair.validate()
            record["val_elbo"] = group.mean(estimate, getattr(data, "validation_rows", 1))
            result.vectorized_particles = pair.vectorize
            stopping.offer(epoch + 1, record["val_elbo"], pair.weights)
        result.history.append(record)
        guard.epoch_completed()
        _log_epoch(record, config, training_estimate_name(result.objective), pair.validation_kind)
        if step.board is not None:
            step.board.epoch(step.count, record, due)
        if due:
            checkpoint.save(
                epoch + 1, step.count, guard.last_good, stopping.best, result.history, result.info()
            )
    result.best_epoch = stopping.restore_best(pair.weights)
    return result


def _beta_from_handlers(model, guide, config: TrainConfig):
    """A pair wrapped in :class:`~pyro_vae.annealing.ScaleLatents` (β-VAE as plain
    ``SVI`` takes it) unwrapped, its β moved into ``config.beta``: the training objective
    is the same, and KL warm-up then rises to that β. Only the outermost wrapper is seen
    here (:func:`~pyro_vae.annealing.unwrap`); handlers deeper in the pair are found on a
    run of it (:func:`~pyro_vae.training_pair.beta_in_pair`) and kept, but refused
    alongside a β of fit's own (``config.beta`` ≠ 1, this outer β's included). Validation reports
    the ELBO either way: the evaluators run under :func:`~pyro_vae.annealing.unscaled`.

    Raises:
        ValueError: only one of the pair is wrapped, their β differ, or ``config.beta``
            gives another β as well.
    """
    inner_model, model_handler = unwrap(model)
    inner_guide, guide_handler = unwrap(guide)
    if model_handler is None and guide_handler is None:
        return model, guide, config
    betas = [h.beta if h is not None else None for h in (model_handler, guide_handler)]
    if None in betas or betas[0] != betas[1] or model_handler.guide:
        raise ValueError(
            f"model, guide: wrapped in ScaleLatents with β {betas[0]} (model) and {betas[1]} "
            "(guide); expected ScaleLatents(b)(model) with ScaleLatents(b, guide=True)(guide), "
            "or better, the pair unwrapped and TrainConfig(beta=b)"
        )
    if config.beta not in (1.0, betas[0]):
        raise ValueError(
            f"beta: {config.beta!r} in the config and {betas[0]!r} in the ScaleLatents "
            "around model and guide; give β once (TrainConfig(beta=...))"
        )
    return inner_model, inner_guide, dataclasses.replace(config, beta=betas[0])


def _refuse_what_cannot_train(elbo, model, pair, batches, group, evaluated_per_datapoint):
    """The refusals that need the pair set up, before the first step: what data-parallel
    training cannot reproduce (:meth:`~pyro_vae.distributed.Group.refuse_unsupported`, the
    short last batch only where ``drop_last`` keeps it), sites outside the per-datapoint
    plate, and batch terms that differ by rank."""
    group.refuse_unsupported(
        elbo, pair.plate, batches.batch_size, batches.num_data, batches.drop_last
    )
    _refuse_sites_outside_the_plate(pair, batches, evaluated_per_datapoint)
    _refuse_terms_that_differ_by_rank(model, pair, batches, group)


def _placed(data, model, guide, config, run, resume: bool, resume_state):
    """Where this process trains: ``data`` on ``config.device`` (the model's and guide's
    modules moved there) and, in a ``torch.distributed`` group, this rank's shard of it;
    every rank of a resumed group reads the checkpoint itself. Returns ``(data, group,
    resume_state, config)``, ``config`` without progress output on ranks but 0 (one bar
    and one line an epoch: tester CS saw each rank's, run together, from Python)."""
    device = resolve_device(config.device)
    refuse_on_device(config.precision, device)
    refuse_float64_networks(config.precision, model, guide)
    move_modules(device, model, guide)
    group = current()  # several processes under torchrun: pyro_vae.distributed
    if group.world > 1:
        data = ShardedSource(data, group.rank, group.world)
        if resume and resume_state is None:  # every rank restores the same checkpoint
            resume_state = run.load_checkpoint()
    if not group.is_writer:
        config = dataclasses.replace(config, progress=False)
    return on_device(data, device), group, resume_state, config


def _whole_first_batch(data, group, config: TrainConfig) -> tuple | None:
    """On several ranks, the first global batch of ``data`` (unsharded), ``(args, rows)``,
    that the pair is set up on, as one process sets it up; None on one process. Each
    rank holds only its part of that batch, and parameters created lazily from the batch
    a pair first sees (a Pyro autoguide's start: ``init_to_median``'s draws of that
    batch's shape, repeated over the N rows; a ``pyro.param`` made from the data) were
    made from rank 0's part and broadcast: another start than one process's, on the same
    data and seed, where the steps agree to rounding from equal starts."""
    if group.world == 1:
        return None
    device = resolve_device(config.device)
    whole = TrainingBatches(
        on_device(data, device), config.batch_size, config.seed, config.drop_last
    )
    return whole.first_batch, whole.first_rows


def _tensorboard_if_installed(config, resume: bool):
    """``config``, or for a resume that logged to TensorBoard where the package is gone,
    ``config`` without it, with a :class:`~pyro_vae.tensorboard_log.TensorBoardWarning`:
    logging never stops training (tester CM: such a run could not be resumed, and nothing
    turned its logging off). A new fit that asks for it is refused (:func:`_refuse_bad_
    arguments`), before any work."""
    if not (config.tensorboard and resume):
        return config
    try:
        require_tensorboard("tensorboard")
    except TensorBoardMissing as err:
        if current().is_writer:  # said once, by the rank that logs (tester CO: by each)
            warnings.warn(
                TensorBoardWarning(f"{err}; this resume trains on without TensorBoard logging"),
                stacklevel=3,
            )
        return dataclasses.replace(config, tensorboard=False)
    return config


def _refuse_bad_arguments(model, guide, elbo, run, resume: bool, resume_state, config) -> None:
    for arg, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise TypeError(f"{arg}: expected a Pyro model/guide callable, got {type(fn).__name__}")
    _refuse_bad_elbo(elbo)
    reason = path_gradient_reason(elbo, guide) if config.compile else None
    if reason is not None:  # as the command line says it (tester CV: a CaptureError in
        raise CaptureError(  # torch's words)
            f"could not record one step: {reason}; use compile=False"
            + (", or gradient='reparam'" if "gradient=" in reason else "")
        )
    if config.tensorboard:
        if run is None:
            raise ValueError(
                "tensorboard: True needs a run folder to write its event files into; "
                "expected run=RunFolder(...) too, or tensorboard=False"
            )
        require_tensorboard("tensorboard")
    if resume and run is None:
        raise ValueError("resume: True needs a run folder to resume from")
    if run is not None and current().is_writer:  # only rank 0 reads and writes it: the
        # others' view of it (rank 0 clearing a --restart's leftovers) could race
        _refuse_the_folder(run, resume, config)
    if resume_state is not None and not resume:
        raise ValueError(
            "resume_state: a checkpoint was given with resume=False; expected resume=True "
            "to continue from it, or no resume_state"
        )


def _refuse_the_folder(run: RunFolder, resume: bool, config) -> None:
    """Refuse a fit that would leave ``run`` describing other weights than it holds: a
    checkpoint trained over without ``resume`` (tester CM: a second ``fit(run=...)``
    replaced a finished run's), a command line's config.json left by a fit that never
    finished an epoch (tester CO: kept beside new weights, ``evaluate`` rebuilt the old
    model and scored them as it, silently), and a resume of a command-line run with
    other training settings than its config.json records but for those a resume may
    change (tester CO: an lr of 0.5 for 0.001 trained on, config.json unchanged).

    Raises:
        RunFolderError: naming the folder, the settings and the way out."""
    foreign = run.file("config.json").is_file() and not run.held_by_its_command
    if not resume and run.has_checkpoint:
        raise RunFolderError(
            f"run: {run.path} holds a checkpoint, which a fit never overwrites; expected "
            "resume=True to continue it, or another folder (delete this one to start over)"
        )
    if not resume and foreign:
        raise RunFolderError(
            f"run: {run.path} holds the config.json of a command-line fit that never finished "
            "an epoch, which would describe other weights than this fit's; expected another "
            f"folder, or `pyro-vae fit --out {quote(str(run.path))} --restart` to clear it"
        )
    if resume and foreign:
        said = _changed_settings(config, run.read_config().get("train") or {})
        if said:
            raise RunFolderError(
                f"config: {said} differ from {run.file('config.json')}, the command line's "
                f"record of how this run trains; expected its settings, {_RESUMABLE_SAID}"
            )


_RESUMABLE_SAID = "but for epochs, patience, device, progress, tensorboard and compile"


def _changed_settings(config, recorded: dict) -> str:
    """The training settings of ``config`` that differ from ``recorded`` (a run's
    ``TrainConfig`` as a dict) and that a resume may not change, said as
    ``"lr=0.5 (recorded 0.001), ..."``, or ``""``; of the settings it records (an older
    run's may lack some)."""
    resumable = set(RESUMABLE_SETTINGS)
    now = flat_settings({"train": dataclasses.asdict(config)})
    then = flat_settings({"train": recorded})
    differ = sorted(k for k in then if now.get(k) != then[k] and k not in resumable)
    return ", ".join(f"{k[6:]}={now.get(k)!r} (recorded {then.get(k)!r})" for k in differ)


def _refuse_bad_elbo(elbo) -> None:
    """Refuse an ``elbo`` that is not an estimator instance before any work: a name, a class,
    or an object without ``loss`` (validation) and ``loss_and_grads`` (the step) failed only
    in the first step, as an ``AttributeError`` about a ``str`` or a wrapped model."""
    if isinstance(elbo, str):
        raise TypeError(
            f"elbo: got the name {elbo!r}; expected an estimator instance: pass "
            f"pyro_vae.estimators.get({elbo!r}) (names: {', '.join(estimator_names())})"
        )
    if isinstance(elbo, type):
        raise TypeError(
            f"elbo: got the class {elbo.__name__}; expected an instance of it, e.g. "
            f"{elbo.__name__}()"
        )
    missing = [m for m in ("loss", "loss_and_grads") if not callable(getattr(elbo, m, None))]
    if missing:
        raise TypeError(
            f"elbo: {type(elbo).__name__} has no {' or '.join(missing)} method; expected a "
            "pyro.infer.ELBO instance, such as Trace_ELBO() or pyro_vae.estimators.get('trace')"
        )


def _new_result(pair: TrainingPair, history: list[dict[str, Any]]) -> FitResult:
    return FitResult(
        history=history,
        stop_reason="max_epochs",
        data_plate=pair.plate,
        validation=pair.validation_kind,
        vectorized_particles=pair.vectorize,
        local_guide=pair.local,
    )


def _layers(elbo):
    """The estimator a step runs and each it wraps (a recording, the distributed
    all-reduce), outermost first."""
    while elbo is not None:
        yield elbo
        elbo = getattr(elbo, "elbo", None)


def _free_bits_of(elbo) -> tuple[float | None, int | str | None]:
    """The ``free_bits`` and ``free_bits_groups`` of the estimator a step runs, under its
    wrappers (:func:`_layers`)."""
    for layer in _layers(elbo):
        free_bits = getattr(layer, "free_bits", None)
        if free_bits is not None:
            return free_bits, getattr(layer, "free_bits_groups", None)
    return None, None


def _multi_sample_bound(elbo) -> str | None:
    """What a step's estimator (under its wrappers) estimates where that is not the ELBO:
    the IWAE bound of ``iwae`` and ``vimco`` at K > 1 (tester ET: recorded and printed as
    "the ELBO", 8.8 nats above the exact ELBO at K = 16); else None."""
    for layer in _layers(elbo):
        k = getattr(layer, "num_particles", 1)
        if getattr(layer, "importance_weighted", False) and k > 1:
            return f"{_IWAE_BOUND}{k} (importance weighted: at or above the ELBO)"
    return None


def _objective(
    config: TrainConfig,
    free_bits: float | None,
    handler_beta: float = 1.0,
    terms=(),
    groups: int | str | None = None,
    bound: str | None = None,
) -> dict[str, Any]:
    """What training optimized, for metrics.json, and what the ELBOs reported measure.
    ``beta``: config.beta times ``handler_beta``, the β of handlers inside the pair;
    ``terms``: the model's factors of the training objective only (its ``training_terms``:
    tester BP, M2's "train ELBO" held its α term, −202 against a validation ELBO of −42
    at α = 10⁵, and was printed and kept as an ELBO); ``groups``: the free bits' groups,
    recorded where given (tester CN: two runs' objectives differed by them, unsaid);
    ``bound``: what the estimator estimates where it is not the ELBO
    (:func:`_multi_sample_bound`)."""
    beta = config.beta * handler_beta
    plain = beta == 1.0 and not config.kl_warmup_epochs and free_bits is None and not terms
    made = "beta, warm-up, free bits" + (
        f", and the model's training terms {list(terms)}" if terms else ""
    )
    if bound is not None:
        train = bound if plain else f"the training objective ({made}) on {bound}"
    else:
        train = _PLAIN if plain else f"the training objective ({made}), not the ELBO"
    return {
        "beta": beta,
        "kl_warmup_epochs": config.kl_warmup_epochs,
        "free_bits": free_bits,
        "training_terms": list(terms),
        "train_elbo": train,
        "val_elbo": "the ELBO (beta = 1, no free bits)",
        **({} if groups is None else {"free_bits_groups": groups}),
    }


def _start(
    checkpoint: FitCheckpoint, seed: int, resume: bool, state: dict | None, revision: int = 1
) -> Resumed:
    """Where training starts: epoch 0 with every RNG seeded by ``seed``, or, resuming, the
    checkpoint ``state`` (read from the run folder when not given) put back, refused where
    it was trained with another revision of the model's objective than ``revision``."""
    if not resume:
        pyro.set_rng_seed(seed)
        return Resumed(epoch=0, step=0, best=None, history=[])
    if state is None:
        state = checkpoint.run.load_checkpoint(map_location=checkpoint.device)
    objective = (state.get("fit_info") or {}).get("objective") or {}
    trained = objective.get("model_objective_revision", 1)
    if trained != revision:  # tester DY: an M2 run of the old α term resumed on the new one
        where = checkpoint.run.path if checkpoint.run is not None else "the checkpoint"
        raise RunFolderError(
            f"run: {where} was trained with revision {trained} of the model's training "
            f"objective, and this code's model trains revision {revision} "
            "(objective_revision; M2's classifier term was reweighted in revision 2); a "
            "resume would change the objective part way through the run, so it is "
            "refused, and nothing was changed: start a new run"
        )
    _refuse_changed_python_settings(checkpoint, state)
    return checkpoint.restore(state)


def _refuse_changed_python_settings(checkpoint: FitCheckpoint, state: dict) -> None:
    """Refuse a resume of a fit from Python (its checkpoint's ``config`` a ``TrainConfig``;
    a command line's is checked against its config.json) with other training settings
    than it was trained with, but for those a resume may change, or fewer ``epochs`` than
    it has done (tester EB: a β of 3 trained on from epoch 3, and metrics.json then said
    the whole run had β = 3; an lr of 0.5 trained on and diverged).

    Raises:
        RunFolderError: naming the settings, both values and the way out."""
    recorded = state.get("config")
    if not isinstance(recorded, dict) or "schema_version" in recorded:
        return
    config, where = checkpoint.settings, checkpoint.run.path if checkpoint.run else "its run"
    said = _changed_settings(config, recorded)
    if said:
        raise RunFolderError(
            f"config: {said} differ from the settings the checkpoint in {where} was trained "
            f"with; a resume trains on as the run did, so expected its settings, "
            f"{_RESUMABLE_SAID} (nothing was changed: start a new run for other settings)"
        )
    if config.epochs < int(state["epoch"]):
        raise RunFolderError(
            f"config: epochs={config.epochs}, but the run in {where} has done "
            f"{state['epoch']}; expected epochs={state['epoch']} to load it as it is, or "
            "more to train on (nothing was changed)"
        )


class TrainStep:
    """One optimizer step on a minibatch: β for this step (:class:`~pyro_vae.annealing.
    KLWarmup`), an SVI step with Pyro's checks on an epoch's first step only, and the NaN
    guard (:class:`~pyro_vae.divergence.DivergenceGuard`); with a ``board``
    (:class:`~pyro_vae.tensorboard_log.TensorBoardLog`), the steps it wants recorded there
    with their loss, gradient norm and β.

    Attributes:
        count: optimizer steps taken over the whole fit (a resumed fit starts from the
            checkpoint's), which β follows.
    """

    def __init__(
        self,
        svi: SVIStep,
        warmup: KLWarmup,
        guard: DivergenceGuard,
        count: int = 0,
        board: TensorBoardLog | None = None,
    ):
        self.svi, self.warmup, self.guard, self.count = svi, warmup, guard, count
        self.board = board

    def __call__(self, epoch: int, batch: int, rows: torch.Tensor, args: tuple) -> float:
        """The loss of the step on batch ``batch`` (from 0) of epoch ``epoch`` (from 0):
        ``args``, the model's arguments, at training rows ``rows``."""
        raise_if_stopped()  # a SIGTERM that a handler swallowed (pyro_vae.interruptions)
        recorded = self.board is not None and self.board.wants_step(self.count + 1, batch)
        if self.board is not None:
            self.svi.measure_grad_norm = recorded  # only then: it synchronizes the device
        self.warmup.at_step(self.count)
        loss = self.guard.step(lambda: self._step(rows, args, checked=batch == 0), epoch, batch)
        self.count += 1
        if recorded:
            self.board.step(
                self.count, loss, getattr(self.svi, "grad_norm", None), self.warmup.beta
            )
        return loss

    def _step(self, rows: torch.Tensor, args: tuple, checked: bool) -> float:
        # Pyro's argument, support and model/guide-match checks run on the first step of
        # each epoch; the batches after it have the same shapes and support, and rechecking
        # each costs 5-10% of a step. (A NaN weight still stops training: it makes the loss
        # NaN.)
        with contextlib.nullcontext() if checked else pyro.validation_enabled(False):
            return self.svi.step(*args, subsample=rows)


def _train_epoch(
    epoch: int, batches: TrainingBatches, step: TrainStep, pair: TrainingPair, config
) -> dict[str, Any]:
    """One pass of ``step`` over epoch ``epoch``'s batches (from 0), with a progress bar.
    Its record: ``epoch`` (from 1), ``train_elbo`` (the mean of the minibatch estimates,
    per datapoint or a total as the data reports ELBOs), ``seconds``, and ``beta``."""
    pair.train_mode(True)
    started = time.perf_counter()
    total, done = 0.0, 0
    bar = progress_bar(
        batches.of_epoch(epoch),
        config.progress and batches.steps_per_epoch > 1,
        total=batches.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )
    for rows, args in bar:
        total += step(epoch, done, rows, args) / batches.divisor
        done += 1
        if done % 10 == 0 or done == batches.steps_per_epoch:
            bar.set_postfix(elbo=f"{-total / done:.3f}", refresh=False)
    return {
        "epoch": epoch + 1,
        "train_elbo": -total / done,
        "seconds": time.perf_counter() - started,
        "beta": step.warmup.beta * pair.handler_beta,
    }


def _validation_stream(epoch: int, config):
    """The random stream epoch ``epoch``'s validation draws from: training's own where it
    is on the schedule (every ``validate_every`` epochs, where every run with these
    settings validates, so the draws after it are alike), a forked one at a last epoch off
    the schedule, so that a run ended there and resumed trains on with the draws of one
    that never stopped there (tester EB: 5 epochs validated every 2, resumed to 8, trained
    epochs 6 to 8 on other draws than 8 straight, 0.01 nats apart)."""
    if (epoch + 1) % config.validate_every == 0:
        return contextlib.nullcontext()
    return forked_streams()


def _validation_due(epoch: int, config) -> bool:
    """Whether epoch ``epoch`` (from 0) ends with validation and a checkpoint: every
    ``validate_every`` epochs, and the last."""
    return (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs


def training_estimate_name(objective: dict[str, Any]) -> str:
    """What a fit's ``objective`` (:func:`_objective`) says its training estimate is, for
    the progress line and elbo.png: "ELBO", "IWAE bound" (``iwae`` and ``vimco`` at K > 1
    with nothing else changed; tester EW: the line said "train objective" while
    metrics.json named the bound) or "objective" (β, warm-up, free bits, a model's terms)."""
    train = objective.get("train_elbo", _PLAIN)
    if train == _PLAIN:
        return "ELBO"
    return "IWAE bound" if train.startswith(_IWAE_BOUND) else "objective"


_PLAIN = "the ELBO"  # what _objective says of a training estimate that is the ELBO
_IWAE_BOUND = "the IWAE bound at K = "  # ... of one that is an IWAE bound (then K)


def _log_epoch(record: dict[str, Any], config, estimate: str = "ELBO", kind=None) -> None:
    """With progress on, one line for about 20 epochs of a run and the last on a terminal
    (between progress bars), and for every epoch when stderr is a file (no bars there).
    ``estimate``: what the training estimate is (:func:`training_estimate_name`);
    ``kind``: the pair's ``validation_kind`` (a local guide's is the training set's, and
    its line says so: tester CV)."""
    epoch = record["epoch"]
    log_every = max(1, config.epochs // 20) if interactive() else 1
    if config.progress and (epoch % log_every == 0 or epoch == config.epochs):
        name = "val ELBO (training set)" if kind == TRAINING_SET else "val ELBO"
        val = f"  {name} {record['val_elbo']:.3f}" if "val_elbo" in record else ""
        tqdm.write(
            f"epoch {epoch:>3}/{config.epochs}  train {estimate} "
            f"{record['train_elbo']:.3f}{val}  ({record['seconds']:.1f} s)"
        )


def _estimator_ready_to_train(
    elbo: ELBO, pair: TrainingPair, batches: TrainingBatches, config, first=None
) -> ELBO:
    """``elbo`` as training runs it, once its refusals have passed: recorded
    (:class:`~pyro_vae.estimators.compiled.CompiledELBO`) with ``config.compile``, and with
    its plate nesting found before the first step. Its runs of model and guide are not
    training steps: a BatchNorm's running statistics are put back after them. ``first``:
    on several ranks, the whole first batch (:func:`_whole_first_batch`)."""
    with buffers_kept(pair.weights.modules()):
        with modules_run() as networks:
            model_trace, guide_trace = _first_traces(pair, batches)
        # every network that ran, however the pair holds it (testers CR, CW)
        named = own_parameters(networks, _pyro_module_names())
        refuse_float64_parameters(config.precision, named)
        refuse_unscorable_draws(model_trace, guide_trace)  # whatever the ELBO, Pyro's too
        if isinstance(elbo, Trace_ELBO):  # Pyro's own too, and TraceMeanField_ELBO (tester
            # FK: fit trained Pyro's Trace_ELBO on a factor its learning signal leaves out)
            refuse_scored_guide_factors(guide_trace)
        _refuse_parameter_dependent_drawn_factors(pair, batches, guide_trace)
        if pair.validates_per_datapoint:  # its evaluators refuse a guide-only latent, so
            # refused now (tester CJ: after the first epoch, the folder left behind)
            refuse_guide_only_latents(model_trace, guide_trace)
        _refuse_per_row_baselines_with_a_partial_batch(elbo, guide_trace, batches, config)
        _refuse_unenumerated_sites(elbo, model_trace, guide_trace)
        _dry_loss(elbo, pair, batches, first)
        if config.compile:
            elbo = CompiledELBO(elbo, config.compile_backend)
            # recorded now, so a step that cannot be is refused before anything is written
            rows = {"subsample": batches.first_rows}
            elbo.record(pair.model, pair.guide, *batches.first_batch, **rows)
        if getattr(elbo, "vectorize_particles", False) and elbo.max_plate_nesting == math.inf:
            # Pyro's vectorized ELBOs guess their plate nesting from one run of model and
            # guide at their first call; do it here, outside the random stream, so a resumed
            # run draws exactly what an uninterrupted one would.
            with forked_streams():
                rows = {"subsample": batches.first_rows}
                guess_max_plate_nesting(elbo, pair.model, pair.guide, batches.first_batch, rows)
        return elbo


def _refuse_sites_outside_the_plate(
    pair: TrainingPair, batches: TrainingBatches, evaluated_per_datapoint: bool
) -> None:
    """Refuse, before the first step, a model without a per-datapoint plate or a sample site
    outside it (a global latent ``W`` used as ``z @ W`` inside it) where per-datapoint
    numbers of the pair are to come: a per-datapoint validation (held out, or the training
    set's for a local guide), or ``evaluated_per_datapoint`` (the caller scores the fitted
    pair per datapoint, as ``pyro-vae fit``'s test evaluation does). Those sum each
    datapoint's log-densities (:func:`pyro_vae.pointwise.per_datapoint_log_density`), which
    such a model does not have: tester U's model with a global site trained every epoch and
    was refused only at the test evaluation, its run folder left with a checkpoint and no
    test block; a model with no plate at all, fitted in one batch, trained an epoch before
    its held-out validation refused it. The check is the evaluation's (the sites of one draw
    of the pair on the first batch, on a forked random stream, its modules in eval mode as
    evaluated: M2's training-only classifier factor outside the plate is no site of the
    evaluation), with its message. A whole-data validation (``TensorData``, the way to fit
    global latents) is left alone.

    Raises:
        pyro_vae.plates.DataPlateError: naming the site (or the plates around the
            observations), the plate and the way out.
    """
    per_datapoint = pair.validation_kind not in (None, WHOLE_DATA)
    if not (per_datapoint or evaluated_per_datapoint):
        return
    plate, args = pair.plate, batches.first_batch
    kwargs = {"subsample": batches.first_rows} if plate is not None else {}
    with forked_streams(), torch.no_grad(), eval_mode(pair.model, pair.guide):
        traces = run_pair(pair.model, pair.guide, args, kwargs)  # as evaluated: eval mode
    scored = ["its training-set validation" if pair.validation_kind == TRAINING_SET
              else "its held-out validation"] if per_datapoint else []  # fmt: skip
    scored += ["its test evaluation"] if evaluated_per_datapoint else []
    way_out = (
        "Fit such a model from Python on a pyro_vae.TensorData of its rows, which validates "
        "on the whole-data ELBO, and estimate its joint bound with pyro_vae.elbo_estimate"
    )
    if plate is None:
        raise DataPlateError(
            f"model: no per-datapoint plate (no vectorized plate of {batches.first_rows.numel()} "
            f"elements encloses an observed site; plates around its observations: "
            f"{describe_plates(traces[0])}), and this fit scores the pair per datapoint in "
            f"{' and '.join(scored)}. Put the per-datapoint sites in pyro.plate(..., len(x)); "
            f"or {way_out[0].lower()}{way_out[1:]} (nothing was trained or written)"
        )
    outside = [
        (who, name)
        for who, trace in zip(("model", "guide"), traces, strict=True)
        for name in outside_plate(trace, plate)
    ]
    if not outside:
        return
    (who, name), *_ = outside
    raise DataPlateError(
        f"{who}: {outside_plate_message(name, plate)}, and this fit "
        f"scores the pair per datapoint in {' and '.join(scored)}. {way_out}; or draw the site "
        f"inside {plate!r} (nothing was trained or written)"
    )


def _refuse_terms_that_differ_by_rank(
    model, pair: TrainingPair, batches: TrainingBatches, group
) -> None:
    """On several ranks, refuse before the first step a term outside the per-datapoint
    plate that differs between the ranks' parts of a batch at the same draws: the
    synchronized loss Σ_r (b_r/B)·L_r is the single-process loss on the whole batch only
    where each rank's terms outside the plate are the batch's (G_r = G,
    :mod:`pyro_vae.distributed`), as a global latent's prior and q are. A term made from
    the batch's rows is not: M2's classifier term, when it was α times the mean log q(y | x)
    over the batch's labelled rows, was each rank's own half-batch's mean (0 where it held
    no label), and the classifier trained at about 0.75 of its weight, silently (tester AA;
    it is a term of each row now). A model that declares such terms (its ``batch_terms``:
    :func:`pyro_vae.model_protocol.batch_terms`) is refused outright: a mean over a few
    labelled rows is often 0 on every rank's part of one batch. Otherwise each rank runs
    the pair once on its part of the first batch, on a forked random stream, each site
    outside the plate drawn alike everywhere (:class:`_SeededOutside`), and the sums of
    those terms' log-densities are compared.

    Raises:
        ValueError: naming the site, its values on two ranks and the way out.
    """
    if group.world == 1 or pair.plate is None:
        return
    refuse_batch_terms(model, group.world)
    args, kwargs = batches.first_batch, {"subsample": batches.first_rows}
    # the same draws of the sites outside the plate on every rank: each reseeded by its
    # name, whatever the local sites drawn before it took from the stream (tester AB: a
    # guide drawing its rows' z first, on parts of 5 and 4 rows, drew two different W)
    seeded = _SeededOutside(pair.plate)  # inside run_pair's block, which hides sites
    roots = pair.weights.modules()
    with forked_streams(), torch.no_grad(), buffers_kept(roots):
        traces = run_pair(seeded(pair.model), seeded(pair.guide), args, kwargs)
        terms = {}
        for who, trace in zip(("model", "guide"), traces, strict=True):
            trace.compute_log_prob()
            for name in outside_plate(trace, pair.plate):
                terms[f"{who} {name}"] = float(trace.nodes[name]["log_prob_sum"])
    ranks = group.gather_json(terms)
    for rank, theirs in enumerate(ranks[1:], start=1):
        for key, value in ranks[0].items():
            other = theirs.get(key, math.nan)
            if not abs(other - value) <= 1e-6 * (1 + abs(value)):
                who, name = key.split(" ", 1)
                raise ValueError(
                    f"{who}: site {name!r}, outside the per-datapoint plate {pair.plate!r}, "
                    f"scores {value:.6g} on rank 0's part of the first batch and {other:.6g} "
                    f"on rank {rank}'s, at the same draws: it is made from the batch's rows "
                    "(a mean over the batch, as M2's classifier term), and data-parallel "
                    "training takes the single-process step only where such terms are the "
                    "same on every rank; expected one process, or the term inside the plate "
                    "(a sum over its rows, which the plate scales)"
                )


class _SeededOutside(Messenger):
    """Reseed torch's stream before each sample site outside ``plate``, by the site's
    name (CRC-32): its draw is then the same in every process, however many draws the
    sites inside the plate, of each process's own rows, took before it."""

    def __init__(self, plate: str) -> None:
        super().__init__()
        self.plate = plate

    def _pyro_sample(self, msg) -> None:
        if not any(frame.name == self.plate for frame in msg["cond_indep_stack"]):
            torch.manual_seed(zlib.crc32(msg["name"].encode()))


def _dry_loss(elbo: ELBO, pair: TrainingPair, batches: TrainingBatches, first=None) -> None:
    """One loss of ``elbo`` on the first batch, on a forked random stream: the estimator's
    own refusals (a non-reparameterizable site for ``iwae``, ...) before the first step.

    ``first``: on several ranks, the whole first batch ``(args, rows)``. A plate refusal
    of this rank's part that the whole batch passes is the ranks' doing, and says so: a
    multi-sample bound with global latents, each step's batch the whole data, was told to
    use the whole data in each step (tester EA), as it did; each rank's part of it is a
    minibatch of the data. A refusal of the whole batch too reports the step's scale, not
    the rank's part's, and names one process besides the whole data."""
    try:
        _one_loss(elbo, pair, batches.first_batch, batches.first_rows)
    except DataPlateError as error:
        if first is None:
            raise
        try:
            _one_loss(elbo, pair, *first)
        except DataPlateError as whole:  # the step's own scale, not the rank's (tester ED)
            raise DataPlateError(
                f"{whole}. On {current().world} ranks each also scores its part of a batch of "
                "the whole data as a minibatch: for this bound, the whole data in each step "
                "in one process (no --nproc or torchrun)"
            ) from None
        reason = str(error).split(" Use the whole data in each step", 1)[0]
        raise DataPlateError(
            f"{reason} Each step's batch of {len(first[1])} rows is the whole data here, "
            f"which one process takes whole, but on {current().world} ranks each scores its "
            "part of it as a minibatch; expected one process (no --nproc or torchrun) for "
            "this bound, or a single-sample ELBO (trace, score, or enum for a discrete site)"
        ) from None


def _one_loss(elbo: ELBO, pair: TrainingPair, args: tuple, rows: torch.Tensor) -> None:
    """``elbo``'s loss of the pair on ``args`` (rows ``rows``), on a forked random stream,
    nothing recorded or stored."""
    with forked_streams(), torch.no_grad(), poutine.block():
        elbo.loss(pair.model, pair.guide, *args, subsample=rows)


def _keeps_one_baseline_per_batch_row(elbo: ELBO) -> bool:
    """Whether ``elbo`` (or the estimator a recording wraps) may keep state with one value
    per batch row: ``TraceGraph_ELBO``'s decaying-average baselines."""
    return isinstance(getattr(elbo, "elbo", elbo), TraceGraph_ELBO)


def _pyro_module_names() -> dict[int, str]:
    """{id(parameter): "parameter 'weight' of pyro.module 'decoder'"} for the networks
    registered with ``pyro.module`` in Pyro's param store (named ``network$$$parameter``;
    the store holds the module's own parameter tensors)."""
    from pyro.params import module_from_param_with_module_name, user_param_name

    return {
        id(p): f"parameter {user_param_name(n)!r} of pyro.module "
        f"{module_from_param_with_module_name(n)!r}"
        for n, p in pyro.get_param_store().named_parameters()
        if user_param_name(n) != n
    }


def _refuse_parameter_dependent_drawn_factors(pair, batches, guide_trace) -> None:
    """:func:`~pyro_vae.traces.refuse_parameter_dependent_drawn_factors` for any ELBO,
    Pyro's own included, on a run of the guide with gradients (the first traces have none,
    so what a factor reads cannot be seen there: tester FL, Pyro's TraceGraph_ELBO,
    TraceEnum_ELBO and RenyiELBO trained on such a factor). Only a guide with a
    ``has_rsample=False`` factor is run again."""
    if not any(drawn_factor(site) for site in sample_sites(guide_trace).values()):
        return
    with forked_streams(), torch.enable_grad(), poutine.block():
        kwargs = {"subsample": batches.first_rows}
        traced = poutine.trace(pair.guide).get_trace(*batches.first_batch, **kwargs)
    refuse_parameter_dependent_drawn_factors(traced)


def _first_traces(pair: TrainingPair, batches: TrainingBatches):
    """Traces of the guide on the first batch and of the model replayed on it, on a forked
    random stream, for the refusals that read their sites before training."""
    with forked_streams(), torch.no_grad():
        return run_pair(
            pair.model, pair.guide, batches.first_batch, {"subsample": batches.first_rows}
        )


def _refuse_unenumerated_sites(elbo: ELBO, model_trace, guide_trace) -> None:
    """A site marked ``infer={"enumerate": ...}`` (in the guide, or in the model and not
    drawn by the guide) is summed out only by the ``enum`` estimator (``TraceEnum_ELBO``);
    any other samples it (a model's from its prior, scored as if drawn by q) and Pyro only
    warns. M2 so trained by ``trace`` ended at chance accuracy on digits (0.09, against
    enum's 0.80: tester B's F2); a mixture VAE's ELBO under ``trace`` was −59.9 where the
    enumerated one is −13.3, and ``analytic-kl`` failed with a KeyError (tester E's F2).
    Refused before training.

    Raises:
        ValueError: naming the sites, the estimator and the way out."""
    if isinstance(getattr(elbo, "elbo", elbo), (TraceEnum_ELBO, TraceTMC_ELBO)):
        return  # they enumerate (TraceTMC_ELBO: tensor Monte Carlo over the marked sites)
    drawn = {n for n, site in guide_trace.nodes.items() if site["type"] == "sample"}
    marked = [
        name
        for trace, from_guide in ((guide_trace, True), (model_trace, False))
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and site["infer"].get("enumerate")
        and (from_guide or (name not in drawn and not site["is_observed"]))
    ]
    if marked:
        name = type(getattr(elbo, "elbo", elbo)).__name__
        raise ValueError(
            f"estimator: {name} samples the sites {marked}, which the model or guide marks "
            "for enumeration (infer={'enumerate': ...}); only the enum estimator sums them "
            "out. Use estimator 'enum' (--estimator enum); to compare a sampling estimator "
            "on this model, draw those sites in the guide, without the mark"
        )


def _refuse_per_row_baselines_with_a_partial_batch(
    elbo: ELBO, trace, batches: TrainingBatches, config
) -> None:
    """``TraceGraph_ELBO``'s decaying-average baseline keeps one value per row of the batch
    it first saw, in Pyro's param store; a last partial batch of another size then fails
    inside Pyro ("47 vs 128"). Refuse that combination before training, naming the way out.
    ``trace``: the guide's on the first batch (:func:`_first_traces`).
    """
    remainder = batches.num_data % batches.batch_size
    if not _keeps_one_baseline_per_batch_row(elbo) or config.drop_last or remainder == 0:
        return
    sites = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and (site["infer"].get("baseline") or {}).get("use_decaying_avg_baseline")
    ]
    if sites:
        raise ValueError(
            f"drop_last: the decaying-average baseline of guide sites {sites} "
            f"(TraceGraph_ELBO) keeps one value per batch row and cannot follow the last batch "
            f"of {remainder} rows ({batches.num_data} rows in batches of {batches.batch_size}); "
            "set drop_last=True or a batch size that divides the data"
        )


def labelled_data(model, data):
    """``data`` as ``model`` sees it (:func:`pyro_vae.labels.for_model`), and its refusals of
    labels the model cannot train on; ``fit --nproc`` runs them before the processes start.

    Raises:
        ValueError: naming what the model declares and what the labels are
            (:func:`pyro_vae.labels.for_model`).
        TypeError: the model uses labels and ``data`` carries none.
    """
    owner = getattr(model, "__self__", model)
    classes = getattr(owner, "num_classes", None)  # class labels (not a vector condition)
    return labels.for_model(uses_labels(model), type(owner).__name__, data, classes)


def prepare_pair(model, guide, data: DataSource, config: TrainConfig) -> TrainingPair:
    """The pair as :func:`fit` sets it up (:meth:`TrainingPair.set_up`): wrapped for the
    per-datapoint plate, every parameter created at its trained shape. What loading saved
    weights into a rebuilt model and guide needs first."""
    device = resolve_device(config.device)
    move_modules(device, model, guide)
    data = labelled_data(model, data)
    batches = TrainingBatches(
        on_device(data, device), config.batch_size, config.seed, config.drop_last
    )
    return TrainingPair.set_up(model, guide, batches, config)
