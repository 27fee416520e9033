"""The CAVI estimators compute on the CPU whatever torch's default device is (tester EE:
under ``torch.set_default_device`` of another device, every class failed on a device mix
with the CPU data it was given). CI has no GPU: the default here is ``meta``, where a
tensor made without a device fails as loudly as a GPU's would beside CPU data, and each
fit must equal the fit under the CPU default exactly."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import (
    AutoCAVI,
    BayesianGaussianMixture,
    BayesianLinearRegression,
    IsingMeanField,
    NaiveMeanField,
    StructuredMeanField,
    grid_couplings,
    ising_log_partition_exact,
)
from tests.pyro_vae.cavi.test_hmm import random_fhmm

F64 = torch.float64


def normal_gamma(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 10.0))
    tau = pyro.sample("tau", dist.Gamma(torch.tensor(1.0, dtype=F64), 1.0))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -1.0], dtype=F64) + 0.3 * torch.randn(40, generator=g, dtype=F64)
    hmm = random_fhmm(2, 2, 2, seed=3)
    return X, y, grid_couplings(3, 3, 0.3), hmm, hmm.sample(12, 0)[1]


def _fits(X, y, J, hmm, hmm_y) -> dict:
    """Every estimator's answer on the data made on the CPU (seeded)."""
    answers = {}
    for name, fit in {
        "AutoCAVI": lambda: AutoCAVI(normal_gamma).fit(y),
        "BayesianLinearRegression": lambda: BayesianLinearRegression().fit(X, y),
        "BayesianGaussianMixture": lambda: BayesianGaussianMixture(
            n_components=2, random_state=0, max_iter=1000
        ).fit(X),
        "IsingMeanField": lambda: IsingMeanField(random_state=0).fit(J),
        "StructuredMeanField": lambda: StructuredMeanField(hmm).fit(hmm_y),
        "NaiveMeanField": lambda: NaiveMeanField(hmm).fit(hmm_y),
    }.items():
        torch.manual_seed(0)
        estimator = fit()
        means = {k: q.mean for k, q in estimator.variational_distributions().items()}
        answers[name] = (estimator.lower_bound_, means)
    answers["predict"] = BayesianLinearRegression().fit(X, y).predict(X)
    answers["log Z"] = ising_log_partition_exact(J)  # tester EH
    answers["sample"] = hmm.sample(5, 1)[1]
    return answers


def test_every_estimator_fits_on_the_cpu_under_another_default_device():
    data = _data()
    expected = _fits(*data)
    try:
        torch.set_default_device("meta")
        got = _fits(*data)
    finally:
        torch.set_default_device(None)
    for name in ("AutoCAVI", "BayesianLinearRegression", "BayesianGaussianMixture",
                 "IsingMeanField", "StructuredMeanField", "NaiveMeanField"):  # fmt: skip
        bound, means = got[name]
        assert bound == expected[name][0], name
        for site, mean in means.items():
            assert mean.device.type == "cpu", site  # a Categorical's mean is NaN
            torch.testing.assert_close(
                mean, expected[name][1][site], rtol=0, atol=0, equal_nan=True
            )
    assert torch.equal(got["predict"], expected["predict"])
    assert got["log Z"] == expected["log Z"]
    assert torch.equal(got["sample"], expected["sample"])


def test_the_couplings_are_made_on_the_cpu_under_another_default_device():
    expected = grid_couplings(2, 3, 0.5)
    try:
        torch.set_default_device("meta")
        got = grid_couplings(2, 3, 0.5)
    finally:
        torch.set_default_device(None)
    assert torch.equal(got, expected)  # (a meta tensor has no values to compare)


def test_data_on_another_device_is_refused_naming_the_argument():
    # a GPU's tensor met the estimators' CPU draws in a device mix (CI has no GPU: meta
    # stands in for one, as not the CPU)
    X, y = torch.zeros(4, 2, device="meta"), torch.zeros(4, device="meta")
    cases = {
        "X": lambda: BayesianLinearRegression().fit(X, torch.zeros(4)),
        "y": lambda: BayesianLinearRegression().fit(torch.zeros(4, 2), y),
        "J": lambda: IsingMeanField().fit(torch.zeros(3, 3, device="meta")),
    }
    for name, fit in cases.items():
        words = f"{name}: a tensor of shape .* is on meta; .* pass {name}.cpu()"
        with pytest.raises(ValueError, match=words):
            fit()


def test_the_default_device_is_left_as_it_was():
    try:
        torch.set_default_device("meta")
        AutoCAVI(normal_gamma).fit(torch.randn(5, dtype=F64, device="cpu"))
        assert torch.get_default_device().type == "meta"
    finally:
        torch.set_default_device(None)
    assert torch.get_default_device().type == "cpu"


def test_under_the_cpu_default_nothing_is_added():
    """Where the default is the CPU, a method runs as it is: no torch-function mode
    (``torch.device`` as a context) for every torch call of the sweeps to pass through."""
    from torch.overrides import _get_current_function_mode_stack

    seen = []

    def model(y):
        seen.append(len(_get_current_function_mode_stack()))
        normal_gamma(y)

    AutoCAVI(model).fit(torch.randn(5, dtype=F64))
    assert seen and set(seen) == {0}
