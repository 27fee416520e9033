"""pyro_vae.estimators.variance, now a re-export of pyro_vae.diagnostics.gradient_variance.

(``parse`` is tested here until the registry's own test file takes it.)
"""

import importlib
import sys
import warnings

import pytest

from pyro_vae.diagnostics import gradient_variance as moved
from pyro_vae.estimators import parse


def test_old_path_warns_once_and_hands_over_the_same_objects():
    sys.modules.pop("pyro_vae.estimators.variance", None)
    old = importlib.import_module("pyro_vae.estimators.variance")
    with pytest.warns(FutureWarning, match="pyro_vae.diagnostics.gradient_variance"):
        assert old.gradient_variance is moved.gradient_variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert old.GradientStats is moved.GradientStats
    with pytest.raises(AttributeError, match="no attribute 'absent'"):
        old.absent  # noqa: B018


def test_parse():
    assert parse("score:control_variate=leave-one-out:num_particles=8") == (
        "score",
        {"control_variate": "leave-one-out", "num_particles": 8},
    )
    with pytest.raises(ValueError, match="not key=value"):
        parse("score:oops")
    # tester CK: the last of two values won, unsaid; the same value twice is one option
    with pytest.raises(ValueError, match="num_particles is given twice .* as 2 and 3"):
        parse("trace:num_particles=2:num_particles=3")
    assert parse("trace:num_particles=2:num-particles=2") == ("trace", {"num_particles": 2})
