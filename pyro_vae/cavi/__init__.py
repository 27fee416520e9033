"""Closed-form coordinate-ascent variational inference (CAVI), scikit-learn style:
``fit`` returns self; fitted state ends in ``_`` (``lower_bound_``, ``lower_bounds_``,
``n_iter_``, ``converged_``).

``converged_`` means the same in every estimator here: the fit stopped at a fixed point of
its update, within ``tol`` nats, before ``max_iter`` ran out. For coordinate ascent, each
factor's update q_j → q_j* raises the bound by exactly KL(q_j ‖ q_j*) (L as a function of
q_j alone is −KL(q_j ‖ q_j*) plus a constant; Blei et al. 2017, §2.4), so a sweep that
changes the bound by less than ``tol`` moved the factors by less than ``tol`` of KL in all:
that is the stopping test. An update that is not coordinate ascent can cycle between
states with the same bound (``IsingMeanField(update="parallel", damping=1.0)`` flips
between the two checkerboard sublattices of a grid), so there the state itself is also
tested: what updating each factor alone would add must be below ``tol``. With
``converged_ = False`` the fitted state is not a fixed point, and its bound can be far
below the one the model allows. ``n_init`` starts (where offered) keep the highest bound,
converged or not.

Bad input is refused before any work with a ``ValueError`` naming the argument: NaN or
infinite entries (counted), wrong or empty shapes, non-integer counts, negative ``tol``.
"""

from pyro_vae.cavi.auto import AutoCAVI
from pyro_vae.cavi.conditional_guide import ConditionalCAVIGuide
from pyro_vae.cavi.exponential_families import NotConjugateError
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
    "AutoCAVI",
    "BayesianGaussianMixture",
    "BayesianLinearRegression",
    "ConditionalCAVIGuide",
    "FactorialHMM",
    "IsingMeanField",
    "NaiveMeanField",
    "NotConjugateError",
    "StructuredMeanField",
    "forward_backward",
    "grid_couplings",
    "ising_log_partition_exact",
]
