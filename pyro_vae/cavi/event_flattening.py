"""A Normal latent with several event dims fitted as one vector of its elements.

Pyro's Bayesian regression writes its weights as a matrix with two event dims::

    self.linear = PyroModule[nn.Linear](D, K)
    self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([K, D]).to_event(2))

AutoCAVI's Normal family is over a vector (a scalar site, ``.to_event(1)`` or a
MultivariateNormal), so such a site was refused. Flattening the event dims in row-major
order changes nothing in the joint density: the log-density of
``Normal(loc, scale).to_event(2)`` at W is that of
``Normal(loc.reshape(d), scale.reshape(d)).to_event(1)`` at W's d = K·D elements.
:class:`EventsFlattened` runs the model with each such site's prior so flattened; every
handler outside it (AutoCAVI's trace, its probe points, its plug-in start) sees and sets a
d-vector, and the model itself is given the value back in its own shape, after those
handlers have recorded it (Pyro runs the handlers' postprocessing outside in, so the
reshape, innermost, comes last). AutoCAVI then fits the site as any Normal vector: a
full-covariance MultivariateNormal q over its d elements (Bishop 2006, §10.3), whose
family contains every product over the elements, so the bound is no lower than mean
field over them.

:func:`flattenable` says which sites are taken so: unobserved, a Normal (under
``expand``) with ``.to_event`` making at least two event dims, and no mask, neither a
``.mask`` of its distribution nor ``poutine.mask`` (such a site is refused as before).
"""

from __future__ import annotations

import functools

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent


def flattenable(site: dict) -> bool:
    """Whether the latent sample site ``site`` (a trace node) is a Normal with two or more
    event dims and no mask, which :class:`EventsFlattened` fits as one vector."""
    if site.get("is_observed") or site.get("mask") is not None:
        return False
    return _normal_matrix(site["fn"])


def _normal_matrix(fn) -> bool:
    """A Normal (under ``.to_event`` and ``expand``, no ``.mask``) of two or more event dims."""
    if len(fn.event_shape) < 2:
        return False
    while isinstance(fn, (Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return type(fn) in (dist.Normal, torch.distributions.Normal)


def _flattened(fn, shape: torch.Size):
    """``fn`` (a Normal of event ``shape``) over its elements, row-major."""
    flat = fn.batch_shape + (shape.numel(),)
    return dist.Normal(fn.mean.reshape(flat), fn.stddev.reshape(flat)).to_event(1)


def flat_init(init: dict | None, sites: dict[str, torch.Size]) -> dict | None:
    """``init`` with each start given for a flattened site in the site's own shape made
    the vector AutoCAVI fits: a Normal of that event shape flattened as the prior is, and
    a fit's own ``variational_distributions()`` entry (:func:`in_site_shape`) its
    MultivariateNormal. A start already a vector, and anything else, is kept
    (``initial_statistics`` says what a start must be)."""
    if not init:
        return init
    out = dict(init)
    for site in set(init) & set(sites):
        q, shape = init[site], sites[site]
        if not isinstance(q, torch.distributions.Distribution) or q.event_shape != shape:
            continue
        if isinstance(q, torch.distributions.TransformedDistribution) and _reshapes(q):
            out[site] = q.base_dist
        elif _normal_matrix(q):
            out[site] = _flattened(q, shape)
    return out


def _reshapes(q) -> bool:
    transforms = q.transforms
    return len(transforms) == 1 and isinstance(
        transforms[0], torch.distributions.transforms.ReshapeTransform
    )


class EventsFlattened(Messenger):
    """Run a model with each site of ``sites`` ({site: its event shape, two dims or
    more}) drawn as one vector of its elements, row-major: its prior is
    ``Normal(mean.reshape(batch + (d,)), stddev.reshape(batch + (d,))).to_event(1)`` for
    every handler outside this one, and the model gets the value reshaped to its event
    shape."""

    def __init__(self, sites: dict[str, torch.Size]):
        super().__init__()
        self.sites = {name: torch.Size(shape) for name, shape in sites.items()}

    def _pyro_sample(self, msg) -> None:
        shape = self.sites.get(msg["name"])
        if shape is None:  # the model's latent (an outer handler may condition it)
            return
        msg["fn"] = _flattened(msg["fn"], shape)
        if msg["value"] is not None:  # set inside the model (a handler of its own)
            msg["value"] = _flat(msg["value"], len(shape))

    def _pyro_post_sample(self, msg) -> None:
        shape = self.sites.get(msg["name"])
        if shape is None:  # conditioned too: the probes' points are d-vectors
            return
        value = msg["value"]
        msg["value"] = value.reshape(value.shape[:-1] + shape)


def in_site_shape(q, shape: torch.Size):
    """``q``, a distribution over a flattened site's d elements [*batch, d], as one over its
    event ``shape`` (Pyro's ``TransformedDistribution`` with torch's ``ReshapeTransform``;
    q itself is its ``base_dist``)."""
    reshape = torch.distributions.transforms.ReshapeTransform(q.event_shape, shape)
    return dist.TransformedDistribution(q, [reshape])


def _flat(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    return value.reshape(value.shape[: value.dim() - event_dim] + (-1,))


def with_events_flattened(model, sites: dict[str, torch.Size]):
    """``model`` run under :class:`EventsFlattened` (``sites`` as it takes them);
    ``__wrapped__`` is ``model`` (``functools.wraps``), as the probe runs look there for
    the state a model keeps between runs."""

    @functools.wraps(model)
    def rewritten(*args, **kwargs):
        with EventsFlattened(sites):
            return model(*args, **kwargs)

    return rewritten
