"""Every CAVI test module runs single-threaded (its tensors are tiny: threads only cost)."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def _cavi_single_thread(one_thread):
    yield
