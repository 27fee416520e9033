"""Shared fixtures: every test starts from a seeded RNG and an empty parameter store."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
