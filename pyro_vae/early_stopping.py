"""Early stopping: keep the weights of the best validation epoch, stop when it is old.

After each validation the fit offers the epoch's validation ELBO; the best one so far is
kept with a copy of its weights. Training stops once ``patience`` epochs have passed
since it without a better one (Prechelt 1998, "Early stopping — but when?"), and the kept
weights are put back at the end.
"""

from __future__ import annotations

from typing import Any

from pyro_vae.weights import PairWeights


class EarlyStopping:
    """The best validation epoch so far and the patience left after it.

    Args:
        patience: epochs without a better validation ELBO before stopping (``None``:
            never stop early).
        best: the kept record, ``{"epoch", "val_elbo", "model", "guide", "params"}``
            (epochs counted from 1), as a checkpoint holds it; ``None`` before any
            validation.
    """

    def __init__(self, patience: int | None, best: dict[str, Any] | None = None) -> None:
        self.patience, self.best = patience, best

    def out_of_patience(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (counted from 0) should not run: ``patience`` epochs
        have passed since the best one."""
        return (
            self.best is not None
            and bool(self.patience)
            and epoch - self.best["epoch"] >= self.patience
        )

    def offer(self, epoch: int, val_elbo: float, weights: PairWeights) -> bool:
        """Keep a snapshot of ``weights`` if ``val_elbo`` (epoch ``epoch``, counted from 1)
        beats the best so far (ties keep the earlier epoch). Returns whether it did."""
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
