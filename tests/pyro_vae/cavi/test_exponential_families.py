import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi.exponential_families import NotConjugateError, family_of

F64 = torch.float64


def site(fn, name="x"):
    return {"fn": fn, "name": name}


def t(x):
    return torch.tensor(x, dtype=F64)


CASES = [
    (dist.Normal(t(0.0), t(1.0)), torch.tensor([0.7, -0.4], dtype=F64)),
    (
        dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1),
        t([0.5, -1.0, 0.2, -1.0, 0.1, 0.05, -1.0, 0.1, -1.0]),
    ),
    (dist.Gamma(t(2.0), t(1.0)), t([-3.0, 1.5])),
    (dist.Beta(t(2.0), t(1.0)), t([0.5, -0.3])),
    (dist.Dirichlet(torch.ones(3, dtype=F64)), t([0.5, -0.3, 1.2])),
    (dist.Bernoulli(t(0.3)), t([0.8])),
    (dist.Categorical(torch.ones(4, dtype=F64) / 4), t([0.1, -2.0, 0.5, 1.0])),
]


@pytest.mark.parametrize(("prior", "eta"), CASES, ids=lambda c: type(c).__name__)
def test_q_is_exp_of_eta_dot_statistics_and_its_expectations_are_right(prior, eta):
    family = family_of(site(prior))
    q = family.distribution(eta)
    g = torch.Generator().manual_seed(0)
    x = family.probe(torch.Size([50]), g)
    stats = family.statistics(x)
    assert stats.shape == (50, family.size) == (50, len(family.statistic_names()))
    linear = stats[..., 1:] if family.has_constant else stats
    # log q(x) − η·T(x) is the same for every x: −A(η), the log normalizer
    normalizer = q.log_prob(x.to(q.mean.dtype)) - (linear * eta).sum(-1)
    assert float(normalizer.std()) < 1e-10
    torch.manual_seed(0)
    draws = family.statistics(q.sample((200000,)))
    expected = family.expected_statistics(q)
    stderr = draws.std(0) / 200000**0.5
    assert bool(((draws.mean(0) - expected).abs() <= 5 * stderr + 1e-12).all())


def test_improper_updates_and_unknown_families_are_refused_by_site():
    family = family_of(site(dist.Gamma(t(2.0), t(1.0)), "tau"))
    with pytest.raises(NotConjugateError, match="'tau' \\(Gamma\\).*not positive"):
        family.distribution(t([1.0, 2.0]))  # rate −1
    family = family_of(site(dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1), "w"))
    with pytest.raises(NotConjugateError, match="'w' \\(Normal\\).*not positive definite"):
        family.distribution(t([0.0, 0.0, 1.0, 0.0, -1.0]))
    with pytest.raises(NotConjugateError, match="latent site 'r': StudentT"):
        family_of(site(dist.StudentT(t(3.0)), "r"))
    with pytest.raises(NotConjugateError, match="latent site 'm': Independent"):
        family_of(site(dist.Normal(torch.zeros(2, 2), 1.0).to_event(2), "m"))
