"""Guide draws outside a plate that read a plate's scored draws, found by provenance.

A score-function gradient Rao-Blackwellized by plates scores element n of a plated draw
z by the terms of element n and by those outside the plate: Pyro's ``Trace_ELBO``,
``TraceGraph_ELBO`` and ``TraceEnum_ELBO`` for a site without ``rsample``, and
:class:`~pyro_vae.estimators.score_function.ScoreFunctionELBO` for every site. That is
unbiased where nothing drawn outside the plate reads z. A guide q(z) q(g | Σ_n z_n)
makes g, and every term of element n′ that reads g, depend on z_n: terms the signal
leaves out (tester DA: each of those estimators 5 to 18 standard errors from the exact
gradient, with no word).

:func:`plate_escapes` runs the guide once with each draw's value tracked through every
torch operation (the provenance of Pyro's :func:`pyro.infer.inspect.get_dependencies`):
a later guide site outside z's plate whose log-density's provenance holds z, directly or
through other draws, reads it; so does every site drawn after a value of z was read out
of a tensor into Python (``if z.sum() > 1:``, ``int(z)``), whose effect no provenance
follows. A first version replayed the guide with z's draws moved and compared densities,
which missed reads that the moves left unchanged (an xor of two elements, a low-entropy
count, a branch on one draw) and crashed guides whose later supports followed z (tester
DC). A site inside the plate that reads other elements' draws breaks the plate's own
declaration (its elements conditionally independent), as in a model; it is not looked for.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import ProvenanceTensor, get_provenance
from pyro.poutine.util import site_is_subsample
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

from pyro_vae.devices import forked_streams
from pyro_vae.draw_tracking import DrawTracker, buffers_set_aside
from pyro_vae.pyro_compat import provenance_parts
from pyro_vae.traces import base_distribution, is_point_mass
from pyro_vae.weights import module_of


@dataclass(frozen=True)
class PlateEscape:
    """``reader``, a guide site outside plate ``plate``, drawn from a density that reads
    ``site``'s draws inside it."""

    site: str
    plate: str
    reader: str
    #: whether only through a value read into Python before ``reader`` was drawn (so it
    #: may read it: a branch's effect is not followed)
    through_python: bool = False


def plate_escapes(
    guide, args: tuple, kwargs: dict, scored: Callable[[dict], bool]
) -> list[PlateEscape] | None:
    """Every (plated site, its plate, a later guide site outside that plate reading it) of
    one run of ``guide(*args, **kwargs)``, for the sites ``scored(site)`` selects (those an
    estimator gives a score-function term); ``None`` where the tracked run failed (an
    operation the tracking cannot follow), so that nothing is known.

    The guide runs once, without gradients, with validation off (a check reads values)
    and its networks in eval mode, its random stream and its modules' buffers left as
    they were, outside any recording of the step (:mod:`pyro_vae.estimators.compiled`).
    Call it after the guide's first run: a lazily made parameter drawn here, in the
    forked stream, would repeat the draws of the run after it."""
    tracker = DrawTracker()
    try:
        with _quiet_run(guide):
            trace = poutine.trace(tracker(guide)).get_trace(*args, **kwargs)
            parents = _parents(trace, tracker)
    except Exception:  # noqa: BLE001 (the guide's own error, under tracking: unknown)
        return None
    finally:
        tracker.close()
    flowed = _closure(parents, {n: direct for n, (direct, _) in parents.items()})
    every = _closure(parents, {n: direct | read for n, (direct, read) in parents.items()})
    found = []
    for name in parents:
        site = trace.nodes[name]
        if not scored(site) or is_point_mass(site["fn"]) or site["is_observed"]:
            continue
        for plate in (f.name for f in site["cond_indep_stack"] if f.vectorized):
            found += [
                PlateEscape(name, plate, reader, name not in flowed[reader])
                for reader in parents
                if name in every[reader]
                and not _inside(trace.nodes[reader], plate)
                # a pyro.deterministic record scores nothing; a site that reads it is
                # found through it (tester DF: refused as a reader)
                and not trace.nodes[reader]["infer"].get("_deterministic")
            ]
    return found


def _closure(order, direct: dict[str, frozenset]) -> dict[str, frozenset]:
    """{site: every draw it depends on, through others}, ``direct`` its own, in order."""
    every: dict[str, frozenset] = {}
    for name in order:
        every[name] = direct[name].union(*(every.get(p, frozenset()) for p in direct[name]))
    return every


def possible_plate_escapes(
    guide, args: tuple, kwargs: dict, scored: Callable[[dict], bool]
) -> list[PlateEscape]:
    """:func:`plate_escapes`, or where the guide cannot be tracked, every later site
    outside a scored site's plate taken as reading it (so an estimator that treats each
    as a read stays unbiased)."""
    found = plate_escapes(guide, args, kwargs, scored)
    if found is not None:
        return found
    with _quiet_run(guide):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    order = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    order = [n for n in order if not site_is_subsample(trace.nodes[n])]
    return [
        PlateEscape(name, frame.name, reader)
        for i, name in enumerate(order)
        if scored(trace.nodes[name]) and not is_point_mass(trace.nodes[name]["fn"])
        for frame in trace.nodes[name]["cond_indep_stack"]
        if frame.vectorized
        for reader in order[i + 1 :]
        if not _inside(trace.nodes[reader], frame.name)
    ]


@contextlib.contextmanager
def _quiet_run(guide):
    """What the tracked run runs under: no recording, its own random stream, no gradients,
    no validation, networks in their own modes on copies of their buffers (and of those
    the guide's object holds, called or not: a Pyro BatchNorm transform)."""
    with (
        disable_proxy_modes_tracing(),  # left out of a step being recorded (compiled.py)
        forked_streams(),
        torch.no_grad(),
        pyro.validation_enabled(False),
        buffers_set_aside([m for m in (module_of(guide),) if m is not None]),  # own modes
    ):
        yield


def _parents(trace, tracker: DrawTracker) -> dict[str, tuple[frozenset, frozenset]]:
    """{site: (the draws its density reads, those read into Python before it was drawn)},
    for every sample site of ``trace`` in order (not a plate's subsample). A point mass
    (``pyro.deterministic``, whose density is masked off) reads what its value was made
    from (tester DE: a deterministic site between z and g cut the read)."""
    parents = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        value = site["value"]
        plain = provenance_parts(value)[0] if isinstance(value, ProvenanceTensor) else value
        fn = base_distribution(site["fn"])
        if isinstance(fn, dist.Delta):
            read = get_provenance(fn.v) | get_provenance(fn.log_density)
        else:
            read = get_provenance(site["fn"].log_prob(plain))
        before = tracker.read_before.get(name, frozenset())
        parents[name] = (frozenset(read) - {name}, before - {name})
    return parents


def _inside(site: dict, plate: str) -> bool:
    return any(f.name == plate and f.vectorized for f in site["cond_indep_stack"])


class CheckedGuides:
    """What a check found for each guide and shape of its arguments, so that it runs once
    for them. Guides are compared by ``==``, and kept: a bound method made afresh at each
    call (``vae.guide``) equals the last, where an id or ``is`` would check it again at
    every step (and keep every copy); a new guide never takes a freed one's answer
    (tester DE: keyed by ``id``, a redefined guide inherited a clean answer)."""

    def __init__(self) -> None:
        self._found: list[tuple] = []

    def get(self, guide, shapes: tuple, check: Callable[[], object]):
        """``check()``'s answer for ``guide`` and ``shapes``, from the first call."""
        for kept, kept_shapes, answer in self._found:
            if kept_shapes == shapes and kept == guide:
                return answer
        answer = check()
        self._found.append((guide, shapes, answer))
        return answer


def scored_by_pyro(site: dict) -> bool:
    """Whether Pyro's ``Trace_ELBO`` (and ``TraceGraph_ELBO``, ``TraceEnum_ELBO``) gives
    ``site`` a score-function term: drawn without ``rsample``, not enumerated."""
    return not site["fn"].has_rsample and site["infer"].get("enumerate") is None


def refuse_plate_escapes(estimator: str, guide, args: tuple, kwargs: dict) -> None:
    """Refuse a guide with a site outside a plate that reads a plate's draw that
    ``estimator`` (one of Pyro's ELBOs) scores by plates (:func:`plate_escapes`); warn
    (:class:`PlateEscapeWarning`) where it only may read it (a value read into Python
    before it was drawn: an assert, a log line, a draw written into a buffer, which
    valid guides do: tester DF), or where the guide could not be tracked.

    Raises:
        ValueError: naming the reader, the plate, the draw and the ways out."""
    found = plate_escapes(guide, args, kwargs, scored_by_pyro)
    if found is None:
        warnings.warn(
            f"{estimator}: the guide could not be run with its draws tracked, so whether a "
            "site outside a plate reads a plate's score-function draws (which would bias "
            "this estimator's gradient) is unchecked; estimator 'score' scores such draws "
            "by the whole batch wherever it cannot tell",
            PlateEscapeWarning,
            stacklevel=3,
        )
        return
    if not found:
        return
    e = min(found, key=lambda escape: escape.through_python)  # one it surely reads first
    reads = (
        f"may read the draws of {e.site!r} inside it (a value of them was read into Python "
        "before it was drawn: an if, an assert, int(), .item(), a write into another "
        "tensor, a count of nonzero elements)"
        if e.through_python
        else f"reads the draws of {e.site!r} inside it"
    )
    message = (
        f"guide: site {e.reader!r}, drawn outside plate {e.plate!r}, {reads}; {estimator} "
        f"scores each element of {e.site!r} by that element's terms and those outside "
        "the plate (Rao-Blackwellization by plates, as Pyro's ELBOs do), leaving out the "
        f"other elements' terms that {e.reader!r} reaches: a biased gradient. Expected "
        f"{e.reader!r} drawn first and {e.site!r} given it (q(g) q(z_n | g), not "
        "q(z) q(g | z)), or estimator 'score', which scores "
        f"{e.site!r} by the whole batch's terms here"
    )
    if not e.through_python:
        raise ValueError(message)
    warnings.warn(f"{message} (if it reads them)", PlateEscapeWarning, stacklevel=3)


class PlateEscapeWarning(UserWarning):
    """A guide site outside a plate may read the plate's score-function draws (or could
    not be checked): the gradient of an estimator that Rao-Blackwellizes by plates would
    then be biased (:mod:`pyro_vae.estimators.plate_escapes`)."""
