"""``python -m pyro_vae`` is the ``pyro-vae`` command (what torchrun starts)."""

import runpy
import sys

import pytest


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pyro_vae", "fit", "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("pyro_vae", run_name="__main__")
    assert stopped.value.code == 0 and "--nproc" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "status", "said"),
    [
        (["fit", "--bogus"], 2, "one of the arguments --out --resume is required"),
        (["compare"], 2, "the following arguments are required: RUN"),
    ],
)
def test_a_rank_leaves_with_the_commands_status_and_no_traceback(argv, status, said):
    # a rank started by torchrun ends with os._exit (its teardown aborted it at times:
    # tester AA); argparse's exit and the command's status still come through, and a
    # crash prints its traceback (tester AB's F5 case) with status 1
    import os
    import subprocess

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == status and said in done.stderr
    assert "Traceback" not in done.stderr
