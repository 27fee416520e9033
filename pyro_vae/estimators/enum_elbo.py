"""The ``enum`` estimator: Pyro's ``TraceEnum_ELBO`` with free bits and a clear word on β.

Model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not draw are
summed out exactly; they belong to the likelihood p(x | z), not to a KL term. Sites the
guide enumerates are latents whose KL Σ_z q(z) (log q(z) − log p(z)) is summed exactly.
With ``free_bits=λ`` (Kingma et al. 2016; :mod:`pyro_vae.objectives`) each guide site's
KL, averaged over the minibatch (exact for enumerated sites, at the draw otherwise),
counts as max(λ, KL). A guide site whose prior depends on a site the model enumerates
has no KL of its own (p(z_j) is a sum over that site, entangled with the likelihood):
free bits refuse it, and so does β (Pyro's "share a common poutine.scale"), with a
message that says so.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.objectives import (
    check_free_bits,
    check_free_bits_groups,
    free_bits_traces,
    latent_groups,
)

_SHARED_SCALE = "share a common poutine.scale"


class TraceEnumELBO(TraceEnum_ELBO):
    """Pyro's ``TraceEnum_ELBO`` (the same arguments) and ``free_bits``: λ nats per latent
    site of the guide, or ``None`` (Pyro's estimate, bit for bit); ``free_bits_groups``
    splits each site into groups of its dimensions (:mod:`pyro_vae.objectives`).

    Raises:
        ValueError: ``free_bits`` is not a λ >= 0; at a loss, free bits on a guide site
            whose prior or guide factor depends on another enumerated site, or a β ≠ 1
            (``TrainConfig(beta=...)``, warm-up) on such a site.
    """

    capabilities = Capabilities(  # never checked to replay exactly, so not recorded
        keeps_state=False, needs_reparameterized=False, per_datapoint=False, recordable=False
    )

    def __init__(
        self,
        *args: Any,
        free_bits: float | None = None,
        free_bits_groups: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.free_bits = check_free_bits(free_bits)
        self.free_bits_groups = check_free_bits_groups(free_bits_groups, self.free_bits)
        self._floor = 0.0
        super().__init__(*args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        if self.free_bits is None:
            return model_trace, guide_trace
        self._refuse_entangled(model_trace, guide_trace)
        model_trace, guide_trace, floor, _ = free_bits_traces(
            model_trace, guide_trace, self.free_bits, groups=self.free_bits_groups
        )
        self._floor = self._floor + floor
        guide_trace.pack_tensors()
        model_trace.pack_tensors(guide_trace.plate_to_symbol)
        return model_trace, guide_trace

    def _refuse_entangled(self, model_trace, guide_trace) -> None:
        nesting = int(self.max_plate_nesting)
        for name in latent_groups(model_trace, guide_trace):
            own = guide_trace.nodes[name]["infer"].get("_enumerate_dim")
            for role, trace in (("prior", model_trace), ("guide factor", guide_trace)):
                log_prob = trace.nodes[name]["log_prob"]
                for d in range(-log_prob.dim(), -nesting):
                    if log_prob.shape[d] > 1 and d != own:
                        raise ValueError(
                            f"free_bits: the {role} term of latent site {name!r} varies with "
                            "an enumerated site (the guide draws it given that site, or its "
                            "prior depends on it), so its KL is not a term of its own; free "
                            "bits need each guide site's KL separately (use free_bits=None)"
                        )

    def _with_floor(self, method, model, guide, args, kwargs):
        self._floor = 0.0
        try:
            loss = method(model, guide, *args, **kwargs)
        except ValueError as err:
            if _SHARED_SCALE not in str(err):
                raise
            raise ValueError(
                "beta: a latent site drawn by the guide has a prior that depends on a site "
                "the model enumerates, and β (or KL warm-up) would scale it while the "
                f"enumerated terms keep scale 1 (Pyro: {err}); the β-objective has no "
                "separate KL term here: train with beta=1 and no warm-up"
            ) from err
        return loss + self._floor / self.num_particles

    def loss(self, model, guide, *args, **kwargs):
        return float(self._with_floor(super().loss, model, guide, args, kwargs))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._with_floor(super().differentiable_loss, model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return float(self._with_floor(super().loss_and_grads, model, guide, args, kwargs))
