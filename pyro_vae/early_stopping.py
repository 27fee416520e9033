"""Early stopping: keep the weights of the best validation epoch, stop when it is old.

After each validation the fit offers the epoch's validation ELBO; the best one so far is
kept with a copy of its weights. Training stops once a validation comes ``patience`` or
more epochs after it without a better one in between (Prechelt 1998, "Early stopping —
but when?"), and the kept weights are put back at the end.
"""

from __future__ import annotations

from typing import Any

from pyro_vae.weights import PairWeights


class EarlyStopping:
    """The best validation epoch so far and the patience left after it.

    Args:
        patience: epochs without a better validation ELBO before stopping (``None`` or 0:
            never stop early), counted to the last validation: epochs trained since it
            are no evidence either way.
        best: the kept record, ``{"epoch", "val_elbo", "model", "guide", "params"}``
            (epochs counted from 1), as a checkpoint holds it; ``None`` before any
            validation.
        validated: the last validated epoch (from 1), a resumed run's (:func:`last_validated`
            of its history); ``None``: the best one's.
    """

    def __init__(
        self,
        patience: int | None,
        best: dict[str, Any] | None = None,
        validated: int | None = None,
    ) -> None:
        self.patience, self.best = patience, best
        self.validated = validated if validated is not None or best is None else best["epoch"]

    def out_of_patience(self) -> bool:
        """Whether training should stop: the last validation came ``patience`` or more
        epochs after the best one, and none between them was better. Counted to the last
        validation, not to the epochs trained since (tester EB: validated every 25 epochs
        with a patience of 20, a run stopped at epoch 45 on no validation after epoch 25,
        its train ELBO still rising, and the 20 epochs since its last checkpoint were
        lost)."""
        return (
            self.best is not None
            and bool(self.patience)
            and self.validated - self.best["epoch"] >= self.patience
        )

    def offer(self, epoch: int, val_elbo: float, weights: PairWeights) -> bool:
        """Keep a snapshot of ``weights`` if ``val_elbo`` (epoch ``epoch``, counted from 1)
        beats the best so far (ties keep the earlier epoch). Returns whether it did."""
        self.validated = epoch
        if self.best is not None and not val_elbo > self.best["val_elbo"]:
            return False
        self.best = {"epoch": epoch, "val_elbo": val_elbo, **weights.snapshot()}
        return True

    def restore_best(self, weights: PairWeights) -> int | None:
        """Put the best epoch's weights back into ``weights``; return that epoch (``None``
        if nothing was validated, leaving the weights as they are)."""
        if self.best is None:
            return None
        weights.restore(self.best)
        return self.best["epoch"]


def last_validated(history: list[dict[str, Any]]) -> int | None:
    """The last epoch (from 1) of a fit's ``history`` whose record holds a validation ELBO,
    or ``None``."""
    return max((int(r["epoch"]) for r in history if "val_elbo" in r), default=None)
