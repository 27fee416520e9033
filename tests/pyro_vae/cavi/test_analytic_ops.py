"""Sorting a model's ops on its latents into those that keep a conjugate form and those
that may bend it (a clamp, a comparison, a value read into Python), and AutoCAVI's check at
q run exactly where one of the latter is."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions.utils import clamp_probs

from pyro_vae.cavi import AutoCAVI, NotConjugateError
from pyro_vae.cavi.analytic_ops import ANALYTIC, classify
from pyro_vae.cavi.positivity import BRANCH, POSITIVE, UNIT
from pyro_vae.cavi.provenance import FastProvenanceTensor, TrackFastProvenance
from tests.pyro_vae.cavi.float64 import F64, t


def recorded(compute, sign=None) -> list[tuple[str, str]]:
    """(kind, op) of each op ``compute(mu)`` records on a tracked μ (with ``sign``: see
    :mod:`pyro_vae.cavi.positivity`), validation off (as in AutoCAVI's provenance run: a
    distribution's argument checks compare and branch)."""
    log = []
    with pyro.validation_enabled(False), TrackFastProvenance(log):
        mu = FastProvenanceTensor(torch.linspace(0.1, 0.9, 3, dtype=F64), frozenset({"mu"}))
        mu._sign = sign
        compute(mu)
    return [(kind, name) for kind, name, provenance in log if provenance == {"mu"}]


def test_ops_analytic_on_the_whole_line_are_not_recorded():
    def entire(mu):
        lp = dist.Normal(mu.unsqueeze(-1) * t([1.0, 2.0]), 2.0).log_prob(t(0.5)).sum(-1)
        lp = lp + torch.digamma(mu) + mu.exp().sigmoid() / (1 + mu**2) + mu.logsumexp(-1)
        return torch.softmax(torch.outer(mu, mu) @ mu, -1) + lp

    assert recorded(entire) == []


def test_branch_ops_are_analytic_on_a_positive_latent_and_recorded_on_a_real_one():
    def branches(mu):
        scale = (2.0 * mu).rsqrt()
        lp = dist.Normal(t(0.0), scale).log_prob(t(0.5)) + torch.lgamma(mu)
        return lp + torch.xlogy(t(2.0), mu) + mu.sqrt().log1p() + (mu + 1) ** 0.5

    assert recorded(branches, POSITIVE) == []
    assert {name for _, name in recorded(branches)} == {
        "rsqrt", "log", "lgamma", "xlogy", "sqrt", "log1p", "pow"
    }  # fmt: skip


@pytest.mark.parametrize(
    "absolute, sign",
    [
        (lambda mu: (mu**2).sqrt(), None),
        (lambda mu: (0.5 * (mu * mu).log()).exp(), None),
        (lambda mu: (mu**2) ** 0.5, None),
        (lambda mu: ((mu - 0.3) ** 2).sqrt(), POSITIVE),  # |τ − 0.3| of a positive τ
        (lambda mu: torch.linalg.cholesky(((mu - 0.3) ** 2).reshape(3, 1, 1)), POSITIVE),
    ],
    ids=["sqrt-square", "exp-half-log-square", "square-to-a-half", "positive-shifted",
         "cholesky-of-a-square"],
)  # fmt: skip
def test_an_absolute_value_built_from_branch_ops_is_recorded(absolute, sign):
    # |x| = sqrt(x²) has the forms x and −x on the two sides of 0: each conjugate in x,
    # a kink between them that only the check at q sees
    assert [kind for kind, _ in recorded(absolute, sign)] == ["op"]


@pytest.mark.parametrize(
    "compute, expected",
    [
        (lambda mu: mu.clamp(max=0.5), ("op", "clamp")),
        (lambda mu: mu.abs(), ("op", "abs")),
        (lambda mu: torch.maximum(mu, t(0.5)), ("op", "maximum")),
        (lambda mu: mu.floor(), ("op", "floor")),
        (lambda mu: mu > 0.5, ("discretize", "gt")),
        (lambda mu: mu.long(), ("discretize", "long")),
        (lambda mu: mu.argmax(), ("discretize", "argmax")),
        (lambda mu: mu.sum().item(), ("escape", "item")),
        (lambda mu: float(mu.sum()), ("escape", "__float__")),
        (lambda mu: mu.tolist(), ("escape", "tolist")),
        (lambda mu: torch.zeros(3, dtype=F64).__setitem__(0, mu[0]), ("escape", "__setitem__")),
        (lambda mu: mu.clone().mul_(2.0), ("escape", "mul_")),
    ],
    ids=["clamp", "abs", "maximum", "floor", "gt", "long", "argmax", "item", "float",
         "tolist", "setitem", "in-place"],
)  # fmt: skip
def test_ops_that_may_bend_a_form_are_recorded_by_kind(compute, expected):
    assert expected in recorded(compute)


def test_torchs_clamp_of_probabilities_counts_as_analytic_and_a_wider_clamp_does_not():
    # a Beta's p: clamp_probs(p) in (0, 1), log of it and log1p of −p analytic
    assert recorded(lambda mu: clamp_probs(mu)) == []
    assert recorded(lambda mu: dist.Bernoulli(probs=mu).log_prob(t(1.0)), UNIT) == []
    assert recorded(lambda mu: dist.Categorical(probs=mu).log_prob(t(1.0)), UNIT) == []
    assert recorded(lambda mu: mu.clamp(min=1e-6, max=1 - 1e-6)) == [("op", "clamp")]
    # clamp_probs puts any input in (0, 1); written out, log1p(−μ) of a μ not known to
    # lie in (0, 1) is recorded
    assert recorded(lambda mu: dist.Bernoulli(probs=mu).log_prob(t(1.0))) == []
    assert recorded(lambda mu: torch.log1p(-mu)) == [("op", "log1p")]
    assert recorded(lambda mu: torch.log1p(-mu), UNIT) == []


def test_an_integer_op_on_integers_makes_no_new_discretization():
    # a Categorical's log_prob broadcasts its values with its probabilities (provenance
    # unions both) and slices the values: no floating value is discretized
    z = FastProvenanceTensor(torch.tensor([0, 2, 1]), frozenset({"z"}))
    w = FastProvenanceTensor(t([0.2, 0.3, 0.5]), frozenset({"w"}))
    log = []
    with pyro.validation_enabled(False), TrackFastProvenance(log):
        dist.Categorical(probs=w).log_prob(z)
    assert [entry for entry in log if "w" in entry[2]] == []


def test_the_analytic_names_are_torch_ops_and_unknown_ops_are_not_analytic():
    known = {name for module in (torch, torch.Tensor, torch.linalg, torch.nn.functional)
             for name in dir(module)}  # fmt: skip
    aliases = {"linalg_cholesky", "linalg_cholesky_ex", "linalg_solve_triangular",
               "linalg_inv", "linalg_solve", "linalg_slogdet", "linalg_det", "_softmax",
               "_log_softmax", "__get__"}  # fmt: skip
    assert (ANALYTIC | BRANCH) - known - aliases == set()
    assert not ANALYTIC & BRANCH
    assert classify("some_new_op", None, t([1.0])) == "op"
    assert classify("sqrt", None, t([1.0])) == "op"
    assert classify("sqrt", None, t([1.0]), in_domain=True) is None
    assert classify("dim", None, 1) is None and classify("item", None, 1.0) == "escape"


def normal_model(extra=lambda mu: mu):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(2.0), 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(extra(mu), tau.rsqrt()), obs=y)

    return model


def test_an_analytic_model_skips_the_check_at_q_and_fits_the_same_bound():
    # the same model with a clamp that never binds (μ ≥ -10⁶) is checked at q: one model
    # run more, the same fit to rounding
    y = 3.0 + torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=F64)
    plain = AutoCAVI(normal_model()).fit(y)
    clamped = AutoCAVI(normal_model(lambda mu: mu.clamp(min=-1e6))).fit(y)
    assert plain.nonanalytic_ops_ == ()
    assert clamped.nonanalytic_ops_ == (("clamp", ("mu",)),)
    assert clamped.probe_model_runs_ == plain.probe_model_runs_ + 1
    assert abs(plain.lower_bound_ - clamped.lower_bound_) < 1e-9 * abs(plain.lower_bound_)


def test_a_branch_in_python_on_a_latent_is_checked_at_q_and_refused_beyond_its_kink():
    # y ~ N(μ + 20 if μ > 2 else μ, 1), data near 6: the probe points (near 0) see only the
    # lower branch, q settles past the kink, and the check at q (run because float(μ) reads
    # μ into Python) finds the other branch there
    y = 6.0 + torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=F64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        loc = mu + 20.0 if float(mu) > 2.0 else mu
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    with pytest.raises(NotConjugateError, match="factor 'y'"):
        fit = AutoCAVI(model, random_state=1).fit(y)
        assert ("__float__", ("mu",)) in fit.nonanalytic_ops_  # not reached when refused


def test_a_kink_built_from_a_square_root_is_checked_at_q_and_fitted_on_its_side():
    # loc = μ + 20·(|μ − 2| + μ − 2), |·| written as sqrt((μ − 2)²): every op analytic but
    # sqrt at 0. The first probe points (near 0) see loc = μ; the check at q, run because
    # sqrt's argument is not shown positive, finds loc = 41μ − 80 where q settles, and the
    # re-probe there fits that side: the exact posterior and log evidence (closed form; the
    # other side is over 400 posterior sds away). Skipping the check fitted q(μ) =
    # N(5.77, 0.18) and a bound 3.6 nats above log p(y), silently.
    y = 6.0 + torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=F64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        loc = mu + 20.0 * (((mu - 2.0) ** 2).sqrt() + (mu - 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    fit = AutoCAVI(model).fit(y)
    assert fit.nonanalytic_ops_ == (("sqrt", ("mu",)),)
    precision = 0.01 + 30 * 41.0**2
    mean = 41.0 * float((y + 80.0).sum()) / precision
    q = fit.variational_distributions()["mu"]
    assert abs(float(q.loc) - mean) < 1e-9 * mean
    assert abs(float(q.scale) - precision**-0.5) < 1e-7 * precision**-0.5
    covariance = torch.eye(30, dtype=F64) + 41.0**2 * 100.0 * torch.ones(30, 30, dtype=F64)
    evidence = dist.MultivariateNormal(torch.full((30,), -80.0, dtype=F64), covariance)
    log_evidence = float(evidence.log_prob(y))
    assert abs(fit.lower_bound_ - log_evidence) < 1e-9 * abs(log_evidence)
