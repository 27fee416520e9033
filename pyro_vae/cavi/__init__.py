"""Closed-form coordinate-ascent variational inference (CAVI), scikit-learn style:
``fit`` returns self; fitted state ends in ``_`` (``lower_bound_``, ``lower_bounds_``,
``n_iter_``, ``converged_``)."""

from pyro_vae.cavi.gaussian_mixture import BayesianGaussianMixture
from pyro_vae.cavi.hmm import (
    FactorialHMM,
    NaiveMeanField,
    StructuredMeanField,
    forward_backward,
)
from pyro_vae.cavi.ising import IsingMeanField, grid_couplings, ising_log_partition_exact
from pyro_vae.cavi.regression import BayesianLinearRegression

__all__ = [
    "BayesianGaussianMixture",
    "BayesianLinearRegression",
    "FactorialHMM",
    "IsingMeanField",
    "NaiveMeanField",
    "StructuredMeanField",
    "forward_backward",
    "grid_couplings",
    "ising_log_partition_exact",
]
