"""A fit's checkpoint: everything a killed run needs to continue exactly where it stopped.

After each validation the fit writes, atomically (:meth:`pyro_vae.checkpoint.RunFolder.
save_checkpoint`), the epochs and optimizer steps done, the weights of the last completed
epoch and of the best one, Adam's moments, the estimator's own state (its ``state_dict``,
e.g. control variates, and the entries it keeps in Pyro's param store, e.g.
``TraceGraph_ELBO``'s baselines), the torch/numpy/Python RNG states, the history, how many
processes trained each stretch of epochs, what the fit records of how it trains and the
training settings; then metrics.json, which can be rebuilt from it alone. A resumed fit
puts all of it back, so it draws the batches and particles an uninterrupted run would have
drawn.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import pyro
import torch

from pyro_vae.checkpoint import (
    CHECKPOINT,
    RunFolder,
    RunFolderError,
    capture_rng_state,
    processes_by_epoch,
    restore_rng_state,
)
from pyro_vae.devices import resolve_device, to_device
from pyro_vae.distributed import current
from pyro_vae.svi_step import SVIStep
from pyro_vae.weights import PairWeights


@dataclass
class Resumed:
    """Where a checkpoint left the fit: ``epoch`` epochs and ``step`` optimizer steps done,
    the ``best`` validation record (or ``None``) and the per-epoch ``history``."""

    epoch: int
    step: int
    best: dict[str, Any] | None
    history: list[dict[str, Any]]


class ProcessCountWarning(UserWarning):
    """A run resumed on another number of processes than trained its last epochs: each
    process draws its own random numbers, so from there it draws other numbers than an
    uninterrupted run would (``pyro-vae fit --resume`` says so in a note of its own)."""


class FitCheckpoint:
    """Writes and reads back the checkpoint of one fit.

    Args:
        run: the run folder (``None``: nothing is written).
        weights: the pair's weights; ``svi``: the step whose optimizer state is kept;
        elbo: the estimator, whose state is kept when it has a ``state_dict``.
        settings: the training settings, stored as ``"config"`` (a dataclass); its
            ``device`` (CPU when it has none) is where a restored state is put.

    The number of processes training (``torchrun``'s world size) is read here, and each
    checkpoint records ``processes_by_epoch``
    (:func:`~pyro_vae.checkpoint.processes_by_epoch`): the restored record, with this fit's
    stretch from its first epoch on.
    """

    def __init__(self, run: RunFolder | None, weights: PairWeights, svi: SVIStep, elbo, settings):
        self.run, self.weights, self.svi, self.elbo = run, weights, svi, elbo
        self.settings = settings
        self.device = resolve_device(getattr(settings, "device", "cpu"))
        self.world = current().world
        self._stretches: list[dict[str, int]] = []
        self._first_epoch = 1  # the first epoch this fit trains, counted from 1

    def _note_other_process_count(self) -> None:
        """A :class:`ProcessCountWarning`, from rank 0, where the restored record's last
        stretch trained on another number of processes than this fit does."""
        if not self._stretches or not current().is_writer:
            return
        before = self._stretches[-1].get("processes")
        if isinstance(before, int) and before != self.world:
            warnings.warn(
                f"resume: the run was trained on {before} process(es) and resumes on "
                f"{self.world}: each process draws its own random numbers, so from here it "
                f"draws other numbers than an uninterrupted run would (resume on {before} "
                "processes to draw the same)",
                ProcessCountWarning,
                stacklevel=4,
            )

    @property
    def _scaler(self):
        """The step's ``torch.amp.GradScaler`` (``16-mixed``), or ``None``."""
        return getattr(getattr(self.svi, "precision", None), "scaler", None)

    def save(
        self,
        epoch: int,
        step: int,
        last: dict[str, Any],
        best: dict[str, Any] | None,
        history: list[dict[str, Any]],
        info: dict[str, Any],
    ) -> None:
        """Write the checkpoint after ``epoch`` epochs (counted from 1) and ``step`` steps,
        with weights ``last`` (a :meth:`PairWeights.snapshot`), the processes by epoch and
        ``info`` (:meth:`pyro_vae.train.FitResult.info`, plain values), then metrics.json
        (the history, the best epoch and ``info``). Nothing without a run folder."""
        if self.run is None:
            return
        stretches = processes_by_epoch(self._stretches, self._first_epoch, self.world)
        self.run.save_checkpoint(
            {
                "epoch": epoch,
                "step": step,
                **last,
                "best": best,
                "optim": self.svi.optim.get_state(),
                "estimator": self.elbo.state_dict() if hasattr(self.elbo, "state_dict") else None,
                "estimator_params": estimator_params(self.weights, self.elbo),
                "rng": capture_rng_state(),
                "generators": {n: g.get_state() for n, g in self.weights.generators().items()},
                "grad_scaler": None if self._scaler is None else self._scaler.state_dict(),
                "history": history,
                "processes_by_epoch": stretches,
                "fit_info": info,
                "config": asdict(self.settings),
            }
        )
        # the processes too, as the command line records them (tester AI: a fit from Python
        # under torchrun left them out of metrics.json, though its checkpoint held them)
        self.run.update_metrics(
            epochs=history,
            best_epoch=best["epoch"] if best else None,
            processes=self.world,
            processes_by_epoch=stretches,
            **info,
        )

    def _refuse_non_finite(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights (its last or its best: parameters, not buffers)
        or Adam's moments hold NaN or infinite values, or a negative second moment, before
        anything is put back: its file was damaged on disk, or written from a diverged
        step, and a resume from it diverged at its first step, then advised a smaller
        learning rate and kept failing (tester FF: 64 bytes flipped in a real
        checkpoint.pt; torch's reader checks no CRC). Checked on the state as read, so a
        refused resume leaves the modules as they were (tester FH: a Python resume was
        refused after the damaged weights were loaded into them).

        Raises:
            RunFolderError: naming the entries (a few), before any step."""
        keys = self.weights.parameter_keys()

        def damaged(weights: Any, prefix: str) -> list[str]:
            if not isinstance(weights, dict):
                return []
            found = non_finite_entries(weights.get("params", {}), f"{prefix}params")
            for key in ("model", "guide"):
                own = {n: t for n, t in (weights.get(key) or {}).items() if n in keys[key]}
                found += non_finite_entries(own, f"{prefix}{key}")
            return found

        last = damaged(state, "") + non_finite_entries(state.get("optim", {}), "optim")
        best = damaged(state.get("best"), "best/")
        if not last and not best:
            return
        bad = last + best
        where = self.run.file(CHECKPOINT) if self.run is not None else "the checkpoint"
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        epoch = (state.get("best") or {}).get("epoch")
        kept = (
            f"its best weights (epoch {epoch}) are sound, for evaluate and sample; "
            if state.get("best") and not best
            else ""
        )
        raise RunFolderError(
            f"resume: {where} holds values no trained state has (NaN, infinite, or a "
            f"negative Adam second moment) in {shown}: the file was damaged (its bytes "
            "changed on disk) or written from a diverged step, and training on from it "
            f"goes wrong at once. Nothing was changed; {kept}to train again from the start, "
            "use fit --restart (Python: resume=False)"
        )

    def restore(self, state: dict[str, Any]) -> Resumed:
        """Put a checkpoint ``state`` (:meth:`RunFolder.load_checkpoint`) back: weights,
        Adam's moments, the estimator's state and param-store entries, the RNG states (the
        global ones and the pair's own generators: :meth:`PairWeights.generators`), the
        gradient scaler's scale and growth count (``16-mixed``; a checkpoint without one
        leaves the scaler at its initial scale);
        tensors saved on another device are put on :attr:`device` (weights and Adam's
        moments are copied into tensors already there). The processes by epoch it records
        are carried on (a checkpoint written before they were recorded has none, and the
        record then starts at this fit's first epoch).

        Raises:
            pyro_vae.weights.WeightsMismatchError: the saved weights do not fit the pair.
        """
        self._refuse_non_finite(state)
        self.weights.restore(state)
        self.svi.optim.set_state(state["optim"])
        if state.get("estimator") is not None and hasattr(self.elbo, "load_state_dict"):
            self.elbo.load_state_dict(to_device(state["estimator"], self.device))
        for name, value in state.get("estimator_params", {}).items():
            pyro.get_param_store()[name] = to_device(value, self.device)
        if state.get("grad_scaler") is not None and self._scaler is not None:
            self._scaler.load_state_dict(state["grad_scaler"])
        restore_rng_state(state["rng"])
        saved = state.get("generators", {})  # none in a checkpoint written before them
        for name, generator in self.weights.generators().items():
            if name in saved:
                generator.set_state(saved[name].cpu())
        self._stretches = list(state.get("processes_by_epoch") or [])
        self._first_epoch = int(state["epoch"]) + 1
        self._note_other_process_count()
        return Resumed(state["epoch"], state["step"], state["best"], list(state["history"]))


def non_finite_entries(tree: Any, name: str) -> list[str]:
    """The names (``name``, then the keys down to it) of the floating-point tensors in a
    nested state ``tree`` (dicts, lists, tuples) with a NaN or infinite value, or with a
    negative one under a key ending in ``exp_avg_sq`` (Adam's second moments, whose square
    root each step takes)."""
    if isinstance(tree, dict):
        return [e for k, v in tree.items() for e in non_finite_entries(v, f"{name}/{k}")]
    if isinstance(tree, list | tuple):
        return [e for i, v in enumerate(tree) for e in non_finite_entries(v, f"{name}/{i}")]
    if not torch.is_tensor(tree) or not tree.is_floating_point():
        return []
    negative = name.endswith("exp_avg_sq") and bool((tree < 0).any())
    return [name] if negative or not bool(tree.isfinite().all()) else []


def estimator_params(weights: PairWeights, elbo) -> dict[str, torch.Tensor]:
    """The param store's entries an estimator keeps there and does not save itself (Pyro's
    ``TraceGraph_ELBO`` baselines), for the checkpoint: every entry that is not one of the
    pair's ``weights`` nor under the estimator's own ``param_store_prefix``."""
    own = getattr(elbo, "param_store_prefix", None)
    return {n: v for n, v in weights.others().items() if not (own and n.startswith(own))}
