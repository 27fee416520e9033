"""A guide of fixed distributions, and a fitted CAVI estimator standing in for a guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import AutoCAVI, BayesianLinearRegression
from pyro_vae.evaluate import elbo_estimate
from pyro_vae.guides.fixed import as_guide, variational_guide
from pyro_vae.plates import data_plate

F64 = torch.float64


def local_guide(x):
    with data_plate(x):
        pyro.sample("z", dist.Normal(0.5 * x, 0.8))


def test_variational_guide_draws_each_site_from_its_distribution():
    guide = variational_guide({"a": dist.Normal(3.0, 1e-3), "b": dist.Bernoulli(1.0)})
    trace = pyro.poutine.trace(guide).get_trace()
    assert trace.nodes["a"]["value"] == pytest.approx(3.0, abs=0.01)
    assert trace.nodes["b"]["value"] == 1.0
    assert set(guide.distributions) == {"a", "b"} and "a, b" in guide.__name__
    with pytest.raises(ValueError, match="distributions: empty"):
        variational_guide({})


def test_a_fitted_cavi_estimator_stands_in_for_its_guide():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.7 * torch.randn(
        40, generator=g, dtype=F64
    )
    fit = BayesianLinearRegression(2.0, 2.0, 1.0).fit(X, y)
    guide = as_guide(fit)
    assert set(guide.distributions) == set(fit.variational_distributions())
    assert as_guide(local_guide) is local_guide


def test_an_estimator_with_its_own_variational_guide_stands_in_by_it():
    class Fitted:  # as AutoCAVI: a guide of its own beside its marginals
        def variational_guide(self):
            return local_guide

        def variational_distributions(self):
            raise AssertionError("the marginals are not read when a guide is offered")

    assert as_guide(Fitted()) is local_guide


def test_a_fit_s_marginals_are_drawn_inside_the_model_s_plates_leaving_the_stream_as_it_was():
    """Tester BO: a mixture's q of its K components, drawn outside the model's plate, failed
    Pyro's shape checks under the particle plate; given the model, each site is drawn
    inside the plates it has there, and the one model run that reads them draws nothing
    from the random stream."""

    class Fitted:  # as a hand-written CAVI class: its marginals only
        def variational_distributions(self):
            return {"mu": dist.Normal(torch.arange(3.0), 1.0)}

    def model(x):
        with pyro.plate("components", 3):
            mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 10.0))
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    guide = as_guide(Fitted(), model, (x,))
    after = torch.rand(1)
    pyro.set_rng_seed(0)
    assert torch.equal(torch.rand(1), after)  # the run that read the plates drew nothing
    trace = pyro.poutine.trace(guide).get_trace(x)
    assert [f.name for f in trace.nodes["mu"]["cond_indep_stack"]] == ["components"]
    unplated = as_guide(Fitted())  # without the model: as before, no plates
    assert pyro.poutine.trace(unplated).get_trace(x).nodes["mu"]["cond_indep_stack"] == ()
    with pyro.plate("particles", 4, dim=-3):  # vectorized particles: Pyro's checks pass
        vectorized = pyro.poutine.trace(guide).get_trace(x)
    vectorized.compute_log_prob()
    assert vectorized.nodes["mu"]["log_prob"].shape == (4, 1, 3)


def test_a_fit_s_marginals_are_refused_in_a_subsampled_plate_and_leave_no_param_made(tmp_path):
    """Tester BQ: q drawn in a plate rebuilt at its subsample size, its indices lost, gave
    an ELBO 16.5 nats off with no word; and a parameter the model made on the plates' run,
    from a forked stream, took another value than the model's first real run gives it."""

    class Fitted:
        def variational_distributions(self):
            return {"z": dist.Normal(torch.zeros(5), 1.0)}

    def subsampled(x):
        with pyro.plate("data", 20, subsample=torch.arange(5)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:5])

    x = torch.zeros(20)
    with pytest.raises(ValueError, match="inside plate 'data', subsampled to 5 of its 20"):
        as_guide(Fitted(), subsampled, (x,))

    def permuted(x, rows):  # every row, in another order (tester BR: taken with no word)
        with pyro.plate("data", 5, subsample=rows):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[rows])

    with pytest.raises(ValueError, match=r"'data', drawing its 5 elements in another order"):
        as_guide(Fitted(), permuted, (x, torch.tensor([4, 3, 2, 1, 0])))
    in_order = as_guide(Fitted(), permuted, (x, torch.arange(5)))  # 0..N-1 is the whole data
    assert pyro.poutine.trace(in_order).get_trace(x).nodes["z"]["value"].shape == (5,)

    def with_param(x):
        w = pyro.param("w", lambda: torch.randn(()))
        with pyro.plate("data", 5):
            pyro.sample("z", dist.Normal(w, 1.0))

    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    with_param(x)
    expected = pyro.param("w").item()  # the first run's, from the stream at seed 7
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    as_guide(Fitted(), with_param, (x,))
    assert "w" not in pyro.get_param_store()  # the plates' run made it, then took it back
    with_param(x)
    assert pyro.param("w").item() == expected
    pyro.clear_param_store()


def test_autocavi_s_own_guide_is_refused_in_a_permuted_or_subsampled_plate_too():
    """Tester BX: ``as_guide`` returned AutoCAVI's own guide before the plate checks, so a
    permuted plate's ELBO came out 211 nats low with no word, and a subsample failed in
    Pyro's broadcasting; the whole data in order is taken as before."""
    from pyro_vae.cavi import AutoCAVI

    n = 8
    x = torch.cat([torch.full((4,), -3.0), torch.full((4,), 3.0)]).double()

    def local(x, rows):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 10.0))
        with pyro.plate("d", n, subsample=rows):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[rows])

    fit = AutoCAVI(local).fit(x, torch.arange(n))
    guide = as_guide(fit, local, (x, torch.arange(n)))
    assert pyro.poutine.trace(guide).get_trace().nodes["z"]["value"].shape == (n,)
    with pytest.raises(ValueError, match=r"'d', drawing its 8 elements in another order"):
        as_guide(fit, local, (x, torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])))
    with pytest.raises(ValueError, match=r"'d', subsampled to 3 of its 8 elements"):
        as_guide(fit, local, (x, torch.arange(3)))


def test_a_fit_is_scored_on_the_whole_data_and_refused_by_name_per_datapoint():
    """Tester BQ: ``psis_khat_per_datapoint`` failed on a fitted estimator ("not
    callable"); drawn on all N rows, it failed on chunks of rows instead (tester BR). Per
    datapoint it is refused by name, saying what takes it; on the whole data, given
    q(z_n) = N(x_n / 2, ½), the exact posterior of z ~ N(0, 1), x ~ N(z, 1), every ratio
    p(x, z) / q(z) is p(x), the same at every draw, so k̂ is −inf (constant ratios). A q
    of another shape than the model's site is refused (tester BR: q of (3, N) for N gave
    k̂ = −inf too)."""
    from pyro_vae.diagnostics import psis_khat, psis_khat_per_datapoint

    x = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=F64)

    class Fitted:
        def variational_distributions(self):
            return {"z": dist.Normal(x / 2, math.sqrt(0.5))}

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="guide: a fitted Fitted, whose q is of the whole"):
        psis_khat_per_datapoint(model, Fitted(), x, num_samples=50)
    assert psis_khat(model, Fitted(), x, num_samples=50) == -math.inf

    class Wider:
        def variational_distributions(self):
            return {"z": dist.Normal((x / 2).expand(3, 4), math.sqrt(0.5))}

    match = r"q of site 'z' draws values of shape \(3, 4\) .* the model's 'z' has shape \(4,\)"
    with pytest.raises(ValueError, match=match):
        psis_khat(model, Wider(), x, num_samples=50)


def beta_bernoulli(x):
    p = pyro.sample("p", dist.Beta(x.new_tensor(2.0), x.new_tensor(3.0)))
    with pyro.plate("n", x.shape[0]):
        pyro.sample("x", dist.Bernoulli(p), obs=x)


def test_elbo_estimate_takes_a_fit_and_draws_its_q():
    """Tester 38's P1: ``elbo_estimate(model, fit, x)`` raised Pyro's "not callable". The
    Beta-Bernoulli fit's q is the exact posterior Beta(2 + k, 3 + n − k), so every draw's
    log p(x, p) − log q(p) is the log evidence, log B(2 + k, 3 + n − k) − log B(2, 3)
    (closed form), to float64 rounding of a few terms of order 10."""
    x = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)
    k, n = float(x.sum()), len(x)

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    evidence = log_beta(2 + k, 3 + n - k) - log_beta(2.0, 3.0)
    fit = AutoCAVI(beta_bernoulli).fit(x)
    pyro.set_rng_seed(0)
    elbo, stderr = elbo_estimate(beta_bernoulli, fit, x, num_samples=20)
    assert elbo == pytest.approx(evidence, abs=1e-10)
    assert fit.lower_bound_ == pytest.approx(evidence, abs=1e-10) and stderr < 1e-10
