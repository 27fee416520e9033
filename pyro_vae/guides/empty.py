"""The guide of a model with no latent sample sites."""

from __future__ import annotations

import torch
from pyro.nn import PyroModule


class EmptyGuide(PyroModule):
    """q over nothing: for models whose every sample site is observed.

    With it, ``Trace_ELBO`` reduces to the model's log-likelihood, which is how the
    deterministic autoencoder (lecture §18.1) trains through the same SVI loop as a VAE.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self) -> None:
        super().__init__(name="guide")

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> None:
        return None
