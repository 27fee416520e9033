"""Which device a run computes on, and moving data there.

``device`` in a run's :class:`~pyro_vae.training_config.TrainingConfig` (and ``--device``
on every command that computes) is one of

    ``"auto"``     CUDA when torch sees a GPU, else the CPU
    ``"cpu"``      the CPU (``"cpu:0"``, as ``str(torch.device("cpu", 0))`` spells it, too)
    ``"cuda"``     the current CUDA device; ``"cuda:N"`` GPU N
    ``"mps"``      Apple's Metal backend (accepted, untested here)

:func:`check_device_name` checks the spelling when a configuration is constructed (a run
folder written on a GPU machine still loads on one without); :func:`resolve_device`
turns a name into a ``torch.device`` and refuses one this machine does not have, before
any work. :class:`DataOnDevice` hands a data source's batches and validation set to the
fit loop on the device, one copy per batch (from pinned memory when the data is held on
the CPU and the device is a GPU).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import torch

from pyro_vae.wrapped_source import WrappedSource

DEVICE_NAMES = ("auto", "cpu", "cpu:0", "cuda", "cuda:N", "mps")
_PATTERN = re.compile(r"auto|cpu(:0)?|cuda(:\d+)?|mps")


def check_device_name(value: Any, arg: str = "device") -> str:
    """``value`` if it spells a device :func:`resolve_device` knows, whether or not this
    machine has it.

    Raises:
        ValueError: naming ``arg``, the value and the accepted names.
    """
    if not isinstance(value, str) or not _PATTERN.fullmatch(value):
        raise ValueError(f"{arg}: {value!r} is not a device; expected one of {_expected()}")
    return value


def _expected() -> str:
    return ", ".join(repr(name) for name in DEVICE_NAMES)


def available_devices() -> list[str]:
    """The device names this machine can run on: ``cpu``, each ``cuda:N``, ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(value: Any = "auto", arg: str = "device") -> torch.device:
    """The ``torch.device`` that ``value`` names (see the module docstring); ``"auto"`` is
    ``cuda`` when torch sees a GPU, else ``cpu``. A ``torch.device`` is taken as it is.

    Raises:
        ValueError: ``value`` is not a device name, or names one this machine does not have
            (the message says which it has).
    """
    if isinstance(value, torch.device):
        value = str(value)
    check_device_name(value, arg)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu:0":  # the CPU has one index; its tensors' device is plain "cpu"
        return torch.device("cpu")
    device = torch.device(value)
    have = available_devices()
    missing = (
        (device.type == "cuda" and not torch.cuda.is_available())
        or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count())
        or (device.type == "mps" and "mps" not in have)
    )
    if missing:
        raise ValueError(
            f"{arg}: {value!r} is not available on this machine; it has {', '.join(have)} "
            "(device 'auto' picks a GPU when there is one, else the CPU)"
        )
    return device


def to_device(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``value`` with every tensor in it (nested tuples, lists, dicts) on ``device``. A
    CPU tensor bound for CUDA is copied from pinned memory, without blocking."""
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        if device.type == "cuda" and value.device.type == "cpu":
            return value.pin_memory().to(device, non_blocking=True)
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, tuple):
        return tuple(to_device(v, device, non_blocking) for v in value)
    if isinstance(value, list):
        return [to_device(v, device, non_blocking) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if hasattr(value, "to_device"):  # rows gathered lazily (pyro_vae.mapped_rows.MappedRows)
        return value.to_device(device)
    return value


def forked_streams():
    """A context in which draws take the CPU's random stream and every CUDA device's, and
    leave them as they were afterwards (``torch.random.fork_rng``). The CUDA streams are
    forked once CUDA is initialized in this process (by any tensor or module put on a
    GPU): a step's draws on a GPU take that GPU's stream, which ``fork_rng(devices=[])``
    left moved (tester EE: a recording, or a validation's seeded draws, shifted the
    training draws on a GPU only, and a resumed or compiled run there differed from a
    straight one). Where CUDA is not initialized, no draw before took a CUDA stream, so
    there is none to put back. Each device's generator state is host-side (a Philox seed
    and offset): forking it touches no GPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.random.fork_rng(
            devices=list(range(torch.cuda.device_count())), device_type="cuda"
        )
    return torch.random.fork_rng(devices=[])


def move_modules(device: torch.device, *callables: Any) -> None:
    """Put the ``torch.nn.Module`` behind each callable (a module, or a bound method of
    one, as Pyro's examples pair ``model`` and ``guide``) on ``device``; plain functions
    are left alone (their parameters live in Pyro's param store and follow the data)."""
    for fn in callables:
        owner = getattr(fn, "__self__", fn)
        if isinstance(owner, torch.nn.Module):
            owner.to(device)


class DataOnDevice(WrappedSource):
    """A data source (:class:`pyro_vae.data_source.DataSource`) whose batches and
    validation set are handed out on ``device``; everything else is the source's own.
    Each batch is copied once, as it is drawn; the rows are drawn on the CPU as before,
    so the batches are the same rows on every device."""

    def __init__(self, data: Any, device: torch.device) -> None:
        super().__init__(data)
        self.device = device

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        for rows, args in self.data.indexed_batches(batch_size, epoch, seed, drop_last):
            yield to_device((rows, args), self.device)

    def check_training_data(self, check) -> None:
        self.data.check_training_data(check)

    def validation_set(self, local_guide: bool, check):
        plan = self.data.validation_set(local_guide, check)
        if plan is None:
            return None
        return dataclasses.replace(plan, args=to_device(plan.args, self.device))


def on_device(data: Any, device: torch.device) -> Any:
    """``data`` as the fit loop should see it on ``device``: the source itself on the CPU
    (nothing changes there), else wrapped in :class:`DataOnDevice`."""
    return data if device.type == "cpu" else DataOnDevice(data, device)
