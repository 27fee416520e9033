"""Where a hierarchical model's latents start: each prior given its parents at their means.

``AutoCAVI`` starts a continuous latent at its prior's expectations. For a latent whose
prior mentions other latents (μ_i ~ N(θ, 1/τ_b)), the prior in the seeded forward run has
its parents at draws, and a draw from a vague hyperprior is no place to start: in the BUGS
"dyes" variance components with θ ~ N(0, 10¹⁰) and τ_b ~ Gamma(10⁻³, 10⁻³), μ_i started
at a θ 1.5·10⁵ from the data with a τ_b that underflowed to 10⁻³⁰⁰ (E[μ_i²] = 4·10³⁰⁴); the
fit was refused as improper, and with milder priors it settled with the noise precision at
4e-11, 385 nats below the optimum a hand-written CAVI reaches.

:func:`plug_in_priors` runs the model once more with every continuous latent set to its
prior's mean given its parents' set values, in sampling order (a discrete latent is drawn,
seeded), and returns each latent site's prior in that run: μ_i ~ N(E[θ], 1/E[τ_b]) = N(0, 1)
there. ``AutoCAVI`` starts the latents it does not set otherwise at those priors'
expectations. Only models with such a latent pay for the run; a root's prior is the same in
both runs.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from pyro_vae.cavi.seeding import cpu_rng


class _AtPriorMeans(Messenger):
    """Sets each of ``sites`` (unobserved) to its distribution's mean, as computed in this
    run from the values set before it."""

    def __init__(self, sites: set[str]) -> None:
        super().__init__()
        self.sites = sites

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.sites and not msg["is_observed"] and msg["value"] is None:
            fn = msg["fn"]
            msg["value"] = fn.mean.expand(fn.batch_shape + fn.event_shape)


def plug_in_priors(model, args, kwargs, sites: set[str], seed: int) -> dict | None:
    """{site: its prior distribution} in one run of ``model`` with each of ``sites`` at its
    prior's mean given the values before it (the other latents drawn, torch seeded by
    ``seed``, the global RNG restored after); None where that run raises (a model that
    cannot take a mean, an integer-valued use of a latent): the starts then stay the forward
    run's."""
    try:
        with cpu_rng(seed), torch.no_grad(), pyro.validation_enabled(False), \
                warnings.catch_warnings():  # fmt: skip
            warnings.filterwarnings("ignore", message="Singular sample detected")
            with _AtPriorMeans(sites):
                trace = poutine.trace(model).get_trace(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
        return None
    return {name: trace.nodes[name]["fn"] for name in sites if name in trace.nodes}
