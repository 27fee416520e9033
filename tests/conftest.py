"""Shared fixtures: every test starts from a seeded RNG and an empty parameter store;
``one_thread`` runs a module single-threaded.

The suite runs in two pytest-xdist workers (``-n 2`` in pyproject.toml), one per core;
each worker then keeps torch to one thread, since two workers of two threads each on two
cores spend their time handing work back and forth.
"""

import os
from pathlib import Path

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    # and so do the processes the tests start (tutorial kernels, the CLI in a subprocess)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"


@pytest.fixture(autouse=True)
def _seeded():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for modules of tiny tensors: with two threads on a busy 2-core
    machine the hand-offs cost more than the work (3-10x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SLOW_FOLDERS = ("tutorials", "benchmarks")


def pytest_collection_modifyitems(config, items):
    """Mark the end-to-end runs of the tutorials and the benchmark scripts ``slow``: the
    default run leaves them out (pyproject.toml's addopts), ``pytest -m slow`` runs them."""
    tests = Path(__file__).parent
    for item in items:
        parts = Path(item.fspath).relative_to(tests).parts
        if parts and parts[0] in _SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
