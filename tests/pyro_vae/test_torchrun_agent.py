"""``fit --nproc``'s agent: a rank's exit status passed through, in one line, not torchrun's
``ChildFailedError`` traceback and exit 1 (tester L2)."""

import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from pyro_vae.torchrun_agent import exit_status, main

ROOT = Path(__file__).resolve().parents[2]


def _failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
    failure = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file="")
    failure.timestamp = timestamp  # when the agent saw it (the first is the root cause)
    return failure


def test_the_first_failed_rank_s_status_is_passed_through_and_the_stopped_ones_named():
    refused = ChildFailedError("pyro_vae", {1: _failure(1, -15, 20), 0: _failure(0, 2, 10)})
    status, account = exit_status(refused)
    assert status == 2
    assert account == (
        "pyro-vae --nproc: rank 0 exited with status 2 first (its message is above); "
        "torchrun's agent then stopped rank(s) 1"
    )
    killed = ChildFailedError("pyro_vae", {0: _failure(0, -9, 10), 1: _failure(1, 2, 20)})
    status, account = exit_status(killed)
    assert status == 128 + 9 and "rank 0 was killed by SIGKILL first" in account
    assert "above" not in account  # a killed rank printed nothing (tester U)
    assert "stopped" not in account  # rank 1 exited on its own, with 2


def test_every_other_failed_rank_is_named_by_how_it_ended():
    # tester AV, 4 processes: rank 0 sent SIGINT alone; the agent's SIGTERM killed ranks 1
    # and 3 outright (-15) and landed in rank 2's handler (143), which went unnamed
    ends = {0: (130, 10), 1: (-15, 20), 3: (-15, 21), 2: (143, 22)}
    four = ChildFailedError("pyro_vae", {r: _failure(r, *end) for r, end in ends.items()})
    assert exit_status(four)[1] == (
        "pyro-vae --nproc: rank 0 was sent SIGINT (Ctrl-C) and stopped first; "
        "torchrun's agent then stopped rank(s) 1, 2, 3"
    )
    ends = {0: (1, 10), 1: (1, 11), 2: (-15, 20), 3: (-6, 21)}
    lost = ChildFailedError("pyro_vae", {r: _failure(r, *end) for r, end in ends.items()})
    assert exit_status(lost) == (1, (
        "pyro-vae --nproc: rank 0 exited with status 1 first (its message is above); "
        "torchrun's agent then stopped rank(s) 2; rank(s) 3 were killed by signal 6; "
        "rank(s) 1 exited with status 1 after it"
    ))  # fmt: skip


@pytest.mark.slow
def test_a_rank_s_refusal_exits_2_without_torchrun_s_traceback(tmp_path):
    # rank 0 refuses (exit 2); rank 1 would go on, so the agent has to stop it
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '0':\n"
        "    print('error: refused by rank 0', file=sys.stderr)\n"
        "    sys.exit(2)\n"
        "time.sleep(120)\n"
    )
    command = [sys.executable, "-m", "pyro_vae.torchrun_agent", "--standalone"]
    command += ["--nproc_per_node=2", "--monitor-interval=0.1", str(script)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "pyro-vae --nproc: rank 0 exited with status 2 first (its message is above); "
        "torchrun's agent then stopped rank(s) 1"
    )
    assert "error: refused by rank 0" in done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr


@pytest.mark.parametrize(
    "code, words", [(143, "SIGTERM"), (130, "SIGINT (Ctrl-C)"), (129, "SIGHUP")]
)
def test_a_rank_stopped_by_a_signal_sent_to_it_alone_is_named_without_an_empty_above(code, words):
    """Tester AI: rank 0 alone sent SIGTERM stops quietly (under ``fit --nproc`` the ranks
    leave the account of where the run stopped to the launcher), and the agent's line
    pointed to "its message" above, which was not there."""
    alone = ChildFailedError("pyro_vae", {0: _failure(0, code, 10), 1: _failure(1, -15, 20)})
    status, account = exit_status(alone)
    assert status == code
    assert account == (
        f"pyro-vae --nproc: rank 0 was sent {words} and stopped first; "
        "torchrun's agent then stopped rank(s) 1"
    )


def test_a_ctrl_c_before_torchrun_s_handler_is_set_leaves_quietly(monkeypatch, capsys):
    """Tester CG: a Ctrl-C 3 s after `fit --nproc 2` reached the agent before torchrun had
    set its signal handler, and printed a 26-line KeyboardInterrupt traceback of its
    internals; the launcher's one line says where the run stopped."""
    import logging

    import torch.distributed.run

    from pyro_vae.distributed import AGENT_VARIABLE

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.distributed.run, "run", interrupted)
    monkeypatch.setenv(AGENT_VARIABLE, "")  # main sets it: put back after the test
    try:
        assert main(["--standalone", "--nproc_per_node=2", "-m", "pyro_vae", "fit"]) == 130
    finally:
        logging.disable(logging.NOTSET)  # main silences the agent's log lines
    assert capsys.readouterr().err == ""
