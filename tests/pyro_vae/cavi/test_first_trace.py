import pyro
import pyro.distributions as dist
import torch

from pyro_vae.cavi.first_trace import dependencies, find_dependencies, first_run
from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import t


def model(y):
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
    w = pyro.sample("w", dist.Normal(t(0.0), t(1.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)
    pyro.sample("v", dist.Normal(w, 1.0), obs=t(0.5))


# read off the model above: each factor's latents, in sampling order
READS = {"tau": ["tau"], "mu": ["mu"], "w": ["w"], "y": ["tau", "mu"], "v": ["w"]}


def test_each_factor_reads_the_latents_its_parameters_were_computed_from():
    y = t([0.1, -0.4, 1.2])
    trace, read = first_run(model, (y,), {}, 0)
    latents = find_latents(trace)
    assert dependencies(read, latents) == READS
    # the same sets from a run at probe values, where the first draw is not finite
    depends, _ = find_dependencies(model, (y,), {}, latents, torch.Generator().manual_seed(0))
    assert depends == READS


def test_the_first_run_is_seeded_and_leaves_the_global_generator_as_it_was():
    y = t([0.1, -0.4, 1.2])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    draws = [first_run(model, (y,), {}, seed)[0].nodes["mu"]["value"] for seed in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert draws[0] == draws[1] and draws[0] != draws[2]
    # plain tensors throughout: no provenance left on a value or a log-density
    trace, _ = first_run(model, (y,), {}, 0)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    assert all(type(s["value"]) is torch.Tensor for s in sites)
    assert all(type(s["log_prob"]) is torch.Tensor for s in sites if s["name"] in READS)
