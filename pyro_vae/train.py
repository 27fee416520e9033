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
minibatches ``x``; validation is the held-out ELBO per datapoint) or a
:class:`~pyro_vae.tensor_data.TensorData` for models with global latents (the model is
called as ``model(*tensors, num_data=N)``; "validation" is the whole-data ELBO estimated
with ``val_samples`` draws, a total in nats, since it does not split into datapoints).

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
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from tqdm.auto import tqdm

from pyro_vae.annealing import ScaleLatents, linear_warmup
from pyro_vae.checkpoint import RunFolder, capture_rng_state, restore_rng_state
from pyro_vae.compiled import CompiledELBO
from pyro_vae.data import DataSplits
from pyro_vae.evaluate import elbo_estimate, elbo_per_datapoint
from pyro_vae.likelihoods import check_observations
from pyro_vae.svi_step import GroupedAdam, SVIStep
from pyro_vae.tensor_data import TensorData


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Settings of the fit loop.

    Attributes:
        epochs: passes over the training set (an upper bound under early stopping).
        batch_size: minibatch size.
        lr: Adam learning rate.
        seed: seeds Pyro/torch/numpy/random at the start, and the per-epoch shuffling.
        patience: stop after this many epochs without a better validation ELBO
            (``None``: never stop early).
        kl_warmup_epochs: epochs over which β rises linearly to 1 (0: no warm-up).
        val_samples: particles per validation datapoint for the validation ELBO (for
            ``TensorData``: draws for the whole-data ELBO).
        validate_every: validate (and checkpoint) every this many epochs, and after the last.
        progress: show a progress bar per epoch.
        compile: record the step once per batch shape and replay it
            (:class:`pyro_vae.compiled.CompiledELBO`): the same losses and weights, less
            Python per step; needs an estimator without state between steps and no KL
            warm-up.
        compile_backend: with ``compile``, also ``torch.compile`` the recording with this
            backend (``"inductor"``: fused kernels after a compile of tens of seconds per
            batch shape; results close to, not bit for bit, the uncompiled ones).
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    patience: int | None = 10
    kl_warmup_epochs: float = 0.0
    val_samples: int = 1
    validate_every: int = 1
    progress: bool = True
    compile: bool = False
    compile_backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_samples", "validate_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a positive integer")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: {self.lr!r} is not a positive learning rate")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience: {self.patience!r} is not a positive integer or None")
        if not self.kl_warmup_epochs >= 0:
            raise ValueError(f"kl_warmup_epochs: {self.kl_warmup_epochs!r} is negative")
        if self.compile_backend is not None and not self.compile:
            raise ValueError(
                f"compile_backend: {self.compile_backend!r} needs compile=True (the backend "
                "compiles the recorded step)"
            )
        if self.compile and self.kl_warmup_epochs > 0:
            raise ValueError(
                f"compile: True with kl_warmup_epochs={self.kl_warmup_epochs!r}; warm-up "
                "changes β on every step and a recorded step would keep its first β. Turn "
                "one of them off."
            )


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch records, the epoch whose weights were kept, and why.

    Each record has ``epoch``, ``train_elbo`` (the running average of the training
    estimates), ``seconds`` and ``beta``, and on validation epochs ``val_elbo``. With
    ``DataSplits`` both ELBOs are nats per datapoint; with ``TensorData`` they are
    whole-data totals.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str = ""


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def make_svi(model, guide, elbo: ELBO, lr: float, annealer: ScaleLatents | None = None) -> SVIStep:
    """The SVI step :func:`fit` takes: Adam at ``lr`` on ``elbo``'s loss, with the latent
    sites scaled by ``annealer`` when KL warm-up is on (without warm-up β is 1 throughout,
    so the handler is left out rather than run as a no-op on every site)."""
    if annealer is not None:
        model, guide = annealer(model), annealer(guide)
    return SVIStep(model, guide, GroupedAdam({"lr": lr}), elbo)


def _finite(*modules: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for m in modules for p in m.parameters())


def fit(
    model,
    guide,
    data: DataSplits | TensorData,
    elbo: ELBO,
    config: TrainConfig | None = None,
    run: RunFolder | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` and ``guide`` on ``data``'s training set by SVI with ``elbo``.

    ``model`` and ``guide`` are ``torch.nn.Module``s (typically ``PyroModule``s, Pyro's
    autoguides included) called as ``f(x, num_data=N)`` on minibatches ``x`` of
    ``DataSplits``, or ``f(*tensors, num_data=N)`` on batches of ``TensorData``. With a
    ``run`` folder, a checkpoint and metrics.json are written after every validation, and
    ``resume=True`` continues from that folder's checkpoint (weights, Adam moments, RNG
    state and history), reproducing the batches an uninterrupted run would have seen.
    Clears Pyro's global parameter store first.

    Returns:
        the per-epoch history; ``model`` and ``guide`` hold the best validation weights
        (or the last, without a validation set).
    """
    config = config or TrainConfig()
    for arg, module in (("model", model), ("guide", guide)):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"{arg}: fit needs a torch.nn.Module (e.g. a pyro.nn.PyroModule) so its weights "
                f"can be checkpointed; got {type(module).__name__}"
            )
    if resume and run is None:
        raise ValueError("resume: True needs a run folder to resume from")
    source = _Source(data, model, guide, config)
    if config.compile:
        elbo = CompiledELBO(elbo, config.compile_backend)

    pyro.clear_param_store()
    with torch.random.fork_rng(devices=[]):
        # Run the guide once so lazily built guides (Pyro's autoguides) own their parameters
        # before the first snapshot; seeded, and outside the stream the steps draw from.
        pyro.set_rng_seed(config.seed)
        with poutine.block():
            guide(*source.first_batch, num_data=source.num_data)
    if getattr(elbo, "vectorize_particles", False) and elbo.max_plate_nesting == math.inf:
        # Pyro's vectorized ELBOs guess their plate nesting from one run of model and guide
        # at their first call; do it here, outside the random stream, so a resumed run
        # draws exactly what an uninterrupted one would.
        with torch.random.fork_rng(devices=[]):
            elbo._guess_max_plate_nesting(
                model, guide, source.first_batch, {"num_data": source.num_data}
            )
    num_data, steps_per_epoch = source.num_data, source.steps_per_epoch
    warmup_steps = round(config.kl_warmup_epochs * steps_per_epoch)
    annealer = ScaleLatents()
    svi = make_svi(model, guide, elbo, config.lr, annealer if warmup_steps > 0 else None)
    optim = svi.optim
    result = FitResult()
    start_epoch, step, best = 0, 0, None
    if resume:
        state = run.load_checkpoint()
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        optim.set_state(state["optim"])
        if state.get("estimator") is not None and hasattr(elbo, "load_state_dict"):
            elbo.load_state_dict(state["estimator"])
        restore_rng_state(state["rng"])
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        result.history = list(state["history"])
    else:
        pyro.set_rng_seed(config.seed)

    last_good = (_snapshot(model), _snapshot(guide))
    log_every = max(1, config.epochs // 20)
    result.stop_reason = "max_epochs"
    for epoch in range(start_epoch, config.epochs):
        if best is not None and config.patience and epoch - best["epoch"] >= config.patience:
            result.stop_reason = "early_stopping"
            break
        model.train()
        guide.train()
        started = time.perf_counter()
        total, batches = 0.0, 0
        bar = tqdm(
            source.batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not config.progress or steps_per_epoch == 1,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            annealer.beta = linear_warmup(step, warmup_steps)
            cause = None
            try:
                # Pyro's argument, support and model/guide-match checks run on the first
                # step of each epoch; the batches after it have the same shapes and support,
                # and rechecking each costs 5-10% of a step. (A NaN weight still stops
                # training: it makes the loss NaN.)
                with contextlib.nullcontext() if batches == 0 else pyro.validation_enabled(False):
                    loss = svi.step(*batch, num_data=num_data)
            except ValueError as err:
                # With Pyro's validation on, NaN weights surface as a distribution whose
                # parameters "found invalid values" rather than as a NaN loss.
                if "invalid values" not in str(err) and _finite(model, guide):
                    raise
                loss, cause = math.nan, err
            if not math.isfinite(loss):
                model.load_state_dict(last_good[0])
                guide.load_state_dict(last_good[1])
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
            if batches % 10 == 0 or batches == steps_per_epoch:
                bar.set_postfix(elbo=f"{-total / batches:.3f}", refresh=False)
        record = {
            "epoch": epoch + 1,
            "train_elbo": -total / batches,
            "seconds": time.perf_counter() - started,
            "beta": annealer.beta,
        }
        due = (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
        if due and source.validate is not None:
            val_elbo = source.validate()
            record["val_elbo"] = val_elbo
            if best is None or val_elbo > best["val_elbo"]:
                best = {
                    "epoch": epoch + 1,
                    "val_elbo": val_elbo,
                    "model": _snapshot(model),
                    "guide": _snapshot(guide),
                }
        result.history.append(record)
        last_good = (_snapshot(model), _snapshot(guide))
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
                    "model": last_good[0],
                    "guide": last_good[1],
                    "best": best,
                    "optim": optim.get_state(),
                    "estimator": elbo.state_dict() if hasattr(elbo, "state_dict") else None,
                    "rng": capture_rng_state(),
                    "history": result.history,
                    "config": asdict(config),
                }
            )
            run.update_metrics(epochs=result.history, best_epoch=best["epoch"] if best else None)
    if best is not None:
        model.load_state_dict(best["model"])
        guide.load_state_dict(best["guide"])
        result.best_epoch = best["epoch"]
    return result


class _Source:
    """What :func:`fit` needs from either kind of data: batches of model arguments, their
    count, the divisor that turns a loss into the reported ELBO, and the validation."""

    def __init__(self, data, model, guide, config: TrainConfig) -> None:
        self.batch_size, self.seed = config.batch_size, config.seed
        if isinstance(data, TensorData):
            self.num_data = data.num_data
            self.steps_per_epoch = data.steps_per_epoch(config.batch_size)
            self.divisor = 1.0
            self._batches = data.batches
            self.validate = lambda: elbo_estimate(
                model, guide, *data.tensors, num_samples=config.val_samples, num_data=self.num_data
            )[0]
            self.first_batch = next(iter(self.batches(0)))
        elif isinstance(data, DataSplits):
            self.num_data = int(data.train_x.shape[0])
            self.steps_per_epoch = math.ceil(self.num_data / config.batch_size)
            self.divisor = float(self.num_data)
            self._batches = lambda *a: ((x,) for x, _ in data.train_batches(*a))
            self.first_batch = next(iter(self.batches(0)))
            check_observations(model, self.first_batch[0], "training data")
            self.validate = None
            if data.val_x.shape[0]:
                check_observations(model, data.val_x, "validation data")
                self.validate = lambda: (
                    elbo_per_datapoint(model, guide, data.val_x, config.val_samples).mean().item()
                )
        else:
            raise TypeError(
                f"data: expected pyro_vae.DataSplits or pyro_vae.TensorData, got "
                f"{type(data).__name__}"
            )

    def batches(self, epoch: int):
        return self._batches(self.batch_size, epoch, self.seed)
