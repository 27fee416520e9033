"""Bayesian linear regression in Pyro syntax: the model ``pyro_vae.cavi.BayesianLinearRegression``
fits by CAVI, for mean-field SVI beside it.

    τ ~ Gamma(a₀, b₀)                 (noise precision, rate parameterization)
    w | τ ~ N(0, (τ λ₀ I)⁻¹)          (D weights)
    y_n | w, τ ~ N(x_nᵀ w, τ⁻¹)       (n in the data plate, subsampled by N/|B|)

The exact posterior is Normal-Gamma and log p(y) has a closed form (Bishop 2006, §3.3),
so both mean-field gaps are measurable: CAVI's q(w) q(τ) and SVI's Gaussian guide over
(w, log τ) (Pyro's ``AutoNormal``, or ``AutoMultivariateNormal``, which keeps w's
correlations, as CAVI's q(w) does). Tensors keep the data's dtype, so float64 data give
float64 densities.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.plates import data_plate


class BayesianRegression(PyroModule):
    """The Normal-Gamma linear regression, called as ``model(X, y=None, num_data=None)``.

    Args:
        a0, b0: Gamma prior shape and rate of the noise precision τ.
        lambda0: prior precision of the weights, relative to τ.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, a0: float = 1.0, b0: float = 1.0, lambda0: float = 1.0) -> None:
        super().__init__(name="model")
        for name, value in (("a0", a0), ("b0", b0), ("lambda0", lambda0)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: {value} is not a positive number")
        self.a0, self.b0, self.lambda0 = float(a0), float(b0), float(lambda0)

    def forward(
        self, X: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        if X.dim() != 2:
            raise ValueError(f"X: shape {tuple(X.shape)} is not [N, D]")
        if y is not None and y.shape != X.shape[:1]:
            raise ValueError(
                f"y: shape {tuple(y.shape)} does not match X's {X.shape[0]} rows; "
                f"expected ({X.shape[0]},)"
            )
        d = X.shape[1]
        tau = pyro.sample("precision", dist.Gamma(X.new_tensor(self.a0), X.new_tensor(self.b0)))
        scale = (tau * self.lambda0).rsqrt().unsqueeze(-1).expand(tau.shape + (d,))
        w = pyro.sample("weights", dist.Normal(torch.zeros_like(scale), scale).to_event(1))
        mean = (X * w).sum(-1)
        with data_plate(X, num_data):
            return pyro.sample("y", dist.Normal(mean, tau.rsqrt()), obs=y)
