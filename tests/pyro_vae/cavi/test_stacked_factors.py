"""A chain's step factors stacked by form: the same sweeps as factor by factor."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

import pyro_vae.cavi.chains as chains
import pyro_vae.cavi.coordinate_updates as coordinate_updates
from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.stacked_factors import FOLLOWING, SELECTOR, stack_chain_factors
from tests.pyro_vae.cavi.float64 import F64

K, T = 3, 7


def bayesian_hmm(y):
    """Latent rows A_k and means μ_k; y [T] one sequence, or [T, N] sequences in a plate."""
    with pyro.plate("states", K):
        rows = pyro.sample("A", dist.Dirichlet(torch.ones(K, dtype=F64)))
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 10.0))
    plate = pyro.plate("sequences", y.shape[1]) if y.dim() > 1 else pyro.plate("one", 1)
    with plate:
        s = pyro.sample("s_0", dist.Categorical(torch.ones(K, dtype=F64) / K))
        pyro.sample("y_0", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[0])
        for t in pyro.markov(range(1, len(y))):
            s = pyro.sample(f"s_{t}", dist.Categorical(Vindex(rows)[..., s, :]))
            pyro.sample(f"y_{t}", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[t])


def data(sequences=None):
    g = torch.Generator().manual_seed(3)
    shape = (T,) if sequences is None else (T, sequences)
    return 3 * (torch.arange(T) % K).to(F64).reshape((T,) + (1,) * (len(shape) - 1)) + torch.randn(
        shape, generator=g, dtype=F64
    )


def test_the_steps_emissions_and_transitions_are_two_stacks():
    fit = AutoCAVI(bayesian_hmm, tol=1e-10, max_iter=3).fit(data())
    sites = {s for chain in fit.fitted_chains_ for s in chain}
    stats = {n: q.probs if hasattr(q, "probs") else None for n, q in fit._q.items()}
    rest, stacks = stack_chain_factors(fit._factors, sites, stats, fit._pairs)
    by_kind = {stack.following is None: stack for stack in stacks}
    emissions, transitions = by_kind[True], by_kind[False]
    assert emissions.selectors == tuple(f"s_{t}" for t in range(T))
    assert transitions.selectors == tuple(f"s_{t}" for t in range(T - 1))
    assert transitions.following == tuple(f"s_{t}" for t in range(1, T))
    assert emissions.factor.selector == SELECTOR and FOLLOWING in transitions.factor.latents
    assert emissions.factor.coefficients.shape[0] == T
    assert {f.name for f in rest} == {"A", "mu", "s_0"}


def unstacked(factors, chain_sites, stats, pairs):
    return list(factors), []


@pytest.mark.parametrize("sequences", [None, 4], ids=["one sequence", "four in a plate"])
def test_stacked_sweeps_are_the_factor_by_factor_sweeps(sequences, monkeypatch):
    """Every bound, q(A), q(μ) and each step's marginals as when each factor is contracted
    on its own, to float64 rounding."""
    y = data(sequences)
    stacked = AutoCAVI(bayesian_hmm, tol=1e-12).fit(y)
    monkeypatch.setattr(coordinate_updates, "stack_chain_factors", unstacked)
    monkeypatch.setattr(chains, "stack_chain_factors", unstacked)
    alone = AutoCAVI(bayesian_hmm, tol=1e-12).fit(y)
    assert stacked.lower_bounds_ == pytest.approx(alone.lower_bounds_, rel=1e-12)
    q, q_alone = stacked.variational_distributions(), alone.variational_distributions()
    assert torch.allclose(q["A"].concentration, q_alone["A"].concentration, rtol=1e-10)
    assert torch.allclose(q["mu"].loc, q_alone["mu"].loc, rtol=1e-10, atol=1e-12)
    for t in range(T):
        assert torch.allclose(q[f"s_{t}"].probs, q_alone[f"s_{t}"].probs, atol=1e-10)


def test_a_site_picking_a_row_in_another_chain_is_not_stacked_as_a_transition(monkeypatch):
    """s_t picks z_t's row of a latent W, and z_t heads a chain (z_t, x_t) of its own: no
    pairwise marginal joins s_t and z_t, so their factors are no transitions to stack
    (tester 24: stacked as such, the fit raised KeyError ('s_0', 'z_0')); the same fit as
    factor by factor."""

    def layered(y):
        with pyro.plate("states", K):
            W = pyro.sample("W", dist.Dirichlet(torch.ones(K, dtype=F64)))
            A = pyro.sample("A", dist.Dirichlet(torch.ones(K, dtype=F64)))
            mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 10.0))
        s = pyro.sample("s_0", dist.Categorical(torch.ones(K, dtype=F64) / K))
        for t in pyro.markov(range(len(y))):
            if t:
                s = pyro.sample(f"s_{t}", dist.Categorical(Vindex(A)[..., s, :]))
            z = pyro.sample(f"z_{t}", dist.Categorical(Vindex(W)[..., s, :]))
            x = pyro.sample(f"x_{t}", dist.Categorical(Vindex(W)[..., z, :]))
            pyro.sample(f"y_{t}", dist.Normal(Vindex(mu)[..., x], 1.0), obs=y[t])

    y = data()[:5]
    stacked = AutoCAVI(layered, tol=1e-10, max_iter=200).fit(y)
    assert ("z_0", "x_0") in stacked.fitted_chains_
    monkeypatch.setattr(coordinate_updates, "stack_chain_factors", unstacked)
    monkeypatch.setattr(chains, "stack_chain_factors", unstacked)
    alone = AutoCAVI(layered, tol=1e-10, max_iter=200).fit(y)
    assert stacked.lower_bounds_ == pytest.approx(alone.lower_bounds_, rel=1e-12)
