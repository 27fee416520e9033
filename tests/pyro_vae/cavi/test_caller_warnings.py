"""The CAVI estimators' warnings name the line that called them, however deep below the
public method they are raised (the chains' warning named ``coordinate_updates.py``) and
with the CPU made the default device around the method (a call more)."""

from __future__ import annotations

import warnings

import pytest
import torch

from pyro_vae.cavi import AutoCAVI, BayesianGaussianMixture, BayesianLinearRegression
from pyro_vae.cavi.caller_warnings import warn_at_caller
from tests.pyro_vae.cavi.test_cpu_default import F64, normal_gamma


def _deep(depth: int) -> None:
    if depth:
        _deep(depth - 1)
    else:
        warn_at_caller("deep", RuntimeWarning)


def test_a_warning_from_outside_the_package_names_its_own_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _deep(3)
    assert caught[0].filename == __file__ and caught[0].category is RuntimeWarning


@pytest.mark.parametrize("default", ["cpu", "meta"])
def test_each_estimator_s_convergence_warning_names_the_line_that_called_fit(default):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -1.0], dtype=F64) + torch.randn(30, generator=g, dtype=F64)
    fits = [
        lambda: AutoCAVI(normal_gamma, max_iter=1, tol=1e-12).fit(y),
        lambda: BayesianLinearRegression(max_iter=1, tol=1e-12).fit(X, y),
        lambda: BayesianGaussianMixture(n_components=2, max_iter=1, random_state=0).fit(X),
    ]
    for fit in fits:
        try:
            torch.set_default_device(default)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit()
        finally:
            torch.set_default_device(None)
        assert caught, fit
        assert {w.filename for w in caught} == {__file__}, [str(w.message)[:60] for w in caught]
