"""A Normal latent with several event dims (Pyro's ``.to_event(2)`` weight matrix), fitted by
AutoCAVI as one vector of its elements, against the closed-form mean-field optimum of a
Gaussian model."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.event_flattening import EventsFlattened, flattenable
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.diagnostics import to_inference_data
from pyro_vae.traces import VectorizationWarning
from tests.pyro_vae.cavi.float64 import F64

N, D, K, NOISE, BIAS_SD = 30, 3, 2, 0.5, 10.0


class LinearRegression(PyroModule):
    """Pyro's Bayesian regression idiom: ``PyroModule[nn.Linear]`` with priors on its
    weight, a [K, D] matrix of two event dims, and its bias."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](D, K).double()
        self.linear.weight = PyroSample(dist.Normal(torch.tensor(0.0, dtype=F64), 1.0)
                                        .expand([K, D]).to_event(2))  # fmt: skip
        self.linear.bias = PyroSample(dist.Normal(torch.tensor(0.0, dtype=F64), BIAS_SD)
                                      .expand([K]).to_event(1))  # fmt: skip

    def forward(self, x, y=None):
        mean = self.linear(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(mean, NOISE).to_event(1), obs=y)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=F64)
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]], dtype=F64)
    return x, x @ w.T + torch.tensor([0.3, -1.0], dtype=F64) + NOISE * torch.randn(
        N, K, generator=g, dtype=F64
    )


def _gaussian_joint(x, y):
    """θ = (W row-major, b), A mapping θ to E[vec y], P its prior precision: the posterior
    precision Λ = P + AᵀA/σ², the posterior mean Λ⁻¹Aᵀ vec y/σ², and log p(y) =
    log N(vec y; 0, A P⁻¹ Aᵀ + σ² I)."""
    a = torch.zeros(N, K, K * D + K, dtype=F64)
    for k in range(K):
        a[:, k, k * D : (k + 1) * D] = x
        a[:, k, K * D + k] = 1.0
    a = a.reshape(N * K, K * D + K)
    prior = torch.cat([torch.ones(K * D, dtype=F64), torch.full((K,), BIAS_SD**-2, dtype=F64)])
    precision = torch.diag(prior) + a.T @ a / NOISE**2
    covariance = a @ torch.diag(1 / prior) @ a.T + NOISE**2 * torch.eye(N * K, dtype=F64)
    evidence = dist.MultivariateNormal(torch.zeros(N * K, dtype=F64), covariance).log_prob(
        y.reshape(-1)
    )
    mean = torch.linalg.solve(precision, a.T @ y.reshape(-1) / NOISE**2)
    return precision, mean, float(evidence)


def test_a_weight_matrix_of_two_event_dims_fits_at_the_mean_field_optimum():
    """The weight matrix and the bias are two units of q, each a full MultivariateNormal;
    over a Gaussian joint of precision Λ the best such q has precisions Λ_WW and Λ_bb and
    the bound log p(y) − ½(log|Λ_WW| + log|Λ_bb| − log|Λ|), its means the posterior's
    (Bishop 2006, §10.1.2). The
    site had been refused as a Normal with event dims added by .to_event (tester DR)."""
    x, y = _data()
    fit = AutoCAVI(LinearRegression(), tol=1e-12).fit(x, y)
    precision, mean, evidence = _gaussian_joint(x, y)
    w, b = slice(0, K * D), slice(K * D, K * D + K)
    gap = 0.5 * (
        torch.logdet(precision[w, w]) + torch.logdet(precision[b, b]) - torch.logdet(precision)
    )
    assert fit.flattened_events_ == {"linear.weight": torch.Size([K, D])}
    assert fit.lower_bound_ == pytest.approx(evidence - float(gap), rel=1e-9)
    marginal = fit.variational_distributions()["linear.weight"]
    assert marginal.event_shape == (K, D) and marginal.sample().shape == (K, D)
    q = marginal.base_dist  # over its elements, row-major
    assert torch.allclose(q.precision_matrix, precision[w, w], rtol=1e-7)
    assert torch.allclose(q.mean, mean[w], rtol=1e-7)  # a Gaussian's mean field: exact means


def test_the_fitted_guide_draws_the_matrix_in_the_models_shape_and_scores_the_bound():
    """``variational_guide()`` gives the model its [K, D] weight; the ELBO of the user's
    own model under it, over 400 seeded draws, is the fit's bound within 4 standard
    errors; ``to_inference_data`` takes the fit (its shape check reads
    ``variational_distributions()``, whose q is reshaped to the site's)."""
    x, y = _data()
    model = LinearRegression()
    fit = AutoCAVI(model, tol=1e-12).fit(x, y)
    guide = fit.variational_guide()
    pyro.set_rng_seed(0)
    draws = []
    for _ in range(400):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)
        assert model_trace.nodes["linear.weight"]["value"].shape == (K, D)
        draws.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    draws = torch.stack(draws)
    stderr = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - fit.lower_bound_) < 4 * stderr
    with warnings.catch_warnings():  # nn.Linear does not broadcast particles: looped
        warnings.simplefilter("ignore", VectorizationWarning)
        idata = to_inference_data(model, fit, x, y, num_samples=20)
    assert idata.posterior["linear.weight"].shape[-2:] == (K, D)
    assert "_linear.weight_vector" not in idata.posterior  # the auxiliary draw: left out


def test_the_messenger_shows_outer_handlers_a_vector_and_the_model_its_matrix():
    prior = dist.Normal(torch.arange(6.0).reshape(2, 3), 2.0).to_event(2)
    seen = []

    def model():
        seen.append(pyro.sample("w", prior).shape)

    with poutine.trace() as tracer, EventsFlattened({"w": torch.Size([2, 3])}):
        model()
    node = tracer.trace.nodes["w"]
    assert seen == [torch.Size([2, 3])] and node["value"].shape == (6,)
    assert torch.allclose(
        node["fn"].log_prob(node["value"]), prior.log_prob(node["value"].reshape(2, 3))
    )
    flat = torch.linspace(-1.0, 1.0, 6)
    with poutine.condition(data={"w": flat}), EventsFlattened({"w": torch.Size([2, 3])}):
        model()  # a probe point set outside, a vector: the model gets it as a matrix
    assert seen[-1] == torch.Size([2, 3])


def test_a_masked_matrix_is_not_flattened_and_stays_refused():
    keep = torch.tensor([[True, False, True], [True, True, True]])

    def model(y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, 3, dtype=F64), 1.0).mask(keep).to_event(2))
        pyro.sample("y", dist.Normal(w.sum(), 1.0), obs=y)

    site = poutine.trace(model).get_trace(torch.tensor(0.5, dtype=F64)).nodes["w"]
    assert not flattenable(site)
    with pytest.raises(NotConjugateError, match="event dims added by .to_event"):
        AutoCAVI(model).fit(torch.tensor(0.5, dtype=F64))


def test_a_start_for_the_matrix_is_taken_in_its_own_shape_or_as_the_vector():
    """``init`` for the weight in the site's [K, D] shape (a Normal ``.to_event(2)``, or a
    fit's own ``variational_distributions()`` entry) is the vector's start, as a
    MultivariateNormal over its K·D elements is; each reaches the same optimum. The [K, D]
    Normal had been refused as "not a distribution of the Normal family"."""
    x, y = _data()
    zeros = torch.zeros(K, D, dtype=F64)
    fit = AutoCAVI(LinearRegression(), tol=1e-12).fit(x, y)
    starts = [
        dist.Normal(zeros, 1.0).to_event(2),
        fit.variational_distributions()["linear.weight"],
        dist.MultivariateNormal(zeros.reshape(-1), torch.eye(K * D, dtype=F64)),
    ]
    for start in starts:
        started = AutoCAVI(LinearRegression(), init={"linear.weight": start}, tol=1e-12)
        assert started.fit(x, y).lower_bound_ == pytest.approx(fit.lower_bound_, rel=1e-10)


def test_a_refusal_naming_a_flattened_site_says_it_was_taken_as_a_vector():
    """The refusal describes the vector AutoCAVI fits (``Normal (.to_event(1))``, statistics
    x0 … x3) where the user wrote a [2, 2] matrix: a note says so."""

    def model(y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, 2, dtype=F64), 1.0).to_event(2))
        pyro.sample("y", dist.Normal(w.exp().sum(), 1.0), obs=y)

    match = r"not conditionally conjugate.*'w', event shape \(2, 2\): a Normal of several"
    with pytest.raises(NotConjugateError, match=match):
        AutoCAVI(model).fit(torch.tensor(0.5, dtype=F64))
