"""The Ising model, where exact inference is hard (Rush, CS281 lecture 18.3): naive mean
field by coordinate ascent, and the exact log partition function by enumeration.

Spins s ∈ {−1, +1}ⁿ, symmetric couplings J with zero diagonal, fields h, inverse
temperature β:

    p(s) = exp(β (½ sᵀ J s + hᵀ s)) / Z(J, h, β)

Naive mean field q(s) = Π_i q_i(s_i) with magnetizations m_i = E_q[s_i] gives

    log Z ≥ L(m) = β (½ mᵀ J m + hᵀ m) + Σ_i H_b((1 + m_i) / 2)

(H_b the binary entropy in nats). The coordinate-ascent update of spin i,
m_i ← tanh(β (h_i + Σ_j J_ij m_j)), maximizes L in m_i with the others fixed, so
sequential sweeps never decrease the bound (Wainwright & Jordan 2008, §5.2; Blei et al.
2017 for CAVI). Parallel updates are vectorized but can oscillate; ``damping`` mixes each
new value with the old one, and a fit that oscillates reports ``converged_ = False``.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from pyro_vae.cavi._checks import (
    as_float64,
    check_seed,
    finite,
    non_negative,
    positive_int,
    real,
    seed_of,
)
from pyro_vae.cavi.convergence import warn_unconverged
from pyro_vae.cavi.cpu_default import on_the_cpu

MAX_EXACT_SPINS = 25


def check_couplings(J, h=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``J`` and ``h`` as float64 tensors, or ``ValueError`` naming what is wrong with them."""
    J = finite("J", as_float64("J", J))
    if J.dim() != 2 or J.shape[0] != J.shape[1]:
        raise ValueError(f"J: shape {tuple(J.shape)} is not a square coupling matrix")
    n = J.shape[0]
    if n == 0:
        raise ValueError("J: shape (0, 0) has no spins; expected at least one")
    # rounding's scale is the largest coupling's, not each element's (tester AB: a small
    # coupling of Q diag Qᵀ, 1e-16 off its mirror, was refused per element)
    if not torch.allclose(J, J.T, rtol=0.0, atol=1e-12 * (1 + float(J.abs().max()))):
        gap = float((J - J.T).abs().max())
        raise ValueError(
            f"J: the coupling matrix is not symmetric (|J − Jᵀ| up to {gap:.3g}); expected "
            "J = Jᵀ to float64 rounding"
        )
    # the density reads ½ sᵀJs, J's symmetric part: rounding's asymmetry (W @ W.T) is
    # split evenly, as every method here then reads the same J (tester Z: the exact log Z
    # summed the upper block's cross term, and allclose let J₁₂ − J₂₁ = 0.01 through)
    J = (J + J.T) / 2
    diagonal = torch.diagonal(J)
    if diagonal.abs().max() > 0:
        i = int(diagonal.abs().argmax())
        count = int((diagonal != 0).sum())
        raise ValueError(
            f"J: the diagonal is not zero ({count} of {n} entries; J[{i}, {i}] = "
            f"{float(diagonal[i]):.6g}); expected zeros, as self-couplings are constant for "
            "±1 spins (s_i² = 1): move them out of J"
        )
    h = torch.zeros(n, dtype=torch.float64) if h is None else finite("h", as_float64("h", h))
    if h.shape != (n,):
        raise ValueError(f"h: shape {tuple(h.shape)} does not match {n} spins; expected ({n},)")
    return J, h


def _check_beta(beta) -> float:
    number = real(beta)
    if number is None or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"beta: {beta!r} is not a finite non-negative inverse temperature")
    return number


@on_the_cpu
def grid_couplings(rows: int, cols: int, coupling: float = 1.0) -> torch.Tensor:
    """J ``[rows·cols, rows·cols]``, float64 on the CPU, of a rows x cols grid with
    nearest-neighbour coupling (free boundary): the Ising estimators' input, made where
    they compute whatever torch's default device is."""
    rows, cols = positive_int("rows", rows), positive_int("cols", cols)
    if real(coupling) is None or not math.isfinite(real(coupling)):
        raise ValueError(f"coupling: {coupling!r} is not a finite number")
    n = rows * cols
    J = torch.zeros(n, n, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                J[i, i + 1] = J[i + 1, i] = coupling
            if r + 1 < rows:
                J[i, i + cols] = J[i + cols, i] = coupling
    return J


def _spin_states(n: int) -> torch.Tensor:
    codes = torch.arange(2**n, dtype=torch.int64).unsqueeze(1)
    bits = (codes >> torch.arange(n, dtype=torch.int64)) & 1
    return (2 * bits - 1).to(torch.float64)


@on_the_cpu
def ising_log_partition_exact(J, h=None, beta: float = 1.0) -> float:
    """log Z by summing over all 2ⁿ states, for n ≤ 25.

    The spins are split in two halves A and B; for every state of A the sum over B is a
    log-sum-exp of a matrix product, so the 2ⁿ terms are computed in blocks of dense
    algebra rather than one by one.
    """
    J, h = check_couplings(J, h)
    beta = _check_beta(beta)
    n = J.shape[0]
    if n > MAX_EXACT_SPINS:
        raise ValueError(
            f"J: {n} spins is too many to enumerate; expected at most "
            f"{MAX_EXACT_SPINS} (2^{MAX_EXACT_SPINS} states)"
        )
    a = n // 2
    sa, sb = _spin_states(a), _spin_states(n - a)
    Jaa, Jab, Jbb = J[:a, :a], J[:a, a:], J[a:, a:]
    energy_a = beta * (0.5 * ((sa @ Jaa) * sa).sum(1) + sa @ h[:a])
    energy_b = beta * (0.5 * ((sb @ Jbb) * sb).sum(1) + sb @ h[a:])
    totals = []
    for start in range(0, sa.shape[0], 1024):
        block = sa[start : start + 1024]
        cross = beta * (block @ Jab) @ sb.T
        totals.append(energy_a[start : start + 1024] + torch.logsumexp(cross + energy_b, dim=1))
    return float(torch.logsumexp(torch.cat(totals), dim=0))


def _entropy(m: torch.Tensor) -> torch.Tensor:
    """H_b((1 + m_i) / 2) per spin, in nats."""
    p = ((1 + m) / 2).clamp(1e-300, 1.0)
    q = ((1 - m) / 2).clamp(1e-300, 1.0)
    return -(p * p.log() + q * q.log())


def _bound(m: torch.Tensor, J: torch.Tensor, h: torch.Tensor, beta: float) -> float:
    return float(beta * (0.5 * m @ J @ m + h @ m) + _entropy(m).sum())


def fixed_point_residual(m: torch.Tensor, J: torch.Tensor, h: torch.Tensor, beta: float) -> float:
    """Σ_i KL(q_i ‖ q_i*): what updating each spin alone, the others held at ``m``, would add
    to the bound, in nats. Zero exactly at a fixed point m = tanh(β (h + J m)).

    With θ_i = β (h_i + Σ_j J_ij m_j), L as a function of m_i alone is θ_i m_i + H_b((1 + m_i)/2)
    plus a constant; its maximum over m_i is log(2 cosh θ_i), at m_i = tanh θ_i, so the gain is
    log(2 cosh θ_i) − θ_i m_i − H_b((1 + m_i)/2) = KL(q_i ‖ q_i*) ≥ 0.
    """
    theta = beta * (h + J @ m)
    log_2cosh = theta.abs() + torch.log1p(torch.exp(-2 * theta.abs()))
    return float((log_2cosh - theta * m - _entropy(m)).clamp(min=0).sum())


class IsingMeanField(BaseEstimator):
    """Naive mean field for the Ising model, fitted by coordinate ascent (scikit-learn style).

    Args:
        beta: inverse temperature β.
        update: ``"sequential"`` (spin by spin: exact coordinate ascent, monotone bound)
            or ``"parallel"`` (all spins at once, damped).
        damping: weight of the new value in a parallel update, in (0, 1].
        tol: stop at a fixed point within this many nats (see ``converged_``).
        max_iter: most sweeps per initialization.
        n_init: random initializations; the best bound is kept.
        random_state: seed of the initial magnetizations: None (fresh entropy), an integer
            ≥ 0, or a NumPy ``RandomState``/``Generator`` (a seed drawn from it at each fit).

    Attributes (after ``fit``):
        magnetization_: m, the mean-field E_q[s].
        lower_bound_: L(m) ≤ log Z.
        lower_bounds_: the bound after each sweep of the kept initialization.
        n_iter_: sweeps of the kept initialization.
        converged_: whether the kept initialization reached a fixed point of its update within
            ``tol`` in ``max_iter`` sweeps (the meaning shared by every ``pyro_vae.cavi``
            estimator). A sequential sweep is coordinate ascent: it raises L by the KL
            divergences of the factors it moves, so a sweep that raises L by less than
            ``tol`` ends at a fixed point within ``tol``. A parallel update is not coordinate
            ascent: undamped on a grid it can flip forever between the two checkerboard
            sublattices, with the same bound at each step. So it stops only when the bound
            changed by less than ``tol`` *and* :func:`fixed_point_residual`, what updating
            each spin alone would still add, is below ``tol``.
    """

    def __init__(
        self,
        beta: float = 1.0,
        update: str = "sequential",
        damping: float = 0.5,
        tol: float = 1e-10,
        max_iter: int = 1000,
        n_init: int = 1,
        random_state: int | None = None,
    ) -> None:
        self.beta = beta
        self.update = update
        self.damping = damping
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def _validate(self) -> None:
        if self.update not in ("sequential", "parallel"):
            raise ValueError(f"update: {self.update!r} is not 'sequential' or 'parallel'")
        damping = real(self.damping)
        if damping is None or not 0.0 < damping <= 1.0:
            raise ValueError(f"damping: {self.damping!r} is not in (0, 1]")
        positive_int("max_iter", self.max_iter)
        positive_int("n_init", self.n_init)
        non_negative("tol", self.tol)
        check_seed("random_state", self.random_state)
        _check_beta(self.beta)

    def _sweep(self, m: torch.Tensor, J: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.update == "parallel":
            new = torch.tanh(self.beta * (h + J @ m))
            return (1 - self.damping) * m + self.damping * new
        m = m.clone()
        for i in range(m.shape[0]):
            m[i] = torch.tanh(self.beta * (h[i] + J[i] @ m))
        return m

    def _at_fixed_point(self, bounds: list[float], m, J, h) -> bool:
        if abs(bounds[-1] - bounds[-2]) >= self.tol:
            return False
        # A sequential sweep's rise in L is the KL it moved the factors by; a parallel
        # update's is not, so its state is tested directly.
        return self.update == "sequential" or fixed_point_residual(m, J, h, self.beta) < self.tol

    @on_the_cpu
    def fit(self, J, h=None) -> IsingMeanField:
        """Fit the magnetizations for couplings ``J`` (n x n) and fields ``h`` (n,)."""
        self._validate()
        J, h = check_couplings(J, h)
        scale = self.beta * (float(J.abs().sum()) / 2 + float(h.abs().sum()))
        if not math.isfinite(scale):  # tester BO: β = 1e308 gave lower_bound_ = inf, converged
            raise ValueError(
                f"beta: {self.beta!r} times the couplings' and fields' total (½ Σ|J| + Σ|h|) "
                "overflows float64; expected an inverse temperature at which the energy is finite"
            )
        rng = np.random.default_rng(seed_of("random_state", self.random_state))
        best = None
        for _ in range(self.n_init):
            m = torch.as_tensor(rng.uniform(-0.5, 0.5, J.shape[0]), dtype=torch.float64)
            bounds = [_bound(m, J, h, self.beta)]
            converged = False
            for _ in range(self.max_iter):
                m = self._sweep(m, J, h)
                bounds.append(_bound(m, J, h, self.beta))
                if self._at_fixed_point(bounds, m, J, h):
                    converged = True
                    break
            if best is None or bounds[-1] > best[1][-1]:
                best = (m, bounds, converged)
        m, bounds, converged = best
        self.magnetization_ = m
        self.lower_bound_ = bounds[-1]
        self.lower_bounds_ = bounds[1:]
        self.n_iter_ = len(bounds) - 1
        self.converged_ = converged
        if not converged:
            warn_unconverged("IsingMeanField", bounds[1:], self.max_iter, self.tol)
        return self

    @on_the_cpu
    def variational_distributions(self, site: str = "spins") -> dict:
        """The fitted q(s) = Π_i q(s_i) as ``{site: Bernoulli((1 + m_i)/2).to_event(1)}`` over
        the bits b = (s + 1)/2 of ``models.ising.IsingModel`` (its site ``"spins"``), for
        :func:`pyro_vae.diagnostics.to_inference_data`."""
        if not hasattr(self, "magnetization_"):
            raise NotFittedError(
                "IsingMeanField: not fitted yet; call fit(J, h) before variational_distributions()"
            )
        probs = ((1 + self.magnetization_) / 2).clamp(0.0, 1.0)
        return {site: dist.Bernoulli(probs=probs).to_event(1)}
