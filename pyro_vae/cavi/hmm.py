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

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from pyro_vae.cavi._checks import (
    as_float64,
    finite,
    log_probabilities,
    non_negative,
    positive_int,
    seed_of,
    squares_finite,
)
from pyro_vae.cavi.convergence import warn_unconverged
from pyro_vae.cavi.cpu_default import on_the_cpu
from pyro_vae.cavi.fitted_guide import sample_chain


def forward_backward(log_pi: torch.Tensor, log_A: torch.Tensor, log_lik: torch.Tensor):
    """Exact HMM smoothing in log space (Rabiner 1989), time-homogeneous or not, of one
    chain or of a batch of independent chains.

    Args:
        log_pi: ``[K]`` initial log-probabilities (or ``[*batch, K]``); log_A: ``[K, K]``
            transition log-probabilities (row = from), or ``[T−1, K, K]``, one matrix per
            step (``log_A[t]`` from s_t to s_{t+1}), or ``[T−1, *batch, K, K]``; log_lik:
            ``[T, K]`` log p(y_t | s_t = k), or ``[T, *batch, K]`` for a batch of chains
            (several sequences in a plate, each its own chain). Rows need not be
            normalized: log Z is then that of the unnormalized chain. Tensors or arrays of
            any real dtype; computed in float64.

    Returns:
        log Z = log Σ_S p(S) Π_t exp(log_lik) (``[*batch]``), marginals ``[T, *batch, K]``
        and pairwise marginals ``[T−1, *batch, K, K]`` of the posterior.

    Raises:
        ValueError: shapes that do not match, NaN or +inf entries, or no path of
            non-zero probability.
    """
    log_pi, log_A = as_float64("log_pi", log_pi), as_float64("log_A", log_A)
    log_lik = as_float64("log_lik", log_lik)
    if log_lik.dim() < 2 or log_lik.shape[0] == 0:
        raise ValueError(
            f"log_lik: shape {tuple(log_lik.shape)} is not [T, K] (or [T, *batch, K]) with T ≥ 1"
        )
    T, K, batch = log_lik.shape[0], log_lik.shape[-1], log_lik.shape[1:-1]
    pi_ok = log_pi.shape in ((K,), batch + (K,))
    steps_shapes = ((K, K), (T - 1, K, K), (T - 1,) + batch + (K, K))
    if not pi_ok or log_A.shape not in steps_shapes:
        batched = f", or ({T - 1}, *{tuple(batch)}, {K}, {K}) for the batch" if batch else ""
        raise ValueError(
            f"log_pi, log_A: shapes {tuple(log_pi.shape)}, {tuple(log_A.shape)} do not match "
            f"log_lik's {K} states over {T} steps; expected ({K},) and ({K}, {K}) or "
            f"({T - 1}, {K}, {K}){batched}"
        )
    for name, value in (("log_pi", log_pi), ("log_A", log_A), ("log_lik", log_lik)):
        log_probabilities(name, value)
    if log_A.dim() == 3 and batch:  # one matrix per step, shared by the batch
        log_A = log_A.reshape((T - 1,) + (1,) * len(batch) + (K, K))
    steps = log_A.expand((T - 1,) + batch + (K, K))
    chains = math.prod(batch)
    if chains * K**3 * math.ceil(math.log2(max(T, 2))) <= _SCAN_COST:
        alpha, beta = _messages_by_scan(log_pi, steps, log_lik)
    else:
        alpha, beta = _messages_in_turn(log_pi, steps, log_lik)
    log_z = torch.logsumexp(alpha[-1], -1)
    if bool((log_z == -math.inf).any()):
        raise ValueError(
            "log_pi, log_A, log_lik: every path of states has probability zero (log Z = −inf); "
            "no posterior to smooth"
        )
    marginals = (alpha + beta - log_z.unsqueeze(-1)).exp()
    pairwise = (
        alpha[:-1].unsqueeze(-1) + steps + (log_lik[1:] + beta[1:]).unsqueeze(-2)
        - log_z[..., None, None]
    ).exp()  # fmt: skip
    return log_z, marginals, pairwise


#: Forward-backward takes the parallel scan (:func:`_messages_by_scan`) where chains·K³·
#: ⌈log₂ T⌉ is at most this, else the loop over steps (:func:`_messages_in_turn`): measured
#: on one thread, the scan was 4.1x faster at K = 3, T = 200 and 6.6x at K = 2, T = 1,000,
#: even at K = 8, T = 50 (cost 3,072), and 2.5x slower at 20 chains of K = 3, T = 50.
_SCAN_COST = 2048


def _messages_in_turn(log_pi, steps, log_lik):
    """The forward and backward log-messages α, β [T, *batch, K] by the recursions
    (Rabiner 1989), one step at a time: T − 1 steps each way."""
    T, K, batch = log_lik.shape[0], log_lik.shape[-1], log_lik.shape[1:-1]
    alpha = torch.empty((T,) + batch + (K,), dtype=log_lik.dtype, device=log_lik.device)
    alpha[0] = log_pi + log_lik[0]
    for t in range(1, T):
        alpha[t] = torch.logsumexp(alpha[t - 1].unsqueeze(-1) + steps[t - 1], -2) + log_lik[t]
    beta = torch.zeros((T,) + batch + (K,), dtype=log_lik.dtype, device=log_lik.device)
    for t in range(T - 2, -1, -1):
        beta[t] = torch.logsumexp(steps[t] + (log_lik[t + 1] + beta[t + 1]).unsqueeze(-2), -1)
    return alpha, beta


def _messages_by_scan(log_pi, steps, log_lik):
    """α and β as :func:`_messages_in_turn` gives them, from the prefix and suffix products
    of the steps' matrices M_t[i, j] = log A_t[i, j] + log p(y_t | j) in the (logsumexp, +)
    semiring, by a Hillis-Steele scan (Hassan, Särkkä & García-Fernández 2021, for HMMs):
    ⌈log₂ T⌉ rounds of batched K x K products, not T − 1 steps of Python; its work is
    K times the loop's, so it is taken for small K only (:data:`_SCAN_COST`)."""
    alpha = torch.empty(log_lik.shape, dtype=log_lik.dtype, device=log_lik.device)
    beta = torch.zeros(log_lik.shape, dtype=log_lik.dtype, device=log_lik.device)
    alpha[0] = log_pi + log_lik[0]
    if len(log_lik) > 1:
        m = steps + log_lik[1:].unsqueeze(-2)  # [T − 1, *batch, K, K]
        alpha[1:] = torch.logsumexp(alpha[0].unsqueeze(-1) + _prefix_products(m), -2)
        # suffix products M_{t+1} ⋯ M_{T−1}, transposed: the prefixes of the reversed M_tᵀ
        suffixes = _prefix_products(m.flip(0).transpose(-1, -2)).flip(0)
        beta[:-1] = torch.logsumexp(suffixes, -2)
    return alpha, beta


def _prefix_products(m: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix products m_0 ⋯ m_t of log-matrices m [T, *batch, K, K] in the
    (logsumexp, +) semiring, by ⌈log₂ T⌉ rounds of doubling."""
    out, shift = m, 1
    while shift < len(m):
        products = torch.logsumexp(out[:-shift].unsqueeze(-1) + out[shift:].unsqueeze(-3), -2)
        out = torch.cat([out[:shift], products])
        shift *= 2
    return out


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
        for name in ("log_pi", "log_A", "W", "C"):  # float64, like every CAVI computation
            setattr(self, name, as_float64(name, getattr(self, name)))
        shapes = [tuple(getattr(self, n).shape) for n in ("log_pi", "log_A", "W", "C")]
        ok = self.log_pi.dim() == 2 and self.C.dim() == 2 and min(self.log_pi.shape) >= 1
        if ok:
            m, k = self.log_pi.shape
            d = self.C.shape[0]
            ok = d >= 1 and shapes[1:] == [(m, k, k), (m, d, k), (d, d)]
        if not ok:
            raise ValueError(
                f"log_pi, log_A, W, C: shapes {shapes[0]}, {shapes[1]}, {shapes[2]}, "
                f"{shapes[3]} do not agree; expected [M, K], [M, K, K], [M, D, K], [D, D] "
                "with M, K, D ≥ 1"
            )
        for name in ("log_pi", "log_A"):
            value = log_probabilities(name, getattr(self, name))
            total = torch.logsumexp(value, -1)
            worst = float((total.abs()).max()) if bool(torch.isfinite(total).all()) else math.inf
            # 1e-5 leaves room for parameters normalized in float32 (about K·6e-8 off).
            if worst > 1e-5:
                raise ValueError(
                    f"{name}: rows do not sum to 1 as probabilities (log-sum-exp off 0 by "
                    f"{worst:.3g}); expected log-probabilities normalized over the last axis"
                )
        finite("W", self.W)
        finite("C", self.C)
        if not torch.allclose(self.C, self.C.T) or torch.linalg.cholesky_ex(self.C).info != 0:
            raise ValueError("C: is not symmetric positive definite; expected a noise covariance")

    @on_the_cpu
    def sample(self, t_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw states ``[T, M]`` and observations ``[T, D]`` from the model."""
        t_len = positive_int("t_len", t_len)
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

    def _check(self, y) -> torch.Tensor:
        y = as_float64("y", y)
        d = self.sizes[2]
        if y.dim() != 2 or y.shape[1] != d:
            raise ValueError(f"y: shape {tuple(y.shape)} is not [T, {d}]")
        if y.shape[0] == 0:
            raise ValueError(f"y: shape {tuple(y.shape)} has no time steps; expected T ≥ 1")
        return squares_finite("y", finite("y", y))  # (tester BR: 1e200 gave a bound of nan)

    @on_the_cpu
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


class _FactorialMeanField(BaseEstimator):
    """Settings, initialization and fitted attributes shared by the two families."""

    def __init__(
        self,
        model: FactorialHMM,
        tol: float = 1e-8,
        max_iter: int = 500,
        n_init: int = 1,
        random_state: int | None = 0,
    ) -> None:
        self.model = model
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    @on_the_cpu
    def fit(self, y):
        """Fit q(S) to the observations ``y`` ``[T, D]`` from ``n_init`` random starts and
        keep the one with the highest bound."""
        if not isinstance(self.model, FactorialHMM):
            raise ValueError(
                f"model: {type(self.model).__name__} is not a FactorialHMM; expected the "
                "model's parameters as a FactorialHMM"
            )
        non_negative("tol", self.tol)
        positive_int("max_iter", self.max_iter)
        positive_int("n_init", self.n_init)
        seed = seed_of("random_state", self.random_state)
        self._check_model()
        y = self.model._check(y)
        m, k, _ = self.model.sizes
        # One stream for all starts, so the first is the same whatever n_init is; None
        # is fresh entropy, as in scikit-learn (it was seed 0)
        seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
        gen = torch.Generator().manual_seed(seed)
        best = None
        for _ in range(self.n_init):
            start = torch.softmax(
                torch.randn(y.shape[0], m, k, generator=gen, dtype=torch.float64), -1
            )
            result = self._ascend(y, start)
            if best is None or result[1][-1] > best[1][-1]:
                best = result
        mu, bounds, converged, pairwise = best
        self.expectations_, self.lower_bound_, self.lower_bounds_ = mu, bounds[-1], bounds
        self.n_iter_, self.converged_ = len(bounds), converged
        if not converged:
            warn_unconverged(type(self).__name__, bounds, self.max_iter, self.tol)
        if pairwise is not None:
            self.pairwise_ = pairwise
        return self

    def _check_model(self) -> None:
        pass

    @on_the_cpu
    def variational_distributions(self) -> dict:
        """The fitted marginals q(s_t⁽ᵐ⁾) as ``{"s_{m}_{t}": Categorical}``, the sites of
        ``models.hmm.FactorialHMMModel``. Drawn independently they are q under naive mean
        field; ``StructuredMeanField`` keeps each chain whole, and its
        ``variational_guide()`` (which the diagnostics use) draws the chains in order."""
        if not hasattr(self, "expectations_"):
            raise NotFittedError(
                f"{type(self).__name__}: not fitted yet; call fit(y) before "
                "variational_distributions()"
            )
        t_len, chains, _ = self.expectations_.shape
        return {
            f"s_{m}_{t}": dist.Categorical(probs=self.expectations_[t, m])
            for t in range(t_len)
            for m in range(chains)
        }

    def _done(self, bounds: list[float]) -> bool:
        return len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < self.tol


_SHARED_DOC = """
    Args:
        model: the :class:`FactorialHMM`.
        tol: stop when a sweep changes the bound by less than this (nats).
        max_iter: most sweeps per start.
        n_init: random starts (as in scikit-learn); the highest bound is kept. The bound has
            local maxima, and one start can stop several nats below the best.
        random_state: seed of the initial expectations (default 0, so that a default
            fit gives the same numbers each time), ``None`` for fresh entropy (as in
            scikit-learn), or a NumPy ``RandomState``/``Generator`` (a seed drawn from it
            at each fit).

    Attributes (after ``fit(y)``): ``expectations_`` ⟨s_t⁽ᵐ⁾⟩ ``[T, M, K]`` (and, for
    ``StructuredMeanField``, ``pairwise_`` ⟨s_t⁽ᵐ⁾ s_{t+1}⁽ᵐ⁾ᵀ⟩ ``[M, T−1, K, K]``),
    ``lower_bound_``, ``lower_bounds_`` (per sweep of the kept start), ``n_iter_``, and
    ``converged_``: whether the kept start reached a fixed point of its update within
    ``tol`` in ``max_iter`` sweeps (the meaning shared by every ``pyro_vae.cavi``
    estimator). A sweep is coordinate ascent, which raises the bound by the KL divergences
    between each old factor and its update, so a sweep that raises it by less than ``tol``
    ends at a fixed point within ``tol`` nats.
"""


class StructuredMeanField(_FactorialMeanField):
    __doc__ = (
        """Structured mean field for a factorial HMM (Ghahramani & Jordan 1997), scikit-learn
    style: q(S) = Π_m q_m(S⁽ᵐ⁾), each chain an HMM updated by one forward-backward pass.
"""
        + _SHARED_DOC
    )

    def _ascend(self, y, mu) -> tuple[torch.Tensor, list[float], bool, torch.Tensor]:
        model = self.model
        m, k, _ = model.sizes
        log_zs = y.new_zeros(m)  # float64, on y's device
        log_hs = y.new_zeros(m, y.shape[0], k)
        pairwise = y.new_zeros(m, y.shape[0] - 1, k, k)
        bounds, converged = [], False
        for _ in range(self.max_iter):
            for c in range(m):
                log_hs[c] = model._log_h(y, mu, c)
                log_zs[c], marg, pairwise[c] = forward_backward(
                    model.log_pi[c], model.log_A[c], log_hs[c]
                )
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
        return mu, bounds, converged, pairwise

    @on_the_cpu
    def variational_guide(self):
        """q(S) as a Pyro guide over ``models.hmm.FactorialHMMModel``'s sites: each chain
        drawn in order, s_0⁽ᵐ⁾ from its marginal and each s_t⁽ᵐ⁾ from q_m(s_t | s_{t−1}),
        its pairwise marginal's row (``pairwise_``), so the dependence q keeps along a
        chain is drawn too; :func:`pyro_vae.diagnostics.to_inference_data` and
        :func:`~pyro_vae.diagnostics.psis_khat` take the fit and use this.

        Raises:
            sklearn.exceptions.NotFittedError (a ValueError): not fitted yet."""
        if not hasattr(self, "pairwise_"):
            raise NotFittedError(
                "StructuredMeanField: not fitted yet; call fit(y) before variational_guide()"
            )
        marginals, pairwise = self.expectations_, self.pairwise_
        t_len, chains, _ = marginals.shape

        def guide(*args, **kwargs) -> None:
            for m in range(chains):
                sites = tuple(f"s_{m}_{t}" for t in range(t_len))
                sample_chain(sites, marginals[:, m], pairwise[m])

        guide.__name__ = "StructuredMeanField.variational_guide"
        return guide


class NaiveMeanField(_FactorialMeanField):
    __doc__ = (
        """Fully factorized q(S) = Π_m Π_t q(s_t⁽ᵐ⁾) for a factorial HMM, by coordinate ascent
    (scikit-learn style): each q(s_t⁽ᵐ⁾) is updated given its Markov blanket.
"""
        + _SHARED_DOC
    )

    def _check_model(self) -> None:
        for name in ("log_pi", "log_A"):
            zeros = int((getattr(self.model, name) == -math.inf).sum())
            if zeros:
                raise ValueError(
                    f"model: {name} has {zeros} zero probabilities (−inf); naive mean field "
                    "averages log-probabilities over independent factors, so its bound is −∞ "
                    "unless every one is positive; expected all finite (StructuredMeanField "
                    "handles zeros)"
                )

    def _bound(self, y, mu) -> float:
        model = self.model
        prior = torch.einsum("mk,mk->", mu[0], model.log_pi) + torch.einsum(
            "tmi,mij,tmj->", mu[:-1], model.log_A, mu[1:]
        )
        entropy = -torch.special.xlogy(mu, mu).sum()
        return float(model._expected_log_emission(y, mu) + prior + entropy)

    def _ascend(self, y, mu) -> tuple[torch.Tensor, list[float], bool]:
        model = self.model
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
        return mu, bounds, converged, None
