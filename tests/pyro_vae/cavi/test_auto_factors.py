"""AutoCAVI and ``pyro.factor``: a factor is a term of the log joint like any other."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import AutoCAVI, NotConjugateError

Y = torch.tensor([0.5, 1.5, 2.0, -0.3, 0.9], dtype=torch.float64)


def _model(extra):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 1.0))
        pyro.factor("f", extra(mu))
        with pyro.plate("points", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return model


def test_a_conjugate_factor_enters_the_bound_which_is_then_the_exact_log_evidence():
    # one latent, so CAVI is exact: log ∫ N(μ; 0, 1) exp(−μ²/2) Π N(y_i; μ, 1) dμ, Gaussian
    fit = AutoCAVI(_model(lambda mu: -0.5 * mu**2), tol=1e-12).fit(Y)
    n, s, ss = len(Y), float(Y.sum()), float((Y**2).sum())
    precision = 2.0 + n  # prior 1, factor 1, one per observation
    log_z = (
        -0.5 * (n + 1) * math.log(2 * math.pi)
        - 0.5 * ss
        + 0.5 * s**2 / precision
        + 0.5 * math.log(2 * math.pi / precision)
    )
    assert fit.lower_bound_ == pytest.approx(log_z, rel=1e-10)
    q = fit.variational_distributions()["mu"]
    assert float(q.mean) == pytest.approx(s / precision, rel=1e-10)


def test_a_factor_that_is_not_conjugate_is_refused_by_name():
    with pytest.raises(NotConjugateError, match="'f'"):
        AutoCAVI(_model(lambda mu: -(mu**4))).fit(Y)


def test_a_model_whose_sites_depend_on_a_latent_s_value_is_refused_clearly():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 1.0))
        name = "a" if float(mu) > 0 else "b"  # the trace's sites depend on μ's draw
        pyro.sample(name, dist.Normal(mu, 1.0), obs=y[0])

    with pytest.raises(ValueError, match=r"sample sites change with the latents' values"):
        for seed in range(4):  # the reference run's sign is the fit's seed's draw
            AutoCAVI(model, random_state=seed).fit(Y)


def test_a_subsampling_plate_is_refused_by_name_before_any_probing():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 1.0))
        with pyro.plate("points", y.shape[0], subsample_size=2) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match=r"plate 'points' subsamples 2 of its 5 rows"):
        AutoCAVI(model).fit(Y)

    def indexed(y):  # tester Z's D5: told to give the plate "no subsample_size", which it had
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 1.0))
        with pyro.plate("points", y.shape[0], subsample=torch.tensor([0, 2])) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match=r"neither subsample_size nor a subsample of indices"):
        AutoCAVI(indexed).fit(Y)
