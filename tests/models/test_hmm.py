"""The Pyro factorial HMM: enumeration is exact, naive mean-field SVI bounds it like CAVI."""

import pytest
import torch

from models.hmm import FactorialHMMModel
from pyro_vae import TensorData, TrainConfig, fit
from pyro_vae.cavi import NaiveMeanField
from pyro_vae.estimators import get
from pyro_vae.evaluate import elbo_estimate
from pyro_vae.guides import AutoDiscreteMeanField, EmptyGuide
from tests.pyro_vae.cavi.test_hmm import random_fhmm, sample


def test_enumeration_gives_the_exact_log_likelihood():
    params = random_fhmm(m=2, k=3, d=2, seed=1)
    y = sample(params, t_len=8, seed=2)
    model = FactorialHMMModel(params, enumerate=True)
    elbo, _ = elbo_estimate(model, EmptyGuide(), y.float(), num_samples=1)
    # float32 densities summed over 8 steps: agreement to 1e-4 relative.
    assert elbo == pytest.approx(params.log_likelihood_exact(y), rel=1e-4)


def test_naive_mean_field_svi_bounds_the_likelihood_near_cavi():
    params = random_fhmm(m=2, k=2, d=2, seed=3)
    y = sample(params, t_len=6, seed=4).float()
    model = FactorialHMMModel(params)
    guide = AutoDiscreteMeanField(model)
    config = TrainConfig(epochs=600, lr=0.1, patience=None, progress=False, validate_every=600)
    estimator = get("score", control_variate="leave-one-out", num_particles=16)
    fit(model, guide, TensorData(y), estimator, config)
    elbo, stderr = elbo_estimate(model, guide, y, num_samples=4000)
    exact = params.log_likelihood_exact(y.double())
    naive = NaiveMeanField(params, random_state=0).fit(y.double())
    assert elbo <= exact + 4 * stderr
    # Same family as CAVI's naive mean field; the stochastic optimum is within a few
    # tenths of a nat of its best fixed point.
    assert elbo == pytest.approx(naive.lower_bound_, abs=0.5)


def test_bad_observations_are_named():
    model = FactorialHMMModel(random_fhmm(m=2, k=2, d=2, seed=0))
    with pytest.raises(ValueError, match=r"y: shape \(5, 3\) is not \[T, 2\]"):
        model(torch.zeros(5, 3))
