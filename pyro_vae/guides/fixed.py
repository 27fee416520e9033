"""A guide that draws each latent site from a fixed distribution, and a fitted CAVI
estimator standing in for a guide.

Every function that takes a ``guide`` and reads only its draws (``elbo_estimate``, the
diagnostics of :mod:`pyro_vae.diagnostics`) passes it through :func:`as_guide`, so a fit
of :mod:`pyro_vae.cavi` (``AutoCAVI``, ``BayesianGaussianMixture``, …) can be given where a
Pyro guide is expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.devices import forked_streams
from pyro_vae.plate_frames import inside_plates, vectorized_frames


def variational_guide(
    distributions: Mapping[str, Any], plates: Mapping[str, tuple] | None = None
) -> Callable[..., None]:
    """The guide q(z) = Π_site q_site(z_site) that draws each named site from a fixed
    distribution, e.g. a CAVI fit's ``variational_distributions()``; they stay readable
    as ``guide.distributions``. ``plates``: {site: the model's vectorized plate frames
    around it} (:func:`pyro_vae.plate_frames.vectorized_frames`), each site drawn inside
    them (a site with batch dims drawn outside the model's plates fails Pyro's shape
    checks under a particle plate).

    Raises:
        ValueError: ``distributions`` is empty.
    """
    if not distributions:
        raise ValueError("distributions: empty; expected {site name: pyro distribution}")
    items, frames = dict(distributions), dict(plates or {})

    def guide(*args: Any, **kwargs: Any) -> None:
        made: dict = {}  # each plate made once per run
        for site, distribution in items.items():
            with inside_plates(frames.get(site, ()), made):
                pyro.sample(site, distribution)

    guide.__name__ = f"variational_guide({', '.join(items)})"
    guide.distributions = items  # type: ignore[attr-defined]
    return guide


def as_guide(guide, model=None, args: tuple = (), kwargs: dict | None = None):
    """``guide``, or for a fitted :mod:`pyro_vae.cavi` estimator its own
    ``variational_guide()`` where it has one (``AutoCAVI``: joint where its q is, a block
    or a chain), else the :func:`variational_guide` of its ``variational_distributions()``
    (the product of the marginals: q itself under mean field), each site drawn inside the
    plates ``model(*args, **kwargs)`` puts around it where ``model`` is given (one run of
    it, the random stream left as it was: tester BO, a Gaussian mixture's q of K
    components drawn outside the model's ``components`` plate failed ``to_inference_data``).
    Either way, given ``model``, a site of it in a subsampled or permuted plate, or of
    another shape than q's, is refused (:func:`_model_plates`; tester BX: ``AutoCAVI``'s
    own guide skipped the check, and a permuted plate's ELBO came out 211 nats low)."""
    if callable(getattr(guide, "variational_guide", None)):
        if model is not None and hasattr(guide, "variational_distributions"):
            _model_plates(model, args, kwargs, guide.variational_distributions())
        return guide.variational_guide()
    if hasattr(guide, "variational_distributions"):
        distributions = guide.variational_distributions()
        plates = None if model is None else _model_plates(model, args, kwargs, distributions)
        return variational_guide(distributions, plates)
    return guide


def _refuse_other_shapes(trace, distributions: dict) -> None:
    """Refuse a q whose draws have another shape than the model's site (tester BR: q of
    batch (3, N) for a site of N in its plate drew three values a row, and PSIS's k̂ came
    out −inf, as for an exact q)."""
    for site, q in distributions.items():
        node = trace.nodes.get(site)
        if node is None or node["type"] != "sample":
            continue
        drawn, expected = tuple(q.batch_shape + q.event_shape), tuple(node["value"].shape)
        if drawn != expected:
            raise ValueError(
                f"guide: q of site {site!r} draws values of shape {drawn} (batch "
                f"{tuple(q.batch_shape)}, event {tuple(q.event_shape)}); the model's {site!r} "
                f"has shape {expected}: expected one q per element of the model's site"
            )


def _model_plates(model, args: tuple, kwargs: dict | None, sites) -> dict:
    """{site: the vectorized plate frames around it} in one run of ``model``, without
    gradients, that leaves the random stream and the param store as they were: a
    parameter the model makes on this run is removed again, so its first real run makes it
    from the stream as it would have (tester BQ: made here from a forked stream, a
    ``pyro.param`` initialised by ``torch.randn`` took another value than without it).

    Raises:
        ValueError: a site inside a subsampled plate (the fit's q is of the whole data,
            and its guide would not know which rows: tester BQ, the ELBO came out 16.5
            nats off with no word); a q whose draws are not the site's shape."""
    store = pyro.get_param_store()
    before = set(store.keys())
    try:
        with forked_streams(), torch.no_grad():
            trace = poutine.trace(model).get_trace(*args, **(kwargs or {}))
    finally:
        for name in set(store.keys()) - before:
            del store[name]
    frames = vectorized_frames(trace, sites)
    for site, around in frames.items():
        for frame in around:
            _refuse_subsampled(site, frame, trace.nodes.get(frame.name))
    _refuse_other_shapes(trace, sites)  # after: a subsample's q is of another shape too
    return frames


def _refuse_subsampled(site: str, frame, plate_node) -> None:
    """Refuse a site inside a plate that draws other rows than 0..N−1 in order: fewer than
    its full size, or all of them permuted (``subsample=perm``: q's row i would stand for
    the model's row perm[i], with no word, tester BR), read from the indices Pyro's plate
    records as its own site (``plate_node``)."""
    full = frame.full_size if frame.full_size is not None else frame.size
    indices = None if plate_node is None else plate_node.get("value")
    permuted = (
        frame.size == full
        and torch.is_tensor(indices)
        and indices.shape == (full,)
        and not torch.equal(indices.cpu(), torch.arange(full))
    )
    if frame.size == full and not permuted:
        return
    drawn = (
        f"subsampled to {frame.size} of its {full} elements"
        if frame.size != full
        else f"drawing its {full} elements in another order than 0..{full - 1}"
    )
    raise ValueError(
        f"model: site {site!r} is inside plate {frame.name!r}, {drawn}; a fitted "
        "estimator's q is of the whole data in order, and its guide would not know which "
        "rows the model drew: evaluate it without subsampling"
    )
