"""Shared fixtures: every test starts from a seeded RNG and an empty parameter store;
``one_thread`` runs a module single-threaded."""

import pyro
import pytest
import torch


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
