import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

from pyro_vae.annealing import ScaleLatents
from pyro_vae.estimators import TraceEnumELBO


def entangled():
    """y_n enumerated in the model, z_n | y_n ~ N(y_n, 1) drawn by the guide: z's prior
    is a sum over y, so it has no KL term of its own."""

    @config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            z = pyro.sample("z", dist.Normal(y, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    return model, guide


def test_free_bits_refuse_a_latent_whose_prior_depends_on_an_enumerated_site():
    model, guide = entangled()
    match = r"free_bits: the prior term of latent site 'z' varies with an enumerated"
    with pytest.raises(ValueError, match=match):
        TraceEnumELBO(max_plate_nesting=1, free_bits=0.5).loss(model, guide, torch.zeros(3))


def test_beta_on_such_a_latent_says_why_it_cannot_apply():
    model, guide = entangled()
    TraceEnumELBO(max_plate_nesting=1).loss(model, guide, torch.zeros(3))  # β = 1 is fine
    with pytest.raises(ValueError, match=r"beta: a latent site drawn by the guide has a prior"):
        TraceEnumELBO(max_plate_nesting=1).loss(
            ScaleLatents(2.0)(model), ScaleLatents(2.0, guide=True)(guide), torch.zeros(3)
        )


def summed_factor_pair(reparameterized: bool = False):
    """z_n in a plate, and a factor outside it reading Σ_n z_n (tester M)."""

    def model():
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0) if reparameterized else dist.Bernoulli(0.5))
        pyro.factor("f", 3.0 * z.sum(-1))

    def guide():
        ql = pyro.param("ql", torch.zeros(2))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(ql, 1.0) if reparameterized else dist.Bernoulli(logits=ql))

    return model, guide


def test_a_term_outside_the_plate_of_a_score_function_site_is_refused():
    """TraceEnum_ELBO never lets the factor reach z's score (Pyro #847): its mean gradient
    was [0.006, 0.004] where the closed form, ∂/∂ql of −(3 Σ σ(ql) + H[q]), is [−0.75,
    −0.75]. Refused, before any gradient, with the estimators that get it right."""
    pyro.clear_param_store()
    model, guide = summed_factor_pair()
    expected = r"model site 'f' depends on guide site 'z' across the plate 'data'.*Use score"
    with pytest.raises(ValueError, match=expected):
        TraceEnumELBO().loss_and_grads(model, guide)
    assert pyro.param("ql").grad is None


def test_an_estimator_used_on_a_second_model_checks_that_model_too():
    """Tester T's F2: the check ran once per estimator, so an estimator that had passed one
    model let a second, reading z across its plate, through with the biased gradient (12
    standard errors off). Each (model, guide) pair is checked; a bound method made afresh
    at every call equals the last one and is not run again."""
    pyro.clear_param_store()
    safe, safe_guide = summed_factor_pair(reparameterized=True)
    estimator = TraceEnumELBO()
    estimator.loss(safe, safe_guide)
    model, guide = summed_factor_pair()
    with pytest.raises(ValueError, match=r"model site 'f' depends on guide site 'z' across"):
        estimator.loss(model, guide)

    class Pair:
        def model(self):
            return safe()

        def guide(self):
            return safe_guide()

    pair = Pair()
    estimator.loss(pair.model, pair.guide)
    estimator.loss(pair.model, pair.guide)  # new bound-method objects, equal to the last
    assert len(estimator._plates_checked) == 2


def test_pathwise_and_nested_dependences_are_let_through():
    """A reparameterized z reaches the factor through its path; a term inside the plate
    reading a global site outside it is the ordinary nesting."""
    pyro.clear_param_store()
    model, guide = summed_factor_pair(reparameterized=True)
    TraceEnumELBO().loss_and_grads(model, guide)  # a draw's gradient: ql + ε − 3
    assert torch.isfinite(pyro.param("ql").grad).all()

    def nested(x):
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3 + 0.4 * g))
            pyro.sample("x", dist.Normal(z + g, 1.0), obs=x)

    def nested_guide(x):
        pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.full((3,), 0.5))))

    TraceEnumELBO().loss_and_grads(nested, nested_guide, torch.zeros(3))


def test_vectorized_particles_are_checked_and_a_branch_on_a_draw_is_warned_of():
    """Tester DG: ``enum`` with ``vectorize_particles=True`` ran Pyro's own vectorized
    run, which no check reached: a branch on the global draw (``if mu.sum() > 0``) put the
    loss 12 standard errors from the loop's, with no word. Insisted on, it warns."""
    from pyro_vae.traces import VectorizationWarning

    x = torch.tensor([0.5, 1.5, -0.3, 2.0, 1.0, 0.2])

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        sign = 1.0 if mu.sum() > 0 else -1.0
        with pyro.plate("data", 6):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(sign * c + mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.5, 0.5))

    estimator = TraceEnumELBO(num_particles=4, max_plate_nesting=1, vectorize_particles=True)
    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning, match=r"model: a value of draw 'mu' is read"):
        estimator.loss(model, guide, x)


def test_a_read_of_an_enumerated_site_s_support_is_not_taken_for_a_particle_s():
    """Under enumeration every particle gets the site's whole support, so reading its
    size (``one_hot`` without a number of classes) is the same for all; the check, which
    draws the site, flagged it (tester DI)."""
    import warnings

    import torch.nn.functional as F
    from pyro.ops.indexing import Vindex

    data = torch.tensor([-2.1, -1.8, 2.2, 1.9, 0.1])

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("n", 5):
            c = pyro.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])),
                            infer={"enumerate": "parallel"})  # fmt: skip
            states = F.one_hot(c).shape[-1]
            pyro.sample("x", dist.Normal(Vindex(mu)[..., c] * (states / 2), 1.0), obs=data)

    def guide():
        pyro.sample("mu", dist.Normal(torch.tensor([-2.0, 2.0]), 0.3).to_event(1))

    estimator = TraceEnumELBO(num_particles=4, max_plate_nesting=1, vectorize_particles=True)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(estimator.loss(model, guide))
