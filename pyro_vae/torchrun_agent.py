"""torchrun's agent with the failed rank's exit status passed through:
``python -m pyro_vae.torchrun_agent <torchrun's arguments>``, what ``pyro-vae fit --nproc N``
starts (:func:`pyro_vae.distributed.launch`).

torchrun's own entry point (``torch.distributed.run.main``) reports any rank that exits
non-zero as a ``ChildFailedError`` traceback and exits 1, so a rank's refusal (exit 2, its
one-line reason already printed, nothing written) read as a crash, with forty lines of the
agent's internals after it (tester L2). This runs the same agent through torchrun's public
``parse_args`` and ``run`` and, when a rank fails, says in one line which rank stopped first
and with what status, then exits with that status: 2 for a refusal, 1 for a run that
diverged or crashed (its traceback is the rank's own, above), 128 + n for a rank killed by
signal n. Stopped itself by Ctrl-C, SIGTERM or SIGHUP, it leaves quietly with 128 + n: the ranks
and ``pyro-vae`` say where the run stopped. Everything else (the rendezvous, stopping the
other ranks, forwarding SIGTERM to them) is torchrun's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from pyro_vae.distributed import AGENT_VARIABLE

#: The exit statuses of a rank that caught a signal and stopped on it (``pyro-vae``'s
#: SIGTERM, Ctrl-C and SIGHUP). Under ``fit --nproc`` the ranks leave the account of where the run
#: stopped to the launcher (so that a Ctrl-C is told once); a rank sent the signal alone
#: (a scheduler, an OOM guard, ``kill``) printed nothing, and "its message is above" was
#: not there (tester AI). The launcher then says where the run stopped.
_HANDLED = {
    128 + signal.SIGTERM: "SIGTERM",
    128 + signal.SIGINT: "SIGINT (Ctrl-C)",
    128 + signal.SIGHUP: "SIGHUP",
}


def exit_status(error: ChildFailedError) -> tuple[int, str]:
    """(the exit status to leave with, a one-line account) for torchrun's report of failed
    ranks: those of the rank that failed first (torchrun's "root cause"); the others were
    stopped by the agent after it (SIGTERM)."""
    rank, failure = error.get_first_failure()
    code = failure.exitcode
    if code < 0:  # killed by a signal: it could say nothing (tester U: "above" was empty)
        how = f"was killed by {failure.signal_name()} first (a killed process says nothing)"
        status = 128 - code
    elif code in _HANDLED:  # its own SIGTERM, SIGINT or SIGHUP, sent to it alone: it says nothing
        how = f"was sent {_HANDLED[code]} and stopped first"
        status = code
    else:
        how = f"exited with status {code} first (its message is above)"
        status = code if code > 0 else 1
    # every other failed rank, by how it ended: the agent's SIGTERM kills a rank outright
    # (-15) or lands in its handler (143); one that lost the first exits 1, with its own
    # message (tester AV: on 4 processes a rank that exited 143 went unnamed)
    others = {r: each.exitcode for r, each in error.failures.items() if r != rank}
    stopped = sorted(r for r, c in others.items() if c in (-signal.SIGTERM, 128 + signal.SIGTERM))
    after = (
        f"; torchrun's agent then stopped rank(s) {', '.join(map(str, stopped))}" if stopped else ""
    )
    for code_of_others in sorted({c for r, c in others.items() if r not in stopped}):
        ranks = ", ".join(str(r) for r, c in sorted(others.items()) if c == code_of_others)
        if code_of_others < 0:
            after += f"; rank(s) {ranks} were killed by signal {-code_of_others}"
        else:
            after += f"; rank(s) {ranks} exited with status {code_of_others} after it"
    return status, f"pyro-vae --nproc: rank {rank} {how}{after}"


def main(argv: list[str]) -> int:
    """Run torchrun's agent with ``argv`` (torchrun's command line); its exit status."""
    from torch.distributed.run import parse_args, run

    # the agent's own log lines ("Sending process … closing signal SIGTERM", "failed
    # (exitcode: 2) local_rank: 0 …") repeat, in its internals' words, what the ranks said
    logging.disable(logging.ERROR)
    os.environ[AGENT_VARIABLE] = str(os.getpid())  # each rank dies with this process
    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        status, account = exit_status(error)
        print(account, file=sys.stderr)
        return status
    except SignalException as stop:  # Ctrl-C or SIGTERM: the ranks and the launcher report
        return 128 + int(stop.sigval)
    except KeyboardInterrupt:  # a Ctrl-C before torchrun's handler was set: a traceback
        return 128 + signal.SIGINT  # of its internals (tester CG); the launcher reports
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
