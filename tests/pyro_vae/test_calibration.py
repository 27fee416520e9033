"""pyro_vae.calibration, now a re-export of pyro_vae.diagnostics.calibration."""

import importlib
import sys
import warnings

import pytest

from pyro_vae.diagnostics import calibration as moved


def test_old_path_warns_once_and_hands_over_the_same_objects():
    sys.modules.pop("pyro_vae.calibration", None)
    old = importlib.import_module("pyro_vae.calibration")
    with pytest.warns(FutureWarning, match="pyro_vae.diagnostics.calibration"):
        assert old.vsbc is moved.vsbc
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("VSBCResult", "symmetry_test", "vsbc_with"):
            assert getattr(old, name) is getattr(moved, name)
    with pytest.raises(AttributeError, match="no attribute 'absent'"):
        old.absent  # noqa: B018
