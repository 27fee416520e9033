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
computes. As there, the gradients' part is reduced in buckets during the backward pass,
each as soon as its gradients are accumulated (post-accumulate-grad hooks on the
parameters), which the recorded step's (:class:`~pyro_vae.estimators.compiled.CompiledELBO`)
replayed backward fires as Pyro's does; the first step, and every step of an estimator
that runs backward more than once, is reduced after ``loss_and_grads``.

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
import datetime
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyro
import torch
import torch.distributed as dist
from pyro.infer import ELBO

from pyro_vae.estimators.capabilities import capabilities_of

__all__ = ["Group", "RankLost", "SynchronizedELBO", "current", "launch", "session"]

TIMEOUT_VARIABLE = "PYRO_VAE_DIST_TIMEOUT"


class RankLost(RuntimeError):
    """Another rank stopped: a collective operation failed or timed out."""


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

    def start_all_reduce(self, values: torch.Tensor):
        """Start summing ``values`` over ranks, in place; returns the work to ``wait()``
        on (which raises when a rank is gone: call it under :meth:`_watching`)."""
        if self.world == 1:
            return _Done()
        return dist.all_reduce(values, async_op=True)

    def mean(self, value: float, weight: float | None) -> float:
        """The ``weight``-weighted mean of every rank's ``value`` (equal weights for
        ``None``): a validation ELBO per datapoint over ranks' shares of the rows."""
        if self.world == 1:
            return value
        w = 1.0 if weight is None else float(weight)
        total = self.all_reduce(torch.tensor([w * value, w], dtype=torch.float64))
        return (total[0] / total[1]).item()

    def broadcast_params(self) -> None:
        """Every entry of Pyro's param store set to rank 0's values (sorted by name)."""
        if self.world == 1:
            return
        store = pyro.get_param_store()
        with self._watching("broadcast of the initial weights"), torch.no_grad():
            for name in sorted(store.keys()):
                dist.broadcast(store[name].unconstrained().data, src=0)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this rank's random streams for epoch ``epoch`` (from 0) from ``(seed,
        epoch, rank)``: ranks draw different noise, and a resumed epoch draws what an
        uninterrupted run drew."""
        if self.world > 1:
            pyro.set_rng_seed((int(seed) * 1_000_003 + int(epoch)) * 4099 + self.rank)

    @contextlib.contextmanager
    def _watching(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistBackendError) as err:
            raise RankLost(
                f"rank {self.rank} of {self.world}: the {what} failed, {self._who_is_gone()}; "
                f"stopping ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
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
        if unknown:
            return f"a rank on another host stopped or hung (ranks {unknown} not checked)"
        return "another rank stopped or hung"

    def announce_leaving(self, err: BaseException) -> None:
        """Tell the other ranks, through the rendezvous store, that this rank stops on
        ``err``: they name it even while its process is still ending (or on another
        host). Best effort, at most a few seconds: the store's host may be gone too."""
        if self.store is None:
            return
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        with contextlib.suppress(Exception):
            self.store.set_timeout(datetime.timedelta(seconds=2))
            self.store.set(f"left/{self.rank}", why[:200].rstrip(": "))

    def refuse_unsupported(self, elbo: ELBO, plate: str | None, batch_size: int, rows: int):
        """Refuse, before the first step, what data-parallel training cannot reproduce:
        an estimator that keeps state between steps (each rank would update its own copy),
        a model without a per-datapoint plate (its loss cannot be split by rows), and a
        global batch with fewer rows than ranks.

        Raises:
            ValueError: naming the setting and what was expected.
        """
        if self.world == 1:
            return
        refuse_stateful(elbo, self.world)
        if plate is None:
            raise ValueError(
                f"model: no per-datapoint plate, so its loss cannot be split over {self.world} "
                "ranks by rows; expected a model with pyro.plate(..., len(x)) or one process"
            )
        last = rows % batch_size
        for size in {min(batch_size, rows), last} - {0}:
            if size < self.world:
                raise ValueError(
                    f"batch_size: a batch of {size} rows cannot be split over {self.world} "
                    f"ranks; expected at least one row per rank (drop_last=True drops a short "
                    "last batch)"
                )


class _Done:
    """The reduce of one process: nothing to wait for."""

    def wait(self) -> bool:
        return True


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
        "their own; expected an estimator without state (trace, analytic-kl, iwae, vimco, "
        "score with control_variate 'none' or 'leave-one-out') or one process"
    )


def refuse_before_launch(elbo: ELBO, batch_size: int, world: int) -> None:
    """What can be refused before ``world`` processes start: a stateful estimator
    (:func:`refuse_stateful`) and a global batch with fewer rows than ranks.

    Raises:
        ValueError: naming the setting and what was expected.
    """
    refuse_stateful(elbo, world)
    if batch_size < world:
        raise ValueError(
            f"batch_size: {batch_size} rows cannot be split over {world} ranks; expected at "
            "least one row per rank"
        )


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


FIRST_BUCKET_BYTES = 1 << 20  # as DistributedDataParallel's: a small first bucket starts early
BUCKET_BYTES = 25 << 20  # DistributedDataParallel's bucket_cap_mb=25


class SynchronizedELBO:
    """``elbo`` whose gradients and loss are reduced over the group in each
    ``loss_and_grads`` (the module docstring's [b_r ∇L_r, b_r L_r, b_r] sum), for
    :class:`pyro_vae.svi_step.SVIStep`, which asks it for the parameters it read.

    As in ``DistributedDataParallel``, the gradients' all-reduce overlaps the backward
    pass. From the second step on the parameters lie in buckets, in the reverse of the
    order the step read them (the order backward reaches them, the same on every rank):
    the first of ``first_bucket_bytes``, the others of ``bucket_bytes``. A bucket's
    reduce starts, asynchronously, once a gradient hook has seen every parameter in it,
    and buckets start in order, so every rank issues the same collectives. The first step
    reduces after ``loss_and_grads`` (Pyro creates its parameters during it), and so does a
    step whose estimator accumulates a gradient more than once (Pyro's ``Trace_ELBO`` runs
    one backward pass per particle unless its particles are vectorized): a bucket went
    out half summed, so the step is reduced again after ``loss_and_grads`` and the
    overlap is turned off for the rest of the run. A step that read other parameters
    than the buckets hold is reduced afterwards too, and the buckets are made anew.
    ``overlap=False`` reduces every step after ``loss_and_grads`` (the same numbers).

    Attributes:
        launched_in_backward: how many buckets of the last step started their reduce
            during the backward pass (0 when the step was reduced afterwards).

    Raises:
        ValueError: ``bucket_bytes`` or ``first_bucket_bytes`` is not a positive integer.
    """

    def __init__(
        self,
        elbo: ELBO,
        group: Group,
        bucket_bytes: int = BUCKET_BYTES,
        first_bucket_bytes: int = FIRST_BUCKET_BYTES,
        overlap: bool = True,
    ) -> None:
        for arg, value in (
            ("bucket_bytes", bucket_bytes),
            ("first_bucket_bytes", first_bucket_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg}: {value!r}; expected a positive number of bytes")
        self.elbo, self.group = elbo, group
        self.bucket_bytes, self.first_bucket_bytes = bucket_bytes, first_bucket_bytes
        self._buckets: _Buckets | None = None
        self._overlap = bool(overlap)
        self.launched_in_backward = 0

    def loss_and_grads_and_params(self, model, guide, *args, **kwargs):
        rows = float(len(kwargs["subsample"]))
        buckets = self._buckets
        if buckets is None:
            loss, params = self._loss_and_grads(model, guide, args, kwargs)
            self.launched_in_backward = 0
            loss = self._reduce(loss, params, rows)
            if self._overlap and params:
                self._buckets = _Buckets(params, self)
            return loss, params
        buckets.arm(rows)
        try:
            loss, params = self._loss_and_grads(model, guide, args, kwargs)
        finally:
            buckets.armed = False
        return self._finish(buckets, loss, params, rows), params

    def _loss_and_grads(self, model, guide, args, kwargs) -> tuple[float, list[torch.Tensor]]:
        own = getattr(self.elbo, "loss_and_grads_and_params", None)
        if own is not None:
            loss, params = own(model, guide, *args, **kwargs)
        else:
            with pyro.poutine.trace(param_only=True) as capture:
                loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
            params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        return float(loss), params

    def _finish(self, buckets: _Buckets, loss: float, params: list, rows: float) -> float:
        """After an overlapped ``loss_and_grads``: start the buckets backward left
        unstarted (a parameter without a gradient on this rank), sum the loss, the rows,
        which parameters have a gradient and whether any rank saw a gradient accumulated
        twice or other parameters, wait for the buckets, and write the mean gradients."""
        self.launched_in_backward = buckets.started
        with self.group._watching("all-reduce"):
            buckets.start_rest()
        ps = buckets.params
        stale = len(params) != len(ps) or any(p is not q for p, q in zip(params, ps, strict=False))
        small = torch.tensor(
            [p.grad is not None for p in ps] + [loss * rows, rows, buckets.late, stale],
            dtype=buckets.dtype,
            device=buckets.device,
        )
        self.group.all_reduce(small)
        with self.group._watching("all-reduce"):
            buckets.wait()
        late, stale = small[-2].item() > 0, small[-1].item() > 0
        if late or stale:
            buckets.remove()
            self._buckets, self._overlap = None, not late
            self.launched_in_backward = 0
            loss = self._reduce(loss, params, rows)
            if self._overlap and params:
                self._buckets = _Buckets(params, self)
            return loss
        total_rows = small[-3]
        buckets.write_gradients(small[: len(ps)].tolist(), total_rows)
        return (small[-4] / total_rows).item()

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


class _Buckets:
    """A step's parameters in buckets, each summed over the group by an asynchronous
    all-reduce as soon as the backward pass has accumulated all of their gradients
    (:class:`SynchronizedELBO`). ``params`` in the order the step read them."""

    def __init__(self, params: list[torch.Tensor], owner: SynchronizedELBO) -> None:
        self.params, self.group = list(params), owner.group
        self.dtype = torch.float32
        for p in self.params:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        self.device = self.params[0].device
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.members: list[list[int]] = [[]]
        cap, size = owner.first_bucket_bytes, 0
        for i in reversed(range(len(self.params))):  # backward meets the last read first
            if size >= cap:
                self.members.append([])
                cap, size = owner.bucket_bytes, 0
            self.members[-1].append(i)
            size += self.params[i].numel() * itemsize
        self.bucket_of = [0] * len(self.params)
        for b, members in enumerate(self.members):
            for i in members:
                self.bucket_of[i] = b
        self.handles = [
            p.register_post_accumulate_grad_hook(functools.partial(self._accumulated, i))
            for i, p in enumerate(self.params)
        ]
        self.arm(1.0)
        self.armed = False

    def arm(self, rows: float) -> None:
        """Get ready for a step on ``rows`` rows of this rank: hooks now start reduces."""
        self.rows, self.armed, self.late, self.error = rows, True, False, None
        self.pending = [len(m) for m in self.members]
        self.seen = [False] * len(self.params)
        self.flats: list[torch.Tensor] = []
        self.works: list = []
        self.started = 0

    def _accumulated(self, i: int, _param: torch.Tensor) -> None:
        if not self.armed:
            return
        if self.seen[i]:  # a second backward pass: its bucket may have gone out half summed
            self.late = True
            return
        self.seen[i] = True
        self.pending[self.bucket_of[i]] -= 1
        try:
            while (
                not self.late
                and self.error is None
                and self.started < len(self.members)
                and self.pending[self.started] == 0
            ):
                self._start()
        except (RuntimeError, dist.DistBackendError) as err:  # raised after backward
            self.error = err

    def _start(self) -> None:
        """Start bucket ``self.started``'s reduce of b_r ∇L_r (zeros for a parameter
        without a gradient)."""
        ps = [self.params[i] for i in self.members[self.started]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        flat = torch.cat([g.reshape(-1).to(self.dtype) for g in grads]).mul_(self.rows)
        self.works.append(self.group.start_all_reduce(flat))
        self.flats.append(flat)
        self.started += 1

    def start_rest(self) -> None:
        """Start every bucket the backward pass left unstarted, in order."""
        if self.error is not None:
            raise self.error
        while self.started < len(self.members):
            self._start()

    def wait(self) -> None:
        """Wait for every bucket's reduce."""
        for work in self.works:
            work.wait()

    def write_gradients(self, has_grad: list[float], total_rows: torch.Tensor) -> None:
        """Replace each gradient by its bucket's Σ_r b_r ∇L_r / Σ_r b_r; a parameter
        without a gradient on every rank (``has_grad`` 0) keeps none."""
        for members, flat in zip(self.members, self.flats, strict=True):
            start = 0
            for i in members:
                p = self.params[i]
                n = p.numel()
                if has_grad[i]:
                    p.grad = (flat[start : start + n] / total_rows).reshape(p.shape).to(p.dtype)
                start += n
        self.flats = []  # not held between steps: they are as large as the gradients

    def remove(self) -> None:
        """Take the gradient hooks off the parameters."""
        for handle in self.handles:
            handle.remove()


_GROUP = Group()


def current() -> Group:
    """The group this process trains in: the one :func:`session` joined, or the default
    process group the caller initialized itself (without the peers' pids, so a lost rank
    is not named), or one process."""
    if _GROUP.world == 1 and dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return _GROUP


@contextlib.contextmanager
def session() -> Iterator[Group]:
    """Join the process group torchrun's environment describes (``WORLD_SIZE`` > 1), for
    the duration of the block; without it, one process and nothing to join.

    Raises:
        ValueError: ``PYRO_VAE_DIST_TIMEOUT`` is not a positive number of seconds.
    """
    global _GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
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
    except BaseException as err:
        if not isinstance(err, RankLost):  # a rank that lost another only follows it
            _GROUP.announce_leaving(err)
        raise
    finally:
        _GROUP = Group()
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()


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


def launch(argv: list[str], nproc: int) -> int:
    """Run ``pyro-vae`` with ``argv`` in ``nproc`` processes on this machine through
    torchrun's agent (``python -m torch.distributed.run --standalone``), one thread each;
    returns the agent's exit status (non-zero, naming the failed rank, when one fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "pyro_vae", *argv]
    agent = subprocess.Popen(command, env=env)
    try:
        return agent.wait()
    except BaseException:  # Ctrl-C or SIGTERM here: the agent stops its ranks, none orphaned
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
        raise
