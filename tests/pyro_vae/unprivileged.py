"""Commands run as anyone but root runs them, for the tests of folders that cannot be
written (root writes whatever the permissions say)."""

from __future__ import annotations

import os
import shutil

import pytest


def unprivileged(*command: str) -> list[str]:
    """``command`` without root's right to write where the permissions forbid it
    (``setpriv`` drops it), as anyone but root runs; skips where that cannot be had."""
    if os.geteuid() != 0:
        return list(command)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv, which drops root's override")
    drop = "--bounding-set=-dac_override,-dac_read_search,-fowner"
    return ["setpriv", drop, "--inh-caps=-all", *command]
