"""Which tensors of a provenance run are positive wherever the latents may go, for
:mod:`pyro_vae.cavi.analytic_ops`.

A log-density built from analytic ops has one form on a connected domain, but ``sqrt``,
``log``, a fractional power and a Cholesky factor are analytic only away from zero (or a
singular matrix): ``(mu ** 2).sqrt()`` is ``|mu|``, and so is ``(0.5 * (mu ** 2).log()).exp()``.
Those ops are analytic in a factor's latents only where their argument stays positive (or
positive definite) over the latents' whole support, which the one provenance run cannot
see from its values. It can see it from how the argument was built, and that is what this
module tracks, soundly but not completely (what it cannot show positive is checked at q,
as before):

- ``POSITIVE``, every entry above zero: the value of a latent whose support is positive
  (a Gamma's: its interior, where q has all its mass), a constant (data, a number) above
  zero, and what ``+``, ``×``, ``÷``, a power, ``sqrt``, ``exp``, ``sum`` and ``prod`` make
  of them; any reshaping, copy or selection of their entries; the diagonal of the two
  matrix signs below.
- ``UNIT``, every entry in (0, 1): a Beta's or a Dirichlet's value, ``sigmoid``,
  ``softmax``, products of them, ``1 − p``, torch's ``clamp_probs``; ``BELOW``, in (−1, 0):
  ``−p``, where ``log1p`` is analytic (a Bernoulli's ``log1p(−p)``); ``NONNEGATIVE``, at or
  above zero: data such as counts, whose sum with a positive is positive (a Poisson's
  ``lgamma(k + 1)``, its counts broadcast with its rate and so carrying the rate's
  provenance).
- ``DEFINITE``, symmetric positive definite in the last two dims: a Wishart latent's value,
  a positive scalar times one, the sum of two, their inverse; reshapes and selections that
  keep the last two dims whole (Pyro's ``Vindex`` selects them with ``arange`` indices).
- ``DIAGONAL``, a square matrix with a positive diagonal: the Cholesky factor of a definite
  one, its flips and transpose over the last two dims, and its triangular inverse
  (``solve_triangular(L, I)``), as ``torch.distributions.MultivariateNormal`` builds its
  ``scale_tril`` from a precision matrix.

:func:`in_domain` then says whether a branch op (:data:`BRANCH`) has such an argument.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

POSITIVE, UNIT, BELOW, DEFINITE, DIAGONAL = "positive", "unit", "below", "definite", "diagonal"
#: every entry at or above zero: data (Poisson counts), where ``+`` a positive is positive
NONNEGATIVE = "nonnegative"
#: signs with every entry above zero
_ABOVE_ZERO = frozenset({POSITIVE, UNIT})

#: Ops analytic only where their first argument is positive, or (the Cholesky family and
#: log-determinants) positive definite; ``xlogy`` needs its second argument positive, a
#: power its base unless the exponent is a whole number.
BRANCH = frozenset(
    {
        "sqrt", "rsqrt", "log", "log2", "log10", "log1p", "lgamma", "mvlgamma", "xlogy",
        "pow", "__pow__", "__rpow__", "float_power", "cholesky", "linalg_cholesky",
        "linalg_cholesky_ex", "linalg_slogdet", "slogdet", "logdet",
    }
)  # fmt: skip
_DEFINITE_ARGUMENT = frozenset(
    {"cholesky", "linalg_cholesky", "linalg_cholesky_ex", "linalg_slogdet", "slogdet", "logdet"}
)
_PRODUCTS = frozenset(
    {"mul", "__mul__", "__rmul__", "div", "__div__", "__rdiv__", "__truediv__",
     "__rtruediv__", "true_divide"}
)  # fmt: skip
_SUMS = frozenset({"add", "__add__", "__radd__"})
_ALWAYS_POSITIVE = frozenset({"exp"})
_ALWAYS_UNIT = frozenset({"sigmoid", "softmax", "_softmax"})
#: ops whose result may have a sign whatever the signs of their tracked arguments: a
#: clamp's floor; ``broadcast_tensors``, whose every result carries the provenance of all
#: (a Normal's constant scale, broadcast with its latent loc, is still the constant)
SIGNED_WHATEVER_GOES_IN = _ALWAYS_POSITIVE | _ALWAYS_UNIT | {"clamp", "broadcast_tensors"}
_OF_POSITIVE = frozenset(
    {"sqrt", "rsqrt", "reciprocal", "pow", "__pow__", "float_power", "sum", "mean", "prod",
     "cumsum", "cumprod", "cat", "concat", "concatenate", "stack", "where"}
)  # fmt: skip
#: Ops that rearrange, copy or select entries: a positive input stays positive; a matrix
#: property stays where the last two dims come out whole (see :func:`_keeps_matrices`).
_ENTRIES = frozenset(
    {"reshape", "view", "view_as", "expand", "expand_as", "broadcast_to", "unsqueeze",
     "squeeze", "flatten", "unflatten", "contiguous", "clone", "detach", "to", "double",
     "float", "type_as", "flip", "roll", "narrow", "select", "index_select", "gather",
     "take_along_dim", "__getitem__", "transpose", "t", "permute", "movedim", "moveaxis",
     "repeat", "tile", "repeat_interleave", "split", "chunk", "unbind"}
)  # fmt: skip


def of_support(fn) -> str | None:
    """The sign a latent's value has over its distribution ``fn``'s support (its interior):
    ``POSITIVE`` for a support at or above zero (Gamma, Chi², Beta, Dirichlet),
    ``DEFINITE`` for positive-definite matrices (Wishart), else None."""
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, constraints.positive_definite.__class__):
        return DEFINITE
    if isinstance(support, (constraints._GreaterThan, constraints._GreaterThanEq)):
        return POSITIVE if _at_least_zero(support.lower_bound) else None
    if isinstance(support, constraints._Interval):
        if not _at_least_zero(support.lower_bound):
            return None
        return UNIT if _at_most_one(support.upper_bound) else POSITIVE
    return UNIT if isinstance(support, constraints._Simplex) else None


def _at_least_zero(bound) -> bool:
    return bool(torch.as_tensor(bound).ge(0).all())


def _at_most_one(bound) -> bool:
    return bool(torch.as_tensor(bound).le(1).all())


def sign_of(value, tracked: bool = False) -> str | None:
    """The sign of an op's argument: a tracked tensor's ``_sign`` (``tracked``: ``value``
    carries provenance, and so its sign, set where it was made), or a constant's:
    ``POSITIVE`` where every entry is above zero, ``NONNEGATIVE`` where at or above."""
    if tracked:
        return getattr(value, "_sign", None)
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or not value.numel() or bool(value.isnan().any()):
            return None
        low = float(value.min())
        return POSITIVE if low > 0 else NONNEGATIVE if low >= 0 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return POSITIVE if value > 0 else NONNEGATIVE if value == 0 else None
    return None


def result_sign(name: str, args: tuple, kwargs: dict, result, signs: list) -> str | None:
    """The sign of the op's (first) result from its arguments' ``signs`` (plain ``args``,
    ``kwargs``, ``result`` as the op took and gave them)."""
    if name in _ALWAYS_POSITIVE:
        return POSITIVE
    if name in _ALWAYS_UNIT:
        return UNIT
    if name == "clamp":
        return _clamped(args, kwargs)
    tensors = [s for a, s in zip(args, signs, strict=True) if _operand(a)]
    if name in _PRODUCTS:
        if tensors and all(s in _ABOVE_ZERO for s in tensors):
            unit = all(s == UNIT for s in tensors) and name in ("mul", "__mul__", "__rmul__")
            return UNIT if unit else POSITIVE
        return DEFINITE if _scaled_definite(name, args, signs) else None
    if name in ("neg", "__neg__", "negative"):
        return BELOW if signs[0] == UNIT else None
    if name in ("__rsub__", "rsub") and len(args) == 2:  # other − p
        return UNIT if signs[0] == UNIT and _is_number(args[1], 1.0) else None
    if name in _SUMS:
        if kwargs.get("alpha", 1) <= 0 or not tensors:
            return None  # add(x, y, alpha=-1) subtracts
        if all(s in _ABOVE_ZERO for s in tensors):
            return POSITIVE
        if all(s in _ABOVE_ZERO or s == NONNEGATIVE for s in tensors):
            return POSITIVE if any(s in _ABOVE_ZERO for s in tensors) else NONNEGATIVE
        return DEFINITE if all(s == DEFINITE for s in tensors) else None
    if name in _OF_POSITIVE:
        return POSITIVE if _positive_operands(name, args, signs) else None
    if name in _ENTRIES:
        return _entries(name, args, kwargs, result, signs[0] if signs else None)
    if name == "diagonal":
        if signs[0] in (POSITIVE, UNIT):
            return signs[0]
        return POSITIVE if signs[0] in (DEFINITE, DIAGONAL) and _last_two(args, kwargs) else None
    return _matrix(name, args, kwargs, signs)


def broadcast_signs(args: tuple, result, signs: list) -> list:
    """Each of ``broadcast_tensors``' results' sign: its input's, where positive, or where
    its matrices come out whole (their last two dims unchanged)."""
    out = []
    for arg, part, sign in zip(args, result, signs, strict=True):
        whole = arg.dim() >= 2 and tuple(part.shape[-2:]) == tuple(arg.shape[-2:])
        keeps = sign in (POSITIVE, UNIT, BELOW, NONNEGATIVE) or (
            sign in (DEFINITE, DIAGONAL) and whole
        )
        out.append(sign if keeps else None)
    return out


def _operand(value) -> bool:
    return isinstance(value, (torch.Tensor, int, float)) and not isinstance(value, bool)


def _clamped(args: tuple, kwargs: dict) -> str | None:
    """A clamp's sign: ``UNIT`` between a positive floor and a ceiling of at most 1
    (torch's ``clamp_probs``), ``POSITIVE`` above a positive floor."""
    low = kwargs.get("min", args[1] if len(args) > 1 else None)
    high = kwargs.get("max", args[2] if len(args) > 2 else None)
    if not (_is_number(low) and low > 0):
        return None
    return UNIT if _is_number(high) and high <= 1 else POSITIVE


def _is_number(value, equal_to=None) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (equal_to is None or value == equal_to)


def _positive_operands(name: str, args: tuple, signs: list) -> bool:
    """Every floating operand positive; a power's base positive (its exponent is free);
    ``where``'s two values positive (its condition is not a value)."""
    if name in ("pow", "__pow__", "float_power"):
        return signs[0] in _ABOVE_ZERO
    if name == "where":
        return len(signs) == 3 and signs[1] in _ABOVE_ZERO and signs[2] in _ABOVE_ZERO
    if name in ("cat", "concat", "concatenate", "stack"):
        parts = args[0] if args and isinstance(args[0], (list, tuple)) else ()
        return bool(parts) and all(s in _ABOVE_ZERO for s in signs[0])
    return signs[0] in _ABOVE_ZERO


def _scaled_definite(name: str, args: tuple, signs: list) -> bool:
    """A definite matrix times, or over, a positive scalar per matrix (not a scalar over
    it: that divides entry by entry)."""
    if len(args) != 2 or DEFINITE not in signs:
        return False
    if name in ("__rtruediv__", "__rdiv__") or (
        name in ("div", "__div__", "__truediv__", "true_divide") and signs[0] != DEFINITE
    ):
        return False
    other = 1 - signs.index(DEFINITE)
    if signs[other] not in _ABOVE_ZERO:
        return False
    value = args[other]
    return not isinstance(value, torch.Tensor) or value.dim() < 1 or (
        value.dim() >= 2 and tuple(value.shape[-2:]) == (1, 1))  # fmt: skip


def _entries(name, args, kwargs, result, sign) -> str | None:
    if sign in (POSITIVE, UNIT, BELOW, NONNEGATIVE):
        return sign
    if sign in (DEFINITE, DIAGONAL) and _keeps_matrices(name, args, kwargs, result):
        return sign
    return None


def _keeps_matrices(name, args, kwargs, result) -> bool:
    """Whether each matrix of the input comes out whole as a matrix of the result (its last
    two dims, in place or transposed), for a definite or positive-diagonal input."""
    source = args[0]
    out = result[0] if isinstance(result, (tuple, list)) else result
    if not isinstance(out, torch.Tensor) or source.dim() < 2 or out.dim() < 2:
        return False
    square = source.shape[-1] == source.shape[-2]
    if not square or tuple(out.shape[-2:]) != tuple(source.shape[-2:]):
        return False
    if name in ("transpose", "flip", "permute", "movedim", "moveaxis"):
        return _moves_last_two_together(name, args, kwargs, source.dim())
    if name == "__getitem__":
        return _selects_whole_matrices(args[1], source.shape[-1], source.dim())
    return name in ("reshape", "view", "view_as", "expand", "expand_as", "broadcast_to",
                    "unsqueeze", "squeeze", "contiguous", "clone", "detach", "to", "double",
                    "float", "type_as", "t")  # fmt: skip


def _moves_last_two_together(name, args, kwargs, ndim: int) -> bool:
    """A transpose of the last two dims or of batch dims; a flip of both or of none."""

    def norm(d):
        return d % ndim

    last = {ndim - 2, ndim - 1}
    if name == "transpose":
        dims = {norm(d) for d in (*args[1:3],)} if len(args) >= 3 else set()
        return dims == last or not dims & last
    if name == "flip":
        dims = args[1] if len(args) > 1 else kwargs.get("dims", ())
        dims = {norm(d) for d in ([dims] if isinstance(dims, int) else dims)}
        return dims & last in (set(), last)
    if name == "permute":
        order = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
        order = [norm(d) for d in order]
        return set(order[-2:]) == last
    return False


def _selects_whole_matrices(index, size: int, ndim: int) -> bool:
    """Whether an index keeps the last two dims whole: it indexes only dims before them,
    or ends with two full slices, or with Pyro's ``Vindex`` form of them (``arange(size)``
    as [size, 1] and [size], the earlier indices not varying along those two dims)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None for i in index):
        return False
    ellipsis = [k for k, i in enumerate(index) if i is Ellipsis]
    if ellipsis:
        if ellipsis[0] == len(index) - 1:
            return True  # x[k, ...]: only dims before the ellipsis
        tail = index[ellipsis[0] + 1 :]
    else:
        consumed = sum(i.dim() if _is_mask(i) else 1 for i in index)
        if consumed <= ndim - 2:
            return True
        tail = index
    if len(tail) < 2:
        return False
    if all(_full(i) for i in tail[-2:]):
        return True
    return _vindex_whole(tail, size)


def _is_mask(i) -> bool:
    return isinstance(i, torch.Tensor) and i.dtype == torch.bool


def _vindex_whole(index: tuple, size: int) -> bool:
    if not all(isinstance(i, torch.Tensor) for i in index[-2:]):
        return False
    rows, cols = index[-2], index[-1]
    grid = torch.arange(size)
    if rows.dim() < 2 or tuple(rows.shape[-2:]) != (size, 1) or cols.shape[-1] != size:
        return False
    if not (torch.equal(rows.reshape(-1), grid) and torch.equal(cols.reshape(-1), grid)):
        return False
    if cols.dim() >= 2 and cols.shape[-2] != 1:
        return False
    return all(
        not isinstance(i, torch.Tensor) or i.dim() < 2 or tuple(i.shape[-2:]) == (1, 1)
        for i in index[:-2]
    )


def _full(i) -> bool:
    return isinstance(i, slice) and i == slice(None)


def _last_two(args, kwargs) -> bool:
    """Whether a ``diagonal`` is of the last two dims."""
    source = args[0]
    d1 = kwargs.get("dim1", args[2] if len(args) > 2 else 0)
    d2 = kwargs.get("dim2", args[3] if len(args) > 3 else 1)
    ndim = source.dim()
    return {d1 % ndim, d2 % ndim} == {ndim - 2, ndim - 1}


def _matrix(name, args, kwargs, signs) -> str | None:
    """Cholesky factors and inverses of definite matrices, the triangular inverse of a
    positive-diagonal one."""
    if name in ("cholesky", "linalg_cholesky", "linalg_cholesky_ex"):
        return DIAGONAL if signs[0] == DEFINITE else None
    if name in ("inverse", "linalg_inv"):
        return DEFINITE if signs[0] == DEFINITE else None
    if name == "cholesky_inverse":
        return DEFINITE if signs[0] == DIAGONAL else None
    if name in ("linalg_solve_triangular", "solve_triangular") and len(args) >= 2:
        identity = args[1]
        return DIAGONAL if signs[0] == DIAGONAL and _is_identity(identity) else None
    return None


def _is_identity(value) -> bool:
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return False
    n = value.shape[-1]
    return value.shape[-2] == n and bool((value == torch.eye(n, dtype=value.dtype)).all())


def in_domain(name: str, args: tuple, kwargs: dict, signs: list, tracked: list) -> bool:
    """Whether a branch op (:data:`BRANCH`) is analytic here: the argument it needs positive
    (or definite) is so, or is a constant (``tracked``: which arguments carry provenance).
    A whole-number power (``x ** 2``) or a positive constant raised to a power needs
    nothing."""
    if name in _DEFINITE_ARGUMENT:
        return not tracked[0] or signs[0] == DEFINITE
    if name == "mvlgamma":  # analytic only above (p − 1)/2, which positive does not give
        return not tracked[0]
    if name == "xlogy":
        return len(args) < 2 or not tracked[1] or signs[1] in _ABOVE_ZERO
    if name == "log1p":  # analytic above −1
        return not tracked[0] or signs[0] in (POSITIVE, UNIT, BELOW)
    if name in ("pow", "__pow__", "float_power"):
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        if isinstance(exponent, (int, float)) and float(exponent).is_integer():
            return True
        return not tracked[0] or signs[0] in _ABOVE_ZERO
    if name == "__rpow__":  # other ** x: entire in x for a positive constant base
        return len(args) > 1 and not tracked[1] and sign_of(args[1]) == POSITIVE
    return not tracked[0] or signs[0] in _ABOVE_ZERO
