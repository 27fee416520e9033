"""The hand-written CAVI classes warn, as scikit-learn and AutoCAVI do, when they stop at
max_iter before converging (tester Z: converged_ = False alone, silently)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi import (
    BayesianGaussianMixture,
    BayesianLinearRegression,
    IsingMeanField,
    StructuredMeanField,
    grid_couplings,
)
from pyro_vae.cavi.convergence import warn_sweeps_unconverged
from tests.pyro_vae.cavi.test_hmm import random_fhmm, sample


def _mixture_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    X[:50] += 3
    return X


def _regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 3, generator=g, dtype=torch.float64)
    return X, X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


CASES = {
    "BayesianGaussianMixture": (
        lambda n: BayesianGaussianMixture(3, max_iter=n, random_state=0),
        lambda: (_mixture_data(),),
    ),
    "BayesianLinearRegression": (
        lambda n: BayesianLinearRegression(max_iter=n),
        _regression_data,
    ),
    "StructuredMeanField": (
        lambda n: StructuredMeanField(random_fhmm(2, 3, 2, seed=1), max_iter=n, random_state=0),
        lambda: (sample(random_fhmm(2, 3, 2, seed=1), 20, seed=2),),
    ),
    "IsingMeanField": (
        lambda n: IsingMeanField(max_iter=n, random_state=0),
        lambda: (grid_couplings(3, 3),),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_stopping_at_max_iter_warns_and_converging_does_not(name):
    make, data = CASES[name]
    with pytest.warns(ConvergenceWarning, match=f"{name}: stopped at max_iter=1 iterations"):
        fit = make(1).fit(*data())
    assert not fit.converged_
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert make(1000).fit(*data()).converged_


@pytest.mark.parametrize("name", CASES)
def test_tol_zero_says_it_ran_every_iteration(name):
    # tester AB: with tol=0 no change is under tol, and the warning said "Raise max_iter
    # (or tol)" as if the fit had fallen short
    make, data = CASES[name]
    fit = make(3)
    fit.tol = 0.0
    with pytest.warns(ConvergenceWarning, match=f"{name}: ran all max_iter=3 iterations") as w:
        fit.fit(*data())
    assert not any("Raise max_iter" in str(x.message) for x in w)


def test_sweeps_stopped_at_the_rounding_floor_are_not_told_to_raise_max_iter():
    # an exact CAVI sweep never lowers the bound: sweeps that move it up and down by 1e-5
    # nats are at float64's floor (tester 15: Poisson counts near 10⁶, 5,000 sweeps)
    crawling = [-100.0 + 1e-3 * (1 - 0.5**k) for k in range(20)]
    with pytest.warns(ConvergenceWarning, match="Raise max_iter"):
        warn_sweeps_unconverged(crawling, 20, 1e-10, True)
    floor = crawling[:-2] + [crawling[-3] + 1.2e-5, crawling[-3]]
    with pytest.warns(ConvergenceWarning, match=r"up and down by up to 1.2e-05 nats") as caught:
        warn_sweeps_unconverged(floor, 20, 1e-10, True)
    assert "Raise max_iter" not in str(caught[0].message)
