"""A factor on its support contracted from its columns summed over the data: the same
messages and E_q[log f] as contracting every datum (the sums only reorder the products)."""

from dataclasses import replace

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.column_sums import summed_message, summed_total
from pyro_vae.cavi.data_indexing import scatter_by_index
from pyro_vae.cavi.expectations import contract, sum_to
from tests.pyro_vae.cavi.float64 import F64, t
from tests.pyro_vae.cavi.test_factor_support import crossed, crossed_data, crossed_latents


def crossed_slope(subject, item, x, y):
    """Crossed effects and a fixed slope, y ~ N(μ + a[s] + b[i] + β·x, 1/τ): five members,
    two of them indexed."""
    mu, a, b, tau = crossed_latents(subject, item)
    beta = pyro.sample("beta", dist.Normal(t(0.0), t(10.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu + a + b + beta * x, tau.rsqrt()), obs=y)


def fitted(model, *args):
    """(the fit, its likelihood factor, each latent's E_q[T] at a random q: multilinearity
    makes any statistics a test of the contraction, these away from the fixed point)."""
    fit = AutoCAVI(model, max_iter=3).fit(*args)
    factor = next(f for f in fit._factors if f.name == "y")
    if factor.local is not None:  # solved around q: the sweeps contract these, on its support
        factor = replace(factor, coefficients=factor.local)
    g = torch.Generator().manual_seed(1)
    stats = {
        name: torch.randn(fit._latents[name].batch_shape + (latent.family.size,),
                          generator=g, dtype=F64).index_fill(-1, torch.tensor([0]), 1.0)
        for name, latent in fit._latents.items()
    }  # fmt: skip
    return fit, factor, stats


def per_datum(fit, factor, stats, name):
    """The message as contract gives it per datum, then summed to the latent's shape."""
    latent = fit._latents[name]
    shape = latent.batch_shape + (latent.family.size,)
    message = contract(factor, stats, (name,))
    if name in factor.index:
        message = scatter_by_index(message, factor.index[name], shape)
    return sum_to(message, shape)


@pytest.mark.parametrize("per_pair", [1, 3])
def test_crossed_effects_messages_and_bound_match_the_per_datum_contraction(per_pair):
    subject, item, y = crossed_data(per_pair)
    fit, factor, stats = fitted(crossed, subject, item, y)
    constants = {name: True for name in fit._latents}
    total = float(contract(factor, stats, ()).sum())
    got = summed_total(factor, stats, constants)
    assert got is not None and abs(got - total) <= 1e-12 * (1 + abs(total))
    for name in ("mu", "a", "b", "tau"):
        latent = fit._latents[name]
        shape = latent.batch_shape + (latent.family.size,)
        expected = per_datum(fit, factor, stats, name)
        message = summed_message(factor, stats, name, shape, constants)
        scale = 1 + float(expected.abs().max())
        assert float((message - expected).abs().max()) <= 1e-12 * scale, name


def test_crossed_effects_with_a_slope_match_the_per_datum_contraction():
    subject, item, y = crossed_data()
    x = torch.randn(len(y), generator=torch.Generator().manual_seed(2), dtype=F64)
    fit, factor, stats = fitted(crossed_slope, subject, item, x, y + 0.5 * x)
    constants = {name: True for name in fit._latents}
    total = float(contract(factor, stats, ()).sum())
    assert abs(summed_total(factor, stats, constants) - total) <= 1e-12 * (1 + abs(total))
    for name in ("mu", "a", "b", "tau", "beta"):
        latent = fit._latents[name]
        shape = latent.batch_shape + (latent.family.size,)
        expected = per_datum(fit, factor, stats, name)
        message = summed_message(factor, stats, name, shape, constants)
        assert float((message - expected).abs().max()) <= 1e-12 * (1 + float(expected.abs().max()))


def test_factors_that_need_each_datum_are_left_to_contract():
    subject, item, y = crossed_data()
    fit, factor, stats = fitted(crossed, subject, item, y)
    constants = {name: True for name in fit._latents}
    shape = fit._latents["mu"].batch_shape + (3,)
    # a family without the constant statistic, and a chain link joining two members
    assert summed_total(factor, stats, {**constants, "a": False}) is None
    assert summed_message(factor, stats, "mu", shape, constants, {("a", "b"): None}) is None
    # a latent varying along the data unread through an index (a per-datum latent)
    per_element = {**stats, "tau": stats["tau"].expand(len(y), 3)}
    assert summed_total(factor, per_element, constants) is None
    # the prior of one latent: nothing indexed to sum by
    prior = next(f for f in fit._factors if f.name == "a")
    assert summed_total(prior, stats, constants) is None
