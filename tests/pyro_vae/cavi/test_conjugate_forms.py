import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi.exponential_families import NotConjugateError
from tests.pyro_vae.cavi.factors import normal_gamma, probe
from tests.pyro_vae.cavi.float64 import F64, t


def test_a_normal_likelihood_is_recovered_term_by_term():
    # log N(y | μ, 1/τ) = −½log 2π + ½ log τ − τy²/2 + τyμ − τμ²/2, summed over the plate
    y = t([0.3, -1.2, 2.0])
    depends, factors = probe(normal_gamma, y)
    assert depends == {"tau": ["tau"], "mu": ["mu"], "y": ["tau", "mu"]}
    c = factors["y"].coefficients[0]  # [B_τ = (1, τ, log τ), B_μ = (1, μ, μ²)], plate summed
    expected = torch.zeros(3, 3, dtype=F64)
    expected[0, 0] = -3 / 2 * math.log(2 * math.pi)
    expected[2, 0] = 3 / 2
    expected[1, 0] = -float((y**2).sum()) / 2
    expected[1, 1] = float(y.sum())
    expected[1, 2] = -3 / 2
    assert c.shape == (3, 3)
    assert torch.allclose(c, expected, atol=1e-9)


@pytest.mark.parametrize("shift", [0, 1])
def test_a_factor_reading_another_element_s_assignment_fails_its_check(shift):
    # the fit points hold z at one value across the plate (its design then is shared), so
    # y_n = N(μ[z_{n−1}]) fits them as if it read z_n; the check points draw every z_n apart
    # and catch it. shift 0: the same model reading its own z_n is fitted.
    from tests.pyro_vae.cavi.mixtures import two_means

    model = two_means(shift=shift)
    y = t([0.1, 2.0, -1.0, 0.5, 3.0, 1.1])
    if shift == 0:
        assert probe(model, y)[1]["y"].selector == "z"
        return
    with pytest.raises(NotConjugateError, match="factor 'y'.*for some value of 'z'"):
        probe(model, y)


def test_a_factor_with_too_many_coefficients_is_refused_before_any_probe_run(monkeypatch):
    # an HMM step reading five Dirichlet rows: 5 x 5 x 6⁵ = 194,400 coefficients per element
    # (it asked the allocator for 12 GB); refused by name before the model runs at any probe
    import pyro_vae.cavi.probe_runs as probe_runs
    from pyro_vae.cavi import AutoCAVI
    from pyro_vae.cavi.conjugate_forms import MAX_UNKNOWNS

    def hmm(y, k=5):
        rows = [pyro.sample(f"A{r}", dist.Dirichlet(torch.ones(k, dtype=F64))) for r in range(k)]
        s = pyro.sample("s_0", dist.Categorical(torch.ones(k, dtype=F64) / k))
        for i in pyro.markov(range(1, len(y))):
            s = pyro.sample(f"s_{i}", dist.Categorical(torch.stack(rows)[s]))
            pyro.sample(f"y_{i}", dist.Normal(s.to(F64), 1.0), obs=y[i])

    runs = []
    monkeypatch.setattr(probe_runs, "site_log_probs", lambda *a: runs.append(a) or 1 / 0)
    with pytest.raises(NotConjugateError, match=r"factor 's_1' \(Categorical\).*194,400") as e:
        AutoCAVI(hmm).fit(t([0.0, 1.0, 2.0]))
    assert f"({MAX_UNKNOWNS:,})" in str(e.value) and "ConditionalCAVIGuide" in str(e.value)
    assert runs == []


def test_partly_observed_assignments_are_refused_saying_why():
    # obs_mask on a mixture's assignments: where a label is observed the model reads it, not
    # the latent z_unobserved; the refusal said "not multilinear in mu" (tester 11)
    from pyro.ops.indexing import Vindex

    from pyro_vae.cavi import AutoCAVI

    g = torch.Generator().manual_seed(14)
    labels = torch.arange(8) % 2
    y = t([-3.0, 3.0])[labels] + torch.randn(8, generator=g, dtype=F64)
    known = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)

    def masked(y, z):
        with pyro.plate("c", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(5.0)))
        with pyro.plate("d", len(y)):
            z = pyro.sample("z", dist.Categorical(t([0.5, 0.5])), obs=z, obs_mask=known)
            pyro.sample("y", dist.Normal(Vindex(mu.unsqueeze(-2))[..., z], 1.0), obs=y)

    with pytest.raises(NotConjugateError, match=r"'z_unobserved'.*obs_mask.*TraceEnum_ELBO"):
        AutoCAVI(masked).fit(y, labels)
