"""The model's plate frames around each site, entered once per run in a guide."""

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.plate_frames import inside_plates, vectorized_frames


def model():
    with pyro.plate("components", 3, dim=-1):
        pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0))
    for i in pyro.plate("loop", 2):  # sequential: not a frame a guide can enter as a dim
        pyro.sample(f"s{i}", dist.Normal(0.0, 1.0))
    pyro.sample("g", dist.Normal(0.0, 1.0))


def test_the_frames_around_each_site_are_read_and_entered_once_per_run():
    trace = pyro.poutine.trace(model).get_trace()
    frames = vectorized_frames(trace, ["mu", "s0", "g", "absent"])
    assert [(f.name, f.size, f.dim) for f in frames["mu"]] == [("components", 3, -1)]
    assert frames["s0"] == () and frames["g"] == () and "absent" not in frames

    def guide():
        made = {}
        for site in ("mu", "mu2"):  # two sites in one plate: one plate, made once
            with inside_plates(frames["mu"], made):
                pyro.sample(site, dist.Normal(torch.zeros(3), 1.0))

    drawn = pyro.poutine.trace(guide).get_trace()
    for site in ("mu", "mu2"):
        stack = drawn.nodes[site]["cond_indep_stack"]
        assert [(f.name, f.size, f.dim) for f in stack] == [("components", 3, -1)]
    drawn.compute_log_prob()  # Pyro's shape checks against the plate pass
