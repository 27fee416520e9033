"""The designs the probed factors are solved on: each member's sufficient statistics at the
probe points as the factor's elements read them (at a data index, through a mixture's
selector), and their tensor product ⊗_j T_j(x_j) (:func:`probe_design`); a factor that reads
latents through data indices laid out by group, one design per group rather than per
datum (:func:`group_layout`).
"""

from __future__ import annotations

import math

import torch

from pyro_vae.cavi import factor_support
from pyro_vae.cavi.data_indexing import (
    group_keys,
    index_axes,
    read_by_index,
)
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.mixture_components import (
    k_dim,
    picked,
)
from pyro_vae.cavi.probe_frames import to_local
from pyro_vae.cavi.probe_runs import (
    Runs,
    unexpanded_value,
)


def unexpanded(values: dict) -> dict:
    """``values`` with each dim but the first along which a value is expanded (stride 0: the same at
    every index, as :class:`~pyro_vae.cavi.probe_runs.ProbeRunner`'s shared discrete probes) cut to
    size 1, so a design built from them is computed once there and solved as shared."""
    return {site: unexpanded_value(value) for site, value in values.items()}


def _statistics(latent: Latent, runs: Runs) -> torch.Tensor:
    """T of ``latent`` at the points of ``runs``, [S, *batch, B] (size 1 where a shared
    discrete probe is expanded; in its frame's coordinates where ``runs`` has one), computed
    once per Runs and unit."""
    if latent.name not in runs.stats:
        values = tuple(unexpanded_value(runs.values[s]) for s in latent.sites)
        frame = runs.frames.get(latent.name)
        if frame is not None:
            values = to_local(latent.family, frame, values)
        runs.stats[latent.name] = latent.family.statistics(*values)
    return runs.stats[latent.name]


def _every_group(latent: Latent, phi: torch.Tensor, runs: Runs) -> torch.Tensor:
    """``latent``'s statistics ``phi`` [S, *batch, B] at every one of its groups: a shared
    discrete fit probe's (one value across its plate, size 1 there, see
    :func:`unexpanded`) expanded back to the plate, for a data index to read."""
    return phi.expand(runs.values[latent.sites[0]].shape[: phi.dim() - 1] + phi.shape[-1:])


def _selector_values(selector: Latent, runs: Runs) -> torch.Tensor:
    """A mixture selector's values at the points of ``runs`` as the factor's elements read
    them, [S, *its batch]: at its data index in a mixture of groups (every group's value,
    a shared fit probe expanded back, see :func:`_every_group`), else as drawn (size 1
    where a shared probe is expanded)."""
    values = runs.values[selector.name]
    return unexpanded_value(values) if selector.index is None else _read_values(selector, values)


def probe_design(latents: list[Latent], runs: Runs, rank: int, components=frozenset()):
    """The tensor-product basis ⊗_j T_j(x_j) at the S points of ``runs``, shape
    [S, *batch (rank ``rank``), Π B_j]. In a mixture's design (``components``, picked by
    ``latents[0]``, its selector z) each element reads the statistics of the component its
    z picks: T(θ_z) is T(θ) gathered along the components' plate."""
    design = torch.ones((len(runs),) + (1,) * rank + (1,), dtype=torch.float64)
    return factor_support.tensor_product(
        design, aligned_statistics(latents, runs, rank, components)
    )


def aligned_statistics(latents: list[Latent], runs: Runs, rank: int, components=frozenset()):
    """Each member's statistics at the S points of ``runs`` as the factor's elements read
    them, [S, *view (rank ``rank``, broadcastable to the batch), B]: the factors of
    :func:`probe_design`'s tensor product."""
    out = []
    for latent in latents:
        phi = _statistics(latent, runs)  # [S, *batch, B]
        if latent.index is not None:  # read through a data index: [S, *index's shape, B]
            phi = read_by_index(_every_group(latent, phi, runs), latent.index, 1)
        if latent.name in components:
            z, k = _selector_values(latents[0], runs), latents[0].family.k
            dim = k_dim(components, latent.name)
            phi = picked(phi, z, k, dim, rank)
        out.append(phi.reshape(phi.shape[:1] + (1,) * (rank + 2 - phi.dim()) + phi.shape[1:]))
    return out


def group_layout(members, runs: Runs, rank: int, values: torch.Tensor):
    """The designs of a factor reading latents through data indices laid out by group, (designs [R,
    S, P], each element's row [*fbatch]), for :func:`~pyro_vae.cavi.data_indexing.apply_by_group`'s
    solve once per group rather than once per datum: the elements reading the same groups (and alike
    in the other members) share one design. None where there is no index, where another member
    varies along a dim an index varies along (each element then has its own design), or where the
    layout by group has no fewer designs than the factor has elements."""
    indexed = [m for m in members if m.index is not None]
    if not indexed:
        return None
    varies = torch.broadcast_shapes(*(m.index.shape for m in indexed))
    # each latent's G: its statistics [S, *its batch (G,) or (G, 1), B]
    sizes = [math.prod(_every_group(m, _statistics(m, runs), runs).shape[1:-1]) for m in indexed]
    axes, member_axis = index_axes([(m.index, g) for m, g in zip(indexed, sizes, strict=True)])
    k = len(axes)
    if math.prod(g for _, g in axes) >= math.prod(values.shape[1:]):
        return None
    design = torch.ones((len(runs),) + (1,) * (k + rank) + (1,), dtype=torch.float64)
    for member in members:
        phi = _statistics(member, runs)  # [S, *batch, B]
        if member.index is None:
            phi = phi.reshape(phi.shape[:1] + (1,) * (rank + 2 - phi.dim()) + phi.shape[1:])
            if any(n > 1 and varies[d] > 1 for d, n in enumerate(phi.shape[1:-1])):
                return None
            phi = phi.reshape(phi.shape[:1] + (1,) * k + phi.shape[1:])
        else:  # [S, G, B] along its index's group axis, before the factor's batch
            phi = _every_group(member, phi, runs).reshape(phi.shape[0], -1, phi.shape[-1])
            axis = member_axis[indexed.index(member)]
            view = tuple(phi.shape[1] if i == axis else 1 for i in range(k))
            phi = phi.reshape(phi.shape[:1] + view + (1,) * rank + phi.shape[-1:])
        design = (design.unsqueeze(-1) * phi.unsqueeze(-2)).flatten(-2)
    designs = design.movedim(0, -2)  # [G₁, …, *shared, S, P]
    keys = group_keys(design.shape[1 + k : 1 + k + rank], axes, values.shape[1:])
    return designs.reshape((-1,) + designs.shape[-2:]), keys


def as_read(member: Latent, value: torch.Tensor) -> torch.Tensor:
    """A discrete member's values [S, *batch] as the factor's elements read them: at its
    data index where it has one and its values differ along its plate (a shared fit probe,
    one value across the plate, is read alike by every element: [S, 1 per index dim], its
    plate's dims dropped, which the index replaces, so that a plate at another dim than
    the factor's does not add a dim of its own)."""
    if member.index is None:
        return value
    if value[0].numel() == 1:
        return value.reshape(value.shape[:1] + (1,) * member.index.dim())
    return _read_values(member, value)


def _read_values(member: Latent, value: torch.Tensor) -> torch.Tensor:
    """A discrete member's values [S, *its batch] at its data index, [S, *index shape]."""
    return read_by_index(value.unsqueeze(-1), member.index, 1).squeeze(-1)
