import pyro
import pyro.distributions as dist
import pytest
import torch

from models.gmm import GaussianMixtureModel
from models.regression import BayesianRegression
from pyro_vae.cavi import AutoCAVI
from tests.pyro_vae.cavi.float64 import F64, t


def hierarchical(y):
    """m ~ N(0, 9); per group τ_g ~ Gamma(2, 1), μ_g ~ N(m, 1/τ_g), y_ng ~ N(μ_g, 1/τ_g)."""
    m = pyro.sample("m", dist.Normal(t(0.0), t(3.0)))
    with pyro.plate("groups", y.shape[-1], dim=-1):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
        mu = pyro.sample("mu", dist.Normal(m, tau.rsqrt()))
        with pyro.plate("points", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def known_noise_child(y):
    """μ's prior is scaled by τ, but one child of μ has a known variance: μ and μ² appear
    without τ, outside the Normal-Gamma block's statistics."""
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
    pyro.sample("z", dist.Normal(mu, t(1.0)), obs=t(0.5))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def two_precisions(y):
    """μ's prior mentions two Gamma precisions: no single partner, so no block."""
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    rho = pyro.sample("rho", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), (tau * rho).rsqrt()))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, (tau * rho).rsqrt()), obs=y)


def test_auto_blocks_pair_each_mean_with_the_precision_that_scales_its_prior():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, generator=g, dtype=F64)
    y = X @ t([1.0, -1.0]) + 0.5 * torch.randn(30, generator=g, dtype=F64)
    fit = AutoCAVI(BayesianRegression(), blocks="auto", tol=1e-12).fit(X, y)
    assert fit.blocks_ == [("weights", "precision")]
    explicit = AutoCAVI(BayesianRegression(), blocks=[("weights", "precision")], tol=1e-12)
    assert fit.lower_bound_ == pytest.approx(explicit.fit(X, y).lower_bound_, rel=1e-12)
    y = t([[0.3, 2.0], [1.9, 2.5], [1.1, 1.7]])
    fit = AutoCAVI(hierarchical, blocks="auto", tol=1e-12).fit(y)
    assert fit.blocks_ == [("mu", "tau")] and set(fit.fitted_blocks_) == {"mu+tau"}
    # the joint factor holds every product q(μ) q(τ): its bound is at least mean field's
    assert fit.lower_bound_ > AutoCAVI(hierarchical, tol=1e-12).fit(y).lower_bound_
    mixture = GaussianMixtureModel.from_data(X, 2, precision_parameterization="wishart")
    fit = AutoCAVI(mixture.double(), blocks="auto", max_iter=3).fit(X)
    assert fit.blocks_ == [("means", "precisions")]


@pytest.mark.parametrize("model", [known_noise_child, two_precisions])
def test_auto_blocks_leave_pairs_whose_factors_the_block_does_not_span(model):
    fit = AutoCAVI(model, blocks="auto", tol=1e-12).fit(t([0.3, 1.9, 1.1]))
    assert fit.blocks_ == [] and fit.fitted_blocks_ == {}
    mean_field = AutoCAVI(model, tol=1e-12).fit(t([0.3, 1.9, 1.1]))
    assert fit.lower_bound_ == pytest.approx(mean_field.lower_bound_, rel=1e-12)


def test_blocks_other_than_auto_or_pairs_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="blocks: 'all' is neither 'auto' nor a list"):
        AutoCAVI(hierarchical, blocks="all").fit(t([[0.3]]))
