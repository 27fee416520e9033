"""The CAVI estimators compute on the CPU, in float64, whatever torch's default device is.

A user who sets ``torch.set_default_device("cuda")`` for a VAE and then fits a CAVI
estimator on CPU data would have every tensor the estimator makes without a device (its
zeros, its index tables, the model's own constants) put on the GPU beside CPU data: every
class failed on a device mix (tester EE). :func:`on_the_cpu` runs each public method
with the CPU as the default device, only where it is not already (``torch.device`` as a
context is a torch-function mode, which every torch call in the sweeps would then pass
through).
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
