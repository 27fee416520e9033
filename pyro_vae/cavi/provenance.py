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
"""

from __future__ import annotations

import torch
from pyro.infer.inspect import TrackProvenance, is_sample_site
from pyro.ops.provenance import ProvenanceTensor, detach_provenance

from pyro_vae.pyro_compat import provenance_parts, strip_provenance


class FastProvenanceTensor(ProvenanceTensor):
    """A :class:`~pyro.ops.provenance.ProvenanceTensor` whose ops union their arguments'
    provenance in one pass (no pytree flattening)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        found = []
        plain_args = tuple(strip_provenance(a, found) for a in args)
        plain_kwargs = {k: strip_provenance(v, found) for k, v in kwargs.items()} if kwargs else {}
        result = func(*plain_args, **plain_kwargs)
        if not found:
            return result
        return _wrap(result, frozenset().union(*found))


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
    are not tracked (they are not latents)."""

    def _pyro_post_sample(self, msg):
        if is_sample_site(msg):
            value = detach_provenance(msg["value"])
            msg["value"] = FastProvenanceTensor(value, frozenset({msg["name"]}))

    def _pyro_post_param(self, msg):
        pass
