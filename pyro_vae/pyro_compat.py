"""The one place ``pyro_vae`` touches Pyro's private internals.

Each function here wraps one underscore name of Pyro (or of the torch ``Distribution``
Pyro's distributions inherit) that has no public equivalent, says which Pyro version's
internals it was written against (pyro-ppl 1.9.x, as ``pyproject.toml`` pins) and what
public API is missing. When Pyro's upper bound is raised, read this module against the
new release: ``tests/pyro_vae/test_pyro_compat.py`` checks each function against the
Pyro behaviour it wraps, and ``tests/test_layering.py`` fails if a private Pyro name is
used anywhere else in the package.

Subclasses of Pyro classes may still override Pyro's underscore hooks (``_get_trace``,
``_guess_max_plate_nesting``, ``_setup_prototype``) and call ``super()`` inside the
override: that is how Pyro asks to be extended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.optim import PyroOptim
from pyro.poutine.indep_messenger import CondIndepStackFrame

Trace = Any  # pyro.poutine.Trace


def elbo_traces(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> Iterator[tuple[Trace, Trace]]:
    """``elbo``'s (model trace, guide trace) pairs for one loss, as Pyro's ``ELBO`` draws them.

    Wraps ``ELBO._get_traces`` (pyro-ppl 1.9.x): one vectorized pair under a particle plate
    at dim −max_plate_nesting when ``elbo.vectorize_particles`` (guessing the nesting
    first if it is ``inf``), else ``num_particles`` pairs from ``elbo._get_trace``. Pyro
    has no public way to get the traces an ELBO's loss is computed from.
    """
    return elbo._get_traces(model, guide, args, kwargs)


def elbo_trace(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[Trace, Trace]:
    """One (model trace, guide trace) pair of ``elbo``: the guide run, the model replayed
    against it, both checked and with log-densities computed as ``elbo`` needs them.

    Wraps the ``ELBO._get_trace`` of a Pyro ELBO (``Trace_ELBO``'s, pyro-ppl 1.9.x); no
    public API returns one particle's traces.
    """
    return elbo._get_trace(model, guide, args, kwargs)


def elbo_loss_particle(elbo: ELBO, model_trace: Trace, guide_trace: Trace) -> tuple[Any, Any]:
    """(loss, surrogate loss) of one particle's traces, as Pyro's ``Trace_ELBO`` and
    ``TraceMeanField_ELBO`` compute them: ``loss`` = −(log p − log q) (a float with
    ``torch_item`` as Pyro leaves it), the surrogate's gradient the ELBO's gradient estimate.

    Wraps ``Trace_ELBO._differentiable_loss_particle`` (pyro-ppl 1.9.x); Pyro's public
    ``differentiable_loss`` returns only the sum over particles, never the surrogate.
    """
    return elbo._differentiable_loss_particle(model_trace, guide_trace)


def guess_max_plate_nesting(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> None:
    """Set ``elbo.max_plate_nesting`` from one run of guide and model (+1 for the particle
    plate when ``elbo`` vectorizes more than one particle), as Pyro does at a vectorized
    ELBO's first call. Draws from the global random stream; raises what the run raises.

    Wraps ``ELBO._guess_max_plate_nesting`` (pyro-ppl 1.9.x); Pyro offers no public way to
    settle the nesting before the first loss.
    """
    elbo._guess_max_plate_nesting(model, guide, args, kwargs)


def autoguide_plates(guide: AutoGuide, *args, **kwargs) -> dict[str, Any]:
    """``{plate name: pyro.plate}`` for an autoguide's call on ``args``/``kwargs``: its
    ``create_plates`` hook's plates, then one per plate of its prototype trace. Sets
    ``guide.plates`` as a side effect, as Pyro does.

    Wraps ``AutoGuide._create_plates`` (pyro-ppl 1.9.x), which Pyro's own autoguides call in
    ``forward``; it is not public.
    """
    return guide._create_plates(*args, **kwargs)


def set_autoguide_model(guide: AutoGuide, model: Callable) -> None:
    """Make ``guide.model`` return ``model``, the callable the autoguide runs to lay out its
    parameters.

    ``AutoGuide.model`` is a read-only property over the private tuple ``AutoGuide._model``
    (pyro-ppl 1.9.x, a tuple so that ``nn.Module`` does not register the model as a
    submodule); Pyro has no setter.
    """
    guide._model = (model,)


def pop_waiting_optim_state(optim: PyroOptim, param_name: str) -> dict | None:
    """The state ``optim.set_state`` left for parameter ``param_name`` (a torch optimizer's
    ``state_dict``), removed so that it is applied once; ``None`` if there is none.

    Wraps ``PyroOptim._state_waiting_to_be_consumed`` (pyro-ppl 1.9.x), which ``PyroOptim``
    reads when it first sees a parameter; a subclass that builds its own optimizer has no
    public way to take that state.
    """
    return optim._state_waiting_to_be_consumed.pop(param_name, None)


def validates_args(distribution: torch.distributions.Distribution) -> bool:
    """Whether ``distribution`` checks its arguments and samples: the ``validate_args`` it
    was built with, or, built without one, the global default at the time of the call
    (``pyro.enable_validation``), since torch then keeps none on the instance.

    Reads ``Distribution._validate_args`` (torch, as pyro-ppl 1.9.x's distributions
    inherit it); torch has no public getter.
    """
    return distribution._validate_args


def validate_sample(distribution: torch.distributions.Distribution, value: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``value`` lies in ``distribution``'s support with a shape
    that broadcasts against its batch and event shape, as ``log_prob`` checks it.

    Wraps ``Distribution._validate_sample`` (torch, as pyro-ppl 1.9.x's distributions
    inherit it); torch has no public way to run the check alone.
    """
    distribution._validate_sample(value)


def frame_with_full_size(frame: CondIndepStackFrame, full_size: int) -> CondIndepStackFrame:
    """A copy of the plate frame ``frame`` with ``full_size`` set (the plate's size before
    subsampling, which Pyro reads to scale and to size autoguide parameters).

    Uses ``CondIndepStackFrame._replace``: the frame is a ``NamedTuple`` in pyro-ppl 1.9.x,
    an implementation detail; Pyro has no public way to copy a frame with a new field.
    """
    return frame._replace(full_size=full_size)


def frame_at_dim(frame: CondIndepStackFrame, dim: int) -> CondIndepStackFrame:
    """A copy of the plate frame ``frame`` at batch dim ``dim`` (the batch dim its plate
    names at a site whose rightmost plate AutoCAVI took into the event,
    :mod:`pyro_vae.cavi.plate_events`).

    Uses ``CondIndepStackFrame._replace``, as :func:`frame_with_full_size` does.
    """
    return frame._replace(dim=dim)


def provenance_parts(value) -> tuple[torch.Tensor, frozenset]:
    """(the plain tensor, the provenance set) of a ``pyro.ops.provenance.ProvenanceTensor``.

    Wraps ``ProvenanceTensor._t`` and ``._provenance`` (pyro-ppl 1.9.x). Pyro's public
    ``extract_provenance`` returns the same pair but dispatches through ``singledispatch``
    and, for containers, pytree flattening: too slow for the per-op scan of
    :class:`pyro_vae.cavi.provenance.FastProvenanceTensor`, which calls this once per
    tracked argument.
    """
    return value._t, value._provenance


def strip_provenance(value, found: list):
    """``value`` with every ``ProvenanceTensor`` in it (itself, or an item of a tuple or
    list: where a torch op's tensors are) replaced by its plain tensor, each one's
    provenance appended to ``found``: one pass over an op's argument, for the provenance
    trackers (:mod:`pyro_vae.cavi.provenance`, :mod:`pyro_vae.estimators.plate_escapes`)."""
    from pyro.ops.provenance import ProvenanceTensor

    if isinstance(value, ProvenanceTensor):
        tensor, provenance = provenance_parts(value)
        found.append(provenance)
        return tensor
    if type(value) in (list, tuple):
        return type(value)(strip_provenance(v, found) for v in value)
    return value


def distribution_mask(distribution) -> Any:
    """The mask of a ``pyro.distributions.MaskedDistribution`` (what ``.mask(m)`` made): a
    bool tensor broadcasting to its batch shape, or a bool.

    Wraps ``MaskedDistribution._mask`` (pyro-ppl 1.9.x), which has no public accessor.
    """
    return distribution._mask


def subsample_declaration(fn) -> tuple[int, int | None]:
    """(the full size, the declared ``subsample_size`` or None) of a plate's subsample
    distribution, the ``fn`` of the site ``pyro.plate`` records (a site for which
    ``pyro.poutine.util.site_is_subsample`` holds).

    Wraps ``pyro.poutine.subsample_messenger._Subsample``'s ``size`` and ``subsample_size``
    (pyro-ppl 1.9.x): Pyro keeps the declared subsample size nowhere public (a plate frame
    holds the run's size, equal to it when it covers every row)."""
    return int(fn.size), fn.subsample_size
