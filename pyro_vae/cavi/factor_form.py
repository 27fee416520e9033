"""A probed factor of the log joint: one site's log-density as coefficients C on the
sufficient statistics of the latents it mentions (:class:`Factor`), where a latent's batch
dims sit in the factor's (:func:`batch_view`), and C mapped from a probe frame's local
coordinates back to the natural statistics (:func:`to_natural`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from pyro_vae.cavi.data_indexing import (
    read_by_index,
)
from pyro_vae.cavi.mixture_components import (
    k_dim,
    to_factor_layout,
)
from pyro_vae.cavi.probe_frames import local_map


@dataclass
class Factor:
    """One site's log-density as C contracted with its latents' statistics.

    ``coefficients`` has shape [*batch, B₁, …, B_m] (B_j = latents[j]'s family size), with
    ``batch`` of rank ``rank``, summed over every dim along which none of its latents varies.
    A mixture factor (log f = Σ_k [z = k] g(θ_k), ``Vindex(theta)[..., z, :]``) has a
    ``selector`` z and ``components`` θ (latents in the plate of z's categories, a
    :class:`~pyro_vae.cavi.mixture_components.Components`): its batch ends in that K-axis,
    along which the components' elements and z's categories run (a component also in other
    plates, read at the factor's own elements there, laid out so: see
    :mod:`~pyro_vae.cavi.mixture_components`).
    """

    name: str
    distribution: str
    latents: tuple[str, ...]
    coefficients: torch.Tensor
    rank: int
    selector: str | None = None
    components: frozenset = frozenset()
    magnitude: float = 0.0  # Σ over elements of max |log f| at the fit points (nats)
    #: a mixture solved one component at a time: [*batch, K], per element the largest
    #: |log f| at the fit points picking component k, which alone its coefficients read
    component_magnitudes: torch.Tensor | None = None
    #: the coefficients as solved, on the statistics in the probe frames' coordinates
    #: (None: solved on the natural statistics): E_q[log f] from them does not cancel
    local: torch.Tensor | None = None
    #: {latent: LongTensor index} for the latents read through a data index (random
    #: intercepts, :mod:`pyro_vae.cavi.data_indexing`): along the batch, such a latent's
    #: statistics are read at ``index`` (right-aligned with the batch) and its messages
    #: summed back there
    index: dict = field(default_factory=dict)
    #: where ``index`` reads are summed by group (see
    #: :func:`~pyro_vae.cavi.data_indexing.collapse_by_group`): each element of the
    #: site's log-density, [*its shape], its row in the flattened batch; else None
    rows: torch.Tensor | None = None
    #: solved on its support (:mod:`~pyro_vae.cavi.factor_support`): the largest
    #: contribution of a column set to 0, relative to 1 + max |log f| at the fit points
    #: (rounding: the fit without those columns was as close); 0 where none was
    pruned: float = 0.0


def batch_view(factor: Factor, name: str, batch) -> tuple[int, ...]:
    """Where a latent's batch dims sit in the factor's batch: right-aligned, except that in
    a mixture factor only the components run along the final K-axis (a component's
    ``batch`` as :func:`~pyro_vae.cavi.mixture_components.to_factor_layout` lays it out,
    K last)."""
    if factor.selector is None:
        return (1,) * (factor.rank - len(batch)) + tuple(batch)
    if name in factor.components:
        batch = tuple(batch)[len(batch) - min(len(trimmed(batch)), factor.rank) :]
        return (1,) * (factor.rank - len(batch)) + batch
    return (1,) * (factor.rank - 1 - len(batch)) + tuple(batch) + (1,)


def to_natural(factor: Factor, latents: dict, frames: dict) -> Factor:
    """``factor`` solved in its members' frame coordinates, with coefficients on the natural
    statistics: along member j's axis C = N_jᵀ D (:func:`~pyro_vae.cavi.probe_frames.local_map`).
    """
    c = factor.coefficients
    for k, name in enumerate(factor.latents):
        if name not in frames:
            continue
        latent = latents[name]
        n = local_map(latent.family, frames[name])  # [*batch, B, B]
        if name in factor.index:
            n = read_by_index(n, factor.index[name], 0, trailing=2)
        n = to_factor_layout(n, k_dim(factor.components, name), 2)
        axis = factor.rank + k
        others = (1,) * (len(factor.latents) - 1)
        n = n.reshape(batch_view(factor, name, n.shape[:-2]) + others + n.shape[-2:])
        moved = c.movedim(axis, -1).unsqueeze(-2)  # [..., 1, B]
        c = (moved @ n).squeeze(-2).movedim(-1, axis)
    return replace(factor, coefficients=c)


def trimmed(shape) -> torch.Size:
    """``shape`` without its leading size-1 dims."""
    shape = list(shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    return torch.Size(shape)
