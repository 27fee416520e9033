"""Argument checks shared by the CAVI estimators: each error names the argument, the value
and what was expected."""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import torch


def positive_int(name: str, value) -> int:
    """``value`` as an int if it is an integer ≥ 1 (Python or NumPy; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: {value!r} is not a positive integer")
    return int(value)


def non_negative(name: str, value) -> float:
    """``value`` as a float if it is a finite real number ≥ 0."""
    number = real(value)
    if number is None or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name}: {value!r} is not a finite non-negative number")
    return number


def positive(name: str, value) -> float:
    """``value`` as a float if it is a finite real number > 0."""
    number = real(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}: {value!r} is not a positive number")
    return number


def check_seed(name: str, value) -> None:
    """None if ``value`` is a random state: an integer ≥ 0 (Python or NumPy; not a bool),
    a ``numpy.random.RandomState`` or ``Generator``, or None; else ValueError naming it
    (tester BO: ``random_state=-3`` failed in NumPy with "expected non-negative integer",
    naming neither the argument nor the value). Draws nothing: see :func:`seed_of`."""
    if value is None or isinstance(value, _NUMPY_STREAMS):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"{name}: {value!r} is not a seed; expected None, an integer ≥ 0, or a "
            "numpy.random.RandomState or Generator"
        )


_NUMPY_STREAMS = (np.random.RandomState, np.random.Generator)


def seed_of(name: str, value) -> int | None:
    """The seed a fit uses for the random state ``value`` (checked by :func:`check_seed`):
    an integer as it is, None as None, and for a NumPy ``RandomState`` or ``Generator`` an
    integer in [0, 2³¹) drawn from it, so that its stream advances and successive fits
    differ, as scikit-learn's ``check_random_state`` does (tester EP: a ``RandomState``
    was refused as "not a seed")."""
    check_seed(name, value)
    if isinstance(value, np.random.RandomState):
        return int(value.randint(2**31 - 1))
    if isinstance(value, np.random.Generator):
        return int(value.integers(2**31 - 1))
    return None if value is None else int(value)


_FLOAT64_MAX = torch.finfo(torch.float64).max


def squares_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if the sum of its finite entries' squares is finite in float64,
    as the closed-form updates' sufficient statistics need (tester BO: data near 1e160
    failed part way with "float division by zero" or "probability tensor contains inf")."""
    if not tensor.is_floating_point():
        return tensor
    entries = tensor[torch.isfinite(tensor)].to(torch.float64)  # (NaN: a masked entry's)
    largest = float(entries.abs().max()) if entries.numel() else 0.0
    # the sum itself, scaled by the largest so that the scaled squares cannot overflow
    # (tester BR: largest² × count refused 999 zeros and one 1e153, whose sum is finite)
    if largest and not math.isfinite(float((entries / largest).square().sum()) * largest * largest):
        raise ValueError(
            f"{name}: values up to {largest:.3g}, whose squares summed over its "
            f"{entries.numel()} finite entries overflow float64 (max {_FLOAT64_MAX:.3g}); "
            "expected data on a scale whose sums of squares are finite: rescale them"
        )
    return tensor


def squares_finite_nested(where: str, value) -> None:
    """:func:`squares_finite` of every floating tensor in ``value`` (nested tuples, lists,
    dicts), named from ``where``: AutoCAVI's model arguments (tester BQ: data near 1e160
    were refused as "impossible at some probe points" or "not positive definite"), and
    every Python float, as a 0-dim tensor (a float argument of 1e200 went unchecked)."""
    for name, tensor in nested_tensors(where, value, floats=True):
        if tensor.is_floating_point():
            squares_finite(name, tensor)


def nested_tensors(where: str, value, floats: bool = False):
    """Each tensor in ``value`` (nested tuples, lists, dicts) with its name from
    ``where`` (``where[0]``, ``where['key']``); with ``floats``, each Python float too,
    as a 0-dim float64 tensor."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif floats and isinstance(value, float):
        yield where, torch.tensor(value, dtype=torch.float64)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from nested_tensors(f"{where}[{i}]", item, floats)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nested_tensors(f"{where}[{key!r}]", item, floats)


def real(value) -> float | None:
    """A real scalar (Python, NumPy or 0-d tensor; not a bool) as a float, else None."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        if value.is_complex() or value.dtype == torch.bool:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if every entry is finite; otherwise say how many are NaN and infinite."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        first, kind = (nan, "NaN") if nan else (inf, "infinite")
        what = f"{first} of its {tensor.numel()} entries {'is' if first == 1 else 'are'} {kind}"
        if nan and inf:
            what += f" and {inf} infinite"
        raise ValueError(f"{name}: {what}; expected finite values")
    return tensor


def log_probabilities(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if it holds no NaN and no +inf (−inf, a zero probability, is allowed)."""
    finite(name, torch.where(tensor == -math.inf, 0.0, tensor))
    return tensor


def as_float64(name: str, value) -> torch.Tensor:
    """``value`` (a tensor or anything NumPy reads as an array) as a float64 tensor, or
    ``ValueError`` naming it if its entries are not real numbers, or it is a tensor on
    another device than the CPU (the estimators' updates compute there: a GPU's tensor
    met the CPU's draws in a device mix inside them)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name}: dtype {value.dtype} is not real")
        if value.device.type != "cpu":
            raise ValueError(
                f"{name}: a tensor of shape {tuple(value.shape)} is on {value.device}; the "
                "CAVI estimators compute on the CPU in float64 (many small updates, which a "
                f"GPU only slows with transfers): pass {name}.cpu()"
            )
        return value.to(torch.float64)
    try:
        array = np.asarray(value)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"{name}: {error}") from error
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: dtype {array.dtype} is not real numbers")
    return torch.as_tensor(array.astype(np.float64))


def check_on_cpu(where: str, value) -> None:
    """ValueError unless every tensor in ``value`` (nested tuples, lists, dicts) is on the
    CPU: AutoCAVI's probing and sweeps are many tiny float64 solves, which a GPU would only
    slow with transfers, and its probe points are drawn on the CPU."""
    for name, tensor in nested_tensors(where, value):
        if tensor.device.type != "cpu":
            raise ValueError(
                f"{name}: a tensor of shape {tuple(tensor.shape)} is on {tensor.device}; "
                "AutoCAVI runs on the CPU in float64 (many tiny solves, which a GPU only slows "
                "with transfers): pass .cpu() tensors, and a model whose parameters are on "
                "the CPU (model.cpu())"
            )


def float64_arguments(value):
    """``value`` (nested tuples, lists, dicts) with each floating tensor cast to float64
    and each NumPy array made a tensor (floating ones float64; integer and boolean arrays
    keep their dtype; other arrays are left as they are): a Pyro model takes tensors, and
    scikit-learn's estimators take arrays (tester 38: ``fit(x.numpy())`` failed in the
    model, an ndarray has no ``new_tensor``). A namedtuple, an ``OrderedDict`` or a
    ``defaultdict`` keeps its type (tester Z: a namedtuple reached the model as a tuple)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple keeps its type
        return type(value)(*(float64_arguments(v) for v in value))
    if isinstance(value, tuple):
        return tuple(float64_arguments(v) for v in value)
    if isinstance(value, list):
        return [float64_arguments(v) for v in value]
    if isinstance(value, dict):  # an OrderedDict or a defaultdict keeps its type
        out = copy.copy(value)
        out.update((k, float64_arguments(v)) for k, v in value.items())
        return out
    return value
