"""Hidden Markov models: exact forward-backward, and structured mean field for factorial HMMs.

A factorial HMM (Ghahramani & Jordan 1997) has M independent Markov chains of K states,
s_t⁽ᵐ⁾ (one-hot), which jointly emit

    y_t ~ N(Σ_m W⁽ᵐ⁾ s_t⁽ᵐ⁾, C),    s_1⁽ᵐ⁾ ~ π⁽ᵐ⁾,   s_t⁽ᵐ⁾ | s_{t−1}⁽ᵐ⁾ ~ A⁽ᵐ⁾.

Exact inference is an HMM on K^M joint states. *Structured* mean field keeps each chain
exact, q(S) = Π_m q_m(S⁽ᵐ⁾) with q_m an HMM with the model's π, A and variational
emissions

    log h_t⁽ᵐ⁾ = W⁽ᵐ⁾ᵀ C⁻¹ (y_t − Σ_{l≠m} W⁽ˡ⁾ ⟨s_t⁽ˡ⁾⟩) − ½ diag(W⁽ᵐ⁾ᵀ C⁻¹ W⁽ᵐ⁾),

so updating a chain is one forward-backward pass (the lecture's "belief propagation inside
sub-graphs, mean field between them"). *Naive* mean field factorizes over time too. Both
bounds are computed with every constant and are ≤ log p(Y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def forward_backward(log_pi: torch.Tensor, log_A: torch.Tensor, log_lik: torch.Tensor):
    """Exact HMM smoothing in log space.

    Args:
        log_pi: ``[K]`` initial log-probabilities; log_A: ``[K, K]`` transition
            log-probabilities (row = from); log_lik: ``[T, K]`` log p(y_t | s_t = k).

    Returns:
        log Z = log Σ_S p(S) Π_t exp(log_lik), marginals ``[T, K]`` and pairwise marginals
        ``[T−1, K, K]`` of the posterior.
    """
    T, K = log_lik.shape
    alpha = torch.empty(T, K, dtype=log_lik.dtype)
    alpha[0] = log_pi + log_lik[0]
    for t in range(1, T):
        alpha[t] = torch.logsumexp(alpha[t - 1][:, None] + log_A, 0) + log_lik[t]
    beta = torch.zeros(T, K, dtype=log_lik.dtype)
    for t in range(T - 2, -1, -1):
        beta[t] = torch.logsumexp(log_A + (log_lik[t + 1] + beta[t + 1])[None, :], 1)
    log_z = torch.logsumexp(alpha[-1], 0)
    marginals = (alpha + beta - log_z).exp()
    pairwise = (
        alpha[:-1, :, None] + log_A[None] + (log_lik[1:] + beta[1:])[:, None, :] - log_z
    ).exp()
    return log_z, marginals, pairwise


@dataclass
class FactorialHMM:
    """Parameters of a factorial HMM with Gaussian emissions.

    Attributes:
        log_pi: ``[M, K]``; log_A: ``[M, K, K]``; W: ``[M, D, K]``; C: ``[D, D]``.
    """

    log_pi: torch.Tensor
    log_A: torch.Tensor
    W: torch.Tensor
    C: torch.Tensor

    def __post_init__(self) -> None:
        m, k = self.log_pi.shape
        d = self.C.shape[0]
        if self.log_A.shape != (m, k, k) or self.W.shape != (m, d, k) or self.C.shape != (d, d):
            raise ValueError(
                f"log_pi, log_A, W, C: shapes {tuple(self.log_pi.shape)}, "
                f"{tuple(self.log_A.shape)}, {tuple(self.W.shape)}, {tuple(self.C.shape)} do not "
                f"agree; expected [M, K], [M, K, K], [M, D, K], [D, D]"
            )

    def sample(self, t_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw states ``[T, M]`` and observations ``[T, D]`` from the model."""
        g = torch.Generator().manual_seed(seed)
        m, _, d = self.sizes
        states = torch.empty(t_len, m, dtype=torch.long)
        for c in range(m):
            states[0, c] = torch.multinomial(self.log_pi[c].exp(), 1, generator=g)
            for t in range(1, t_len):
                states[t, c] = torch.multinomial(
                    self.log_A[c, states[t - 1, c]].exp(), 1, generator=g
                )
        means = sum(self.W[c][:, states[:, c]].T for c in range(m))
        noise = (
            torch.randn(t_len, d, generator=g, dtype=self.C.dtype) @ torch.linalg.cholesky(self.C).T
        )
        return states, means + noise

    @property
    def sizes(self) -> tuple[int, int, int]:
        m, k = self.log_pi.shape
        return m, k, self.C.shape[0]

    def _check(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(y, dtype=torch.float64)
        d = self.sizes[2]
        if y.dim() != 2 or y.shape[1] != d:
            raise ValueError(f"y: shape {tuple(y.shape)} is not [T, {d}]")
        return y

    def log_likelihood_exact(self, y) -> float:
        """log p(Y) by forward on the K^M joint states (small models only)."""
        y = self._check(y)
        m, k, d = self.sizes
        if k**m > 4096:
            raise ValueError(
                f"log_pi: K^M = {k**m} joint states is too many for the exact "
                "forward algorithm here (at most 4096)"
            )
        states = torch.cartesian_prod(*[torch.arange(k)] * m).reshape(-1, m)  # [K^M, M]
        log_pi = sum(self.log_pi[c, states[:, c]] for c in range(m))
        log_A = sum(self.log_A[c][states[:, c][:, None], states[:, c][None, :]] for c in range(m))
        means = sum(self.W[c][:, states[:, c]].T for c in range(m))  # [K^M, D]
        emission = torch.distributions.MultivariateNormal(means, covariance_matrix=self.C)
        log_lik = emission.log_prob(y[:, None, :])  # [T, K^M]
        return float(forward_backward(log_pi, log_A, log_lik)[0])

    def _expected_log_emission(self, y, mu) -> torch.Tensor:
        """Σ_t E_q log N(y_t; Σ_m W⁽ᵐ⁾ s_t⁽ᵐ⁾, C) for independent one-hot s_t⁽ᵐ⁾ with means mu."""
        m, k, d = self.sizes
        c_inv = torch.linalg.inv(self.C)
        pred = torch.einsum("mdk,tmk->td", self.W, mu)
        resid = y - pred
        quad = torch.einsum("td,de,te->", resid, c_inv, resid)
        wcw = torch.einsum("mdk,de,mek->mk", self.W, c_inv, self.W)  # diag(WᵀC⁻¹W) per chain
        # Var of a one-hot s with mean μ: diag(μ) − μμᵀ
        var = torch.einsum("tmk,mk->", mu, wcw) - torch.einsum(
            "tmk,mdk,de,mel,tml->", mu, self.W, c_inv, self.W, mu
        )
        t = y.shape[0]
        return -0.5 * t * (d * math.log(2 * math.pi) + torch.linalg.slogdet(self.C)[1]) - 0.5 * (
            quad + var
        )

    def _log_h(self, y, mu, chain) -> torch.Tensor:
        c_inv = torch.linalg.inv(self.C)
        others = torch.einsum("mdk,tmk->td", self.W, mu) - mu[:, chain] @ self.W[chain].T
        w = self.W[chain]
        return (y - others) @ c_inv @ w - 0.5 * torch.einsum("dk,de,ek->k", w, c_inv, w)


class _FactorialMeanField:
    """Settings, initialization and fitted attributes shared by the two families."""

    def __init__(
        self,
        model: FactorialHMM,
        tol: float = 1e-8,
        max_iter: int = 500,
        random_state: int | None = None,
    ) -> None:
        self.model = model
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def _start(self, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked data and random initial expectations ``[T, M, K]``."""
        y = self.model._check(y)
        m, k, _ = self.model.sizes
        gen = torch.Generator().manual_seed(0 if self.random_state is None else self.random_state)
        return y, torch.softmax(
            torch.randn(y.shape[0], m, k, generator=gen, dtype=torch.float64), -1
        )

    def _done(self, bounds: list[float]) -> bool:
        return len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < self.tol

    def _store(self, mu: torch.Tensor, bounds: list[float], converged: bool) -> None:
        self.expectations_, self.lower_bound_, self.lower_bounds_ = mu, bounds[-1], bounds
        self.n_iter_, self.converged_ = len(bounds), converged


class StructuredMeanField(_FactorialMeanField):
    """Structured mean field for a factorial HMM (Ghahramani & Jordan 1997), scikit-learn style.

    Args:
        model: the :class:`FactorialHMM`.
        tol, max_iter: stop when the bound improves by less than ``tol`` in a sweep.
        random_state: seed of the initial expectations.

    Attributes (after ``fit(y)``): ``expectations_`` ⟨s_t⁽ᵐ⁾⟩ ``[T, M, K]``,
    ``lower_bound_``, ``lower_bounds_``, ``n_iter_``, ``converged_``.
    """

    def fit(self, y) -> StructuredMeanField:
        model = self.model
        y, mu = self._start(y)
        m, k, _ = model.sizes
        log_zs = torch.zeros(m, dtype=torch.float64)
        log_hs = torch.zeros(m, y.shape[0], k, dtype=torch.float64)
        bounds, converged = [], False
        for _ in range(self.max_iter):
            for c in range(m):
                log_hs[c] = model._log_h(y, mu, c)
                log_zs[c], marg, _ = forward_backward(model.log_pi[c], model.log_A[c], log_hs[c])
                mu = mu.clone()
                mu[:, c] = marg
            # L = E log p(Y | S) + Σ_m [log Z_m − Σ_t ⟨s_t⟩ · log h_t]: the π and A terms
            # of E log p(S) cancel against q_m's own.
            bound = float(
                model._expected_log_emission(y, mu)
                + log_zs.sum()
                - torch.einsum("tmk,mtk->", mu, log_hs)
            )
            bounds.append(bound)
            if self._done(bounds):
                converged = True
                break
        self._store(mu, bounds, converged)
        return self


class NaiveMeanField(_FactorialMeanField):
    """Fully factorized q(S) = Π_m Π_t q(s_t⁽ᵐ⁾) for a factorial HMM, by coordinate ascent.

    Same arguments and attributes as :class:`StructuredMeanField`.
    """

    def _bound(self, y, mu) -> float:
        model = self.model
        prior = torch.einsum("mk,mk->", mu[0], model.log_pi) + torch.einsum(
            "tmi,mij,tmj->", mu[:-1], model.log_A, mu[1:]
        )
        entropy = -torch.special.xlogy(mu, mu).sum()
        return float(model._expected_log_emission(y, mu) + prior + entropy)

    def fit(self, y) -> NaiveMeanField:
        model = self.model
        y, mu = self._start(y)
        m = model.sizes[0]
        t_len = y.shape[0]
        bounds, converged = [], False
        for _ in range(self.max_iter):
            for c in range(m):
                log_h = model._log_h(y, mu, c)
                for t in range(t_len):  # each q(s_t) given its Markov blanket
                    logits = log_h[t].clone()
                    logits += model.log_pi[c] if t == 0 else mu[t - 1, c] @ model.log_A[c]
                    if t + 1 < t_len:
                        logits += model.log_A[c] @ mu[t + 1, c]
                    mu[t, c] = torch.softmax(logits, 0)
            bounds.append(self._bound(y, mu))
            if self._done(bounds):
                converged = True
                break
        self._store(mu, bounds, converged)
        return self
