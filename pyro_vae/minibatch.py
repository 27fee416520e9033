"""Minibatches without the model's help: full size and true row indices for the data plate.

Stochastic variational inference on a minibatch B of N datapoints needs each
per-datapoint log-density scaled by N/|B|, so the minibatch ELBO is unbiased for the
full-data one (Hoffman et al. 2013), and guides with free per-datapoint parameters
(Pyro's ``AutoNormal`` over local latents) need the batch's true row indices to pick
their rows. Pyro does both when a model declares ``pyro.plate(name, N, subsample=idx)``.
:class:`DataPlateSubsample` does it for a model that declares only
``pyro.plate(name, len(x))``, as Pyro's own examples do:

- every ``pyro.plate`` of the per-datapoint plate's name draws the given indices
  (``idx`` into 0..N−1) as its subsample, so plates an autoguide creates, with full size
  N, select the batch's rows of their parameters;
- a site in that plate declared with the batch's size (``len(x)`` rather than N) has its
  log-density scale multiplied by N/|B| and its plate frame told its full size N; a
  plate already declared with size N (``pyro_vae.data_plate(x, num_data)``, autoguides) was
  scaled by Pyro and is left alone, so nothing is scaled twice;
- sites outside the plate (global latents, their priors) are never scaled.

:class:`Minibatched` wraps a model or guide so that the fit loop and the evaluators call
it as ``f(*data, subsample=idx)``; ``num_data`` is passed on only to callables that take it.
"""

from __future__ import annotations

import inspect

import pyro
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.devices import forked_streams
from pyro_vae.plate_declaration import ACTIVE_SUBSAMPLES
from pyro_vae.plates import DataPlateError, batch_rows
from pyro_vae.pyro_compat import frame_with_full_size, set_autoguide_model

_ACTIVE: list[DataPlateSubsample] = ACTIVE_SUBSAMPLES  # read by local guides, below


class DataPlateSizeError(ValueError):
    """The per-datapoint plate was declared with neither the batch's size nor N."""


class DataPlateSubsample(Messenger):
    """Give the plate ``plate`` its full size ``num_data`` and the rows ``indices``.

    Args:
        plate: the per-datapoint plate's name (:func:`pyro_vae.plates.find_data_plate`).
        num_data: N, the size of the dataset the batch comes from.
        indices: the batch's rows in 0..N−1 (``[B]``), or ``None`` to keep the plate's own.
    """

    def __init__(self, plate: str, num_data: int, indices: torch.Tensor | None = None) -> None:
        super().__init__()
        self.plate, self.num_data, self.indices = plate, int(num_data), indices

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["name"] is None:
            return
        if site_is_subsample(msg):
            if msg["name"] == self.plate and self.indices is not None:
                msg["value"] = self.indices
            return
        for i, frame in enumerate(msg["cond_indep_stack"]):
            if frame.name != self.plate or not frame.vectorized:
                continue
            declared = frame.full_size or frame.size
            if declared == self.num_data:
                return
            if declared != frame.size:
                raise DataPlateSizeError(
                    f"site {msg['name']!r}: plate {self.plate!r} was declared with size "
                    f"{declared} and subsamples {frame.size} rows, but the data has "
                    f"{self.num_data} rows; declare it as pyro.plate({self.plate!r}, len(x)) "
                    "or with the full size of the data"
                )
            msg["scale"] = msg["scale"] * (self.num_data / frame.size)
            stack = list(msg["cond_indep_stack"])
            stack[i] = frame_with_full_size(frame, self.num_data)
            msg["cond_indep_stack"] = tuple(stack)
            return


class _AutoguidePlates:
    """``create_plates`` for a Pyro autoguide: the active :class:`DataPlateSubsample`'s
    plate, with its full size and rows, at the model's dim. Outside one, a call on all
    ``num_data`` rows (Pyro's own tools after a fit: ``Predictive``, ``Trace_ELBO``) gets
    every row in order; any other call gets the autoguide's own plates."""

    def __init__(self, plate: str, dim: int, num_data: int) -> None:
        self.plate, self.dim, self.num_data = plate, dim, num_data

    def __call__(self, *args, **kwargs) -> list:
        active = [h for h in _ACTIVE if h.plate == self.plate and h.indices is not None]
        if active:
            h = active[-1]
            return [pyro.plate(self.plate, h.num_data, subsample=h.indices, dim=self.dim)]
        if batch_rows(args, kwargs) == self.num_data:
            device = device_of_arguments(args, kwargs)
            return [pyro.plate(self.plate, self.num_data, dim=self.dim, device=device)]
        return []


def device_of_arguments(args: tuple, kwargs: dict) -> torch.device | None:
    """The device of the first tensor among the model's arguments (``None``: none, Pyro's
    default), where the plate's row indices belong."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


class _UnderActiveHandler:
    """A model that runs under the innermost active :class:`DataPlateSubsample` again.

    An autoguide runs its model once to lay out its parameters, inside ``poutine.block``,
    which hides that run from handlers outside it; re-entering the handler inside lets
    the layout see the plate's full size N, so per-datapoint parameters get N rows."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        if not _ACTIVE:
            return self.model(*args, **kwargs)
        h = _ACTIVE[-1]
        with DataPlateSubsample(h.plate, h.num_data, h.indices):
            return self.model(*args, **kwargs)


def align_autoguide(guide, plate: str | None, dim: int | None, num_data: int) -> None:
    """Let a Pyro autoguide follow the batch's rows in the per-datapoint plate.

    An ``AutoGuide`` lays out its parameters from a run of its model on the batch it
    first sees, and sizes its plates from it: per-datapoint parameters get that batch's
    rows rather than N, a last partial batch or an evaluation chunk of another size
    fails, and it indexes its parameters by rows it draws itself. This (a) installs a
    ``create_plates`` (Pyro's hook for user-supplied plates, when the guide has none)
    that hands it the rows :class:`DataPlateSubsample` carries, and (b) makes its model
    run under that handler when it lays out its parameters. Parts of an ``AutoGuideList``
    are treated alike; other guides are left as they are.
    """
    if plate is None or not isinstance(guide, AutoGuide):
        return
    for part in guide.modules():
        if isinstance(part, AutoGuide) and not isinstance(part.model, _UnderActiveHandler):
            set_autoguide_model(part, _UnderActiveHandler(part.model))
    if getattr(guide, "master", None) is not None:
        return
    if guide.create_plates is None:
        guide.create_plates = _AutoguidePlates(plate, dim if dim is not None else -1, num_data)


def fitted_rows(guide) -> int | None:
    """N, the rows a Pyro autoguide aligned by :func:`align_autoguide` was set up for
    (its per-datapoint parameters have that many), or a local guide declares it holds
    (``num_datapoints``: :class:`pyro_vae.guides.local_normal.LocalNormal`), or ``None``
    for any other guide."""
    if isinstance(guide, AutoGuide) and isinstance(guide.create_plates, _AutoguidePlates):
        return guide.create_plates.num_data
    held = getattr(guide, "num_datapoints", None)
    return int(held) if isinstance(held, int) else None


def accepts_keyword(fn, name: str) -> bool:
    """Whether ``fn`` names the keyword argument ``name`` in its signature.

    A catch-all ``**kwargs`` does not count: an autoguide's ``forward(*args, **kwargs)``
    hands its arguments to the model, so it takes ``name`` when its model does. A torch
    module is read by its ``forward``.
    """
    return _keyword(fn, name) is not None


def requires_keyword(fn, name: str) -> bool:
    """Whether ``fn`` (as :func:`accepts_keyword` reads it) names ``name`` with no
    default: a call must give it."""
    parameter = _keyword(fn, name)
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _keyword(fn, name: str) -> inspect.Parameter | None:
    """The parameter ``name`` of the callable whose signature ``fn``'s calls follow (an
    autoguide's or a re-entering handler's model; a module's ``forward``), or None."""
    while isinstance(fn, AutoGuide | _UnderActiveHandler):
        fn = fn.model
    if isinstance(fn, torch.nn.Module):
        # a module's signature is its __call__'s, (*args, **kwargs); forward names its
        # keywords (tester DW: no PyroModule model or guide was ever given num_data, and
        # M2's α = 0.1·N came out 0.1·|B|)
        fn = fn.forward
    try:
        return inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return None


class Minibatched:
    """``fn`` called on a minibatch of a dataset of ``num_data`` rows.

    ``Minibatched(fn, plate, N)(*data, subsample=idx)`` runs ``fn(*data)`` (plus
    ``num_data=N`` when ``fn`` takes it, and each of ``keywords`` it takes, such as a
    labelled source's ``num_labelled``) under :class:`DataPlateSubsample`. With
    ``plate=None`` (a model without a per-datapoint plate) it only forwards the call.
    The wrapper keeps ``fn``'s torch modules visible (``modules``) for train/eval modes.
    """

    def __init__(self, fn, plate: str | None, num_data: int, keywords: dict | None = None) -> None:
        self.fn, self.plate, self.num_data = fn, plate, int(num_data)
        given = {"num_data": self.num_data, **(keywords or {})}
        self.passed = {k: v for k, v in given.items() if accepts_keyword(fn, k)}

    def __call__(self, *args, subsample: torch.Tensor | None = None, **kwargs):
        kwargs = {**self.passed, **kwargs}  # the caller's own win
        if self.plate is None:
            return self.fn(*args, **kwargs)
        with DataPlateSubsample(self.plate, self.num_data, subsample):
            return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Minibatched({self.fn!r}, plate={self.plate!r}, num_data={self.num_data})"


def refuse_reading_the_batch_by_plate(
    model,
    args: tuple,
    plate: str,
    num_data: int,
    indices: torch.Tensor,
    what: str,
    keywords: dict | None = None,
) -> None:
    """Refuse a model that reads its batch by the per-datapoint plate's indices, where
    ``what`` hands the model a part of ``num_data`` rows (``args``, B rows) and the plate
    their rows among the N, ``indices`` ``[B]``: Pyro's idiom ``with pyro.plate("data",
    len(x)) as i: ... obs=x[i]``, or the same plate with ``subsample=torch.arange(len(x))``
    or ``subsample_size=len(x)``, reads x past its B rows with those (an IndexError inside
    the model; tester EH's F4 and EJ's F2), or other rows than the batch's where they lie
    below B (an evaluator given ``rows=[2, 0, 1]``: tester EN, scored against the wrong
    rows). Decided by two runs of the model under :class:`DataPlateSubsample`, outside the
    random stream and without gradients: one with ``indices``, one with the batch's own
    positions 0..B−1. A model that runs with the second and fails with the first, or
    observes other values with it, is refused: one that observes ``x`` itself (``obs=x``)
    observes the same with both, and one that fails with the batch's own positions fails
    for another reason, which the caller's own runs then raise.

    Raises:
        pyro_vae.plates.DataPlateError: naming the plate, what the model did with
            ``indices`` and the way out."""
    rows = batch_rows(args)
    own = None if rows is None else torch.arange(rows, device=indices.device)
    if own is None or torch.equal(indices, own):
        return
    wrapped = Minibatched(model, plate, num_data, keywords)
    error, seen = _observed_in_run(wrapped, args, indices)
    if isinstance(error, DataPlateSizeError):
        return
    failed, expected = _observed_in_run(wrapped, args, own)
    if failed is not None:
        return
    own_rows = f"the batch's own positions 0..{rows - 1}"
    if error is not None:
        happened = f"fails with them ({type(error).__name__}: {error}) and runs with {own_rows}"
    else:
        moved = [name for name, value in expected.items() if not _same(value, seen.get(name))]
        if not moved:
            return
        happened = f"observes other values at {moved} with them than with {own_rows}"
    first, last = int(indices.min()), int(indices.max())
    raise DataPlateError(
        f"model: for {what}, the model is handed {rows} of the {num_data} rows at a time "
        f"and plate {plate!r} their rows among the {num_data} (here {first}..{last}) as its "
        f"indices, for per-datapoint parameters; the model {happened}, so it reads the "
        "batch by the plate's indices "
        f"(with pyro.plate({plate!r}, len(x)) as i: ... obs=x[i], or subsample= or "
        "subsample_size= over the batch); expected obs=x, the batch's rows in the order "
        "given (or pyro_vae.plates.data_plate(x, num_data) without indexing x by it)"
        + (
            f", or all {num_data} rows at once (batch_size >= {num_data})"
            if num_data > rows
            else ""
        )  # fmt: skip
    ) from error


def _observed_in_run(
    wrapped: Minibatched, args: tuple, indices: torch.Tensor
) -> tuple[Exception | None, dict[str, torch.Tensor]]:
    """(the exception ``wrapped``'s run on ``args`` with the plate's ``indices`` raises,
    or None; the values of its observed sites): outside the random stream, without
    gradients, hidden from outer handlers."""
    try:
        with forked_streams(), torch.no_grad(), pyro.poutine.block():
            trace = pyro.poutine.trace(wrapped).get_trace(*args, subsample=indices)
    except Exception as error:  # the model's own, whatever it is: the caller decides
        return error, {}
    return None, {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and torch.is_tensor(site["value"])
    }


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``b`` holds ``a``'s values, NaN where ``a`` has NaN (missing data)."""
    if b is None or a.shape != b.shape:
        return False
    return bool(((a == b) | ((a != a) & (b != b))).all())
