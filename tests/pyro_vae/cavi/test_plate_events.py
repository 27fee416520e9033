"""plate_events: a plated latent read whole, run as one vector over its plate."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.cavi.plate_events import convertible_plate, with_plates_as_events
from tests.pyro_vae.cavi.float64 import F64, t


def model(y, scale=1.0):
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    with pyro.plate("outer", 2, dim=-2):
        with pyro.plate("features", 3, dim=-1):
            alpha = pyro.sample("alpha", dist.Gamma(t(1.0), t(1.0)))
            w = pyro.sample("w", dist.Normal(t(0.0), alpha.rsqrt()))
    pyro.sample("y", dist.Normal(w.sum() * scale, tau.rsqrt()), obs=y)


def test_the_rewritten_model_is_the_same_joint_density_with_the_plate_in_the_event():
    """Each rewritten site has event dim 1, the plate leaves its cond_indep_stack (the outer
    one stays, moved from dim -2 to -1, the batch dim it now names), and log p(y, z) at the
    same values equals the model's as declared (Pyro's own trace of it)."""
    original = poutine.trace(model).get_trace(t(0.3))
    rewritten = with_plates_as_events(model, {"w": "features", "alpha": "features"})
    replayed = poutine.trace(poutine.replay(rewritten, trace=original)).get_trace(t(0.3))
    for site in ("w", "alpha"):
        node = replayed.nodes[site]
        assert node["fn"].event_shape == (3,) and node["fn"].batch_shape == (2,)
        assert [(f.name, f.dim) for f in node["cond_indep_stack"]] == [("outer", -1)]
    assert replayed.nodes["tau"]["fn"].event_shape == ()
    assert float(replayed.log_prob_sum()) == pytest.approx(float(original.log_prob_sum()), 1e-12)
    assert rewritten.__wrapped__ is model


def test_only_a_scalar_normal_or_gamma_read_across_its_dim_minus_one_plate_converts():
    nodes = poutine.trace(model).get_trace(t(0.3)).nodes
    assert convertible_plate(nodes["w"], frozenset({"features"})) == "features"  # outer stays
    assert convertible_plate(nodes["w"], frozenset({"outer", "features"})) == "features"
    # read across outer (at dim −2) only, from inside features: taken over features, w is
    # in one plate, which a data index reads
    assert convertible_plate(nodes["w"], frozenset({"outer"})) == "features"
    assert convertible_plate(nodes["y"], frozenset({"features"})) is None  # observed

    def one_plate(y):
        with pyro.plate("features", 3):
            alpha = pyro.sample("alpha", dist.Gamma(t(1.0), t(1.0)))
            w = pyro.sample("w", dist.Normal(t(0.0), alpha.rsqrt()))
        with pyro.plate("second", 3, dim=-2):
            pyro.sample("u", dist.Normal(t(0.0), t(1.0)))
        pyro.sample("y", dist.Normal(w.sum(), t(1.0)), obs=y)

    nodes = poutine.trace(one_plate).get_trace(t(0.3)).nodes
    assert convertible_plate(nodes["w"], frozenset({"features"})) == "features"
    assert convertible_plate(nodes["alpha"], frozenset({"features"})) == "features"
    assert convertible_plate(nodes["u"], frozenset({"second"})) is None  # dim −2

    def others(y):
        with pyro.plate("k", 3):
            pyro.sample("p", dist.Beta(t(1.0), t(1.0)))
            pyro.sample("v", dist.MultivariateNormal(torch.zeros(2, dtype=F64),
                                                     torch.eye(2, dtype=F64)))  # fmt: skip
            with poutine.mask(mask=torch.tensor([True, False, True])):
                pyro.sample("m", dist.Normal(t(0.0), t(1.0)))
            with poutine.scale(scale=2.0):
                pyro.sample("s", dist.Normal(t(0.0), t(1.0)))

    nodes = poutine.trace(others).get_trace(t(0.3)).nodes
    for site in ("p", "v", "m", "s"):
        assert convertible_plate(nodes[site], frozenset({"k"})) is None, site


def test_an_exponential_prior_converts_as_the_gamma_it_is():
    """Tester AT's F3: an Exponential prior is a Gamma of shape 1 (AutoCAVI fits it as one)
    but torch does not subclass it, and a plated one read whole was refused as 'not a scalar
    Normal or Gamma'. It converts now, and ARD with Exponential(1) precisions has the bound
    of the same model with Gamma(1, 1) ones (the same density)."""
    from pyro_vae.cavi import AutoCAVI

    def one_plate(y):
        with pyro.plate("features", 3):
            pyro.sample("alpha", dist.Exponential(t(1.0)))

    nodes = poutine.trace(one_plate).get_trace(t(0.3)).nodes
    assert convertible_plate(nodes["alpha"], frozenset({"features"})) == "features"

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 2, generator=g, dtype=F64), torch.randn(20, generator=g, dtype=F64)

    def ard(X, y, prior):
        with pyro.plate("features", 2):
            alpha = pyro.sample("alpha", prior)
            w = pyro.sample("w", dist.Normal(t(0.0), alpha.rsqrt()))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal(X @ w, t(0.5)), obs=y)

    exponential = AutoCAVI(ard, tol=1e-12).fit(X, y, dist.Exponential(t(1.0)))
    gamma = AutoCAVI(ard, tol=1e-12).fit(X, y, dist.Gamma(t(1.0), t(1.0)))
    assert exponential.plates_as_events_ == {"w": "features", "alpha": "features"}
    assert abs(exponential.lower_bound_ - gamma.lower_bound_) < 1e-10 * abs(gamma.lower_bound_)
