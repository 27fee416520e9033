"""torchrun's environment, checked before a rank joins its group (tester CD)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.torchrun_environment import (
    checked_ranks,
    refuse_more_ranks_than_the_machine,
    world_size,
)

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_unset_is_one_process_and_torchrun_s_settings_are_read(environment):
    assert world_size() == 1 and checked_ranks() == (0, 1)
    for name, value in zip(VARIABLES, ("4", "3", "1", "2"), strict=True):
        environment.setenv(name, value)
    assert world_size() == 4 and checked_ranks() == (3, 4)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE: 'abc' in the environment is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE: 0 in the environment; expected a positive number"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, r"RANK: 5 .* not below WORLD_SIZE 2; .* in 0\.\.1"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK: -1 in the environment is not below"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK: 'x' in the env"),
        ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
         r"LOCAL_RANK: 2 .* in 0\.\.1 \(LOCAL_WORLD_SIZE 2\)"),
    ],
)  # fmt: skip
def test_an_inconsistent_environment_is_refused_naming_the_variable(environment, settings, words):
    """Tester CD: RANK=5 of WORLD_SIZE=2 waited ten minutes in torch's rendezvous and
    printed C++ frames; WORLD_SIZE=abc raised int()'s ValueError in a traceback."""
    for name, value in settings.items():
        environment.setenv(name, value)
    with pytest.raises(ValueError, match=words):
        checked_ranks()


def test_the_command_refuses_a_bad_environment_in_one_line_before_any_work(environment, tmp_path):
    run = tmp_path / "r"
    environment.setenv("WORLD_SIZE", "abc")
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "fit", "--out", str(run), "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2 and not run.exists()
    assert result.stderr == (
        "error: WORLD_SIZE: 'abc' in the environment is not an integer; expected what torchrun "
        "sets (unset WORLD_SIZE, or start the processes with torchrun)\n"
    )
    environment.setenv("WORLD_SIZE", "2")
    environment.setenv("RANK", "5")  # refused before the rendezvous, which would wait
    assert main(["fit", "--out", str(run), "--epochs", "1", "--no-progress"]) == 2
    assert not run.exists()


def test_more_ranks_than_the_machine_has_are_refused_before_launch(environment, tmp_path, capsys):
    """Tester CD: --nproc 1000000 with a batch as large passed every check before launch."""
    cores = os.cpu_count() or 1
    refuse_more_ranks_than_the_machine(cores, torch.device("cpu"))
    with pytest.raises(ValueError, match=rf"--nproc: {cores + 1} processes on a machine with "
                       rf"{cores} CPU cores; expected at most {cores}"):  # fmt: skip
        refuse_more_ranks_than_the_machine(cores + 1, torch.device("cpu"))
    run = tmp_path / "r"
    argv = ["fit", "--out", str(run), "--nproc", "1000000", "--batch-size", "1000000"]
    assert main(argv) == 2 and not run.exists()
    assert "--nproc: 1000000 processes on a machine with" in capsys.readouterr().err
