import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi.exponential_families import NotConjugateError
from tests.pyro_vae.cavi.float64 import F64, t


def test_group_specific_cluster_means_are_one_vector_per_component_below_the_evidence():
    """Group-specific cluster means mu [K, G] in plates of components (dim -2) and groups
    (dim -1), read as Vindex(mu)[..., z, group]: the groups' plate is none of the factor's
    (a data index picks it), so mu is no mixture component as declared, and was refused
    (tester 23). Its groups plate, at dim -1, now goes into its event (plate_events): mu
    is then K components of G-vectors, which a mixture's datum reads at its group, and the
    fit is the same model's declared by hand that way (to 1e-10). Its bound is below the
    exact log evidence, by enumeration of the 2¹² assignments with μ and the weights
    integrated out (Normal and Dirichlet-multinomial marginals)."""
    import itertools
    import math

    from pyro.ops.indexing import Vindex

    from pyro_vae.cavi import AutoCAVI

    y = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=F64)
    group = torch.arange(12) % 4

    def model(y):
        weights = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2, dim=-2), pyro.plate("groups", 4, dim=-1):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z, group], 1.0), obs=y)

    def by_hand(y):
        weights = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)).expand([4]).to_event(1))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z, group], 1.0), obs=y)

    fit = AutoCAVI(model).fit(y)
    assert fit.plates_as_events_ == {"mu": "groups"}
    hand = AutoCAVI(by_hand).fit(y).lower_bound_
    assert abs(fit.lower_bound_ - hand) < 1e-10 * abs(hand)
    z = torch.tensor(list(itertools.product([0, 1], repeat=12)))  # every assignment
    ones = z.sum(-1).to(F64)
    log_p = math.lgamma(2) + torch.lgamma(13 - ones) + torch.lgamma(1 + ones) - math.lgamma(14)
    for k, g in itertools.product(range(2), range(4)):  # cell (k, g): y = μ + ε, μ ~ N(0, 1)
        cell = ((z == k) & (group == g)).to(F64)  # log N(y; 0, I + 11ᵀ), by Sherman-Morrison
        n, s1, s2 = cell.sum(-1), (cell * y).sum(-1), (cell * y**2).sum(-1)
        log_p += (-n / 2 * math.log(2 * math.pi) - 0.5 * torch.log1p(n)
                  - 0.5 * (s2 - s1**2 / (1 + n)))  # fmt: skip
    joint = log_p
    evidence = float(torch.logsumexp(joint, 0))
    assert fit.lower_bound_ < evidence


def test_a_latent_no_vector_form_fits_is_refused_saying_which_form_does():
    """Tester AS's M1 and M2: a Bernoulli in groups and features read through a data index
    got the refusal's generic words, and slopes in a third plate (outcomes) were told to
    declare the form that two plates fit, which the third plate refuses too. The refusals
    now say why (no closed-form q for a vector of discrete latents; one vector plate and
    one indexed plate at most) and what fits instead."""
    from pyro_vae.cavi import AutoCAVI

    g = torch.Generator().manual_seed(0)
    X, group = torch.randn(12, 3, generator=g, dtype=F64), torch.arange(12) % 4
    y = torch.randn(2, 12, generator=g, dtype=F64)

    def switches(X, group, y):
        with pyro.plate("features", 3, dim=-1), pyro.plate("groups", 4, dim=-2):
            s = pyro.sample("s", dist.Bernoulli(t(0.3)))
        with pyro.plate("data", 12):
            pyro.sample("y", dist.Normal((X * s[..., group, :]).sum(-1), t(0.5)), obs=y[0])

    refusal = r"'s' is a Bernoulli in 2 plates.*no closed-form q for a vector of discrete"
    with pytest.raises(NotConjugateError, match=refusal):
        AutoCAVI(switches).fit(X, group, y)

    def outcomes(X, group, y):
        each = pyro.plate("outcomes", 2, dim=-3)
        with each, pyro.plate("groups", 4, dim=-2), pyro.plate("features", 3, dim=-1):
            b = pyro.sample("b", dist.Normal(t(0.0), t(1.0)))
        mean = (X * b[..., group, :]).sum(-1).unsqueeze(-2)
        with each, pyro.plate("data", 12, dim=-1):
            pyro.sample("y", dist.Normal(mean, t(0.5)), obs=y.unsqueeze(-2))

    refusal = r"'b' is fitted as one vector over its plate 'features'.*with a third plate"
    with pytest.raises(NotConjugateError, match=refusal):
        AutoCAVI(outcomes).fit(X, group, y)
