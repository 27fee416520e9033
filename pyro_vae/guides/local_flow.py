"""A non-amortized flow guide: an amortized flow's steps with free per-datapoint inputs.

    z₀ = μ_n + σ_n ⊙ ε,   z = f_T ∘ … ∘ f_1(z₀; h_n),   n = 1..N,

where the flow steps f_t are those of a trained :class:`~pyro_vae.guides.AmortizedFlow`,
their network weights frozen, and μ_n, σ_n and the context h_n are free for each
datapoint. The encoder can only ever choose a member of this family, (μ, σ, h) =
(μ(x), σ(x), h(x)); the local optimum over it is the best that family holds for each
datapoint, which the amortization gap of Cremer, Li & Duvenaud (2018) compares with.
Freezing the step weights keeps the datapoints separate (no parameter is shared), so
fitting all N at once is fitting each on its own.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.guides.local_rows import (
    HeldRows,
    check_initial_values,
    given_rows,
    initial_log_scale,
    rows_or_all,
)
from pyro_vae.plate_declaration import data_plate


class LocalFlow(HeldRows, PyroModule):
    """q(z_n): N(μ_n, diag σ_n²) pushed through ``flows`` conditioned on h_n, for the N rows
    of one fixed batch.

    Args:
        loc: ``[N, latent_dim]`` initial base means μ.
        scale: ``[N, latent_dim]`` initial base standard deviations σ.
        context: ``[N, context_dim]`` initial contexts h.
        flows: the conditional transforms (``pyro.distributions.ConditionalTransformModule``),
            e.g. an :class:`~pyro_vae.guides.AmortizedFlow`'s ``flows``; kept by reference
            and never trained here (their parameters are left out of this module's).
        site: name of the latent sample site in the model.

    Raises:
        ValueError: ``loc``, ``scale`` and ``context`` are not ``[N, ·]`` matrices with
            ``loc`` and ``scale`` alike, or ``scale`` has a negative or non-finite element
            (the others, a non-finite one).
        TypeError: an initial value that is not a tensor.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape (the
    #: recorded step is tested to equal the eager one).
    recordable = True

    #: With ``gradient="stl"`` or ``"dreg"`` a draw is scored under detached parameters,
    #: which runs the flow's inverse; Pyro's reads values out of tensors, so such a step
    #: is not recorded by ``--compile auto`` (:func:`~pyro_vae.estimators.compiled.should_record`).
    path_gradients_recordable = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        context: torch.Tensor,
        flows,
        site: str = "z",
    ) -> None:
        super().__init__(name="local_guide")
        check_initial_values(loc=loc, scale=scale, context=context)
        if (
            loc.dim() != 2
            or scale.shape != loc.shape
            or context.dim() != 2  # tester CN: [N] passed, then a raw matmul error
            or context.shape[:1] != loc.shape[:1]
        ):
            raise ValueError(
                f"loc, scale, context: shapes {tuple(loc.shape)}, {tuple(scale.shape)} and "
                f"{tuple(context.shape)}; expected [N, latent_dim], [N, latent_dim] and "
                "[N, context_dim]"
            )
        self.site = site
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(initial_log_scale(scale))
        self.context = nn.Parameter(context.detach().clone())
        # A plain list: the steps stay out of this module's parameters and state.
        self._flows = list(flows)

    def encode(
        self, x: torch.Tensor, rows: torch.Tensor | None = None
    ) -> dist.TransformedDistribution:
        """The N flows: batch shape ``[N]``, event shape ``[latent_dim]``; no closed-form
        mean. Or those of the ``rows`` among them (:mod:`pyro_vae.guides.local_rows`).

        Raises:
            ValueError: ``x`` does not have the N rows this guide was made for.
        """
        rows = rows_or_all(x, rows, self.num_datapoints)
        base = dist.Normal(self.loc[rows], self.log_scale[rows].exp()).to_event(1)
        context = self.context[rows]
        return dist.TransformedDistribution(base, [f.condition(context) for f in self._flows])

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data) as rows:
            return pyro.sample(self.site, self.encode(x, given_rows(rows, self.num_datapoints)))
