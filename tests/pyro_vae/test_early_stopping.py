import pytest
import torch

from pyro_vae.early_stopping import EarlyStopping, last_validated


class Weights:
    """A stand-in for PairWeights: one tensor, snapshot and restore."""

    def __init__(self):
        self.w = torch.zeros(2)

    def snapshot(self):
        return {"model": {"w": self.w.clone()}, "guide": {}, "params": {}}

    def restore(self, state):
        self.w = state["model"]["w"].clone()


def test_the_best_epoch_is_kept_with_its_weights_and_ties_keep_the_earlier():
    weights, stopping = Weights(), EarlyStopping(patience=2)
    for epoch, (w, val) in enumerate([(1.0, -5.0), (2.0, -3.0), (3.0, -3.0), (4.0, -4.0)], 1):
        weights.w = torch.full((2,), w)
        stopping.offer(epoch, val, weights)
    assert stopping.best["epoch"] == 2 and stopping.best["val_elbo"] == -3.0
    assert stopping.restore_best(weights) == 2
    assert torch.equal(weights.w, torch.full((2,), 2.0))


def test_a_nan_validation_never_replaces_a_best_epoch():
    weights, stopping = Weights(), EarlyStopping(patience=None)
    assert stopping.offer(1, -3.0, weights)
    assert not stopping.offer(2, float("nan"), weights)
    assert stopping.best["epoch"] == 1


@pytest.mark.parametrize(
    "patience, validated, expected",
    [(2, 3, False), (2, 4, True), (2, 9, True), (None, 100, False), (0, 9, False), (1, 2, False),
     (1, 3, True)],
)  # fmt: skip
def test_patience_counts_epochs_from_the_best_to_the_last_validation(patience, validated, expected):
    # best at epoch 2, the last validation at epoch `validated` (both counted from 1)
    stopping = EarlyStopping(patience, best={"epoch": 2, "val_elbo": 0.0}, validated=validated)
    assert stopping.out_of_patience() is expected


def test_epochs_trained_since_the_last_validation_are_no_evidence():
    """Tester EB: validated every 25 epochs with a patience of 20, a fit stopped at epoch
    45 on its one validation, at epoch 25. It stops at the first validation 20 or more
    epochs after the best that is no better."""
    weights, stopping = Weights(), EarlyStopping(patience=20)
    stopping.offer(25, -24.56, weights)
    assert not stopping.out_of_patience()  # before epochs 26 to 50, whatever their count
    stopping.offer(50, -24.0, weights)  # better: kept
    assert not stopping.out_of_patience()
    stopping.offer(75, -24.5, weights)  # worse, 25 epochs after the best
    assert stopping.out_of_patience() and stopping.best["epoch"] == 50
    assert EarlyStopping(20, {"epoch": 25, "val_elbo": 0.0}).validated == 25  # no history


def test_the_last_validated_epoch_is_read_from_a_history():
    history = [{"epoch": 1, "val_elbo": -3.0}, {"epoch": 2}, {"epoch": 3, "val_elbo": -2.0}]
    assert last_validated(history + [{"epoch": 4}]) == 3
    assert last_validated([{"epoch": 1}]) is None and last_validated([]) is None


def test_without_validation_nothing_stops_and_the_weights_stay():
    weights, stopping = Weights(), EarlyStopping(patience=1)
    weights.w = torch.ones(2)
    assert not stopping.out_of_patience()
    assert stopping.restore_best(weights) is None
    assert torch.equal(weights.w, torch.ones(2))


def test_a_resumed_best_record_is_taken_as_it_was_saved():
    saved = {"epoch": 3, "val_elbo": -2.0, "model": {"w": torch.ones(2)}, "guide": {}}
    weights, stopping = Weights(), EarlyStopping(patience=5, best=saved)
    assert not stopping.offer(4, -2.5, weights)
    assert stopping.restore_best(weights) == 3 and torch.equal(weights.w, torch.ones(2))
