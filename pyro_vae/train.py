"""The SVI fit loop: any model, any guide, any ``pyro.infer.ELBO``.

Each step draws a minibatch B of a training set of N points and takes an Adam step on
the minibatch estimate of the negative ELBO (the data plate scales it by N/|B|, so it is
unbiased for the full-data objective; Hoffman et al. 2013). Each epoch then

- computes the validation ELBO per datapoint (nats) and keeps the best weights;
- writes the run folder's checkpoint atomically (weights, Adam state, RNG state, history,
  and the estimator's own state when it has a ``state_dict``, e.g. control variates),
  so ``fit(..., resume=True)`` continues a killed run exactly where it stopped;
- stops early after ``patience`` epochs without a better validation ELBO.

``data`` is either image :class:`~pyro_vae.data.DataSplits` (the model is called on
minibatches ``x``; validation is the held-out ELBO per datapoint, or the training set's
for a guide with free per-datapoint parameters) or a
:class:`~pyro_vae.tensor_data.TensorData` for models with global latents (the model is
called as ``model(*tensors)``; "validation" is the whole-data ELBO, a total in nats, since
it does not split into datapoints, estimated with ``val_samples`` draws, 100 by default,
that are the same at every validation). ``num_data=N`` is passed to models that take it.

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
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, TraceGraph_ELBO
from tqdm.auto import tqdm

from pyro_vae.annealing import ScaleLatents, linear_warmup
from pyro_vae.checkpoint import RunFolder, capture_rng_state, restore_rng_state
from pyro_vae.compiled import CompiledELBO
from pyro_vae.data import DataSplits
from pyro_vae.run_config import TrainingConfig as TrainConfig
from pyro_vae.svi_step import GroupedAdam, SVIStep
from pyro_vae.tensor_data import TensorData
from pyro_vae.training_pair import TrainingPair


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


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

    def info(self) -> dict[str, Any]:
        """How the fit went about it, for metrics.json: the per-datapoint plate, what
        validation measured, and whether validation particles were vectorized."""
        return {
            "data_plate": self.data_plate,
            "validation": self.validation,
            "vectorized_particles": self.vectorized_particles,
            "local_guide": self.local_guide,
        }


def make_svi(model, guide, elbo: ELBO, lr: float, annealer: ScaleLatents | None = None) -> SVIStep:
    """The SVI step :func:`fit` takes: Adam at ``lr`` on ``elbo``'s loss, with the latent
    sites scaled by ``annealer`` when KL warm-up is on (without warm-up β is 1 throughout,
    so the handler is left out rather than run as a no-op on every site)."""
    if annealer is not None:
        model, guide = annealer(model), annealer(guide)
    return SVIStep(model, guide, GroupedAdam({"lr": lr}), elbo)


def fit(
    model,
    guide,
    data: DataSplits | TensorData,
    elbo: ELBO,
    config: TrainConfig | None = None,
    run: RunFolder | None = None,
    resume: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> FitResult:
    """Train ``model`` and ``guide`` on ``data``'s training set by SVI with ``elbo``.

    ``model`` and ``guide`` are any Pyro model/guide callables, as ``pyro.infer.SVI``
    takes them: functions, bound methods (``vae.model``), ``PyroModule``s, autoguides.
    They are called on minibatches, ``f(x)`` for the images of ``DataSplits`` and
    ``f(*tensors)`` for ``TensorData``, plus ``num_data=N`` when they accept it. The model
    need not scale anything: the fit loop gives its per-datapoint plate
    (:func:`pyro_vae.plates.find_data_plate`) the full size N and the batch's row indices
    (:mod:`pyro_vae.minibatch`), so per-datapoint sites are scaled by N/|B|, global ones
    are not, and autoguides line up with their rows. Their weights are the parameters
    they read from Pyro's param store (:class:`pyro_vae.weights.PairWeights`), all of
    which go into checkpoints. With a ``run`` folder, a checkpoint and metrics.json are
    written after every validation, and ``resume=True`` continues from that folder's
    checkpoint (weights, Adam moments, RNG state and history), reproducing the batches an
    uninterrupted run would have seen. Clears Pyro's global parameter store first.

    Every check is made before the first step: the pair's set-up (plate, rows, data,
    dtypes, latent sites, guide families), the estimator's own refusals on the first batch
    (one loss on a forked random stream, so nothing later draws differently) and, when
    resuming, that the checkpoint fits. ``on_ready()`` is called once they have all passed,
    just before training starts (the command line writes config.json there, so a refused
    command writes nothing).

    Validation: the held-out ELBO per datapoint for an amortized guide; the training
    set's ELBO per datapoint for a guide with free per-datapoint parameters (it has none
    for held-out rows; ``FitResult.validation`` says which); the whole-data ELBO for
    ``TensorData``.

    Returns:
        the per-epoch history; ``model`` and ``guide`` hold the best validation weights
        (or the last, without a validation set).

    Raises:
        TypeError: ``model`` or ``guide`` is not callable, or ``data`` of another kind.
        ValueError: bad settings or data (named), before anything is trained.
        pyro_vae.plates.DataPlateError: minibatches of a model without a per-datapoint plate.
        TrainingDiverged: the loss became NaN or infinite.
    """
    config = config or TrainConfig()
    for arg, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise TypeError(f"{arg}: expected a Pyro model/guide callable, got {type(fn).__name__}")
    if resume and run is None:
        raise ValueError("resume: True needs a run folder to resume from")
    source = _Source(data, config)
    pyro.clear_param_store()
    pair = TrainingPair.set_up(model, guide, source, config)
    _refuse_per_row_baselines_with_a_partial_batch(elbo, pair, source, config)
    _dry_loss(elbo, pair, source)
    if config.compile:
        elbo = CompiledELBO(elbo, config.compile_backend)
    if getattr(elbo, "vectorize_particles", False) and elbo.max_plate_nesting == math.inf:
        # Pyro's vectorized ELBOs guess their plate nesting from one run of model and guide
        # at their first call; do it here, outside the random stream, so a resumed run
        # draws exactly what an uninterrupted one would.
        with torch.random.fork_rng(devices=[]):
            elbo._guess_max_plate_nesting(
                pair.model, pair.guide, source.first_batch, {"subsample": source.first_rows}
            )
    warmup_steps = round(config.kl_warmup_epochs * source.steps_per_epoch)
    annealer = ScaleLatents()
    svi = make_svi(pair.model, pair.guide, elbo, config.lr, annealer if warmup_steps else None)
    result = FitResult(
        data_plate=pair.plate,
        validation=pair.validation_kind,
        vectorized_particles=pair.vectorize,
        local_guide=pair.local,
    )
    start_epoch, step, best = 0, 0, None
    if resume:
        state = run.load_checkpoint()
        pair.weights.restore(state)
        svi.optim.set_state(state["optim"])
        if state.get("estimator") is not None and hasattr(elbo, "load_state_dict"):
            elbo.load_state_dict(state["estimator"])
        for name, value in state.get("estimator_params", {}).items():
            pyro.get_param_store()[name] = value
        restore_rng_state(state["rng"])
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        result.history = list(state["history"])
    else:
        pyro.set_rng_seed(config.seed)
    if on_ready is not None:
        on_ready()

    last_good = pair.weights.snapshot()
    log_every = max(1, config.epochs // 20)
    result.stop_reason = "max_epochs"
    for epoch in range(start_epoch, config.epochs):
        if best is not None and config.patience and epoch - best["epoch"] >= config.patience:
            result.stop_reason = "early_stopping"
            break
        pair.train_mode(True)
        started = time.perf_counter()
        total, batches = 0.0, 0
        bar = tqdm(
            source.batches(epoch),
            total=source.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not config.progress or source.steps_per_epoch == 1,
            leave=False,
            dynamic_ncols=True,
        )
        for rows, batch in bar:
            annealer.beta = linear_warmup(step, warmup_steps)
            cause = None
            try:
                # Pyro's argument, support and model/guide-match checks run on the first
                # step of each epoch; the batches after it have the same shapes and support,
                # and rechecking each costs 5-10% of a step. (A NaN weight still stops
                # training: it makes the loss NaN.)
                with contextlib.nullcontext() if batches == 0 else pyro.validation_enabled(False):
                    loss = svi.step(*batch, subsample=rows)
            except ValueError as err:
                # With Pyro's validation on, NaN weights surface as a distribution whose
                # *parameters* "found invalid values" rather than as a NaN loss; a value out
                # of its support ("Expected value argument") is bad data, not divergence.
                if "Expected parameter" not in str(err) and pair.weights.finite():
                    raise
                loss, cause = math.nan, err
            if not math.isfinite(loss):
                pair.weights.restore(last_good)
                kept = f"the end of epoch {epoch}" if epoch else "their initial values"
                saved = f" (saved in {run.path})" if run is not None and epoch else ""
                raise TrainingDiverged(
                    f"the training loss became {loss} at epoch {epoch + 1}, step "
                    f"{batches + 1}; the weights are back to {kept}{saved}. Try a smaller "
                    "learning rate or KL warm-up."
                ) from cause
            step += 1
            batches += 1
            total += loss / source.divisor
            if batches % 10 == 0 or batches == source.steps_per_epoch:
                bar.set_postfix(elbo=f"{-total / batches:.3f}", refresh=False)
        record = {
            "epoch": epoch + 1,
            "train_elbo": -total / batches,
            "seconds": time.perf_counter() - started,
            "beta": annealer.beta,
        }
        due = (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
        if due and pair.validate is not None:
            val_elbo = pair.validate()
            record["val_elbo"] = val_elbo
            result.vectorized_particles = pair.vectorize
            if best is None or val_elbo > best["val_elbo"]:
                best = {"epoch": epoch + 1, "val_elbo": val_elbo, **pair.weights.snapshot()}
        result.history.append(record)
        last_good = pair.weights.snapshot()
        if config.progress and ((epoch + 1) % log_every == 0 or epoch + 1 == config.epochs):
            val = f"  val ELBO {record['val_elbo']:.3f}" if "val_elbo" in record else ""
            tqdm.write(
                f"epoch {epoch + 1:>3}/{config.epochs}  train ELBO "
                f"{record['train_elbo']:.3f}{val}  ({record['seconds']:.1f} s)"
            )
        if run is not None and due:
            run.save_checkpoint(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    **last_good,
                    "best": best,
                    "optim": svi.optim.get_state(),
                    "estimator": elbo.state_dict() if hasattr(elbo, "state_dict") else None,
                    "estimator_params": _estimator_params(pair, elbo),
                    "rng": capture_rng_state(),
                    "history": result.history,
                    "config": asdict(config),
                }
            )
            run.update_metrics(
                epochs=result.history, best_epoch=best["epoch"] if best else None, **result.info()
            )
    if best is not None:
        pair.weights.restore(best)
        result.best_epoch = best["epoch"]
    return result


def _dry_loss(elbo: ELBO, pair: TrainingPair, source: _Source) -> None:
    """One loss of ``elbo`` on the first batch, on a forked random stream: the estimator's
    own refusals (a non-reparameterizable site for ``iwae``, ...) before the first step."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        elbo.loss(pair.model, pair.guide, *source.first_batch, subsample=source.first_rows)


def _estimator_params(pair: TrainingPair, elbo) -> dict[str, torch.Tensor]:
    """The param store's entries an estimator keeps there and does not save itself (Pyro's
    ``TraceGraph_ELBO`` baselines), for the checkpoint."""
    own = getattr(elbo, "param_store_prefix", None)
    return {n: v for n, v in pair.weights.others().items() if not (own and n.startswith(own))}


def _refuse_per_row_baselines_with_a_partial_batch(elbo, pair, source, config) -> None:
    """``TraceGraph_ELBO``'s decaying-average baseline keeps one value per row of the batch
    it first saw, in Pyro's param store; a last partial batch of another size then fails
    inside Pyro ("47 vs 128"). Refuse that combination before training, naming the way out.
    """
    inner = getattr(elbo, "elbo", elbo)
    remainder = source.num_data % source.batch_size
    if not isinstance(inner, TraceGraph_ELBO) or config.drop_last or remainder == 0:
        return
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        trace = poutine.trace(pair.guide).get_trace(
            *source.first_batch, subsample=source.first_rows
        )
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
            f"of {remainder} rows ({source.num_data} rows in batches of {source.batch_size}); "
            "set drop_last=True (CLI: --drop-last) or a batch size that divides the data"
        )


def prepare_pair(model, guide, data: DataSplits | TensorData, config: TrainConfig) -> TrainingPair:
    """The pair as :func:`fit` sets it up (:meth:`TrainingPair.set_up`): wrapped for the
    per-datapoint plate, every parameter created at its trained shape. What loading saved
    weights into a rebuilt model and guide needs first."""
    return TrainingPair.set_up(model, guide, _Source(data, config), config)


class _Source:
    """What :func:`fit` needs from either kind of data: batches of model arguments with
    their row indices, their count, the divisor that turns a loss into the reported ELBO,
    and the data to validate on."""

    def __init__(self, data, config: TrainConfig) -> None:
        self.data, self.batch_size, self.seed = data, config.batch_size, config.seed
        self.drop_last = config.drop_last
        if isinstance(data, TensorData):
            self.num_data = data.num_data
            self.steps_per_epoch = data.steps_per_epoch(config.batch_size, config.drop_last)
            self.divisor = 1.0
            self._batches = data.indexed_batches
        elif isinstance(data, DataSplits):
            self.num_data = int(data.train_x.shape[0])
            if self.num_data < 1:
                raise ValueError("data: the training split is empty; expected at least 1 image")
            if config.drop_last:
                if config.batch_size > self.num_data:
                    raise ValueError(
                        f"drop_last: with batch_size {config.batch_size} larger than the "
                        f"{self.num_data} training rows, every batch would be dropped"
                    )
                self.steps_per_epoch = self.num_data // config.batch_size
            else:
                self.steps_per_epoch = math.ceil(self.num_data / config.batch_size)
            self.divisor = float(self.num_data)
            self._batches = lambda *a: (
                (rows, (x,)) for rows, x, _ in data.train_batches(*a).indexed()
            )
        else:
            raise TypeError(
                f"data: expected pyro_vae.DataSplits or pyro_vae.TensorData, got "
                f"{type(data).__name__}"
            )
        self.first_rows, self.first_batch = next(iter(self.batches(0)))

    def batches(self, epoch: int):
        return self._batches(self.batch_size, epoch, self.seed, self.drop_last)
