"""The CAVI estimators compute on the CPU, in float64, whatever torch's default device and
dtype are.

A user who sets ``torch.set_default_device("cuda")`` for a VAE and then fits a CAVI
estimator on CPU data would have every tensor the estimator makes without a device (its
zeros, its index tables, the model's own constants) put on the GPU beside CPU data: every
class failed on a device mix (tester EE). :func:`on_the_cpu` runs each public method
with the CPU as the default device, only where it is not already (``torch.device`` as a
context is a torch-function mode, which every torch call in the sweeps would then pass
through). :func:`in_float64` runs ``AutoCAVI.fit`` with float64 as torch's default
dtype, so the constants a model makes as it runs (``dist.Gamma(2.0, 1.0)``'s Python
floats, ``torch.tensor(0.5)``) are float64 as its updates need, where under the usual
float32 default such a model was refused (tester EV: the first model most Pyro users
write). The default dtype is process-wide in torch, so another thread making tensors
during such a fit makes them float64 too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def on_the_cpu(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run with the CPU as torch's default device (``torch.device("cpu")`` as a
    context) where the default is another device, and as it is otherwise."""

    @functools.wraps(method)
    def on_cpu(*args: Any, **kwargs: Any) -> Any:
        if torch.get_default_device().type == "cpu":
            return method(*args, **kwargs)
        with torch.device("cpu"):
            return method(*args, **kwargs)

    return on_cpu


def in_float64(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run with float64 as torch's default dtype, the caller's put back after
    (also where it raises)."""

    @functools.wraps(method)
    def in_double(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_default_dtype()
        if before == torch.float64:
            return method(*args, **kwargs)
        torch.set_default_dtype(torch.float64)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_default_dtype(before)

    return in_double
