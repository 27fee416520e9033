"""Pyro's provenance tracking with a one-pass argument scan, for ``AutoCAVI``'s dependency run.

Pyro's :class:`pyro.ops.provenance.ProvenanceTensor` reads and strips the provenance of an
op's arguments with two ``torch.utils._pytree`` flattens, about 0.1 ms per op: on the
mixture of ``benchmarks/autocavi.py`` (some 300 ops) that was 40% of a whole ``AutoCAVI``
fit. :class:`FastProvenanceTensor` is Pyro's class with that scan done in one pass over
the arguments, tuples and lists (``torch.cat``'s) and keyword arguments, which is where a
torch op's tensors are; its results are the same sets (tested against Pyro's on the
shipped models). :class:`TrackFastProvenance` is Pyro's ``TrackProvenance`` messenger
wrapping sample values in it. Reading provenance stays Pyro's
(:func:`pyro.ops.provenance.get_provenance`, :func:`~pyro.ops.provenance.detach_provenance`).

Given an ``op_log`` list, ``TrackFastProvenance`` also records every op on a tracked tensor
that :func:`pyro_vae.cavi.analytic_ops.classify` does not call analytic, as (kind, op name,
provenance), outside the latents' draws from their priors: the ops that could bend a
conjugate form (:mod:`pyro_vae.cavi.analytic_ops`).
"""

from __future__ import annotations

import torch
from pyro.infer.inspect import TrackProvenance, is_sample_site
from pyro.ops.provenance import ProvenanceTensor, detach_provenance

from pyro_vae.cavi.analytic_ops import classify
from pyro_vae.cavi.positivity import (
    BRANCH,
    SIGNED_WHATEVER_GOES_IN,
    broadcast_signs,
    in_domain,
    of_support,
    result_sign,
    sign_of,
)
from pyro_vae.pyro_compat import provenance_parts


class _Recording:
    """Where ``FastProvenanceTensor`` records its ops: ``log`` (None: nowhere), and whether
    a latent is being drawn from its prior (``drawing``: its sampler's ops are not the
    log-density's)."""

    log: list | None = None
    drawing = False


class FastProvenanceTensor(ProvenanceTensor):
    """A :class:`~pyro.ops.provenance.ProvenanceTensor` whose ops union their arguments'
    provenance in one pass (no pytree flattening)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        found = []
        plain_args = tuple(_strip(a, found) for a in args)
        plain_kwargs = {k: _strip(v, found) for k, v in kwargs.items()} if kwargs else {}
        result = func(*plain_args, **plain_kwargs)
        if not found:
            return result
        provenance = frozenset().union(*found)
        if _Recording.log is None or _Recording.drawing or not provenance:
            return _wrap(result, provenance)
        return _recorded(func, args, plain_args, plain_kwargs or {}, result, provenance)


def _recorded(func, args, plain_args, plain_kwargs: dict, result, provenance: frozenset):
    """The op's result wrapped, its sign set (:mod:`pyro_vae.cavi.positivity`), the op
    logged unless it is analytic (:func:`~pyro_vae.cavi.analytic_ops.classify`).

    An integer or boolean result counts as a discretization only of the floating arguments
    that went in: ``x[..., :1]`` of an integer ``x`` makes no new one, and provenance,
    unioned over every argument and result of an op (``broadcast_tensors`` of a
    Categorical's values and its probabilities), would otherwise charge it to a
    continuous latent."""
    name = getattr(func, "__name__", None) or repr(func)
    tracked, signs, signed = [], [], name in SIGNED_WHATEVER_GOES_IN
    for a in args:
        if isinstance(a, ProvenanceTensor):
            sign = getattr(a, "_sign", None)
            tracked.append(True)
        else:
            sign = _sign(a, True) if _tracks(a) else None
            tracked.append(sign is not None)
        signs.append(sign)
        signed = signed or bool(sign)
    if signed:  # the constants' signs too (a reduction each), only where they can matter
        signs = [s if t else _sign(a, False) for a, s, t in zip(args, signs, tracked, strict=True)]
    domain = name in BRANCH and in_domain(name, plain_args, plain_kwargs, signs, tracked)
    kind = classify(name, plain_kwargs, result, domain)
    if kind == "discretize":
        found = []
        _strip(args, found, floating_only=True)
        _strip(plain_kwargs, found, floating_only=True)
        provenance_read = frozenset().union(*found)
    else:
        provenance_read = provenance
    if kind is not None and provenance_read:
        _Recording.log.append((kind, name, provenance_read))
    wrapped = _wrap(result, provenance)
    if not signed:
        return wrapped
    if name == "broadcast_tensors":
        for part, sign in zip(wrapped, broadcast_signs(plain_args, result, signs), strict=True):
            part._sign = sign
        return wrapped
    sign = result_sign(name, plain_args, plain_kwargs, result, signs)
    if sign is not None:
        _set_sign(wrapped, sign)
    return wrapped


def _tracks(value) -> bool:
    """Whether an argument carries provenance (a list's: any element does)."""
    if isinstance(value, ProvenanceTensor):
        return True
    return type(value) in (list, tuple) and any(isinstance(v, ProvenanceTensor) for v in value)


def _sign(value, tracked: bool):
    """An argument's sign (:func:`~pyro_vae.cavi.positivity.sign_of`); a list's, each
    element's."""
    if type(value) in (list, tuple):
        return [sign_of(v, isinstance(v, ProvenanceTensor)) for v in value]
    return sign_of(value, tracked)


def _set_sign(value, sign: str) -> None:
    if isinstance(value, ProvenanceTensor):
        value._sign = sign
    elif isinstance(value, (list, tuple)):
        for part in value:
            if isinstance(part, ProvenanceTensor) and provenance_parts(part)[0].is_floating_point():
                part._sign = sign


def _strip(value, found: list, floating_only: bool = False):
    """``value`` with its provenance tensors (in lists, tuples and dicts) made plain, their
    provenance appended to ``found`` (``floating_only``: only floating tensors')."""
    if isinstance(value, ProvenanceTensor):
        tensor, provenance = provenance_parts(value)
        if not floating_only or tensor.is_floating_point():
            found.append(provenance)
        return tensor
    if type(value) in (list, tuple):
        return type(value)(_strip(v, found, floating_only) for v in value)
    if type(value) is dict:
        return {k: _strip(v, found, floating_only) for k, v in value.items()}
    return value


def _wrap(value, provenance: frozenset):
    if isinstance(value, ProvenanceTensor):
        tensor, old = provenance_parts(value)
        return FastProvenanceTensor(tensor, old | provenance)
    if isinstance(value, torch.Tensor):
        return FastProvenanceTensor(value, provenance)
    if isinstance(value, (list, tuple)):
        items = [_wrap(v, provenance) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)  # list, tuple, or torch.return_types' structseqs
    return value


class TrackFastProvenance(TrackProvenance):
    """Pyro's ``TrackProvenance`` for sample sites (the same sites, by Pyro's
    ``is_sample_site``), wrapping their values in :class:`FastProvenanceTensor`; parameters
    are not tracked (they are not latents). ``op_log``: a list to append the ops that may
    bend a conjugate form to (see the module docstring); None records nothing. Not
    re-entrant: one recording run at a time."""

    def __init__(self, op_log: list | None = None):
        super().__init__()
        self.op_log = op_log

    def __enter__(self):
        _Recording.log, _Recording.drawing = self.op_log, False
        return super().__enter__()

    def __exit__(self, *exc):
        _Recording.log, _Recording.drawing = None, False
        return super().__exit__(*exc)

    def _pyro_sample(self, msg):
        _Recording.drawing = not msg["is_observed"] and msg["value"] is None

    def _pyro_post_sample(self, msg):
        _Recording.drawing = False
        if is_sample_site(msg):
            value = detach_provenance(msg["value"])
            msg["value"] = FastProvenanceTensor(value, frozenset({msg["name"]}))
            if self.op_log is not None:  # its sign over the support, or the data's own
                msg["value"]._sign = sign_of(value) if msg["is_observed"] else of_support(msg["fn"])

    def _pyro_post_param(self, msg):
        pass
