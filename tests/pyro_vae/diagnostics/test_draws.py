"""The guide checks and the S draws every diagnostic starts from."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.diagnostics.draws import draw, log_density_per_draw, probe
from pyro_vae.plates import data_plate
from pyro_vae.traces import VectorizationWarning


def local_model(x):
    with data_plate(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    with data_plate(x):
        pyro.sample("z", dist.Normal(0.5 * x, 0.8))


def test_probe_reads_the_nesting_and_the_data_plate():
    x = torch.randn(7)
    nesting, guide_tr, plate = probe(local_model, local_guide, (x,), {}, local=True)
    assert (nesting, plate) == (1, "data") and "z" in guide_tr.nodes
    assert probe(local_model, local_guide, (x,), {})[2] is None


def test_probe_refuses_guides_that_do_not_fit_the_model():
    x = torch.randn(7)

    def observing_guide(x):
        local_guide(x)
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([7]).to_event(1))

    with pytest.raises(ValueError, match=r"samples \['x'\], which the model observes"):
        probe(local_model, observing_guide, (x,), {})

    def prior_only(x):
        with data_plate(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="need at least one latent and one observed site"):
        probe(prior_only, local_guide, (x,), {})


def test_draws_lie_at_the_particle_dim_and_their_log_densities_add_up():
    x = torch.randn(7)
    guide_tr, model_tr, rank, _ = draw(local_model, local_guide, (x,), {}, 5)
    assert rank == 2 and model_tr.nodes["z"]["value"].shape == (5, 7)
    log_q = log_density_per_draw(guide_tr, rank, 5)
    z = guide_tr.nodes["z"]["value"]
    expected = dist.Normal(0.5 * x, 0.8).log_prob(z).sum(-1).double()
    assert log_q.dtype == torch.float64 and torch.allclose(log_q, expected, atol=1e-5)
    assert math.isfinite(float(log_density_per_draw(model_tr, rank, 5).sum()))


def test_a_site_summed_out_needs_the_draws_under_the_particle_plate():
    """The diagnostics sum a site the model enumerates out by replaying the guide's draws
    under the particle plate; draws taken in a loop (a model that does not broadcast) are
    refused, naming the site."""
    x = torch.tensor([-2.5, -1.0, 0.0, 0.8, 2.2])

    def model(x):  # float(w) takes one draw at a time
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(torch.tensor([0.3, 0.7])),
                            infer={"enumerate": "parallel"})  # fmt: skip
            pyro.sample("x", dist.Normal(torch.tensor([-2.0, 1.0])[c] + float(w), 0.5), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 0.1))

    with (
        pytest.warns(VectorizationWarning),
        pytest.raises(
            ValueError, match=r"sites \['c'\] are summed out by enumeration.*taken in a loop"
        ),
    ):
        draw(model, guide, (x,), {}, 30)


def _mean_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _mean_guide(x):
    pyro.sample("mu", dist.Normal(0.5, 0.5))


def test_draws_beyond_half_the_machines_memory_are_refused_before_any_draw(monkeypatch):
    """Tester CR: psis_khat and to_inference_data at 10⁸ draws ran until killed. Counted
    on one draw: the guide's mu (1 value) and the model's mu and 10 rows of x (11), 12
    values at 64 bytes, 768 bytes a draw; a machine of 2 MiB leaves 1,048,576 bytes, so
    1,365 draws fit and 1,366 do not."""
    import pyro_vae.checks as checks
    from pyro_vae.diagnostics.inference_data import to_inference_data
    from pyro_vae.diagnostics.psis import psis_khat

    monkeypatch.setattr(checks, "machine_memory", lambda: 2 * 2**20)
    x = torch.zeros(10)
    refused = r"^num_samples: 1,366 draws of 12 values each .* expected at most 1,365$"
    for diagnostic in (psis_khat, to_inference_data):
        with pytest.raises(ValueError, match=refused):
            diagnostic(_mean_model, _mean_guide, x, num_samples=1366)
    guide_trace, model_trace, _, _ = draw(_mean_model, _mean_guide, (x,), {}, 1365)
    assert model_trace.nodes["x"]["log_prob"].shape == (1365, 10)


def test_running_out_of_memory_is_no_reason_to_draw_in_a_loop():
    """The loop of the same draws needs the same memory, trace by trace: an allocation's
    failure is raised, not retried as a vectorization failure (tester CR)."""
    from pyro_vae.traces import vectorization_can_cause

    cpu = RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried")
    assert not vectorization_can_cause(cpu)
    assert not vectorization_can_cause(torch.OutOfMemoryError("CUDA out of memory"))
    assert vectorization_can_cause(RuntimeError("The size of tensor a (3) must match"))
