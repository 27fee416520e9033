"""The Ising model in Pyro syntax, for mean-field SVI beside ``pyro_vae.cavi.IsingMeanField``.

Spins s ∈ {−1, +1}ⁿ with symmetric couplings J (zero diagonal), fields h and inverse
temperature β have the unnormalized density p*(s) = exp(β (½ sᵀJs + hᵀs)) and the
partition function Z = Σ_s p*(s) (Rush, CS281 lecture 18.3). Pyro has no undirected
models, so the model draws b ∈ {0, 1}ⁿ uniformly, s = 2b − 1, and adds
``pyro.factor("energy", β (½ sᵀJs + hᵀs) + n log 2)``: its "evidence" is then exactly

    Σ_b 2⁻ⁿ exp(β (½ sᵀJs + hᵀs) + n log 2) = Z,

so every ELBO of this model is a lower bound on log Z. With
:class:`pyro_vae.guides.AutoDiscreteMeanField` the guide is q(b) = Π_i Bernoulli(b_i),
the same naive mean-field family as CAVI's (m_i = 2 q(b_i = 1) − 1), and the optimal ELBO
is CAVI's bound L(m) = β (½ mᵀJm + hᵀm) + Σ_i H_b((1 + m_i)/2).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.cavi.ising import check_couplings


class IsingModel(PyroModule):
    """p*(s) ∝ exp(β (½ sᵀJs + hᵀs)) as a Pyro model with one Bernoulli site ``"spins"``.

    Args:
        J: ``[n, n]`` symmetric couplings with zero diagonal.
        h: ``[n]`` fields (zeros by default).
        beta: inverse temperature β ≥ 0.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, J, h=None, beta: float = 1.0) -> None:
        super().__init__(name="model")
        J, h = check_couplings(J, h)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: {beta} is not a finite non-negative inverse temperature")
        self.register_buffer("J", J.float())
        self.register_buffer("h", h.float())
        self.beta = float(beta)

    def log_potential(self, spins: torch.Tensor) -> torch.Tensor:
        """β (½ sᵀJs + hᵀs) for ±1 spins ``[..., n]``, in the spins' precision (a guide's
        float64 draws, ``IsingMeanField``'s q, score in float64: tester BO, a float32
        J against them failed ``to_inference_data`` with "expected m1 and m2 to have the
        same dtype")."""
        J, h = self.J.to(spins.dtype), self.h.to(spins.dtype)
        return self.beta * (0.5 * ((spins @ J) * spins).sum(-1) + spins @ h)

    def forward(self, num_data: int | None = None) -> torch.Tensor:
        """Draws the spins (``num_data`` is accepted and ignored: there is no data)."""
        n = self.h.shape[0]
        bits = pyro.sample("spins", dist.Bernoulli(probs=self.h.new_full((n,), 0.5)).to_event(1))
        spins = 2 * bits - 1
        pyro.factor("energy", self.log_potential(spins) + n * math.log(2.0))
        return spins
