import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import F64, t


def test_latents_outside_plates_or_subsampled_are_refused():
    def unplated():
        pyro.sample("v", dist.Normal(torch.zeros(3, dtype=F64), 1.0))

    with pytest.raises(NotConjugateError, match="'v': batch dim -1 \\(size 3\\).*no pyro.plate"):
        find_latents(poutine.trace(unplated).get_trace())

    def subsampled():
        with pyro.plate("data", 10, subsample_size=5):
            pyro.sample("z", dist.Normal(t(0.0), t(1.0)))

    with pytest.raises(NotConjugateError, match="'z': in plate 'data', which subsamples 5 of"):
        find_latents(poutine.trace(subsampled).get_trace())


K = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0]], dtype=F64)  # 2 counts in each of 3 groups


def _gamma_poisson(keep):
    def model(k):
        with pyro.plate("g", 3):
            lam = pyro.sample("lam", dist.Gamma(t(2.0), t(0.5)).mask(keep))
            with pyro.plate("n", 2, dim=-2):
                pyro.sample("k", dist.Poisson(lam), obs=k)

    return model


@pytest.mark.parametrize(
    "keep", [True, torch.tensor([True, True, True]), torch.tensor([True, False, True])]
)
def test_a_masked_gamma_prior_gives_each_groups_closed_form_evidence(keep):
    """``.mask`` on a Gamma prior crashed (AttributeError: no ``concentration``; tester AM's
    F4). Each group is one conjugate latent, so the bound is its log evidence exactly:
    a log b − log Γ(a) + log Γ(a + S) − (a + S) log(b + n) − Σ log k!, and where the prior
    is masked off (flat in λ) log Γ(S + 1) − (S + 1) log n − Σ log k!."""
    a, b, n = 2.0, 0.5, 2
    kept = torch.as_tensor(keep).expand(3)
    exact = 0.0
    for g in range(3):
        s = float(K[:, g].sum())
        factorials = float(torch.lgamma(K[:, g] + 1).sum())
        if kept[g]:
            exact += (a * math.log(b) - math.lgamma(a) + math.lgamma(a + s)
                      - (a + s) * math.log(b + n) - factorials)  # fmt: skip
        else:
            exact += math.lgamma(s + 1) - (s + 1) * math.log(n) - factorials
    fit = AutoCAVI(_gamma_poisson(keep)).fit(K)
    assert fit.lower_bound_ == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("family", ["beta", "dirichlet"])
def test_masked_beta_and_dirichlet_priors_are_fitted_to_their_evidence(family):
    # tester AM's F4 for the other families whose start reads the prior's concentrations:
    # 3 successes in 4 Bernoulli trials, as Beta(2, 1) or as a Dirichlet([2, 1]) over two
    # categories: log B(2 + 3, 1 + 1) − log B(2, 1)
    y = t([1.0, 1.0, 0.0, 1.0])

    def model(y):
        if family == "beta":
            p = pyro.sample("p", dist.Beta(t(2.0), t(1.0)).mask(True))
            with pyro.plate("n", 4):
                pyro.sample("y", dist.Bernoulli(p), obs=y)
        else:
            pi = pyro.sample("pi", dist.Dirichlet(t([2.0, 1.0])).mask(True))
            with pyro.plate("n", 4):
                pyro.sample("y", dist.Categorical(pi), obs=(1 - y).long())

    def log_beta(x, z):
        return math.lgamma(x) + math.lgamma(z) - math.lgamma(x + z)

    exact = log_beta(5.0, 2.0) - log_beta(2.0, 1.0)
    assert AutoCAVI(model).fit(y).lower_bound_ == pytest.approx(exact, rel=1e-10)
