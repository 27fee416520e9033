"""A mixture's components as its factor reads them, also components in more plates than one.

A mixture factor log f = Σ_k [z = k] g(θ_k) (``Vindex(theta)[..., z, :]``) has a batch ending
in a K-axis, along which the selector z's categories and the components' elements run
(:class:`~pyro_vae.cavi.factor_form.Factor`). A component in one plate of K elements
(batch (K,)) runs along that axis as it is. A component in further plates, such as a
diagonal-covariance mixture's means μ [K, D] in plates of components and features read as
``Vindex(mu)[..., z, d]`` (each datum's own feature d), is read at the factor's own elements
along its other plates: in the factor's layout (:func:`to_factor_layout`) its K dim is
replaced by a size-1 dim and K runs along the K-axis, and a message to it is laid back out
(:func:`to_latent_layout`). Each of its other plates is one of the factor's (by name) or sits
at the dim of one of the factor's of the same size (:func:`k_dim_of`); the probe's check
points then verify that each element reads the component's element at its own index, and a
model that reads another (``mu[..., z, d.flip(0)]``) is refused as not fitting.
"""

from __future__ import annotations

import torch


class Components(frozenset):
    """A mixture factor's component names, with ``dims``: {name: the dim (negative) of its
    batch that runs along the selector's K categories, or None for a component in one
    plate of K elements (batch (K,), along the K-axis as it is)}."""

    dims: dict

    def __new__(cls, dims=None):
        dims = dict(dims or {})
        self = super().__new__(cls, dims)
        self.dims = {name: dim for name, dim in dims.items() if dim is not None}
        return self

    def __reduce__(self):
        # copied or pickled, a frozenset subclass is rebuilt from its members alone, which
        # this __new__ read as dims: a deepcopy of a fitted mixture failed (tester DP)
        return type(self), ({name: self.dims.get(name) for name in self},)


def k_dim(components, name: str) -> int | None:
    """The dim of component ``name``'s batch along the K categories, where it is in more
    plates than that one; else None (also for a latent that is no component)."""
    return getattr(components, "dims", {}).get(name)


def to_factor_layout(x: torch.Tensor, dim: int, trailing: int) -> torch.Tensor:
    """``x`` [*lead, *batch, *trailing (``trailing`` dims)] of a component whose K categories
    run along batch dim ``dim`` → [*lead, *batch with 1 at ``dim``, K, *trailing]: K last,
    as the factor's K-axis, and its other dims where the factor's plates are. As it is for
    ``dim`` None."""
    if dim is None:
        return x
    end = x.dim() - trailing
    return x.unsqueeze(end).transpose(end + dim, end)


def factor_layout_shape(shape, dim: int, trailing: int) -> tuple[int, ...]:
    """The shape :func:`to_factor_layout` gives a tensor of ``shape``."""
    if dim is None:
        return tuple(shape)
    end = len(shape) - trailing
    batch = list(shape[:end])
    batch[dim], k = 1, batch[dim]
    return (*batch, k, *shape[end:])


def to_latent_layout(x: torch.Tensor, dim: int, trailing: int) -> torch.Tensor:
    """The inverse of :func:`to_factor_layout`: [*lead, *batch with 1 at ``dim``, K,
    *trailing] → [*lead, *batch, *trailing]."""
    if dim is None:
        return x
    end = x.dim() - trailing - 1  # the K-axis
    return x.transpose(end + dim, end).squeeze(end)


def picked(component: torch.Tensor, index: torch.Tensor, k: int, dim: int | None,
           rank: int) -> torch.Tensor:  # fmt: skip
    """Each element's statistics of the component its selector picks: ``component`` [S,
    *batch (K along ``dim``), B] and ``index`` [S, *batch_z] → [S, *batch (rank ``rank``:
    the factor's; the component's dims beyond it are its K dim's 1s), B], the component's
    other dims read at the elements' own (see the module docstring); ``dim`` None: a
    component in one plate, [S, K, B] → [S, *batch_z, B]. A component of size 1 along K
    (a discrete component's shared fit probe, the same for every k) is expanded to the K
    components first."""
    shape = list(component.shape)
    shape[-2 if dim is None else dim - 1] = k
    component = component.expand(shape)
    if dim is None:  # one gather along K
        flat = index.reshape(index.shape[0], -1)
        flat = flat.unsqueeze(-1).expand(flat.shape + component.shape[-1:])
        return component.gather(1, flat).reshape(index.shape + component.shape[-1:])
    laid = to_factor_layout(component, dim, 1)  # [S, *b, K, B]
    nb, nz = laid.dim() - 3, index.dim() - 1
    common = max(nb, nz)
    laid = laid.reshape(laid.shape[:1] + (1,) * (common - nb) + laid.shape[1:])
    index = index.reshape(index.shape[:1] + (1,) * (common - nz) + index.shape[1:] + (1, 1))
    out = torch.take_along_dim(laid, index, dim=1 + common).squeeze(1 + common)
    return out.reshape(out.shape[:1] + out.shape[max(1, out.dim() - 1 - rank) :])


def k_dim_of(latent, k: int, site: str, trace) -> int | None:
    """The dim of ``latent``'s batch along a selector's ``k`` categories where it is a
    component of mixture factor ``site`` in more plates than that one: one of its plates
    that ``site`` is not inside has ``k`` elements (where several have, the one with no plate
    of ``site``'s of as many elements at its dim: the others are read at the factor's own
    elements), and each of its other plates is one of ``site``'s or sits at the dim of one
    of ``site``'s of the same size; else None. A data plate of ``k`` elements at the
    components' dim is no obstacle (tester 25's F2: N = K was refused)."""
    own = {f.name: f for f in trace.nodes[site]["cond_indep_stack"] if f.vectorized}
    sizes = {f.dim: f.size for f in own.values()}
    frames = [f for f in trace.nodes[latent.sites[0]]["cond_indep_stack"] if f.vectorized]
    outside = [f for f in frames if f.name not in own]
    along = [f for f in outside if f.size == k]
    if len(along) > 1:
        along = [f for f in along if sizes.get(f.dim) != k]
    if len(along) != 1:
        return None
    # in one plate, the K categories', at a dim left of -1: its dims right of it are of
    # size 1 and in no plate (mu [K, 1] under a plate at dim -2, read Vindex(mu)[..., z, 0])
    trailing = latent.batch_shape[along[0].dim + 1 :] if along[0].dim < -1 else None
    if len(frames) < 2 and not (trailing and all(n == 1 for n in trailing)):
        return None
    if any(sizes.get(f.dim) != f.size for f in outside if f is not along[0]):
        return None
    dim = along[0].dim
    if len(latent.batch_shape) < -dim or latent.batch_shape[dim] != k:
        return None
    return dim
