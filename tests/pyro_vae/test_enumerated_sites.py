"""Model sites summed out by enumeration in the per-datapoint evaluators, against sums by
hand (the evaluators' numbers against exact mixture marginals: tests/pyro_vae/test_evaluate.py)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.enumerated_sites import (
    MAX_COMBINATIONS,
    enumerated_runs,
    enumerated_sites,
    marginal_terms,
)
from pyro_vae.plates import data_plate
from pyro_vae.traces import run_pair

X = torch.tensor([-1.0, 0.5, 2.0])


def model(x, num_data=None):
    with data_plate(x, num_data):
        z = pyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        u = pyro.sample("u", dist.Normal(z, 1.0))  # moves with z
        w = pyro.sample("w", dist.Normal(0.0, 2.0))  # does not
        pyro.sample("x", dist.Normal(u + w, 0.5), obs=x)


def guide(x, num_data=None):
    with data_plate(x, num_data):
        pyro.sample("u", dist.Normal(x, 1.0))
        pyro.sample("w", dist.Normal(0.0, 1.0))


def test_the_marginal_is_the_log_sum_exp_over_the_values_by_hand():
    pyro.set_rng_seed(0)
    model_tr, guide_tr = run_pair(model, guide, (X,), {}, (4, -2))
    sites = enumerated_sites(model_tr, guide_tr, "data", "a test")
    assert sites == ("z",)
    runs = enumerated_runs(model, model_tr, guide_tr, (X,), {}, sites, 4, 2)
    assert len(runs) == 2
    given_u, latent = marginal_terms(runs, sites, 4, 3, 2, "data")
    u, w = guide_tr.nodes["u"]["value"], guide_tr.nodes["w"]["value"]  # [4, 3]
    prior = torch.stack(
        [
            dist.Bernoulli(0.3).log_prob(torch.tensor(c)) + dist.Normal(c, 1.0).log_prob(u)
            for c in (0.0, 1.0)
        ]
    )
    log_p_u = torch.logsumexp(prior, 0) + dist.Normal(0.0, 2.0).log_prob(w)  # z summed out
    joint = torch.logsumexp(prior, 0) + dist.Normal(0.0, 2.0).log_prob(w)
    joint = joint + dist.Normal(u + w, 0.5).log_prob(X)  # x reads u and w alone
    torch.testing.assert_close(latent, log_p_u)
    torch.testing.assert_close(given_u + latent, joint)


def test_sites_the_guide_draws_or_the_data_observe_are_not_enumerated_here():
    def drawn(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    model_tr = poutine.trace(model).get_trace(X)
    assert enumerated_sites(model_tr, poutine.trace(drawn).get_trace(X), "data", "t") == ()


def test_too_many_combinations_are_refused_before_any_run():
    def many(x, num_data=None):
        with data_plate(x, num_data):
            for i in range(13):  # 2^13 = 8,192 combinations
                pyro.sample(f"z{i}", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    trace = poutine.trace(many).get_trace(X)
    empty = poutine.trace(lambda x: None).get_trace(X)
    with pytest.raises(ValueError, match=f"8,192 combinations.*\\({MAX_COMBINATIONS:,}\\)"):
        enumerated_sites(trace, empty, "data", "a test")
