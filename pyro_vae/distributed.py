"""Data-parallel training on ``torch.distributed``: one process per rank, as torchrun starts them.

``torchrun --nproc_per_node N -m pyro_vae fit ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`session`
joins them into one process group (``gloo`` for CPU tensors, with ``nccl`` for CUDA tensors
when a GPU is present) and :func:`launch` is ``pyro-vae fit --nproc N``, torchrun's agent
on this machine. Without those variables there is one process and nothing here changes
what :func:`pyro_vae.train.fit` does.

One step on ranks r = 1..R, each with b_r of the global batch's B rows
(:class:`pyro_vae.data_source.ShardedSource`): rank r's loss scales its per-datapoint
terms by N / b_r (the data plate), L_r = (N / b_r) Σ_{i∈r} ℓ_i + G_r, with G the terms
outside the plate (global latents). The single-process loss on the global batch is
L = (N / B) Σ_i ℓ_i + G = Σ_r (b_r / B) L_r (when every G_r = G), so the update equals
the single-process one when every rank adds b_r ∇L_r, sums over ranks, and divides by
Σ_r b_r = B: one summing all-reduce of [b_r ∇L_r, b_r L_r, b_r] (:class:`SynchronizedELBO`).
With equal shards this is the mean over ranks of ∇L_r, what ``DistributedDataParallel``
computes. It runs after ``loss_and_grads``, so the recorded step
(:class:`~pyro_vae.estimators.compiled.CompiledELBO`) and Pyro's are reduced alike.

Every rank then takes the same Adam step on the same reduced gradient and loss, so the
weights stay equal, and the NaN guard and early stopping (on the reduced validation ELBO)
decide alike on every rank. Initial weights are broadcast from rank 0. Each rank draws its
own noise from a stream seeded by (seed, epoch, rank) at the start of each epoch, so a run
resumed from an epoch's checkpoint draws exactly what the uninterrupted one would have.

A rank that stops (killed, out of memory) makes the next collective fail on the others:
they raise :class:`RankLost`, naming the ranks that said they stopped (a rank leaving
:func:`session` on an error writes it to the rendezvous store before it closes its
connections) and those whose processes are gone (ranks on this host), or the ones that
could not be checked. A rank that hangs is given up on after ``PYRO_VAE_DIST_TIMEOUT``
seconds (600 by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro.infer import ELBO
from torch.nn.parameter import is_lazy

from pyro_vae.checkpoint import differing_settings, flat_settings, listed
from pyro_vae.estimators.capabilities import capabilities_of
from pyro_vae.interruptions import interruption_behind
from pyro_vae.model_protocol import batch_terms
from pyro_vae.torchrun_environment import (
    checked_ranks,
    refuse_more_ranks_than_the_machine,
    world_size,
)

__all__ = [
    "Group",
    "RankLost",
    "SynchronizedELBO",
    "current",
    "launch",
    "session",
    "die_with_agent",
    "started_by_torchrun",
    "wait_for_orphans",
]

TIMEOUT_VARIABLE = "PYRO_VAE_DIST_TIMEOUT"
#: Set in the ranks that ``pyro-vae fit --nproc`` starts (:func:`launch`): the launcher
#: says once where a Ctrl-C or SIGTERM stopped the run, and they stay quiet.
LAUNCHED_VARIABLE = "PYRO_VAE_LAUNCHED"


class RankLost(RuntimeError):
    """Another rank stopped: a collective operation failed or timed out."""


#: Settings that may differ between ranks: the progress bar (rank 0's alone), the device
#: (each node its own), and where the files lie (each node may mount them elsewhere; their
#: checksums are compared instead).
_PER_RANK = ("train.progress", "train.device", "data.name", "model", "guide")


def refuse_disagreeing_ranks(settings: dict, group: Group) -> None:
    """Refuse a training group whose ranks were given different settings (``settings``:
    config.json's dict, with the data's and code's checksums): every rank's gradient is
    averaged into one step, so a rank with another learning rate or other data trained
    silently, the folder recording rank 0's alone (tester L). Paths, the device and the
    progress bar may differ (:data:`_PER_RANK`); a file path's checksum may not.

    Raises:
        ValueError: on every rank, naming the first differing setting, its value on rank 0
            and on the rank that differs, before anything is written.
    """
    if group.world == 1:
        return
    everyone = group.gather_json(settings)
    for rank, other in enumerate(everyone[1:], start=1):
        differ = differing_settings(everyone[0], other, _may_differ)
        if differ:
            key = differ[0]
            theirs, ours = flat_settings(other).get(key), flat_settings(everyone[0]).get(key)
            raise ValueError(
                f"ranks: rank {rank} was given {key} = {theirs!r} where rank 0 has "
                f"{ours!r} ({len(differ)} setting(s) differ: "
                f"{listed(differ)}){_renamed(everyone[0], other, rank)}; every rank of a "
                "training group must run the same command on the same data (nothing was "
                "written)"
            )


def _renamed(ours: dict, theirs: dict, rank: int) -> str:
    """Where two ranks' data files differ in name where their sizes and shape agree, a
    note saying so: the checksum covers names and sizes, and a copy saved as ``a2.npy``
    read as other data with no word on why (tester CG); not that they hold the same data,
    which names and sizes cannot tell (tester CI)."""
    files = []
    for settings in (ours, theirs):
        provenance = (settings.get("data") or {}).get("provenance") or {}
        files.append((provenance.get("files"), provenance.get("shape")))
    (mine, shape), (other, their_shape) = files
    if not (isinstance(mine, dict) and isinstance(other, dict)) or shape != their_shape:
        return ""
    if set(mine) == set(other) or sorted(mine.values()) != sorted(other.values()):
        return ""
    return (
        f"; the files' names differ where their sizes agree ({', '.join(sorted(other))} on "
        f"rank {rank}, {', '.join(sorted(mine))} on rank 0): the checksum covers names and "
        "sizes, not contents, so if they hold the same data give every rank's files the "
        "same names (files of the same names and sizes are taken as the same data)"
    )


def refuse_mixed_commands(group: Group, resume: str | None) -> None:
    """Refuse a training group whose ranks were told, some to resume a run (``--resume``)
    and some to start one (``--out``), before any other collective: the two paths meet
    the group in different collectives (the resume's broadcast of config.json, the new
    run's exchange of settings), which waited out ``PYRO_VAE_DIST_TIMEOUT`` (600 s) and
    then blamed a rank that "stopped or hung" (tester CG). ``resume``: this rank's
    ``--resume`` folder, or None.

    Raises:
        ValueError: on every rank, naming the ranks of each kind, before anything is
            written.
    """
    if group.world == 1:
        return
    told = group.gather_json(resume)
    if all(r is None for r in told) or all(r is not None for r in told):
        return
    resuming = [r for r, folder in enumerate(told) if folder is not None]
    starting = [r for r, folder in enumerate(told) if folder is None]
    raise ValueError(
        f"ranks: rank(s) {', '.join(map(str, resuming))} resume a run (--resume "
        f"{told[resuming[0]]}) where rank(s) {', '.join(map(str, starting))} start a new one "
        "(--out); every rank of a training group must run the same command (nothing was "
        "written)"
    )


def run_from_rank_0(
    group: Group, written: dict | None = None, state: dict | None = None
) -> tuple[dict, dict | None]:
    """Rank 0's (config.json, checkpoint state or None) on every rank, for a resume: the
    other ranks read neither file. On machines without a shared file system their
    ``--resume`` folder is not there (a second node's ranks were refused with "not a
    directory"), and a copy there may be another epoch's, which would start the ranks
    from different weights. The config goes as JSON, the state as ``torch.save``'s bytes,
    read back with ``weights_only=True`` (no pickled objects), on the CPU as
    :meth:`~pyro_vae.checkpoint.RunFolder.load_checkpoint` puts them. One process: the
    arguments."""
    if group.world == 1:
        return written, state
    sent = json.dumps(written).encode() if group.is_writer else None
    written = json.loads(group.broadcast_bytes(sent, "broadcast of the run's config.json"))
    buffer = io.BytesIO()
    if group.is_writer and state is not None:
        torch.save(state, buffer)
    sent = buffer.getvalue() if group.is_writer else None
    received = group.broadcast_bytes(sent, "broadcast of the run's checkpoint")
    if group.is_writer or not received:
        return written, state
    return written, torch.load(io.BytesIO(received), map_location="cpu", weights_only=True)


def _as_tensor(payload: bytes) -> torch.Tensor:
    """``payload`` as a CPU uint8 tensor, for gloo to send (a copy: the bytes stay whole)."""
    if not payload:  # frombuffer takes no empty buffer
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def _as_bytes(data: torch.Tensor) -> bytes:
    """A uint8 tensor's bytes, as :func:`_as_tensor` took them."""
    return data.numpy().tobytes()


def _may_differ(key: str) -> bool:
    return key in _PER_RANK or key.endswith(".file") or key == "data.provenance.path"


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for ``(seed, epoch, rank)``: NumPy's ``SeedSequence`` hash of the
    three, so nearby triples give unrelated seeds (two triples share one with probability
    2⁻³²), for any ``seed`` the run configuration takes."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)
    return int(state[0])


def evaluation_seed(seed: int, rank: int) -> int:
    """A 32-bit seed for rank ``rank``'s draws in the test set's evaluation after a fit of
    seed ``seed``: NumPy's ``SeedSequence`` hash of the two with a spawn key of its own, so
    it is none of :func:`epoch_seed`'s."""
    sequence = np.random.SeedSequence([int(seed), int(rank)], spawn_key=(1,))
    return int(sequence.generate_state(1)[0])


@dataclass
class Group:
    """This process's place in the training group.

    Attributes:
        rank: this process's rank, 0..world−1; ``world``: the number of processes.
        peers: ``(host, pid)`` of every rank, by rank (empty for one process).
        store: the rendezvous store, where a rank stopping on an error says so.
    """

    rank: int = 0
    world: int = 1
    peers: tuple[tuple[str, int], ...] = ()
    store: dist.Store | None = field(default=None, repr=False, compare=False)

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run folder: rank 0 alone."""
        return self.rank == 0

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks, in place; :class:`RankLost` when a rank is gone."""
        if self.world > 1:
            with self._watching("all-reduce"):
                dist.all_reduce(values)
        return values

    def wait_for_all(self, what: str) -> None:
        """Return once every rank has reached this point (a barrier); :class:`RankLost`
        when a rank is gone."""
        if self.world > 1:
            with self._watching(what):
                dist.barrier()

    def mean(self, value: float, weight: float | None) -> float:
        """The ``weight``-weighted mean of every rank's ``value`` (equal weights for
        ``None``): a validation ELBO per datapoint over ranks' shares of the rows."""
        if self.world == 1:
            return value
        w = 1.0 if weight is None else float(weight)
        total = self.all_reduce(torch.tensor([w * value, w], dtype=torch.float64))
        return (total[0] / total[1]).item()

    def gather_json(self, obj) -> list:
        """``obj`` (plain JSON) of every rank, by rank: sent as UTF-8 bytes in tensors and
        read back with ``json.loads`` (``all_gather_object`` would unpickle what other
        processes sent). One process: ``[obj]``."""
        if self.world == 1:
            return [obj]
        data = _as_tensor(json.dumps(obj, sort_keys=True).encode())
        with self._watching("exchange of the run's settings"):
            lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
            dist.all_gather(lengths, torch.tensor([len(data)]))
            longest = int(max(n.item() for n in lengths))
            padded = torch.zeros(longest, dtype=torch.uint8)
            padded[: len(data)] = data
            parts = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
            dist.all_gather(parts, padded)
        return [
            json.loads(_as_bytes(part[: int(n.item())]).decode())
            for part, n in zip(parts, lengths, strict=True)
        ]

    def broadcast_bytes(self, payload: bytes | None, what: str) -> bytes:
        """Rank 0's ``payload`` on every rank (the others pass None), as a uint8 tensor
        (its length first); ``what`` names it in :class:`RankLost`. One process:
        ``payload``."""
        if self.world == 1:
            return payload
        with self._watching(what):
            length = torch.tensor([len(payload) if self.rank == 0 else 0], dtype=torch.int64)
            dist.broadcast(length, src=0)
            size = int(length.item())
            if size == 0:
                return b""
            data = _as_tensor(payload) if self.rank == 0 else torch.empty(size, dtype=torch.uint8)
            dist.broadcast(data, src=0)
        return payload if self.rank == 0 else _as_bytes(data)

    def broadcast_params(self) -> None:
        """Every entry of Pyro's param store set to rank 0's values (sorted by name)."""
        if self.world == 1:
            return
        store = pyro.get_param_store()
        with self._watching("broadcast of the initial weights"), torch.no_grad():
            for name in sorted(store.keys()):
                dist.broadcast(store[name].unconstrained().data, src=0)

    def broadcast_buffers(self, buffers: list[torch.Tensor]) -> None:
        """Set each of ``buffers`` (the same list, in the same order, on every rank) to
        rank 0's values, in place: one broadcast per dtype and device, of the buffers
        flattened into one tensor, as ``DistributedDataParallel`` coalesces its own (one
        broadcast each, 30 buffers of ten BatchNorm layers took 12 to 17 ms a step on two
        CPU processes; coalesced, 0.5 to 2 ms: ``benchmarks/buffer_broadcast.py``)."""
        if self.world == 1 or not buffers:
            return
        with torch.no_grad():
            for group in coalesced_groups(buffers):
                flat = torch.cat([buffer.reshape(-1) for buffer in group])
                with self._watching("broadcast of the networks' buffers"):
                    dist.broadcast(flat, src=0)
                start = 0  # this rank's own writes: an error here is no other rank's
                for buffer in group:
                    buffer.copy_(flat[start : start + buffer.numel()].view_as(buffer))
                    start += buffer.numel()

    def same_on_every_rank(self, value: int) -> bool:
        """Whether every rank gave this ``value`` (an int64), by one all-reduce of
        (value, −value) under MAX; True in one process."""
        if self.world == 1:
            return True
        pair = torch.tensor([value, -value], dtype=torch.int64)  # on the CPU: gloo's
        with self._watching("check that the ranks' buffers agree"):
            dist.all_reduce(pair, op=dist.ReduceOp.MAX)
        return int(pair[0]) == -int(pair[1])

    def seed_epoch(self, seed: int, epoch: int, generators: dict | None = None) -> None:
        """Seed this rank's random streams for epoch ``epoch`` (from 0) from ``(seed,
        epoch, rank)``: ranks draw different noise, and a resumed epoch draws what an
        uninterrupted run drew. The three are hashed to 32 bits by NumPy's ``SeedSequence``
        (``pyro.set_rng_seed`` also seeds NumPy's generator, which takes no more: a product
        of them failed at every ``--seed`` from 2). ``generators``: the pair's own
        (:meth:`pyro_vae.weights.PairWeights.generators`), each seeded likewise with its
        place in name order as a spawn key (tester FA: the checkpoint held rank 0's state
        alone, which a resume gave every rank, and a rank whose last batch was smaller had
        drawn less: the resumed weights left the straight run's by 4.4e-4)."""
        if self.world > 1:
            pyro.set_rng_seed(epoch_seed(seed, epoch, self.rank))
            for i, name in enumerate(sorted(generators or {})):
                key = np.random.SeedSequence([int(seed), int(epoch), self.rank], spawn_key=(2, i))
                generators[name].manual_seed(int(key.generate_state(1, np.uint64)[0] >> 1))

    def seed_evaluation(self, seed: int) -> None:
        """Seed this rank's random streams for the test set's evaluation after training
        (:func:`evaluation_seed`). Each rank's stream had gone on from its own last epoch,
        and a resume restores rank 0's on every rank: on several processes a resumed or
        re-run evaluation scored the test set with other draws (tester AV: −24.775 against
        −24.767 nats per image on 3 processes, resuming a copy of a finished run). One
        process keeps its stream, which a resume restores."""
        if self.world > 1:
            pyro.set_rng_seed(evaluation_seed(seed, self.rank))

    @contextlib.contextmanager
    def _watching(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistBackendError) as err:
            raise RankLost(
                f"rank {self.rank} of {self.world}: the {what} failed, {self._who_is_gone()}; "
                f"stopping ({type(err).__name__}: {_first_line(err, 200)})"
            ) from err

    def _who_is_gone(self, wait: float = 2.0) -> str:
        """The ranks that said they were stopping (:meth:`announce_leaving`) or whose
        processes on this host have ended, waiting up to ``wait`` seconds for one (a
        killed process closes its sockets before it is gone; a rank stopping on an error
        says so before it closes them)."""
        host = socket.gethostname()
        others = [(r, peer) for r, peer in enumerate(self.peers) if r != self.rank]
        unknown = [r for r, (peer_host, _) in others if peer_host != host]
        deadline = time.monotonic() + wait
        store = self.store
        while True:
            left, store = _announced(store, [r for r, _ in others])
            gone = [
                r
                for r, (peer_host, pid) in others
                if peer_host == host and r not in left and not _alive(pid)
            ]
            if left or gone or time.monotonic() > deadline or len(others) == 0:
                break
            if unknown and store is None:  # nothing more to learn about them by waiting
                break
            time.sleep(0.05)
        named = [f"rank {r} stopped ({why})" for r, why in sorted(left.items())]
        if gone:
            named.append(f"rank {', '.join(map(str, gone))} stopped (its process is gone)")
        if named:
            return "; ".join(named)
        # none said why or ended: a process here that is stopped (SIGSTOP, a debugger) hangs
        # the rest (tester AV: a stopped rank 2 was named nowhere, rank 0 blamed)
        stopped = [r for r, (peer_host, pid) in others if peer_host == host and _stopped(pid)]
        if stopped:
            ranks = ", ".join(map(str, stopped))
            return f"rank {ranks} hung (its process is stopped: SIGSTOP or a debugger)"
        if unknown:
            return f"a rank on another host stopped or hung (ranks {unknown} not checked)"
        return "another rank stopped or hung"

    def announce_leaving(self, err: BaseException) -> None:
        """Tell the other ranks, through the rendezvous store, that this rank stops on
        ``err``: they name it even while its process is still ending (or on another
        host). Best effort, at most a few seconds: the store's host may be gone too."""
        if self.store is None:
            return
        why = stop_reason(err)
        with contextlib.suppress(Exception):
            self.store.set_timeout(datetime.timedelta(seconds=2))
            self.store.set(f"left/{self.rank}", why[:200].rstrip(": "))

    def refuse_unsupported(
        self, elbo: ELBO, plate: str | None, batch_size: int, rows: int, drop_last: bool = False
    ):
        """Refuse, before the first step, what data-parallel training cannot reproduce:
        an estimator that keeps state between steps (each rank would update its own copy),
        free bits (:func:`refuse_free_bits`), a model without a per-datapoint plate (its
        loss cannot be split by rows), and a global batch with fewer rows than ranks (a
        short last batch only where ``drop_last`` keeps it: tester AI, refused with
        ``--drop-last`` given, the error advising ``--drop-last``).

        Raises:
            ValueError: naming the setting and what was expected.
        """
        if self.world == 1:
            return
        refuse_stateful(elbo, self.world)
        refuse_free_bits(elbo, self.world)
        if plate is None:
            raise ValueError(
                f"model: no per-datapoint plate, so its loss cannot be split over {self.world} "
                "ranks by rows; expected a model with pyro.plate(..., len(x)) or one process"
            )
        full = min(batch_size, rows)
        if full < self.world:  # every batch: --drop-last cannot help
            what = f"{rows} rows of data" if rows < batch_size else f"batch_size {batch_size}"
            raise ValueError(
                f"batch_size: a batch of {full} row{'s' * (full != 1)} cannot be split over "
                f"{self.world} ranks "
                f"({what}); expected batch_size >= {self.world} on at least {self.world} rows, "
                "or fewer processes"
            )
        last = 0 if drop_last else rows % batch_size
        if 0 < last < self.world:
            raise ValueError(
                f"batch_size: the last batch of an epoch, {last} row{'s' * (last != 1)} "
                f"({rows} rows in batches "
                f"of {batch_size}), cannot be split over {self.world} ranks; expected at "
                "least one row per rank (--drop-last, drop_last=True from Python, drops it; "
                "a run being resumed keeps its own batches: resume it on fewer processes)"
            )


def refuse_stateful(elbo: ELBO, world: int) -> None:
    """Refuse an estimator that keeps state between steps (or declares nothing) on
    ``world`` > 1 ranks: each rank would update its own copy.

    Raises:
        ValueError: naming the estimator and what was expected.
    """
    caps = capabilities_of(getattr(elbo, "elbo", elbo))
    if world == 1 or (caps is not None and not caps.keeps_state):
        return
    if caps is None:
        why = "it declares no capabilities, so it may keep state between steps"
    else:
        why = "it keeps state between steps" + (f" ({caps.state})" if caps.state else "")
    raise ValueError(
        f"estimator: {type(elbo).__name__}: {why}, which {world} ranks would each update on "
        "their own; expected an estimator without state (trace, analytic-kl, enum, iwae, "
        "vimco, score with control_variate 'none' or 'leave-one-out') or one process"
    )


def refuse_free_bits(elbo: ELBO, world: int) -> None:
    """Refuse free bits on ``world`` > 1 ranks: it decides which sites to hold at λ from
    the batch's mean KL, and each rank would decide on its own part of the batch (tester
    AA: the averaged objective was Σ_r (b_r/B)·max(λ, KL_r), free bits at batch size B/2,
    its floor 1.76 times the single-process step's), which is not the single-process step.

    Raises:
        ValueError: naming free_bits and what was expected.
    """
    free_bits = getattr(getattr(elbo, "elbo", elbo), "free_bits", None)
    if world > 1 and free_bits is not None:
        raise ValueError(
            f"free_bits: {free_bits} decides per batch which latent sites to hold at λ, "
            f"and on {world} ranks each would decide on its part of the batch, not the "
            "single-process step; expected free_bits off (--free-bits left out) or one process"
        )


def refuse_batch_terms(model, world: int) -> None:
    """Refuse on ``world`` > 1 ranks a model (or its class) that declares terms made from
    the whole batch's rows (``batch_terms``, :func:`pyro_vae.model_protocol.batch_terms`):
    each rank would make its own part's (tester AA: M2's classifier term, a mean over the
    batch's labelled rows, trained at about 0.75 of its weight on 2 ranks).

    Raises:
        ValueError: naming the terms and what was expected.
    """
    declared = batch_terms(model)
    if world > 1 and declared:
        raise ValueError(
            f"model: {', '.join(map(repr, declared))} is a training term the model declares "
            "in batch_terms (made from the whole batch's rows, or not known to be a sum "
            f"over the data plate's rows), and on {world} ranks each would make its own "
            "part's, which need not be the single-process step; expected one process (the "
            "class declares the term, so options that leave it out, such as M2's alpha=0, "
            "are refused alike)"
        )  # tester CS


def refuse_before_launch(elbo: ELBO, batch_size: int, world: int, device: torch.device) -> None:
    """What can be refused before ``world`` processes start on this machine: a stateful
    estimator (:func:`refuse_stateful`), free bits (:func:`refuse_free_bits`), a global
    batch with fewer rows than ranks, and more ranks than the machine's cores or GPUs
    (:func:`~pyro_vae.torchrun_environment.refuse_more_ranks_than_the_machine`).

    Raises:
        ValueError: naming the setting and what was expected.
    """
    refuse_stateful(elbo, world)
    refuse_free_bits(elbo, world)
    if batch_size < world:
        raise ValueError(
            f"batch_size: {batch_size} rows cannot be split over {world} ranks; expected at "
            f"least one row per rank (batch_size {world} or more), or fewer processes"
        )
    refuse_more_ranks_than_the_machine(world, device)


def _announced(store, ranks: list[int]) -> tuple[dict[int, str], object]:
    """``{rank: why}`` for those of ``ranks`` that announced they stop, and the store to
    ask next time (``None`` once it cannot be reached)."""
    if store is None:
        return {}, None
    found = {}
    try:
        store.set_timeout(datetime.timedelta(seconds=2))
        for r in ranks:
            if store.check([f"left/{r}"]):
                found[r] = store.get(f"left/{r}").decode(errors="replace")
    except Exception:  # noqa: BLE001  the store's host stopped too: the pids will tell
        return found, None
    return found, store


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state T, SIGSTOP; t, a debugger's trace stop),
    as /proc tells on Linux; False where it cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


class SynchronizedELBO:
    """``elbo`` whose gradients and loss are reduced over the group after each
    ``loss_and_grads`` (the module docstring's [b_r ∇L_r, b_r L_r, b_r] sum), for
    :class:`pyro_vae.svi_step.SVIStep`, which asks it for the parameters it read."""

    def __init__(self, elbo: ELBO, group: Group, modules=()) -> None:
        self.elbo, self.group = elbo, group
        # the pair's networks (model and guide objects, the same on every rank): their
        # buffers, by name, are rank 0's after each step
        self._modules = list(modules)
        named = _named_buffers(self._modules)
        _refuse_unwritable_buffers(named)
        _refuse_buffers_differing_by_rank(named, group)

    def loss_and_grads_and_params(self, model, guide, *args, **kwargs):
        own = getattr(self.elbo, "loss_and_grads_and_params", None)
        if own is not None:
            loss, params = own(model, guide, *args, **kwargs)
        else:
            with pyro.poutine.trace(param_only=True) as capture:
                loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
            params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        rows = float(len(kwargs["subsample"]))
        loss = self._reduce(float(loss), params, rows)
        # listed again each step: a buffer the model reassigns (``self.count = self.count +
        # 1``) is a new tensor, which a list taken once missed (tester DO: ranks drifted)
        named = _named_buffers(self._modules)
        _refuse_unwritable_buffers(named)
        _refuse_buffers_changed_apart(named, self.group)
        self.group.broadcast_buffers([buffer for _, buffer in named])
        return loss, params

    def _reduce(self, loss: float, params: list[torch.Tensor], rows: float) -> float:
        """Replace each gradient by Σ_r b_r ∇L_r / Σ_r b_r and return Σ_r b_r L_r / Σ_r b_r.
        A parameter without a gradient on every rank keeps none."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dtype = torch.float32
        for g in grads:
            dtype = torch.promote_types(dtype, g.dtype)
        device = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat(
            [g.reshape(-1).to(dtype) * rows for g in grads]
            + [torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)]
            + [torch.tensor([loss * rows, rows], dtype=dtype, device=device)]
        )
        self.group.all_reduce(flat)
        total_rows, start = flat[-1], 0
        has_grad = flat[-2 - len(params) : -2]
        for p, g, seen in zip(params, grads, has_grad.tolist(), strict=True):
            n = g.numel()
            if seen:
                p.grad = (flat[start : start + n] / total_rows).reshape(g.shape).to(g.dtype)
            start += n
        return (flat[-2] / total_rows).item()


def coalesced_groups(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by dtype and device, each group in the list's order and the
    groups in the order of their first member: the same groups on every rank for the same
    list, so one flattened broadcast per group lines up across ranks."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


def _refuse_unwritable_buffers(named: list) -> None:
    """Raise ValueError naming a buffer that no broadcast can write in place: an expanded
    view (a stride of 0 along a dim longer than 1, ``torch.zeros(1).expand(5)``), whose
    elements share memory (tester DO: the first step failed on every rank, each blaming
    the other)."""
    for name, buffer in named:
        strides = zip(buffer.stride(), buffer.shape, strict=True)
        if any(stride == 0 and size > 1 for stride, size in strides):
            raise ValueError(
                f"networks: buffer {name.split('.', 1)[1]!r} of shape {tuple(buffer.shape)} "
                "is an expanded view "
                f"(strides {buffer.stride()}), whose elements share memory, so rank 0's "
                "values cannot be written into it after each step: expected a buffer of its "
                "own memory (register_buffer(name, tensor.clone()))"
            )


def _buffer_signature(named: list) -> list:
    """The buffers' names, shapes and dtypes, in order: what must agree across ranks."""
    return [[name, list(buffer.shape), str(buffer.dtype)] for name, buffer in named]


def _refuse_buffers_changed_apart(named: list, group: Group) -> None:
    """Raise ValueError, on every rank, where the ranks' buffers no longer agree in names,
    shapes and dtypes (checked with one all-reduce of a checksum each step): a buffer the
    model reassigned with a shape of its rank's own, or registered on one rank alone,
    shifted every buffer after it in the flattened broadcast, silently (tester DP). The
    all-reduce takes 0.14 ms a step on two gloo processes on this machine."""
    text = json.dumps(_buffer_signature(named))
    if group.same_on_every_rank(zlib.crc32(text.encode())):
        return
    held = [f"{name.split('.', 1)[1]} {tuple(buffer.shape)}" for name, buffer in named]
    raise ValueError(
        "networks: the ranks' buffers came apart during training (a buffer reassigned with "
        "another shape, or registered, on some ranks only; rank "
        f"{group.rank} holds {len(named)}: {', '.join(held[:6])}"
        f"{', ...' if len(named) > 6 else ''}), so rank 0's values cannot be given to the "
        "others: expected every rank's buffers alike, as DistributedDataParallel does"
    )


def _refuse_buffers_differing_by_rank(named: list, group: Group) -> None:
    """Raise ValueError, on every rank, unless every rank lists the same buffers (names,
    shapes, dtypes): a broadcast of differing lists hung, or copied one network's
    statistics into another's (tester DJ: a function guide picking its encoder by rank)."""
    ranks = group.gather_json(_buffer_signature(named))
    for rank, theirs in enumerate(ranks[1:], start=1):
        if theirs != ranks[0]:
            raise ValueError(
                f"networks: rank 0's model and guide hold {len(ranks[0])} buffers and rank "
                f"{rank}'s {len(theirs)} (or others), so their BatchNorm statistics cannot be "
                "kept one set as DistributedDataParallel keeps them; the networks of a "
                "function pair are those it calls at set-up, which differed by rank: "
                "expected the same networks on every rank (a model class holding them)"
            )


def _named_buffers(modules) -> list[tuple[str, torch.Tensor]]:
    """Every buffer of ``modules`` (their submodules' too), each once, in the order of
    their names: the same list on every rank, whichever networks a rank's rows call (a
    list of the networks called, the first way, differed by rank and hung the broadcast:
    tester DI). As ``DistributedDataParallel`` broadcasts its module's buffers
    (``broadcast_buffers=True``), every rank then takes rank 0's, so a BatchNorm's running
    statistics, which each rank moves by its own rows, stay one set (tester DH: a flow's
    BatchNorm drifted apart on two ranks, each rank's q then another). The modules are
    those the pair's set-up found: its model and guide objects, or the networks a
    function pair called."""
    seen: dict[int, tuple[str, torch.Tensor]] = {}
    for index, module in enumerate(modules):
        for name, buffer in sorted(module.named_buffers(), key=lambda item: item[0]):
            if not is_lazy(buffer):
                seen.setdefault(id(buffer), (f"{index}.{name}", buffer))
    return list(seen.values())


_GROUP = Group()


def current() -> Group:
    """The group this process trains in: the one :func:`session` joined, or the default
    process group the caller initialized itself (without the peers' pids, so a lost rank
    is not named), or one process."""
    if _GROUP.world == 1 and dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return _GROUP


def started_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun started (``WORLD_SIZE`` > 1
    in its environment), read before or without joining their group.

    Raises:
        ValueError: ``WORLD_SIZE`` is not a positive integer."""
    return world_size() > 1


def refuse_torchrun_without_group(run) -> None:
    """Refuse ``fit`` in one of several processes torchrun started that joined no process
    group (its script left out :func:`session`): each would train a model of its own on
    the whole data, and every one write ``run`` (tester DD: two ranks' runs, one of them
    lost, the folder saying one process).

    Raises:
        ValueError: naming the processes and the way out."""
    if current().world == 1 and started_by_torchrun():
        writes = f", and each write {run.path}" if run is not None else ""
        raise ValueError(
            f"fit: torchrun started {world_size()} processes, and this one joined no "
            f"process group: each would train a model of its own on the whole data{writes}; "
            "expected fit inside `with pyro_vae.distributed.session():` (which joins them, "
            "so that each trains on its part of every batch), or one process"
        )


@contextlib.contextmanager
def session() -> Iterator[Group]:
    """Join the process group torchrun's environment describes (``WORLD_SIZE`` > 1), for
    the duration of the block; without it, one process and nothing to join.

    Raises:
        ValueError: ``PYRO_VAE_DIST_TIMEOUT`` is not a positive number of seconds, or
            torchrun's variables disagree (:func:`~pyro_vae.torchrun_environment.checked_ranks`).
    """
    global _GROUP
    _, world = checked_ranks()
    if world == 1 or dist.is_initialized():
        yield current()
        return
    timeout = datetime.timedelta(seconds=_timeout())
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(_backend(), store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        peers = [None] * world
        dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
        announcements = dist.PrefixStore("pyro_vae", store)
        _GROUP = Group(dist.get_rank(), world, tuple(tuple(p) for p in peers), announcements)
        yield _GROUP
        # every rank leaves together: rank 0 writes the run folder's last files (the test
        # block, the figures) alone, and a rank that ended first, its process exiting
        # meanwhile, could take it down with it (tester AA: rank 1 aborted at exit in 1 of
        # 7 runs, and torchrun's agent stopped rank 0 before its test block was written)
        _GROUP.wait_for_all("wait for every rank to finish")
    except BaseException as err:
        if not isinstance(err, RankLost):  # a rank that lost another only follows it
            _GROUP.announce_leaving(err)
        raise
    finally:
        _GROUP = Group()
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()


def stop_reason(err: BaseException) -> str:
    """What another rank is told this rank stopped on (:meth:`Group.announce_leaving`): a
    signal in words (``"interrupted (Ctrl-C)"``, or what a stop declares in its
    ``announced`` attribute: ``pyro-vae``'s SIGTERM says ``"terminated (SIGTERM)"``), else
    the error's type and first line; at most 200 characters, a cut marked "…" (tester AI:
    "rank 0 stopped (_Terminated)", a private class's name, beside a message cut
    mid-word). An error raised while a stop unwound is that stop
    (:func:`~pyro_vae.interruptions.interruption_behind`)."""
    err = interruption_behind(err) or err
    announced = getattr(err, "announced", None)
    if isinstance(announced, str) and announced:
        return announced[:200]
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    line = _first_line(err, 200 - len(type(err).__name__) - 2)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _first_line(err: BaseException, most: int) -> str:
    """``err``'s first line, cut to ``most`` characters with "…" where it is longer."""
    line = str(err).splitlines()[0] if str(err) else ""
    return line if len(line) <= most else line[: most - 1] + "…"


def _backend() -> str:
    """``gloo`` for CPU tensors, with ``nccl`` for CUDA tensors when torch sees a GPU (each
    rank on GPU ``LOCAL_RANK``). Untested here: this machine has no GPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"{TIMEOUT_VARIABLE}: {text!r} is not a positive number of seconds; expected how "
            "long a rank waits for the others before giving up"
        )
    return seconds


#: prctl's option that has the kernel signal a process when its parent exits (Linux)
_PR_SET_PDEATHSIG = 1


def start_child(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``command`` started as a child that is sent SIGTERM if this process dies first, by
    any means (SIGKILL, a SIGHUP it does not catch): on Linux, ``prctl(PR_SET_PDEATHSIG)``
    in the child before it runs ``command``; elsewhere an ordinary child. torchrun's agent,
    so started, stops its ranks on that SIGTERM (tester AI: ``kill -9`` of ``pyro-vae fit
    --nproc 2`` left the agent and both ranks training on, orphaned, for 55 more epochs)."""
    parent = os.getpid()
    # resolved here, not in the child: dlopen between fork and exec can deadlock on a lock
    # another thread of this process held at the fork (torch's pools, a progress bar)
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no such call
        prctl = None

    def die_with_parent() -> None:  # runs in the child, between fork and exec
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: already orphaned
            os.kill(os.getpid(), signal.SIGTERM)

    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)  # noqa: PLW1509


#: Set by :mod:`pyro_vae.torchrun_agent` in the environment its ranks inherit: its pid,
#: which each rank checks is still its parent once it has asked to die with it.
AGENT_VARIABLE = "PYRO_VAE_AGENT_PID"


def die_with_agent() -> None:
    """In a rank that torchrun started: have the kernel send it SIGTERM when its parent,
    torchrun's agent, dies by any means (Linux's ``prctl(PR_SET_PDEATHSIG)``), so that a
    ``kill -9`` of the agent stops the ranks as a SIGTERM does, their checkpoint kept
    (tester BJ: both ranks trained on, orphaned, to the last epoch, and the folder stayed
    in use). A rank whose agent (:data:`AGENT_VARIABLE`) died before the call stops at once.
    Elsewhere than Linux, nothing."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    agent = os.environ.get(AGENT_VARIABLE)
    if agent is not None and agent.isdigit() and os.getppid() != int(agent):
        os.kill(os.getpid(), signal.SIGTERM)


#: prctl's option that makes a process adopt its orphaned descendants (Linux ≥ 3.4)
_PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Have orphaned descendants (the ranks of a killed agent) reparented to this process
    rather than to init, so :func:`wait_for_orphans` can wait for them. Elsewhere than
    Linux, nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def wait_for_orphans(seconds: float = 60.0) -> None:
    """Wait, at most ``seconds``, for this process's remaining children (after
    :func:`launch`'s agent died: its ranks, adopted, stopping on their SIGTERM), so that
    what the launcher says next is said once they have stopped (tester BK: it said they had
    while they were still writing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:
            time.sleep(0.1)


def launch(argv: list[str], nproc: int) -> int:
    """Run ``pyro-vae`` with ``argv`` in ``nproc`` processes on this machine through
    torchrun's agent (``python -m pyro_vae.torchrun_agent --standalone``, torchrun's own
    agent), one thread each; returns the exit status of the rank that failed first (2 for a
    refusal), 0 when all finish."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env[LAUNCHED_VARIABLE] = "1"
    _adopt_orphans()  # ranks outliving a killed agent are this process's to wait for
    command = [sys.executable, "-m", "pyro_vae.torchrun_agent", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "pyro_vae", *argv]
    agent = start_child(command, env)
    try:
        return agent.wait()
    except BaseException:  # Ctrl-C or SIGTERM here: the agent stops its ranks, none orphaned
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
        raise
