"""``python -m pyro_vae`` is the ``pyro-vae`` command (what torchrun starts)."""

import runpy
import sys

import pytest


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pyro_vae", "fit", "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("pyro_vae", run_name="__main__")
    assert stopped.value.code == 0 and "--nproc" in capsys.readouterr().out
