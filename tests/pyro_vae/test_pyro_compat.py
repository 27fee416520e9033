"""Each wrapper of a Pyro internal, against the Pyro behaviour it stands for (real Pyro
objects, pyro-ppl 1.9.x). A failure here after a Pyro upgrade names the internal that
moved."""

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.indep_messenger import CondIndepStackFrame

from pyro_vae.pyro_compat import (
    autoguide_plates,
    elbo_loss_particle,
    elbo_trace,
    elbo_traces,
    frame_at_dim,
    frame_with_full_size,
    guess_max_plate_nesting,
    pop_waiting_optim_state,
    set_autoguide_model,
    subsample_declaration,
    validate_sample,
    validates_args,
)

X = torch.tensor([0.5, -1.0, 2.0, 0.0])


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        with pyro.plate("pixels", 2, dim=-2):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z.sum(0), 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.tensor(0.3))
    pyro.sample("mu", dist.Normal(loc, 1.0))
    with pyro.plate("data", len(x)), pyro.plate("pixels", 2, dim=-2):
        pyro.sample("z", dist.Normal(torch.zeros(2, len(x)), 1.0))


def _elbo_by_hand(model_trace, guide_trace):
    return model_trace.log_prob_sum() - guide_trace.log_prob_sum()


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_elbo_traces_and_loss_particles_give_pyros_own_loss(elbo_class):
    elbo = elbo_class(num_particles=3, max_plate_nesting=2)
    pyro.set_rng_seed(1)
    pairs = list(elbo_traces(elbo, model, guide, (X,), {}))
    pyro.set_rng_seed(1)
    expected = elbo.loss(model, guide, X)
    assert len(pairs) == 3
    losses = [elbo_loss_particle(elbo, m, g)[0] for m, g in pairs]
    assert sum(losses) / 3 == pytest.approx(expected, rel=1e-6)


def test_elbo_traces_vectorized_are_one_pair_with_a_particle_dim_after_guessing_the_nesting():
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True)
    (model_trace, guide_trace), *rest = elbo_traces(elbo, model, guide, (X,), {})
    assert rest == []
    assert elbo.max_plate_nesting == 3  # two plates and the particle plate
    assert guide_trace.nodes["mu"]["value"].shape == (5, 1, 1)
    assert model_trace.nodes["x"]["value"].shape == X.shape


def test_elbo_trace_is_the_guide_and_the_model_replayed_against_it():
    model_trace, guide_trace = elbo_trace(Trace_ELBO(), model, guide, (X,), {})
    assert torch.equal(model_trace.nodes["mu"]["value"], guide_trace.nodes["mu"]["value"])
    assert torch.equal(model_trace.nodes["x"]["value"], X)
    assert "log_prob_sum" in model_trace.nodes["x"]  # as Trace_ELBO computes it


def test_elbo_loss_particle_is_the_negative_elbo_and_its_surrogate_carries_the_gradient():
    elbo = Trace_ELBO()
    model_trace, guide_trace = elbo_trace(elbo, model, guide, (X,), {})
    loss, surrogate = elbo_loss_particle(elbo, model_trace, guide_trace)
    by_hand = _elbo_by_hand(model_trace, guide_trace)
    assert loss == pytest.approx(-by_hand.item(), rel=1e-6)
    loc = pyro.param("loc").unconstrained()
    (grad,) = torch.autograd.grad(surrogate, [loc], retain_graph=True)
    (expected,) = torch.autograd.grad(-by_hand, [loc])
    assert torch.allclose(grad, expected)


@pytest.mark.parametrize(("num_particles", "vectorize", "nesting"), [(1, True, 2), (4, True, 3)])
def test_guess_max_plate_nesting_finds_what_pyro_finds_at_its_first_loss(
    num_particles, vectorize, nesting
):
    ours = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    guess_max_plate_nesting(ours, model, guide, (X,), {})
    pyros = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    pyros.loss(model, guide, X)
    assert ours.max_plate_nesting == pyros.max_plate_nesting == nesting


def test_guess_max_plate_nesting_draws_from_the_global_random_stream():
    guess_max_plate_nesting(Trace_ELBO(vectorize_particles=True), model, guide, (X,), {})
    after = torch.rand(())
    pyro.set_rng_seed(0)
    assert not torch.equal(torch.rand(()), after)


def _local_model(x):
    with pyro.plate("data", 10, subsample_size=len(x)):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def test_autoguide_plates_are_the_hooks_plates_then_one_per_prototype_plate():
    guide = AutoNormal(_local_model)
    guide(X)  # lays out the prototype
    plates = autoguide_plates(guide, X)
    assert set(plates) == {"data"} and plates is guide.plates
    assert (plates["data"].size, plates["data"].subsample_size) == (10, len(X))
    hooked = AutoNormal(
        _local_model, create_plates=lambda x: pyro.plate("data", 10, subsample=torch.arange(4))
    )
    hooked(X)
    assert autoguide_plates(hooked, X)["data"].subsample_size == 4


def test_set_autoguide_model_is_what_the_guide_runs_to_lay_out_its_parameters():
    calls = []

    def counted(x):
        calls.append(len(x))
        return _local_model(x)

    guide = AutoNormal(_local_model)
    set_autoguide_model(guide, counted)
    assert guide.model is counted
    assert all(module is not counted for module in guide.modules())  # not a submodule
    guide(X)
    assert calls == [len(X)]


def test_pop_waiting_optim_state_takes_the_state_set_state_left_once():
    loc = pyro.param("loc", torch.tensor(1.0))
    first = pyro.optim.Adam({"lr": 0.1})
    loc.unconstrained().grad = torch.tensor(0.5)
    first([loc.unconstrained()])
    saved = first.get_state()

    second = pyro.optim.Adam({"lr": 0.1})
    second.set_state(saved)
    state = pop_waiting_optim_state(second, "loc")
    assert state["state"][0]["step"] == saved["loc"]["state"][0]["step"] == 1
    assert pop_waiting_optim_state(second, "loc") is None
    assert pop_waiting_optim_state(second, "elsewhere") is None


@pytest.mark.parametrize("flag", [True, False])
def test_validates_args_is_the_validate_args_the_distribution_was_built_with(flag):
    assert validates_args(dist.Normal(0.0, 1.0, validate_args=flag)) is flag
    assert validates_args(dist.Bernoulli(logits=torch.zeros(3), validate_args=flag)) is flag


def test_validates_args_without_a_flag_follows_pyros_switch_when_read():
    normal = dist.Normal(0.0, 1.0)
    with pyro.validation_enabled(False):
        off = validates_args(normal)
    with pyro.validation_enabled(True):
        on = validates_args(normal)
    assert (off, on) == (False, True)


def test_validate_sample_raises_as_log_prob_does_outside_the_support():
    bernoulli = dist.Bernoulli(logits=torch.zeros(3), validate_args=True)
    validate_sample(bernoulli, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="support"):
        validate_sample(bernoulli, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="support"):
        bernoulli.log_prob(torch.tensor([0.0, 0.5, 1.0]))


def test_frame_with_full_size_copies_a_pyro_plate_frame_with_its_full_size():
    trace = poutine.trace(model).get_trace(X)
    (frame,) = [f for f in trace.nodes["x"]["cond_indep_stack"] if f.name == "data"]
    assert frame.full_size == len(X)
    full = frame_with_full_size(frame, 40)
    assert isinstance(full, CondIndepStackFrame)
    assert (full.name, full.dim, full.size, full.counter, full.full_size) == (
        frame.name,
        frame.dim,
        frame.size,
        frame.counter,
        40,
    )
    assert frame.full_size == len(X)  # a copy


def test_frame_at_dim_copies_a_pyro_plate_frame_at_another_dim():
    trace = poutine.trace(model).get_trace(X)
    (frame,) = [f for f in trace.nodes["x"]["cond_indep_stack"] if f.name == "data"]
    moved = frame_at_dim(frame, -2)
    assert isinstance(moved, CondIndepStackFrame)
    assert (moved.name, moved.dim, moved.size, moved.counter, moved.full_size) == (
        frame.name,
        -2,
        frame.size,
        frame.counter,
        frame.full_size,
    )
    assert frame.dim == -1  # a copy


def test_provenance_parts_are_pyros_extract_provenance():
    from pyro.ops.provenance import ProvenanceTensor, extract_provenance

    from pyro_vae.pyro_compat import provenance_parts

    value = ProvenanceTensor(torch.ones(2), frozenset({"a", "b"}))
    tensor, provenance = provenance_parts(value)
    expected_tensor, expected_provenance = extract_provenance(value)
    assert tensor is expected_tensor and provenance == expected_provenance == {"a", "b"}
    assert type(tensor) is torch.Tensor


def test_distribution_mask_is_what_mask_was_given_and_what_log_prob_applies():
    from pyro_vae.pyro_compat import distribution_mask

    keep = torch.tensor([True, False, True])
    masked = dist.Normal(torch.zeros(3), 1.0).mask(keep)
    assert torch.equal(distribution_mask(masked), keep)
    # the mask log_prob applies: zero where it is False
    assert torch.equal(masked.log_prob(torch.zeros(3)) != 0, keep)


@pytest.mark.parametrize(("size", "subsample_size", "run"), [(6, 4, 4), (6, None, 6), (4, 4, 4)])
def test_subsample_declaration_is_what_the_plate_was_declared_with(size, subsample_size, run):
    def model():
        with pyro.plate("data", size, subsample_size=subsample_size) as i:
            return len(i)

    trace = poutine.trace(model).get_trace()
    assert trace.nodes["_RETURN"]["value"] == run
    assert subsample_declaration(trace.nodes["data"]["fn"]) == (size, subsample_size)
