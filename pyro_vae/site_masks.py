"""Which elements of a Pyro sample site its log-density counts: the site's ``poutine.mask``
and each ``.mask(...)`` of its distribution, read without making a tensor, at the grain
each was put on (a ``.mask`` under ``.to_event`` covers elements inside the event).

Read by the mask checks of :mod:`pyro_vae.traces` and by
:class:`~pyro_vae.guides.AutoDiscreteMeanField`, which masks its factors as the model masks
its sites.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import Independent as TorchIndependent
from torch.distributions import TransformedDistribution as TorchTransformed

from pyro_vae.pyro_compat import distribution_mask


def site_masks(site: dict) -> tuple[list[tuple[Any, int]], int]:
    """The masks on a sample site, read without making a tensor (on the meta device, as
    the device tests run, a tensor has no values to read): ``(masks, event)``.

    ``masks``: the site's ``poutine.mask`` and each ``.mask(...)`` of its distribution (a
    ``MaskedDistribution``, found under ``.to_event``, ``expand`` and transformed
    distributions' wrappers too), from
    the outside in, each as ``(mask, dims)``: a bool tensor (or bool) whose elements each
    cover ``dims`` trailing dims of the value's batch shape (those a ``.to_event`` inside
    it made event dims); empty where the site has none. ``event``: the event dims of the
    innermost distribution, those every mask leaves whole."""
    fn = site["fn"]
    found = [] if site.get("mask") is None else [[site["mask"], 0]]
    while True:
        if isinstance(fn, dist.MaskedDistribution):
            found.append([distribution_mask(fn), 0])
        elif isinstance(fn, TorchIndependent):
            for entry in found:
                entry[1] += fn.reinterpreted_batch_ndims
        elif isinstance(fn, TorchTransformed):  # LogNormal's, a FoldedDistribution's too
            # a mask on its base distribution counts its values alike (tester AL: the mask
            # in TransformedDistribution(Normal(0, 1).mask(m), [exp]) went unseen, and a
            # guide scoring its masked-off elements gave an ELBO 2.1 nats above log p(x));
            # transforms that make batch dims event dims spread the masks outside over them
            for entry in found:
                entry[1] += len(fn.event_shape) - len(fn.base_dist.event_shape)
        elif not isinstance(fn, dist.ExpandedDistribution):
            # a plain torch distribution (HalfCauchy's Cauchy) has no Pyro ``event_dim``
            return [(mask, dims) for mask, dims in found], len(fn.event_shape)
        fn = fn.base_dist


def counted_elements(site: dict) -> tuple[torch.Tensor, int]:
    """Which elements of a sample site's value its log-density counts, and the value's
    trailing dims that grain leaves whole (each counted or not as one).

    Every mask of :func:`site_masks` (the site's ``poutine.mask`` and each ``.mask(...)``
    of its distribution), anded: a bool tensor that broadcasts against
    ``value.shape[:value.dim() - event]``, aligned on the right, where ``event`` is the
    second value returned."""
    value = site["value"]  # torch.as_tensor would move a tensor to the default device
    device = value.device if torch.is_tensor(value) else torch.get_default_device()
    masks, event = site_masks(site)
    on = as_mask(True, device)
    for mask, dims in masks:
        on = on & spread(as_mask(mask, device), dims)
    return on, event


def as_mask(mask, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.bool, device=device)


def spread(mask: torch.Tensor, dims: int) -> torch.Tensor:
    """``mask`` over ``dims`` more trailing dims, each element of it covering them all."""
    return mask.reshape(tuple(mask.shape) + (1,) * dims)


def without_masks(fn):
    """``fn`` with every ``.mask(...)`` inside it removed (under ``.to_event``, ``expand``
    and transformed distributions' wrappers too): the distribution a site's draw comes
    from, whose log-density is the score function ∇ log q(z) of a REINFORCE gradient. A
    mask weighs a site's term in the ELBO, not the density its draw came from, and a
    masked element's draw still reaches the model (Pyro's ``ScoreParts.scale_and_mask``
    leaves the score function unmasked for the same reason). ``fn`` itself where it holds
    no mask."""
    if isinstance(fn, dist.MaskedDistribution):
        return without_masks(fn.base_dist)
    if not isinstance(fn, (TorchIndependent, TorchTransformed, dist.ExpandedDistribution)):
        return fn
    inner = without_masks(fn.base_dist)
    if inner is fn.base_dist:
        return fn
    if isinstance(fn, TorchIndependent):
        return TorchIndependent(inner, fn.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(fn, TorchTransformed):
        return TorchTransformed(inner, fn.transforms, validate_args=False)
    return inner.expand(fn.batch_shape)


def sampling_log_prob(site: dict) -> torch.Tensor:
    """log q(z) of a guide sample site's draw under the distribution it was drawn from,
    neither scaled nor masked (:func:`without_masks`; ``poutine.mask`` and ``poutine.scale``
    never enter Pyro's ``unscaled_log_prob``), ``[*batch]`` as that is: the score function
    of a REINFORCE gradient. An observed site keeps its ``unscaled_log_prob`` (its value
    was not drawn). A trace stacked from looped particles carries every particle's under
    the key ``"sampling_log_prob"`` (:func:`pyro_vae.traces.stack_particles`)."""
    if "sampling_log_prob" in site:
        return site["sampling_log_prob"]
    fn = site["fn"] if site.get("is_observed") else without_masks(site["fn"])
    if fn is site["fn"] and site.get("unscaled_log_prob") is not None:
        return site["unscaled_log_prob"]
    return fn.log_prob(site["value"])


def counted_batch_elements(site: dict) -> torch.Tensor | None:
    """Which elements of a sample site's batch (``value.shape[:value.dim() - event_dim]``)
    its log-density counts: :func:`counted_elements`, where an element counts if any of
    its coordinates does (a ``.mask`` under ``.to_event`` masks some of them). A bool
    tensor that broadcasts against the batch shape; None where the site has no mask
    (told without making a tensor, as a compiled step's recording needs)."""
    if not site_masks(site)[0]:
        return None
    on, whole = counted_elements(site)
    inside = site["fn"].event_dim - whole  # event dims a mask inside the event covers
    if inside <= 0 or on.dim() == 0:
        return on
    value = site["value"]
    on = on.expand(value.shape[: value.dim() - whole])
    return on.flatten(-inside).any(-1) if inside > 1 else on.any(-1)


def masks_inside_event(site: dict) -> bool:
    """Whether some mask of a sample site (:func:`site_masks`) tells apart coordinates of one
    element of its batch: a ``.mask`` under ``.to_event`` whose mask varies along a dim the
    ``.to_event`` made an event dim (a mask of size 1 there, or expanded along it, as Pyro
    expands a ``.mask`` to the batch shape, covers the element whole). Read from shapes
    and strides alone (a compiled step's recording reads no values)."""
    masks, innermost = site_masks(site)
    outer = site["fn"].event_dim - innermost  # event dims the .to_event wrappers made
    for mask, dims in masks:
        inside = outer - dims  # trailing dims of the mask that lie inside the event
        if inside <= 0 or not torch.is_tensor(mask) or mask.dim() < 1:
            continue
        trailing = zip(mask.shape[-inside:], mask.stride()[-inside:], strict=True)
        if any(n > 1 and step != 0 for n, step in trailing):  # not expanded along it
            return True
    return False
