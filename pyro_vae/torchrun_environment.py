"""torchrun's environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``), read and checked in one place before a process joins its group, and
how many ranks one machine can take.

torchrun sets these variables consistently; a hand-set or stale environment may not, and
then torch's rendezvous waited for a rank that can never come (``RANK=5`` of
``WORLD_SIZE=2``: ten minutes of retries and C++ stack frames) or ``int()`` raised in a
traceback (``WORLD_SIZE=abc``), tester CD. Each is refused here, naming the variable, its
value and what was expected.
"""

from __future__ import annotations

import os

import torch

__all__ = ["checked_ranks", "refuse_more_ranks_than_the_machine", "world_size"]


def _integer(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{name}: {value!r} in the environment is not an integer; expected what torchrun "
            f"sets (unset {name}, or start the processes with torchrun)"
        ) from None


def world_size() -> int:
    """``WORLD_SIZE``: how many ranks torchrun started, 1 where it is unset.

    Raises:
        ValueError: it is not a positive integer."""
    world = _integer("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(
            f"WORLD_SIZE: {world} in the environment; expected a positive number of ranks"
        )
    return world


def checked_ranks() -> tuple[int, int]:
    """(``RANK``, ``WORLD_SIZE``), checked with ``LOCAL_RANK`` before a rank joins its group:
    0 ≤ RANK < WORLD_SIZE, and 0 ≤ LOCAL_RANK (< ``LOCAL_WORLD_SIZE`` where that is set).

    Raises:
        ValueError: naming the variable, its value and the range expected."""
    world = world_size()
    rank = _integer("RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(
            f"RANK: {rank} in the environment is not below WORLD_SIZE {world}; expected a rank "
            f"in 0..{world - 1} (torchrun sets both: check a hand-set environment)"
        )
    local, local_world = _integer("LOCAL_RANK", 0), _integer("LOCAL_WORLD_SIZE", world)
    if not 0 <= local < max(local_world, 1):
        raise ValueError(
            f"LOCAL_RANK: {local} in the environment; expected a rank on this machine in "
            f"0..{local_world - 1} (LOCAL_WORLD_SIZE {local_world})"
        )
    return rank, world


def refuse_more_ranks_than_the_machine(nproc: int, device: torch.device) -> None:
    """Refuse ``fit --nproc`` ``nproc`` ranks on one machine beyond its GPUs (each rank
    takes GPU ``LOCAL_RANK``) or, on the CPU, its cores (more only share them), before any
    starts (tester CD: ``--nproc 1000000`` with a batch as large would have started them).

    Raises:
        ValueError: naming ``--nproc``, its value and what this machine has."""
    if device.type == "cuda":
        have, what, why = torch.cuda.device_count(), "GPUs", "each rank takes its own GPU"
    else:
        have, what, why = os.cpu_count() or 1, "CPU cores", "more would only share them"
    if nproc > have:
        raise ValueError(
            f"--nproc: {nproc} processes on a machine with {have} {what}; expected at most "
            f"{have} ({why}). To start more on purpose, run torchrun yourself (README, "
            "'Several processes (torchrun)')"
        )
