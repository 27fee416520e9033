"""A discrete model over rows of 2 steps, row 1 padded past its first by ``poutine.mask``
(as Pyro's examples/hmm.py pads sequences), and a guide masked like it or not."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

LENGTHS = torch.tensor([2, 1, 2])
X = torch.tensor([[-1.5, 0.3], [0.4, 9.9], [2.2, 2.0]])


def padded_pair(guide_masked: bool):
    """(model, guide): the model masks row 1's step 1 off; the guide, a uniform q over each
    step's 3 states, masks it alike where ``guide_masked``."""
    locs = torch.tensor([-2.0, 0.0, 2.5])

    def model(x):
        with pyro.plate("data", 3) as idx:
            for t in range(2):
                with poutine.mask(mask=t < LENGTHS[idx]):
                    c = pyro.sample(f"c_{t}", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
                    pyro.sample(f"x_{t}", dist.Normal(locs[c], 1.0), obs=x[:, t])

    def guide(x):
        with pyro.plate("data", 3) as idx:
            for t in range(2):
                with poutine.mask(mask=(t < LENGTHS[idx]) if guide_masked else True):
                    pyro.sample(f"c_{t}", dist.Categorical(logits=torch.zeros(3, 3)))

    return model, guide
