"""Guide draws outside a plate that read a plate's scored draws, found by replaying the guide.

A score-function gradient Rao-Blackwellized by plates scores element n of a plated draw
z by the terms of element n and by those outside the plate: Pyro's ``Trace_ELBO``,
``TraceGraph_ELBO`` and ``TraceEnum_ELBO`` for a site without ``rsample``, and
:class:`pyro_vae.estimators.ScoreFunctionELBO` for every site. That is unbiased where
nothing drawn outside the plate reads z. A guide q(z) q(g | Σ_n z_n) makes g, and every
term of element n′ that reads g, depend on z_n: terms the signal leaves out (tester DA:
every one of those estimators 5 to 18 standard errors from the exact gradient, with no
word). Pyro's documentation asks the user to keep plates' elements independent; nothing
checks it.

:func:`plate_escapes` finds such reads: it runs the guide once, then replays it with one
plated draw changed at a time (each element moved to the next value of its support, then
its plate's first element alone, so a read through a sum cannot hide; a continuous draw
redrawn), and a later site outside the plate whose density at its own value changed reads
it. It may find a read whose value no term inside the plate uses; the estimators then
treat it as one (an unbiased signal, a larger variance), never the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

from pyro_vae.traces import buffers_kept, is_point_mass


@dataclass(frozen=True)
class PlateEscape:
    """``reader``, a guide site outside plate ``plate``, drawn from a density that reads
    ``site``'s draws inside it."""

    site: str
    plate: str
    reader: str


def plate_escapes(
    guide, args: tuple, kwargs: dict, scored: Callable[[dict], bool]
) -> list[PlateEscape]:
    """Every (plated site, its plate, a later guide site outside that plate reading it) of
    one run of ``guide(*args, **kwargs)``, for the sites ``scored(site)`` selects (those an
    estimator gives a score-function term). The guide runs without gradients and its
    networks in eval mode, its random stream and its modules' buffers left as they were,
    outside any recording of the step (:mod:`pyro_vae.estimators.compiled`); at most two
    more runs per scored plated site with a later site outside its plate. Call it after
    the guide's first run (a lazily made parameter drawn here, in the forked stream, would
    repeat the draws of the run after it)."""
    with (
        disable_proxy_modes_tracing(),  # left out of a step being recorded (compiled.py)
        torch.random.fork_rng(devices=[]),
        torch.no_grad(),
        buffers_kept(),
        _called_in_eval_mode(),
    ):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        order = [n for n, s in trace.nodes.items() if _drawn(s)]
        found = []
        for i, name in enumerate(order):
            site = trace.nodes[name]
            if not scored(site) or is_point_mass(site["fn"]):
                continue
            for frame in (f for f in site["cond_indep_stack"] if f.vectorized):
                later = [n for n in order[i + 1 :] if not _inside(trace.nodes[n], frame.name)]
                readers = _readers(guide, args, kwargs, trace, site, frame, later)
                found += [PlateEscape(name, frame.name, r) for r in readers]
    return found


@contextlib.contextmanager
def _called_in_eval_mode():
    """Every ``nn.Module`` called in the block runs in eval mode, its own mode put back on
    leaving: the check runs between a step's forward and backward passes, and a
    ``BatchNorm`` in training mode would move its running statistics in place, which that
    backward pass reads (it failed: "modified by an inplace operation")."""
    modes: dict[torch.nn.Module, bool] = {}

    def to_eval(module, _inputs) -> None:
        if module not in modes:
            modes[module] = module.training
            module.training = False

    handle = torch.nn.modules.module.register_module_forward_pre_hook(to_eval)
    try:
        yield
    finally:
        handle.remove()
        for module, training in modes.items():
            module.training = training


def _drawn(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _inside(site: dict, plate: str) -> bool:
    return any(f.name == plate and f.vectorized for f in site["cond_indep_stack"])


def _readers(guide, args, kwargs, trace: Trace, site: dict, frame, later: list) -> list[str]:
    """Those of ``later`` whose density at their value moves when ``site``'s draw does."""
    if not later:
        return []
    readers = []
    for first_only in (False, True):
        changed = trace.copy()
        changed.nodes[site["name"]] = dict(site, value=_moved(site, frame, first_only))
        replayed = poutine.trace(poutine.replay(guide, trace=changed)).get_trace(*args, **kwargs)
        for name in later:
            if name not in readers and _moves(trace.nodes[name], replayed.nodes.get(name)):
                readers.append(name)
    return readers


def _moved(site: dict, frame, first_only: bool) -> torch.Tensor:
    """``site``'s value with every element (or, ``first_only``, the plate's first element
    alone) moved: to the next value of a discrete support, else a fresh draw."""
    fn, value = site["fn"], site["value"]
    if getattr(fn, "has_enumerate_support", False):
        support = fn.enumerate_support(expand=True)  # [K, *batch, *event]
        event = fn.event_dim
        flat = (support == value).reshape(*support.shape[: support.dim() - event], -1)
        index = (flat.all(-1).to(torch.long).argmax(0) + 1) % support.shape[0]
        index = index.reshape(1, *index.shape, *(1,) * event).expand(1, *support.shape[1:])
        moved = support.gather(0, index)[0]
    else:
        moved = fn.sample()
    if not first_only:
        return moved
    dim = frame.dim - fn.event_dim + value.dim() if frame.dim < 0 else frame.dim
    if value.dim() == 0 or value.shape[dim] < 2:
        return moved
    first = torch.zeros(value.shape[dim], dtype=torch.bool, device=value.device)
    first[0] = True
    first = first.reshape(-1, *(1,) * (value.dim() - dim - 1))
    return torch.where(first, moved, value)


def _moves(original: dict, replayed: dict | None) -> bool:
    """Whether the replayed site's density at the original value differs."""
    if replayed is None:
        return True  # drawn only where the plated draw had its first value: it reads it
    value = original["value"]
    before, after = original["fn"].log_prob(value), replayed["fn"].log_prob(value)
    if before.shape != after.shape:
        return True
    return not bool(torch.isclose(before, after, rtol=0, atol=0, equal_nan=True).all())


def scored_by_pyro(site: dict) -> bool:
    """Whether Pyro's ``Trace_ELBO`` (and ``TraceGraph_ELBO``, ``TraceEnum_ELBO``) gives
    ``site`` a score-function term: drawn without ``rsample``, not enumerated."""
    return not site["fn"].has_rsample and site["infer"].get("enumerate") is None


def refuse_plate_escapes(estimator: str, guide, args: tuple, kwargs: dict) -> None:
    """Refuse a guide with a site outside a plate that reads a plate's draw that
    ``estimator`` (one of Pyro's ELBOs) scores by plates (:func:`plate_escapes`).

    Raises:
        ValueError: naming the reader, the plate, the draw and the ways out."""
    found = plate_escapes(guide, args, kwargs, scored_by_pyro)
    if not found:
        return
    e = found[0]
    raise ValueError(
        f"guide: site {e.reader!r}, drawn outside plate {e.plate!r}, reads the draws of "
        f"{e.site!r} inside it; {estimator} scores each element of {e.site!r} by that "
        "element's terms and those outside the plate (Rao-Blackwellization by plates, as "
        "Pyro's ELBOs do), "
        f"leaving out the other elements' terms that {e.reader!r} reaches: a biased "
        f"gradient. Expected {e.reader!r} drawn first and {e.site!r} given it "
        f"(q(g) q(z_n | g), not q(z) q(g | z)), or estimator 'score', which scores "
        f"{e.site!r} by the whole batch's terms here"
    )
