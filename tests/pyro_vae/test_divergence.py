import math

import pytest
import torch

from pyro_vae.checkpoint import RunFolder
from pyro_vae.divergence import DivergenceGuard, TrainingDiverged


class Weights:
    """A stand-in for PairWeights: one tensor that a step may spoil."""

    def __init__(self):
        self.w = torch.zeros(2)

    def snapshot(self):
        return {"w": self.w.clone()}

    def restore(self, state):
        self.w = state["w"].clone()

    def finite(self):
        return bool(torch.isfinite(self.w).all())


def spoiling(weights, loss):
    def step():
        weights.w = torch.full((2,), math.nan)
        return loss

    return step


def test_a_finite_loss_passes_through():
    weights = Weights()
    assert DivergenceGuard(weights).step(lambda: 1.5, epoch=0, batch=0) == 1.5


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_puts_back_the_last_completed_epoch_and_names_the_step(loss):
    weights = Weights()
    guard = DivergenceGuard(weights)
    weights.w = torch.ones(2)
    guard.epoch_completed()
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 4; the weights are back to the"):
        guard.step(spoiling(weights, loss), epoch=1, batch=3)
    assert torch.equal(weights.w, torch.ones(2))


def test_in_the_first_epoch_the_initial_weights_come_back(tmp_path):
    weights = Weights()
    guard = DivergenceGuard(weights, RunFolder(tmp_path / "run"))
    with pytest.raises(TrainingDiverged, match=r"back to their initial values\. Try a smaller"):
        guard.step(spoiling(weights, math.nan), epoch=0, batch=0)
    assert torch.equal(weights.w, torch.zeros(2))
    with pytest.raises(TrainingDiverged, match=r"the end of epoch 3 \(saved in .*run\)"):
        guard.step(spoiling(weights, math.nan), epoch=3, batch=0)


def test_nan_parameters_refused_by_pyro_are_divergence_bad_data_is_not():
    weights = Weights()
    guard = DivergenceGuard(weights)

    def refused(message, spoil):
        def step():
            if spoil:
                weights.w = torch.full((2,), math.nan)
            raise ValueError(message)

        return step

    with pytest.raises(TrainingDiverged) as caught:
        guard.step(refused("Expected parameter loc ... found invalid values", False), 0, 0)
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="Expected value argument") as caught:
        guard.step(refused("Expected value argument ... to be within the support", False), 0, 0)
    assert not isinstance(caught.value, TrainingDiverged)
    # any refusal once the weights are no longer finite is divergence
    with pytest.raises(TrainingDiverged):
        guard.step(refused("Expected value argument", True), 0, 0)
    assert weights.finite()
