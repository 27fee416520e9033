"""Each draw's value tracked through the torch operations of a run, and the draws whose
values a run reads into Python.

:class:`DrawTracker` gives every sample site's value (or those it is asked to track) its
site's name as provenance, as Pyro's :func:`pyro.infer.inspect.get_dependencies` does for
a model, and keeps that provenance on every tensor computed from it
(:class:`TrackedDraw`, Pyro's ``ProvenanceTensor`` whose results stay of its class). A
site's log-density then says which draws it reads. What provenance cannot follow is a
value read out of a tensor into Python (``if z.sum() > 1:``, ``int(z)``), a shape made
from values (``z.nonzero()``) or a write into a tensor that is not tracked (``s[:] = z``):
each is recorded as a read, with the operation that made it, so a caller can say what
may depend on it. Used by the plate-escape check of the estimators
(:mod:`pyro_vae.estimators.plate_escapes`) and the vectorized-particles check
(:func:`pyro_vae.traces.check_vectorized`: one Python value shared by every particle).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.ops.provenance import ProvenanceTensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from pyro_vae.module_hooks import global_forward_pre_hook
from pyro_vae.pyro_compat import provenance_parts, strip_provenance

#: Tensor methods that read a value out of a tensor into Python: the plate-escape
#: check counts each as a read, and a compiled step refuses them while recording.
#: Reading these out of any tensor while recording fixes the value read: refused (on a
#: tensor of the step's own make_fx refuses them itself; on a constant, a global tensor
#: annealed in place, ``float(kl_w)``, it read the number once and every replay kept it,
#: tester BT's F2; ``np.asarray(t)``, ``np.float32(t)`` and ``complex(t)`` read it through
#: ``__array__`` and ``__complex__``, tester BU; ``torch.equal`` and ``torch.allclose``
#: return a Python bool, tester BX). ``str(t)`` is let through: a message or a log line,
#: not arithmetic.
VALUE_READS = frozenset(
    getattr(torch.Tensor, name)
    for name in (
        "item", "tolist", "numpy", "__array__", "__float__", "__int__", "__complex__",
        "__bool__", "__index__", "equal", "allclose", "__contains__", "is_nonzero",
    )
) | {torch.equal, torch.allclose, torch.is_nonzero}  # fmt: skip


#: Operations whose result's shape depends on their input's values: a count read from
#: it (``len(z.nonzero())``) carries no provenance, so each counts as a value read.
SHAPE_READS = frozenset(
    getattr(owner, name)
    for owner in (torch, torch.Tensor)
    for name in (
        "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount",
    )
) | {torch.Tensor.to_sparse}  # fmt: skip

#: Operations that hand a tensor's memory or bytes out of torch's operations, where no
#: provenance follows (``torch.from_dlpack(z)``, a view made on ``z.untyped_storage()``,
#: ``pickle.dumps(z)``: tester DO, each a branch unseen, 32 standard errors off): each
#: counts as a write into a tensor the tracking cannot follow.
ESCAPES = frozenset(
    {torch.Tensor.__dlpack__, torch.Tensor.untyped_storage, torch.Tensor.__reduce_ex__}
)

#: Operations whose result's shape depends on their input's values only when called so
#: (tester DG: each missed): ``torch.where(c)`` with its condition alone,
#: ``repeat_interleave`` with a tensor of repeats (or its input as the repeats),
#: ``F.one_hot`` without a number of classes, indexing by a boolean mask (``z[z > 0.5]``).
_WHERE = frozenset({torch.where, torch.Tensor.where})
_REPEAT = frozenset({torch.repeat_interleave, torch.Tensor.repeat_interleave})
_ONE_HOT = frozenset({torch.nn.functional.one_hot})


@dataclass(frozen=True)
class DrawRead:
    """Values of the draws ``sites`` read out of their tensors by operation ``operation``
    (its name: ``__bool__`` for an ``if`` or an ``assert``, ``item``, ``nonzero``,
    ``__setitem__`` for a write into a tensor that is not tracked)."""

    sites: frozenset
    operation: str
    #: "value" (read into Python), "shape" (a shape made from values) or "write" (into a
    #: tensor that is not tracked, so the provenance stops there: not a read in itself)
    kind: str = "value"
    #: "file:line" of the read (the innermost frame outside torch, Pyro and this module),
    #: or "" where there is none
    where: str = ""


class DrawTracker(Messenger):
    """Each draw's value tracked as its own name (:class:`TrackedDraw`), and, for each
    site, the draws whose values were read into Python before it was drawn
    (:attr:`read_before`); every read in order in :attr:`reads`.

    ``tracked(msg)`` chooses the sample sites whose values are tracked (default: all).
    A sampler's own reads (between a site's draw and its value) are not recorded, nor are
    reads inside Pyro's code or torch's distributions (:func:`_read_by_a_library`). Call
    :meth:`close` when done, so that no later read is taken for this run's."""

    def __init__(self, tracked: Callable[[dict], bool] | None = None) -> None:
        super().__init__()
        self.reads: list[DrawRead] = []
        self.read_before: dict[str, frozenset] = {}
        self.tracked = tracked
        self.sampling = False  # inside a draw: its sampler's reads are its own
        _ACTIVE.append(self)

    def close(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __enter__(self):
        entered = super().__enter__()
        self._copies = CopiesFollowed()
        self._copies.__enter__()
        return entered

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        try:
            self._copies.__exit__(exc_type, exc_value, traceback)
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    def _pyro_sample(self, msg) -> None:
        # a sampler's own reads (VonMises's rejection loop calls .any()) decide the draw
        # alone, whose density's provenance says what it reads (tester DE: they made every
        # later site a reader)
        self.sampling = True

    def _pyro_post_sample(self, msg) -> None:
        self.sampling = False
        if site_is_subsample(msg):
            return
        self.read_before[msg["name"]] = frozenset().union(*(r.sites for r in self.reads))
        if self.tracked is not None and not self.tracked(msg):
            return
        value = msg["value"]
        if isinstance(value, ProvenanceTensor):
            value = provenance_parts(value)[0]
        msg["value"] = TrackedDraw(value, frozenset({msg["name"]}))


_ACTIVE: list[DrawTracker] = []


class CopiesFollowed(TorchFunctionMode):
    """A tracked draw's values copied into a new tensor by a function that does not ask
    the draw's class (``torch.tensor(z)``, ``torch.as_tensor(z, dtype=...)``,
    ``torch.full(shape, z[0])``: torch converts the data itself) keep their provenance:
    without it a branch on the copy went unseen. Any torch function given a tracked
    argument (within lists and tuples too) that returns a plain tensor is such a copy;
    every other function on a tracked argument returns a :class:`TrackedDraw`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not isinstance(result, torch.Tensor) or isinstance(result, ProvenanceTensor):
            return result
        found = _provenance_within((args, kwargs))
        return _wrap(result, found) if found else result


def _provenance_within(value) -> frozenset:
    """The provenance of every tracked tensor in ``value`` (a tensor, or lists, tuples and
    dicts of them, nested). A list that starts with a Python number is data for a tensor
    (``torch.tensor([0.5, ...])``), not walked: a tracked element of it is a 0-dim tensor,
    which torch reads through ``__float__``, a read of its own (walking 200,000 floats at
    every call slowed a guide's check 4-6x: tester DO)."""
    if isinstance(value, ProvenanceTensor):
        return provenance_parts(value)[1]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], numbers.Number):
            return frozenset()
        return frozenset().union(*(_provenance_within(v) for v in value))
    if isinstance(value, dict):
        return frozenset().union(*(_provenance_within(v) for v in value.values()))
    return frozenset()


class TrackedDraw(ProvenanceTensor):
    """Pyro's ``ProvenanceTensor`` whose results stay of this class, and whose value reads
    (:data:`VALUE_READS`, :data:`SHAPE_READS`, writes into untracked tensors) are recorded
    by the active :class:`DrawTracker`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        found: list[frozenset] = []
        plain_args = tuple(strip_provenance(a, found) for a in args)
        plain_kwargs = {k: strip_provenance(v, found) for k, v in kwargs.items()} if kwargs else {}
        kind = _ACTIVE and not _ACTIVE[-1].sampling and found and _reads(func, args, kwargs)
        if kind and not _read_by_a_library():
            name = getattr(func, "__name__", repr(func))
            read = DrawRead(frozenset().union(*found), name, kind, _caller())
            _ACTIVE[-1].reads.append(read)
        result = func(*plain_args, **plain_kwargs)
        return _wrap(result, frozenset().union(*found)) if found else result


#: torch's and Pyro's frames: library code, where no read or warning is the user's.
LIBRARY_FRAMES = tuple(os.path.dirname(module.__file__) + os.sep for module in (torch, pyro))


def first_frame_outside(prefixes: tuple, frame) -> tuple:
    """``(frame, steps)``: the first frame from ``frame`` outward whose file does not start
    with one of ``prefixes``, and how many frames out it lies (``(None, n)`` where all
    do). Shared by a read's place and a warning's ``stacklevel``."""
    steps = 0
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame, steps = frame.f_back, steps + 1
    return frame, steps


def _caller() -> str:
    """ "file:line" of the innermost frame outside torch, Pyro and this module."""
    frame, _ = first_frame_outside((*LIBRARY_FRAMES, __file__), sys._getframe(1))
    return "" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _reads(func, args: tuple, kwargs: dict | None) -> str | None:
    """How ``func`` on tracked arguments loses their provenance, if it does: "value", read
    into Python (:data:`VALUE_READS`); "shape", a shape made from values
    (:data:`SHAPE_READS`, and the calls of :func:`_shape_from_values`); "write", into a
    tensor that is not tracked (``s[:] = z``, ``s.add_(z)``, ``out=s``: tester DE, each
    missed), or out of torch's operations (:data:`ESCAPES`); else None."""
    kwargs = kwargs or {}
    if func in VALUE_READS:
        return "value"
    if func in SHAPE_READS or _shape_from_values(func, args, kwargs):
        return "shape"
    if func in ESCAPES:
        return "write"
    name = getattr(func, "__name__", "")
    in_place = name == "__setitem__" or (name.endswith("_") and not name.startswith("_"))
    untracked = bool(args) and not isinstance(args[0], ProvenanceTensor)
    return "write" if kwargs.get("out") is not None or in_place and untracked else None


def _shape_from_values(func, args: tuple, kwargs: dict) -> bool:
    """Whether this call of an operation whose result's shape may depend on its input's
    values does (see :data:`_WHERE`)."""
    if func in _WHERE:
        return len(args) + len(kwargs) == 1
    if func in _REPEAT:  # its input alone: the input is the repeats
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return repeats is None or torch.is_tensor(repeats)
    if func in _ONE_HOT:
        classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return classes == -1
    if func is torch.Tensor.__getitem__ and len(args) > 1:  # a mask made from draws
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        masks = (i for i in index if torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8))
        # a constant mask (missing data, torch's own triangular ones) fixes the shape
        # (tester DI: it sent valid pairs to the loop)
        return any(isinstance(mask, ProvenanceTensor) for mask in masks)
    return False


_TORCH = os.path.dirname(torch.__file__) + os.sep
#: Code written for batched tensors: Pyro's distributions and torch's. Not the rest of
#: Pyro: a helper there may hand the value it read back (``pyro.infer.util.torch_item``,
#: tester DJ: a branch on it went unseen, 6.9 standard errors off).
_BATCHED_LIBRARIES = (
    os.path.join(os.path.dirname(pyro.__file__), "distributions") + os.sep,
    _TORCH + "distributions" + os.sep,
    # and torch.compile's own guards, which read a tensor's storage to decide nothing the
    # model computes (tester DO: a compiled decoder's call was taken for a write)
    _TORCH + "_dynamo" + os.sep,
)


def _read_by_a_library() -> bool:
    """Whether the read being recorded is made inside Pyro's or torch's distributions (a
    frame of theirs lies between the read and the first frame outside torch):
    their distributions, transforms and checks are written for batched tensors, as Pyro's
    own vectorized ELBOs take them to be (an ``assert`` in Pyro's spline inverse, torch's
    argument checks under ``validate_args=True``: testers DG, DI, each sent valid pairs
    to the loop). A read in the user's code, or one torch makes for it through its
    dispatch (``z.tolist()``, ``x in z``, ``torch.unique(z)``), counts."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_BATCHED_LIBRARIES):
            return True
        if not name.startswith(_TORCH) and name != __file__:  # (CopiesFollowed's frame)
            return False
        frame = frame.f_back
    return False


def _wrap(value, provenance: frozenset):
    if isinstance(value, torch.Tensor):
        # a sparse result cannot be subclassed; its read was recorded (to_sparse)
        return TrackedDraw(value, provenance) if value.layout == torch.strided else value
    if isinstance(value, (list, tuple)):
        items = [_wrap(v, provenance) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


@contextlib.contextmanager
def buffers_set_aside(roots=()):
    """Every ``nn.Module`` called in the block runs in its own mode (a branch taken only
    in training is taken) on copies of its buffers, its own buffers put back untouched on
    leaving: a check runs between a step's forward and backward passes, whose graph may
    have saved a buffer (a ``BatchNorm``'s running statistics, a flow's masks), and a
    ``BatchNorm`` in training mode updates its statistics in place, which would fail that
    backward pass ("modified by an inplace operation"). Eval mode, the first way round
    this, hid reads made only in training (tester DG: ``if self.training and z.sum() >
    0.5`` went unseen, an ELBO 17 standard errors off)."""
    originals: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}

    def copy_buffers(module, _inputs) -> None:
        # its submodules' too: one used without its __call__ (Pyro's BatchNorm transform,
        # applied as a Transform) is never seen by the hook
        for sub in module.modules():
            if sub in originals:
                continue
            own = {n: b for n, b in sub.named_buffers(recurse=False) if not is_lazy(b)}
            originals[sub] = own
            for name, buffer in own.items():
                setattr(sub, name, buffer.clone())  # a registered buffer's slot

    for root in roots:  # the pair's objects, where known: what they hold, called or not
        copy_buffers(root, ())
    handle = global_forward_pre_hook(copy_buffers)
    try:
        yield
    finally:
        handle.remove()
        for module, own in originals.items():
            for name, buffer in own.items():
                setattr(module, name, buffer)
