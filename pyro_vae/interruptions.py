"""A command's stops, Ctrl-C, SIGTERM and SIGHUP, and the errors raised while they unwind.

Python raises ``KeyboardInterrupt`` for a Ctrl-C wherever the main thread is; ``pyro-vae``
raises :class:`Terminated` for a SIGTERM the same way (a scheduler's preemption), and
:class:`HungUp` for a SIGHUP (the terminal or SSH session it ran in closed), so each
command can say where the run stopped. Landing inside a library's cleanup, a stop can make
that cleanup raise an error of its own while it unwinds, chained on the stop
(``__context__``): ``torch.save``'s zip writer, stopped between two writes, raises
``RuntimeError: ... unexpected pos`` on closing. That error is the stop, not a crash
(tester AV: a SIGTERM during a checkpoint write printed a 48-line traceback and exited 1,
where a stop exits 143 and names the checkpoint to resume), and a handler that lets an
error pass (a figure that fails, a TensorBoard record) must not swallow the stop with it.

So the SIGTERM handler records its stop (:func:`stop_arrived`) before raising it: a
handler that lets errors pass raises the stop instead (:func:`reraise_interruption`), any
other is caught at the next training step (:func:`raise_if_stopped`), and the command
reports it as the stop (:func:`interruptions_unmasked`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so the command can say where it stopped."""

    #: what the command says it stopped on, and what the other ranks are told
    #: (:func:`pyro_vae.distributed.stop_reason`)
    announced = "terminated (SIGTERM)"
    #: the command's exit status: 128 + the signal's number, as the shell reports a process
    #: the signal killed (a scheduler that requeues preempted jobs reads it)
    status = 143


class HungUp(Terminated):
    """SIGHUP arrived: the terminal or SSH session the command ran in closed. A stop like
    SIGTERM (every handler of :class:`Terminated` takes it), which Python would otherwise
    meet by dying mid-write, leaving a partial checkpoint file behind (tester AX)."""

    announced = "hung up (SIGHUP)"  # a closed terminal, or a kill -HUP: both the same here
    status = 129


#: the stop that arrived during the current command, recorded by the signal handler
_ARRIVED: list[BaseException] = []


def stop_arrived(stop: BaseException) -> None:
    """Record ``stop`` (a :class:`Terminated` the SIGTERM handler is about to raise)."""
    _ARRIVED[:] = [stop]


def forget_stops() -> None:
    """Forget a recorded stop: a command starts (or ended) with none."""
    _ARRIVED.clear()


def raise_if_stopped() -> None:
    """Raise the stop recorded in this command, if one was (and something swallowed it)."""
    if _ARRIVED:
        raise _ARRIVED[0]


def interruption_behind(err: BaseException) -> BaseException | None:
    """The Ctrl-C (``KeyboardInterrupt``) or SIGTERM (:class:`Terminated`) that ``err`` is,
    or was raised while handling (its ``__cause__`` or ``__context__``, followed back),
    else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (KeyboardInterrupt, Terminated)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def reraise_interruption(err: BaseException) -> None:
    """Raise the stop behind ``err`` (:func:`interruption_behind`), or one recorded in this
    command (:func:`stop_arrived`), where there is one: a handler that lets errors pass
    calls this first, so it does not swallow a stop."""
    stop = interruption_behind(err) or (_ARRIVED[0] if _ARRIVED else None)
    if stop is not None and stop is not err:
        raise stop from None


@contextmanager
def interruptions_unmasked() -> Iterator[None]:
    """Inside, an error raised while a Ctrl-C or SIGTERM unwound is raised as that stop."""
    try:
        yield
    except BaseException as err:
        reraise_interruption(err)
        raise
