"""The factorial hidden Markov model in Pyro syntax, beside ``pyro_vae.cavi``'s structured and
naive mean field (Ghahramani & Jordan 1997).

M chains of K states emit jointly,

    s_1⁽ᵐ⁾ ~ Categorical(π⁽ᵐ⁾),  s_t⁽ᵐ⁾ | s_{t−1}⁽ᵐ⁾ ~ Categorical(A⁽ᵐ⁾[s_{t−1}⁽ᵐ⁾]),
    y_t ~ N(Σ_m W⁽ᵐ⁾[:, s_t⁽ᵐ⁾], C),

written as a loop over time under ``pyro.markov`` with one site ``"s_{m}_{t}"`` per chain
and step. Two ways to fit it, with the same model:

- ``enumerate=True`` marks every state for parallel enumeration; with an empty guide,
  :class:`pyro.infer.TraceEnum_ELBO` runs the forward algorithm on the K^M joint states
  and its ELBO *is* log p(Y) — the exact answer the mean-field bounds sit below.
- :class:`pyro_vae.guides.AutoDiscreteMeanField` gives naive mean field,
  q(S) = Π_{m,t} q(s_t⁽ᵐ⁾), fitted by the score-function estimator; it is CAVI's
  ``NaiveMeanField`` family, so the two optimize the same bound.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.cavi.hmm import FactorialHMM


class FactorialHMMModel(PyroModule):
    """``model(y, num_data=None)`` for fixed factorial-HMM parameters.

    Its parameters are held in float32 (buffers), for SVI on float32 data; ``.double()``
    holds them as :class:`pyro_vae.cavi.FactorialHMM` gives them, so that log p(Y, S) is
    the CAVI classes' to float64 rounding (in float32 it is off by ~1e-7 nats a step).

    Args:
        params: the chains' π, A, emission weights W and noise covariance C.
        enumerate: mark the states for parallel enumeration (exact marginalization under
            ``TraceEnum_ELBO``).
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, params: FactorialHMM, enumerate: bool = False) -> None:
        super().__init__(name="model")
        self.register_buffer("log_pi", params.log_pi.float())
        self.register_buffer("log_A", params.log_A.float())
        self.register_buffer("W", params.W.float())
        self.register_buffer("C", params.C.float())
        self.infer = {"enumerate": "parallel"} if enumerate else {}

    def forward(self, y: torch.Tensor, num_data: int | None = None) -> list[list[torch.Tensor]]:
        """Draws the states for ``y`` (``[T, D]``; ``num_data`` is accepted and ignored:
        the one sequence is the data)."""
        chains, d, _ = self.W.shape
        if y.dim() != 2 or y.shape[1] != d:
            raise ValueError(f"y: shape {tuple(y.shape)} is not [T, {d}]")
        states: list[list[torch.Tensor]] = [[] for _ in range(chains)]
        for t in pyro.markov(range(y.shape[0])):
            mean = 0.0
            for m in range(chains):
                logits = self.log_pi[m] if t == 0 else self.log_A[m][states[m][-1]]
                s = pyro.sample(f"s_{m}_{t}", dist.Categorical(logits=logits), infer=self.infer)
                states[m].append(s)
                mean = mean + self.W[m].T[s]
            pyro.sample(f"y_{t}", dist.MultivariateNormal(mean, covariance_matrix=self.C), obs=y[t])
        return states
