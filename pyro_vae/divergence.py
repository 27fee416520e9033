"""The NaN guard: a non-finite training loss stops the fit with the last good weights.

A step whose loss is NaN or infinite has already been taken: Adam has moved the weights
by a non-finite gradient. :class:`DivergenceGuard` keeps a copy of the weights at the end
of each completed epoch, and on a non-finite loss puts them back and raises
:class:`TrainingDiverged` naming the epoch and step, so the model in memory (and the
checkpoint on disk, which is never written from a diverged state) holds usable weights.

Under ``precision="16-mixed"`` (:mod:`pyro_vae.precision`) the loss the guard sees is the
unscaled one: the scale enters only the backward pass. A step whose *scaled* gradients
overflowed has been skipped by the gradient scaler (the weights are unchanged, the scale is
halved) and its loss is finite, so it is not divergence; a non-finite *loss*, a float16
overflow in the forward pass included, is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pyro_vae.checkpoint import RunFolder
from pyro_vae.weights import PairWeights


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class DivergenceGuard:
    """Takes steps, and stops training at the first non-finite loss.

    Args:
        weights: the pair's weights; their current values are the last good ones until
            :meth:`epoch_completed` says otherwise.
        run: the run folder checkpoints go to, named in the error (or ``None``).
    """

    def __init__(self, weights: PairWeights, run: RunFolder | None = None) -> None:
        self.weights, self.run = weights, run
        self.last_good = weights.snapshot()

    def epoch_completed(self) -> None:
        """The weights now are the end of a completed epoch: keep them as the last good."""
        self.last_good = self.weights.snapshot()

    def step(self, take_step: Callable[[], float], epoch: int, batch: int) -> float:
        """``take_step()``'s loss, when finite.

        Args:
            take_step: one optimizer step, returning its loss.
            epoch, batch: where the step is (counted from 0), for the message.

        Raises:
            TrainingDiverged: the loss is NaN or infinite, or Pyro's validation refused
                a distribution's *parameters* (how NaN weights surface with validation
                on); the weights are back to :attr:`last_good` first.
            ValueError: any other refusal, e.g. a value outside its support
                ("Expected value argument"), which is bad data rather than divergence,
                unless the weights are no longer finite.
        """
        cause = None
        try:
            loss = take_step()
        except ValueError as err:
            if "Expected parameter" not in str(err) and self.weights.finite():
                raise
            loss, cause = math.nan, err
        if not math.isfinite(loss):
            self.weights.restore(self.last_good)
            kept = f"the end of epoch {epoch}" if epoch else "their initial values"
            saved = f" (saved in {self.run.path})" if self.run is not None and epoch else ""
            raise TrainingDiverged(
                f"the training loss became {loss} at epoch {epoch + 1}, step {batch + 1}; "
                f"the weights are back to {kept}{saved}. Try a smaller learning rate or KL "
                "warm-up."
            ) from cause
        return loss
