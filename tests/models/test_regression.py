"""The Pyro regression model is CAVI's model, and its SVI fits are valid bounds."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.nn import PyroModule

from models.regression import BayesianRegression
from pyro_vae import TensorData, TrainConfig, fit
from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.estimators import get
from pyro_vae.evaluate import elbo_estimate


def regression_data(n=200, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=dtype)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.5 * torch.randn(
        n, generator=g, dtype=dtype
    )
    return X, y


class ExactPosterior(PyroModule):
    """q = the Normal-Gamma posterior: τ ~ Gamma(a, b), w | τ ~ N(m, (τΛ)⁻¹)."""

    def __init__(self, fitted: BayesianLinearRegression) -> None:
        super().__init__()
        self.fitted = fitted

    def forward(self, X, y=None, num_data=None):
        f = self.fitted
        shape, rate = X.new_tensor(f.posterior_shape_), X.new_tensor(f.posterior_rate_)
        tau = pyro.sample("precision", dist.Gamma(shape, rate))
        precision = tau[..., None, None] * f.posterior_precision_matrix_
        pyro.sample(
            "weights", dist.MultivariateNormal(f.posterior_mean_, precision_matrix=precision)
        )


def test_exact_posterior_guide_attains_the_closed_form_evidence():
    # log p(y, w, τ) − log p(w, τ | y) = log p(y) for every draw, so with the exact posterior
    # as the guide each importance weight is the evidence: the Pyro model and CAVI's closed
    # form agree only if they are the same model, constants included.
    X, y = regression_data()
    cavi = BayesianLinearRegression(a0=2.0, b0=0.5, lambda0=3.0).fit(X, y)
    model = BayesianRegression(a0=2.0, b0=0.5, lambda0=3.0)
    elbo, stderr = elbo_estimate(model, ExactPosterior(cavi), X, y, num_samples=200)
    assert elbo == pytest.approx(cavi.log_evidence_, abs=1e-8)
    assert stderr < 1e-8


def test_mean_field_svi_is_a_lower_bound_near_cavi():
    X, y = regression_data(dtype=torch.float32)
    cavi = BayesianLinearRegression().fit(X, y)
    model = BayesianRegression()
    guide = AutoMultivariateNormal(model)
    config = TrainConfig(
        epochs=800, batch_size=1000, lr=0.03, patience=None, progress=False, validate_every=800
    )
    fit(
        model,
        guide,
        TensorData(X, y),
        get("trace", num_particles=8, vectorize_particles=True),
        config,
    )
    elbo, stderr = elbo_estimate(model, guide, X, y, num_samples=4000)
    # 4000 draws give stderr ≈ 0.01 nats; 4 standard errors make a false alarm < 1e-4.
    assert elbo <= cavi.log_evidence_ + 4 * stderr
    # The optimum of this family sits 0.07 nats below log p(y) (measured with 3000 steps);
    # 0.5 nats leaves room for the shorter run, and fails if the fit went wrong.
    assert elbo > cavi.log_evidence_ - 0.5
    posterior_sd = torch.linalg.inv(cavi.posterior_precision_matrix_).diagonal().sqrt() * math.sqrt(
        cavi.posterior_rate_ / cavi.posterior_shape_
    )
    error = (guide.median(X, y)["weights"].double() - cavi.posterior_mean_).abs()
    assert (error < posterior_sd).all(), (error, posterior_sd)


def test_bad_input_is_named():
    X, y = regression_data()
    with pytest.raises(ValueError, match="lambda0: -1.0 is not a positive number"):
        BayesianRegression(lambda0=-1.0)
    with pytest.raises(ValueError, match=r"X: shape \(200,\) is not \[N, D\]"):
        BayesianRegression()(X[:, 0], y)
    with pytest.raises(ValueError, match=r"y: shape \(5,\) does not match X's 200 rows"):
        BayesianRegression()(X, y[:5])
