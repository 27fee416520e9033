"""The exponential families ``AutoCAVI`` updates, each as its sufficient statistics T(x).

A family here is the list of functions T(x) = (1, T₁(x), …, T_K(x)) whose span holds every
conditionally conjugate factor's dependence on the latent x (Winn & Bishop 2005, Table 1),
and the map from natural parameters η (the coefficients of T₁…T_K in E_{−x}[log p]) to the
normalized density q(x) ∝ exp(η·T(x)) with respect to Lebesgue or counting measure:

    Normal (scalar or vector, d coordinates):  T = (1, x_i, x_i x_j for i ≤ j)
                                                → Normal / MultivariateNormal
    Gamma:      T = (1, x, log x)               → Gamma(η_log + 1, −η_x)
    Beta:       T = (1, log x, log(1 − x))      → Beta(η₁ + 1, η₂ + 1)
    Dirichlet:  T = (1, log x_k)                → Dirichlet(η + 1)
    Bernoulli:  T = (1, x)                      → Bernoulli(logits = η)
    Categorical: T = one-hot(x) (no constant: the indicators sum to 1)
                                                → Categorical(logits = η)
    Wishart:    T = (1, Λ_ij for i ≤ j, log|Λ|)   → Wishart
    Normal-Wishart block (μ, Λ), updated jointly (Bishop 2006, §10.2):
                T = (1, Λ_ij, log|Λ|, Λμ, μᵀΛμ)  → N(μ | m, (βΛ)⁻¹) Wishart(Λ | W, ν)
    Normal-Gamma block (μ, τ), μ scalar or a D-vector sharing one Gamma precision τ:
                T = (1, τ, log τ, τμ_i, τμ_iμ_j for i ≤ j)
                                                → N(μ | m, (τP)⁻¹) Gamma(τ | a, b)

Every tensor is float64; statistics have shape [*batch, B] with B = ``family.size``.
"""

from __future__ import annotations

import functools
import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

_F64 = torch.float64
#: The families whose probes are discrete: a design with one can miss a combination.
DISCRETE_FAMILIES = ("Categorical", "Bernoulli")


class NotConjugateError(ValueError):
    """A model AutoCAVI cannot update in closed form; the message names the latent site,
    its distribution and the factor (site) that breaks conditional conjugacy."""


class Family:
    """One exponential family: its statistics, probe points, expectations and update."""

    name = ""
    event_dim = 0
    has_constant = True  # T₀ = 1 is part of the basis (all but Categorical)

    def __init__(self, site: str, event_shape: torch.Size) -> None:
        self.site, self.event_shape = site, torch.Size(event_shape)
        self.sites = (site,)

    @functools.cached_property
    def size(self) -> int:
        """B, the number of statistics (read in every update: computed once)."""
        return len(self.statistic_names())

    def statistic_names(self) -> list[str]:
        raise NotImplementedError

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """T(x), shape [*batch, B]."""
        raise NotImplementedError

    def probe(self, batch_shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """Random points of the support, shape [*batch, *event], for probing factors."""
        raise NotImplementedError

    def expected_statistics(self, q: torch.distributions.Distribution) -> torch.Tensor:
        """E_q[T(x)], shape [*batch, B], for q in this family (or one it contains)."""
        raise NotImplementedError

    def distribution(self, eta: torch.Tensor) -> torch.distributions.Distribution:
        """q ∝ exp(η·T), η of shape [*batch, B − 1] (B for Categorical)."""
        raise NotImplementedError

    def neutral_eta(self, batch_shape: torch.Size) -> torch.Tensor:
        """η of a standard member (N(0, I), Gamma(1, 1), Wishart(I, D + 1), uniform, …),
        [*batch, B − 1]: the q of an element the model masks off, which no factor
        mentions (see ``AutoCAVI``). Zeros here: the uniform member of bounded families."""
        return torch.zeros(batch_shape + (self.size - self.has_constant,), dtype=_F64)

    def _diagonal_pairs(self, eta: torch.Tensor, offset: int, value: float) -> torch.Tensor:
        """``eta`` with ``value`` at the statistics x_i x_i (i = j) of the pairs from ``offset``."""
        diagonal = offset + torch.nonzero(self._rows == self._cols).squeeze(-1)
        eta[..., diagonal] = value
        return eta

    def _improper(self, what: str) -> NotConjugateError:
        return NotConjugateError(
            f"latent site {self.site!r} ({self.name}): its update gives {what}, not a proper "
            f"{self.name}; the model's factors of {self.site!r} do not define a proper "
            "conditional (check the prior's parameters; a prior the model masks off is "
            "flat, and the data must then make the conditional proper on their own; with "
            "data far from zero, or nearly "
            "collinear regressors, float64 rounding in the probed factors can do this too: "
            "centre and scale them; so can latents linked far more tightly than their other "
            "scales, a child's sd 10⁻³ of its parent's, " + TIGHT_LINK_ADVICE + ")"
        )


#: What to do about latents linked far more tightly than their data and priors inform them
#: (tester S's F2: θ₁ ~ N(θ₀, 10⁻⁴) with data of order one was refused as a kink or an
#: improper update, and at 3·10⁻⁵ mean field crawled): probing in float64 loses the
#: precision such a link leaves, and mean field's sweeps move along it a step per sweep.
TIGHT_LINK_ADVICE = (
    "whose probe points then lose float64 precision: write the tightly linked latents as "
    "one vector site (a MultivariateNormal, or a Normal .to_event(1) with the link in its "
    "covariance), updated as one factor, or reparameterize the link (θ₁ = θ₀ + sd·ε)"
)


def described(fn) -> str:
    """A distribution's name as a refusal gives it: ``Normal (.to_event(1))`` for an
    ``Independent`` (it read "Independent": testers N and N2)."""
    if isinstance(fn, torch.distributions.Independent):
        return f"{described(fn.base_dist)} (.to_event({fn.reinterpreted_batch_ndims}))"
    return type(fn).__name__


def _one(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape, dtype=_F64)


class NormalFamily(Family):
    """Normal over d coordinates (event_dim 0 with d = 1, or 1); q couples coordinates."""

    name = "Normal"

    def __init__(self, site: str, event_shape: torch.Size) -> None:
        super().__init__(site, event_shape)
        self.event_dim = len(self.event_shape)
        self.d = self.event_shape[0] if self.event_dim else 1
        self._rows, self._cols = torch.triu_indices(self.d, self.d)

    def statistic_names(self) -> list[str]:
        pairs = [f"x{int(i)}*x{int(j)}" for i, j in zip(self._rows, self._cols, strict=True)]
        return ["1"] + [f"x{i}" for i in range(self.d)] + pairs

    def _vector(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(_F64) if self.event_dim else x.to(_F64).unsqueeze(-1)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        v = self._vector(x)
        quad = v[..., self._rows] * v[..., self._cols]
        return torch.cat([torch.ones(v.shape[:-1] + (1,), dtype=_F64), v, quad], -1)

    def probe(self, batch_shape, generator):
        return torch.randn(batch_shape + self.event_shape, generator=generator, dtype=_F64)

    def expected_statistics(self, q):
        if not self.event_dim and isinstance(q, torch.distributions.Normal):  # elementwise
            mean, sd = q.loc.to(_F64), q.scale.to(_F64)
            mean, sd = torch.broadcast_tensors(mean, sd)
            return torch.stack([torch.ones_like(mean), mean, sd * sd + mean * mean], -1)
        mean, cov = _normal_moments(q, self.event_dim)
        second = cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)
        quad = second[..., self._rows, self._cols]
        return torch.cat([torch.ones(mean.shape[:-1] + (1,), dtype=_F64), mean, quad], -1)

    def neutral_eta(self, batch_shape):  # N(0, I): η_ii = −½ on x_i², 0 elsewhere
        return self._diagonal_pairs(super().neutral_eta(batch_shape), self.d, -0.5)

    def distribution(self, eta):
        d = self.d
        linear, quad = eta[..., :d], eta[..., d:]
        if not self.event_dim:  # elementwise: P = −2η on x², a 1x1 Cholesky per element
            precision = -2 * quad[..., 0]
            if bool((~(precision > 0)).any()):  # LAPACK's test, a NaN included
                raise self._improper("a precision matrix that is not positive definite")
            mean = linear[..., 0] / precision
            return dist.Normal(mean, precision.rsqrt(), validate_args=False)
        half = torch.zeros(eta.shape[:-1] + (d, d), dtype=_F64)
        half[..., self._rows, self._cols] = -quad
        precision = half + half.transpose(-1, -2)  # P_ii = −2η_ii, P_ij = −η_ij (i < j)
        chol, info = torch.linalg.cholesky_ex(precision)
        if bool((info != 0).any()):
            raise self._improper("a precision matrix that is not positive definite")
        mean = torch.cholesky_solve(linear.unsqueeze(-1), chol).squeeze(-1)
        return dist.MultivariateNormal(mean, precision_matrix=precision, validate_args=False)


def _normal_moments(q, event_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [*batch, d] and covariance [*batch, d, d] of a (multivariate) Normal q."""
    mean, root = _normal_root(q, event_dim)
    return mean, root @ root.transpose(-1, -2)  # as torch's covariance_matrix is made


def _normal_root(q, event_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [*batch, d] and lower Cholesky factor of the covariance [*batch, d, d] of a
    (multivariate) Normal q, the factor as torch keeps it (made from a precision matrix
    without inverting it)."""
    if isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    if isinstance(q, torch.distributions.MultivariateNormal):
        return q.mean.to(_F64), q.scale_tril.to(_F64)
    mean, sd = q.mean.to(_F64), q.stddev.to(_F64)
    if not event_dim:
        mean, sd = mean.unsqueeze(-1), sd.unsqueeze(-1)
    return mean, torch.diag_embed(sd)


class GammaFamily(Family):
    name = "Gamma"

    def statistic_names(self):
        return ["1", "x", "log x"]

    def statistics(self, x):
        x = x.to(_F64)
        return torch.stack([_one(x), x, x.log()], -1)

    def probe(self, batch_shape, generator):
        return torch.randn(batch_shape, generator=generator, dtype=_F64).mul(0.7).exp()

    def expected_statistics(self, q):
        a, b = gamma_shape_rate(q)
        return torch.stack([_one(a), a / b, torch.digamma(a) - b.log()], -1)

    def neutral_eta(self, batch_shape):  # Gamma(1, 1): η = (−1 on x, 0 on log x)
        eta = super().neutral_eta(batch_shape)
        eta[..., 0] = -1.0
        return eta

    def distribution(self, eta):
        shape, rate = eta[..., 1] + 1, -eta[..., 0]
        if bool((shape <= 0).any() | (rate <= 0).any()):
            raise self._improper("a shape or rate that is not positive")
        return dist.Gamma(shape, rate, validate_args=False)


def gamma_shape_rate(q) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape a, rate b) in float64 of a Gamma, a Chi2 (a Gamma(ν/2, 1/2), torch's
    subclass) or an Exponential (a Gamma(1, λ)): the priors a Gamma latent may have."""
    if isinstance(q, torch.distributions.Exponential):
        rate = q.rate.to(_F64)
        return torch.ones_like(rate), rate
    return q.concentration.to(_F64), q.rate.to(_F64)


#: The prior classes whose latent is a Gamma family's: each is a Gamma in other words.
GAMMA_PRIORS = (dist.Gamma, dist.Chi2, dist.Exponential)


class GammaVectorFamily(Family):
    """Independent Gammas over a vector's D coordinates (a Gamma ``.to_event(1)``): ARD's
    precisions α_d, one per coordinate of a weight vector that a factor reads whole,
    w ~ Normal(0, α.rsqrt()).to_event(1) (MacKay 1994; Bishop & Tipping 2000). Each α_d
    is its own variable: T = (1, x_1…x_D, log x_1…log x_D), and q = ∏_d Gamma(a_d, b_d),
    an ``Independent`` Gamma. Probed in a frame per coordinate, x_d = c_d·u_d, as the scalar
    Gamma is (:mod:`~pyro_vae.cavi.probe_frames`): rates at 10⁻³ and 10⁸ in one vector were
    refused, probed near 1 (tester 26)."""

    name = "Gamma vector"
    event_dim = 1

    def statistic_names(self):
        d = self.event_shape[0]
        return ["1"] + [f"x{k}" for k in range(d)] + [f"log x{k}" for k in range(d)]

    def statistics(self, x):
        x = x.to(_F64)
        return torch.cat([torch.ones(x.shape[:-1] + (1,), dtype=_F64), x, x.log()], -1)

    def probe(self, batch_shape, generator):
        shape = batch_shape + self.event_shape
        return torch.randn(shape, generator=generator, dtype=_F64).mul(0.7).exp()

    def expected_statistics(self, q):
        a, b = gamma_shape_rate(unwrapped(q))
        a, b = torch.broadcast_tensors(a, b)
        one = torch.ones(a.shape[:-1] + (1,), dtype=_F64)
        return torch.cat([one, a / b, torch.digamma(a) - b.log()], -1)

    def neutral_eta(self, batch_shape):  # Gamma(1, 1) each: −1 on x_d, 0 on log x_d
        eta = super().neutral_eta(batch_shape)
        eta[..., : self.event_shape[0]] = -1.0
        return eta

    def distribution(self, eta):
        d = self.event_shape[0]
        shape, rate = eta[..., d:] + 1, -eta[..., :d]
        if bool((shape <= 0).any() | (rate <= 0).any()):
            raise self._improper("a shape or rate that is not positive")
        return dist.Gamma(shape, rate, validate_args=False).to_event(1)


class BetaFamily(Family):
    name = "Beta"

    def statistic_names(self):
        return ["1", "log x", "log(1 - x)"]

    def statistics(self, x):
        x = x.to(_F64)
        return torch.stack([_one(x), x.log(), (-x).log1p()], -1)

    def probe(self, batch_shape, generator):
        return 0.05 + 0.9 * torch.rand(batch_shape, generator=generator, dtype=_F64)

    def expected_statistics(self, q):
        a, b = q.concentration1.to(_F64), q.concentration0.to(_F64)
        total = torch.digamma(a + b)
        return torch.stack([_one(a), torch.digamma(a) - total, torch.digamma(b) - total], -1)

    def distribution(self, eta):
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        if bool((a <= 0).any() | (b <= 0).any()):
            raise self._improper("a concentration that is not positive")
        return dist.Beta(a, b, validate_args=False)


class DirichletFamily(Family):
    name = "Dirichlet"
    event_dim = 1

    def statistic_names(self):
        return ["1"] + [f"log x{k}" for k in range(self.event_shape[0])]

    def statistics(self, x):
        x = x.to(_F64)
        return torch.cat([torch.ones(x.shape[:-1] + (1,), dtype=_F64), x.log()], -1)

    def probe(self, batch_shape, generator):
        gamma = -torch.rand(batch_shape + self.event_shape, generator=generator, dtype=_F64)
        gamma = -(gamma.log1p())  # Exponential(1) draws, normalized: Dirichlet(1, …, 1)
        return (gamma + 0.05) / (gamma + 0.05).sum(-1, keepdim=True)

    def expected_statistics(self, q):
        alpha = q.concentration.to(_F64)
        e_log = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
        return torch.cat([torch.ones(alpha.shape[:-1] + (1,), dtype=_F64), e_log], -1)

    def distribution(self, eta):
        alpha = eta + 1
        if bool((alpha <= 0).any()):
            raise self._improper("a concentration that is not positive")
        return dist.Dirichlet(alpha, validate_args=False)


class BernoulliFamily(Family):
    name = "Bernoulli"

    def statistic_names(self):
        return ["1", "x"]

    def statistics(self, x):
        x = x.to(_F64)
        return torch.stack([_one(x), x], -1)

    def probe(self, batch_shape, generator):
        return torch.randint(0, 2, batch_shape, generator=generator).to(_F64)

    def expected_statistics(self, q):
        p = q.probs.to(_F64)
        return torch.stack([_one(p), p], -1)

    def distribution(self, eta):
        return dist.Bernoulli(logits=eta[..., 0], validate_args=False)


class CategoricalFamily(Family):
    name = "Categorical"
    has_constant = False

    def __init__(self, site: str, event_shape: torch.Size, k: int) -> None:
        super().__init__(site, event_shape)
        self.k = k

    def statistic_names(self):
        return [f"[x={k}]" for k in range(self.k)]

    def statistics(self, x):
        return torch.nn.functional.one_hot(x.long(), self.k).to(_F64)

    def probe(self, batch_shape, generator):
        """Balanced along the leading dim (the probe points): each element takes every
        category ⌊S/K⌋ or ⌈S/K⌉ times in S points, in its own random order, so a design's
        indicator columns are all hit in fewer points than with independent draws."""
        if not batch_shape:
            return torch.randint(0, self.k, batch_shape, generator=generator)
        order = torch.rand(batch_shape, generator=generator, dtype=_F64).argsort(0)
        return order % self.k

    def expected_statistics(self, q):
        return q.probs.to(_F64)

    def distribution(self, eta):
        return dist.Categorical(logits=eta, validate_args=False)


def _spd_probe(batch_shape, d: int, generator) -> torch.Tensor:
    a = torch.randn(batch_shape + (d, d), generator=generator, dtype=_F64)
    return a @ a.transpose(-1, -2) / d + 0.5 * torch.eye(d, dtype=_F64)


def _wishart_expected_logdet(df: torch.Tensor, scale: torch.Tensor, logdet_scale=None):
    """E log|Λ| = Σ_i ψ((ν + 1 − i)/2) + D log 2 + log|W| under Wishart(W, ν)."""
    d = scale.shape[-1]
    if logdet_scale is None:
        logdet_scale = torch.linalg.slogdet(scale)[1]
    half = (df.unsqueeze(-1) + 1 - torch.arange(1, d + 1, dtype=_F64)) / 2
    return torch.digamma(half).sum(-1) + d * math.log(2) + logdet_scale


def wishart_entropy(df, d: int, logdet_scale, expected_logdet) -> torch.Tensor:
    """H[Wishart(W, ν)] over D×D matrices from log|W| and E log|Λ| (Bishop 2006, eq. B.82):
    −log B(W, ν) − (ν − D − 1)/2 E log|Λ| + νD/2, with
    log B = −ν/2 log|W| − νD/2 log 2 − log Γ_D(ν/2). The same as
    ``torch.distributions.Wishart(df, covariance_matrix=W).entropy()`` (tested), without
    building the distribution, which costs a sweep of the mixture a third of its time."""
    log_normalizer = df / 2 * logdet_scale + df * d / 2 * math.log(2) + torch.mvlgamma(df / 2, d)
    return log_normalizer - (df - d - 1) / 2 * expected_logdet + df * d / 2


def _symmetric_from_triu(values: torch.Tensor, d: int, rows, cols) -> torch.Tensor:
    """M with M_ii = −2 v_ii and M_ij = M_ji = −v_ij (i < j): the matrix whose −½ tr(MΛ)
    has coefficients v on the statistics Λ_ij, i ≤ j."""
    half = torch.zeros(values.shape[:-1] + (d, d), dtype=_F64)
    half[..., rows, cols] = -values
    return half + half.transpose(-1, -2)


class WishartFamily(Family):
    """Wishart over D×D precisions: T = (1, Λ_ij for i ≤ j, log|Λ|)."""

    name = "Wishart"
    event_dim = 2

    def __init__(self, site: str, event_shape: torch.Size) -> None:
        super().__init__(site, event_shape)
        self.d = self.event_shape[-1]
        self._rows, self._cols = torch.triu_indices(self.d, self.d)

    def statistic_names(self):
        pairs = [f"L{int(i)}{int(j)}" for i, j in zip(self._rows, self._cols, strict=True)]
        return ["1"] + pairs + ["log|L|"]

    def statistics(self, x):
        x = x.to(_F64)
        logdet = torch.linalg.slogdet(x)[1].unsqueeze(-1)
        return torch.cat([torch.ones_like(logdet), x[..., self._rows, self._cols], logdet], -1)

    def probe(self, batch_shape, generator):
        return _spd_probe(batch_shape, self.d, generator)

    def expected_statistics(self, q):
        df, scale = q.df.to(_F64), q.covariance_matrix.to(_F64)
        mean = df[..., None, None] * scale
        logdet = _wishart_expected_logdet(df, scale).unsqueeze(-1)
        return torch.cat([torch.ones_like(logdet), mean[..., self._rows, self._cols], logdet], -1)

    def neutral_eta(self, batch_shape):  # Wishart(I, D + 1): −½ on Λ_ii, 0 on log|Λ|
        return self._diagonal_pairs(super().neutral_eta(batch_shape), 0, -0.5)

    def distribution(self, eta):
        d = self.d
        inverse_scale = _symmetric_from_triu(eta[..., :-1], d, self._rows, self._cols)
        df = 2 * eta[..., -1] + d + 1
        if bool((df <= d - 1).any()) or bool(torch.linalg.cholesky_ex(inverse_scale).info.any()):
            raise self._improper("degrees of freedom ≤ D − 1 or a scale not positive definite")
        return dist.Wishart(df, precision_matrix=inverse_scale, validate_args=False)


class NormalWishart:
    """q(μ, Λ) = N(μ | m, (βΛ)⁻¹) Wishart(Λ | W, ν), batched; the joint factor of a mean and
    its precision (Bishop 2006, eq. 10.59)."""

    def __init__(self, loc, beta, scale, df, logdet_scale=None) -> None:
        self.loc, self.beta, self.scale, self.df = loc, beta, scale, df
        if logdet_scale is None:
            logdet_scale = torch.linalg.slogdet(scale)[1]
        self.logdet_scale = logdet_scale  # log|W|
        self.expected_logdet = _wishart_expected_logdet(df, scale, logdet_scale)  # E log|Λ|

    def entropy(self) -> torch.Tensor:
        """H[q(Λ)] + E_Λ H[N(μ | m, (βΛ)⁻¹)] (nats, per batch element)."""
        d = self.loc.shape[-1]
        return (
            wishart_entropy(self.df, d, self.logdet_scale, self.expected_logdet)
            + d / 2 * (1 + math.log(2 * math.pi))
            - d / 2 * self.beta.log()
            - 0.5 * self.expected_logdet
        )

    def precision_distribution(self) -> dist.Wishart:
        """q(Λ) = Wishart(ν, W)."""
        return dist.Wishart(self.df, covariance_matrix=self.scale)

    def mean_given(self, lam: torch.Tensor) -> dist.MultivariateNormal:
        """q(μ | Λ) = N(m, (βΛ)⁻¹) for a draw ``lam`` [*draws, *batch, D, D]."""
        return dist.MultivariateNormal(self.loc, precision_matrix=self.beta[..., None, None] * lam)

    def marginals(self) -> tuple[torch.distributions.Distribution, ...]:
        """q(μ), a multivariate Student-t with ν − D + 1 degrees of freedom, and q(Λ)."""
        d = self.loc.shape[-1]
        df_t = self.df - d + 1
        precision = (df_t * self.beta)[..., None, None] * self.scale
        scale_tril = torch.linalg.cholesky(torch.linalg.inv(precision))
        return (
            dist.MultivariateStudentT(df_t, self.loc, scale_tril),
            dist.Wishart(self.df, covariance_matrix=self.scale, validate_args=False),
        )


class NormalWishartFamily(Family):
    """The block (μ, Λ) of a Normal mean and its Wishart precision, updated jointly:
    T = (1, Λ_ij for i ≤ j, log|Λ|, (Λμ)_i, μᵀΛμ)."""

    name = "Normal-Wishart"

    def __init__(self, mean_site: str, precision_site: str, d: int) -> None:
        super().__init__(f"{mean_site}+{precision_site}", torch.Size([d]))
        self.sites, self.d = (mean_site, precision_site), d
        self._rows, self._cols = torch.triu_indices(d, d)

    def statistic_names(self):
        pairs = [f"L{int(i)}{int(j)}" for i, j in zip(self._rows, self._cols, strict=True)]
        return ["1"] + pairs + ["log|L|"] + [f"(L mu){i}" for i in range(self.d)] + ["mu'L mu"]

    def precision_columns(self) -> torch.Tensor:
        """The statistics of Λ alone, (1, Λ_ij, log|Λ|): a factor that reads Λ but not μ
        (Λ's own prior) has coefficient 0 on every other."""
        return torch.arange(len(self._rows) + 2)

    def statistics(self, mu, lam):
        mu, lam = mu.to(_F64), lam.to(_F64)
        lam_mu = (lam @ mu.unsqueeze(-1)).squeeze(-1)
        logdet = torch.linalg.slogdet(lam)[1].unsqueeze(-1)
        quad = (mu * lam_mu).sum(-1, keepdim=True)
        parts = [torch.ones_like(logdet), lam[..., self._rows, self._cols], logdet, lam_mu, quad]
        return torch.cat(parts, -1)

    def probe(self, batch_shape, generator):
        mu = torch.randn(batch_shape + (self.d,), generator=generator, dtype=_F64)
        return mu, _spd_probe(batch_shape, self.d, generator)

    def expected_statistics(self, q):
        if isinstance(q, tuple):  # a point (μ, Λ): its statistics
            return self.statistics(*q)
        mean_lam = q.df[..., None, None] * q.scale
        lam_mu = (mean_lam @ q.loc.unsqueeze(-1)).squeeze(-1)
        logdet = q.expected_logdet.unsqueeze(-1)
        quad = (self.d / q.beta + (q.loc * lam_mu).sum(-1)).unsqueeze(-1)
        parts = [torch.ones_like(logdet), mean_lam[..., self._rows, self._cols], logdet]
        return torch.cat(parts + [lam_mu, quad], -1)

    def neutral_eta(self, batch_shape):  # N(0, Λ⁻¹) Wishart(I, D + 1): β = 1, ν = D + 1
        eta = self._diagonal_pairs(super().neutral_eta(batch_shape), 0, -0.5)
        eta[..., len(self._rows)] = 0.5
        eta[..., -1] = -0.5
        return eta

    def distribution(self, eta):
        d, n_pairs = self.d, len(self._rows)
        beta = -2 * eta[..., -1]
        loc = eta[..., n_pairs + 1 : n_pairs + 1 + d] / beta.unsqueeze(-1)
        df = 2 * eta[..., n_pairs] + d
        inverse_scale = _symmetric_from_triu(eta[..., :n_pairs], d, self._rows, self._cols)
        inverse_scale = inverse_scale - beta[..., None, None] * loc.unsqueeze(-1) * loc.unsqueeze(
            -2
        )
        chol, info = torch.linalg.cholesky_ex(inverse_scale)
        if bool((beta <= 0).any() | (df <= d - 1).any()) or bool(info.any()):
            raise self._improper("β ≤ 0, ν ≤ D − 1 or a scale not positive definite")
        logdet_scale = -2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # W = (chol cholᵀ)⁻¹
        return NormalWishart(loc, beta, torch.cholesky_inverse(chol), df, logdet_scale)


class NormalGamma:
    """q(μ, τ) = N(μ | m, (τP)⁻¹) Gamma(τ | a, b), batched, μ a D-vector (D = 1 for a scalar
    mean site); the joint factor of a mean and its scalar precision (Bishop 2006, eq. 2.154
    for D = 1; §3.3 and Murphy 2007 for the D-vector form of Bayesian linear regression).

    Attributes: loc m [*batch, D], precision P [*batch, D, D] (relative to τ), concentration
    a and rate b [*batch]; ``scalar``: whether the mean site is scalar; ``precision_event``:
    whether the precision site holds τ as a vector of one element, [*batch, 1] (a Gamma
    ``.to_event(1)`` of one coordinate: a group's τ of shape (G, 1) that AutoCAVI took as an
    event beside slopes declared in a features plate, see :mod:`~pyro_vae.cavi.plate_events`).
    """

    def __init__(self, loc, precision, concentration, rate, scalar: bool,
                 precision_event: bool = False) -> None:  # fmt: skip
        self.loc, self.precision = loc, precision
        self.concentration, self.rate, self.scalar = concentration, rate, scalar
        self.precision_event = precision_event

    def entropy(self) -> torch.Tensor:
        """H = H[Gamma(a, b)] + D/2 (1 + log 2π) − ½ log|P| − D/2 E log τ (nats)."""
        d = self.loc.shape[-1]
        a, b = self.concentration, self.rate
        return (
            dist.Gamma(a, b, validate_args=False).entropy()
            + d / 2 * (1 + math.log(2 * math.pi))
            - 0.5 * torch.linalg.slogdet(self.precision)[1]
            - d / 2 * (torch.digamma(a) - b.log())
        )

    def precision_distribution(self) -> torch.distributions.Distribution:
        """q(τ) = Gamma(a, b), shaped as the precision site is (``.to_event(1)`` over a
        vector of one element where ``precision_event``)."""
        if self.precision_event:
            return dist.Gamma(self.concentration[..., None], self.rate[..., None]).to_event(1)
        return dist.Gamma(self.concentration, self.rate)

    def mean_given(self, tau: torch.Tensor):
        """q(μ | τ) = N(m, (τP)⁻¹) for a draw ``tau`` [*draws, *batch] (a Normal for a
        scalar mean site), shaped as the precision site is ([*draws, *batch, 1] where
        ``precision_event``)."""
        if self.precision_event:
            tau = tau.squeeze(-1)
        if self.scalar:
            return dist.Normal(self.loc[..., 0], (tau * self.precision[..., 0, 0]).rsqrt())
        precision = tau[..., None, None] * self.precision
        return dist.MultivariateNormal(self.loc, precision_matrix=precision)

    def marginals(self) -> tuple[torch.distributions.Distribution, ...]:
        """q(μ), a Student-t with 2a degrees of freedom, location m and scale matrix
        (b/a) P⁻¹ (univariate for a scalar mean site), and q(τ) = Gamma(a, b) (shaped as
        the precision site is, see :meth:`precision_distribution`)."""
        a, b = self.concentration, self.rate
        gamma = dist.Gamma(a, b, validate_args=False)
        if self.precision_event:
            gamma = dist.Gamma(a[..., None], b[..., None], validate_args=False).to_event(1)
        if self.scalar:
            scale = (b / (a * self.precision[..., 0, 0])).sqrt()
            return dist.StudentT(2 * a, self.loc[..., 0], scale, validate_args=False), gamma
        covariance = (b / a)[..., None, None] * torch.linalg.inv(self.precision)
        student = dist.MultivariateStudentT(2 * a, self.loc, torch.linalg.cholesky(covariance))
        return student, gamma


class NormalGammaFamily(Family):
    """The block (μ, τ) of a Normal mean (scalar, or a ``.to_event(1)``/MultivariateNormal
    D-vector) and its scalar Gamma precision, updated jointly:
    T = (1, τ, log τ, τμ_i, τμ_iμ_j for i ≤ j). ``precision_event``: τ's site is a Gamma
    ``.to_event(1)`` of one element, its values [*batch, 1] (see :class:`NormalGamma`)."""

    name = "Normal-Gamma"

    def __init__(self, mean_site: str, precision_site: str, d: int, scalar: bool,
                 precision_event: bool = False) -> None:  # fmt: skip
        super().__init__(f"{mean_site}+{precision_site}", torch.Size([d]))
        self.sites, self.d, self.scalar = (mean_site, precision_site), d, scalar
        self.precision_event = precision_event
        self._rows, self._cols = torch.triu_indices(d, d)

    def statistic_names(self):
        pairs = [f"tau mu{int(i)} mu{int(j)}" for i, j in zip(self._rows, self._cols, strict=True)]
        return ["1", "tau", "log tau"] + [f"tau mu{i}" for i in range(self.d)] + pairs

    def precision_columns(self) -> torch.Tensor:
        """The statistics of τ alone, (1, τ, log τ) (see NormalWishartFamily's)."""
        return torch.arange(3)

    def statistics(self, mu, tau):
        mu, tau = mu.to(_F64), tau.to(_F64)
        tau = tau if self.precision_event else tau.unsqueeze(-1)
        if self.scalar:
            mu = mu.unsqueeze(-1)
        outer = mu[..., self._rows] * mu[..., self._cols]
        return torch.cat([torch.ones_like(tau), tau, tau.log(), tau * mu, tau * outer], -1)

    def probe(self, batch_shape, generator):
        mu = torch.randn(batch_shape + self.event_shape, generator=generator, dtype=_F64)
        tau = torch.randn(batch_shape, generator=generator, dtype=_F64).mul(0.7).exp()
        return (mu[..., 0] if self.scalar else mu), (
            tau[..., None] if self.precision_event else tau
        )

    def expected_statistics(self, q):
        if isinstance(q, tuple):  # a point (μ, τ): its statistics
            return self.statistics(*q)
        a, b = q.concentration, q.rate
        mean_tau = (a / b).unsqueeze(-1)
        log_tau = (torch.digamma(a) - b.log()).unsqueeze(-1)
        # E[τ μ μᵀ] = E_τ[τ ((τP)⁻¹ + m mᵀ)] = P⁻¹ + E[τ] m mᵀ
        second = torch.linalg.inv(q.precision) + mean_tau.unsqueeze(-1) * (
            q.loc.unsqueeze(-1) * q.loc.unsqueeze(-2)
        )
        parts = [torch.ones_like(mean_tau), mean_tau, log_tau, mean_tau * q.loc]
        return torch.cat(parts + [second[..., self._rows, self._cols]], -1)

    def neutral_eta(self, batch_shape):  # N(0, (τI)⁻¹) Gamma(1, 1)
        eta = self._diagonal_pairs(super().neutral_eta(batch_shape), 2 + self.d, -0.5)
        eta[..., 0], eta[..., 1] = -1.0, self.d / 2
        return eta

    def distribution(self, eta):
        d = self.d
        precision = _symmetric_from_triu(eta[..., 2 + d :], d, self._rows, self._cols)
        chol, info = torch.linalg.cholesky_ex(precision)
        if bool(info.any()):
            raise self._improper("a precision of μ (relative to τ) not positive definite")
        loc = torch.cholesky_solve(eta[..., 2 : 2 + d].unsqueeze(-1), chol).squeeze(-1)
        concentration = eta[..., 1] + 1 - d / 2
        quad = (loc * eta[..., 2 : 2 + d]).sum(-1)  # mᵀPm
        rate = -eta[..., 0] - 0.5 * quad
        if bool((concentration <= 0).any() | (rate <= 0).any()):
            raise self._improper("a Gamma shape or rate of τ that is not positive")
        return NormalGamma(loc, precision, concentration, rate, self.scalar, self.precision_event)


def unwrapped(fn):
    """``fn`` without its ``.to_event`` and ``.mask`` wrappers (a mask is read apart, as
    which elements are present: see ``latent_units.find_latents``)."""
    while isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _named(fn) -> str:
    """A distribution's class, through its ``.to_event`` and ``.mask`` wrappers: "Normal
    (.to_event(1))" for a plated Normal AutoCAVI took as one vector (tester AU: a refused
    block named it "Independent")."""
    base = unwrapped(fn)
    events = len(fn.event_shape) - len(base.event_shape)
    return type(base).__name__ + (f" (.to_event({events}))" if events else "")


def block_family(mean_site: dict, precision_site: dict) -> Family:
    """The joint family of a (mean, precision) block, or ``NotConjugateError``."""
    mean_fn, precision_fn = mean_site["fn"], unwrapped(precision_site["fn"])
    d = mean_fn.event_shape[-1] if len(mean_fn.event_shape) == 1 else 0
    mean_fn = unwrapped(mean_fn)
    if (
        isinstance(mean_fn, (dist.Normal, dist.MultivariateNormal))
        and type(precision_fn) is dist.Wishart
        and precision_fn.event_shape == (d, d)
    ):
        return NormalWishartFamily(mean_site["name"], precision_site["name"], d)
    scalar = not mean_fn.event_shape and not mean_site["fn"].event_shape
    # not a Gamma over a vector's coordinates, but one of a single coordinate may be: a
    # group's τ (G, 1) taken as an event beside slopes in a features plate (tester AT)
    precision_event = tuple(precision_site["fn"].event_shape) == (1,)
    if (
        isinstance(mean_fn, (dist.Normal, dist.MultivariateNormal))
        and (scalar or d)
        and type(precision_fn) is dist.Gamma
        and (not precision_site["fn"].event_shape or precision_event)
    ):
        name = mean_site["name"], precision_site["name"]
        return NormalGammaFamily(*name, 1 if scalar else d, scalar, precision_event)
    swapped = isinstance(unwrapped(mean_site["fn"]), (dist.Gamma, dist.Wishart)) and isinstance(
        unwrapped(precision_site["fn"]), (dist.Normal, dist.MultivariateNormal)
    )
    raise NotConjugateError(
        f"blocks: ({mean_site['name']!r}, {precision_site['name']!r}) are "
        f"({_named(mean_site['fn'])}, {_named(precision_site['fn'])}); expected "
        "a vector Normal or MultivariateNormal mean and a Wishart precision of the same D "
        "(Normal-Wishart), or a scalar or vector Normal mean and a scalar Gamma precision "
        "(Normal-Gamma)"
        + (
            f": the mean comes first, ({precision_site['name']!r}, {mean_site['name']!r})"
            if swapped
            else ""
        )
    )


def _imputation_advice(observed: str, family: str) -> str:
    """The way out for ``obs_mask``'s imputed entries of ``observed``, data of a family no
    latent takes (Poisson counts: tester 37's F3, refused even with nothing missing)."""
    return (
        f"; it holds obs_mask's imputed entries of {observed!r} (Pyro's missing-data idiom), "
        f"and AutoCAVI imputes only data of the families above. For {family} data, leave "
        f"the missing entries out instead: pyro.sample({observed!r}, fn.mask(observed), "
        "obs=y) with any value of the support at the missing places (0 for counts). The "
        "posterior of every other latent is the same (the entries are missing at random), "
        "and the bound is on log p(y observed), as tight as imputing them or tighter"
    )


def family_of(site: dict) -> Family:
    """The family of a latent Pyro sample site, from its prior's distribution class, or
    ``NotConjugateError`` naming the site and the distribution."""
    fn, name = unwrapped(site["fn"]), site["name"]
    event_shape = site["fn"].event_shape
    if isinstance(fn, dist.Normal) and len(event_shape) <= 1:
        return NormalFamily(name, event_shape)
    if isinstance(fn, dist.MultivariateNormal):
        return NormalFamily(name, event_shape)
    if type(fn) in GAMMA_PRIORS and not event_shape:
        return GammaFamily(name, event_shape)
    if type(fn) in GAMMA_PRIORS and len(event_shape) == 1 and fn.batch_shape[-1:] == event_shape:
        return GammaVectorFamily(name, event_shape)
    simple = {dist.Beta: BetaFamily, dist.Bernoulli: BernoulliFamily}
    for cls, family in simple.items():
        if type(fn) is cls and not event_shape:
            return family(name, event_shape)
    if type(fn) is dist.Wishart:
        return WishartFamily(name, event_shape)
    if type(fn) is dist.Dirichlet and len(event_shape) == 1:
        return DirichletFamily(name, event_shape)
    if type(fn) is dist.Categorical and not event_shape:
        return CategoricalFamily(name, event_shape, fn.probs.shape[-1])
    support = getattr(fn, "support", constraints.real)
    known = (dist.Normal, dist.Beta, dist.Bernoulli, dist.Dirichlet, dist.Categorical,
             dist.Wishart, dist.MultivariateNormal, *GAMMA_PRIORS)  # fmt: skip
    imputed = name.endswith("_unobserved") and site.get("mask") is not None  # obs_mask's
    if imputed and not isinstance(fn, known):
        advice = _imputation_advice(name[: -len("_unobserved")], type(fn).__name__)
    elif isinstance(fn, known):  # a known family with more event dims (.to_event(n))
        advice = (
            f"; it is a {type(fn).__name__} with event dims added by .to_event: declare its "
            "independent elements with pyro.plate instead (e.g. a transition matrix's rows "
            "under pyro.plate('rows', K)), or make a Normal one .to_event(1) vector"
        )
        base = getattr(fn, "base_dist", fn)
        if type(base) in GAMMA_PRIORS:
            advice += (
                ", or one vector of independent Gammas, .to_event(1) over the last dim "
                "(ARD precisions α_d over a weight vector's coordinates)"
            )
        elif not isinstance(base, (dist.Normal, dist.MultivariateNormal, dist.Dirichlet)):
            # a Dirichlet .to_event is a matrix of rows, for a plate (tester 23: a Pyro HMM's
            # transition matrix was sent to SVI as well)
            base_name = type(base).__name__
            advice += (
                f". A factor that reads every element of a plated {base_name} at once is not "
                f"fitted in closed form either: for that, declare one scalar {base_name} site "
                f"per element ({name}_0, {name}_1, …), which fits where the factor is "
                f"multilinear in them, or leave {name!r} to SVI with "
                f"pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[{name!r}])"
            )
    elif isinstance(fn, dist.InverseGamma):
        advice = (
            "; a variance σ² ~ InverseGamma(a, b) is a precision λ = 1/σ² ~ Gamma(a, b): "
            f"sample the precision instead, {name}_precision = pyro.sample(..., "
            "dist.Gamma(a, b)), and use scale = precision.rsqrt(), which fits"
        )
    else:
        advice = "; or leave this site to SVI with pyro_vae.cavi.ConditionalCAVIGuide"
    raise NotConjugateError(
        f"latent site {name!r}: {described(site['fn'])} (event shape "
        f"{tuple(event_shape)}, support {support}) is not a family AutoCAVI updates in closed "
        "form; expected Normal (scalar or .to_event(1)), MultivariateNormal, Gamma (or "
        "Chi2, Exponential; scalar or .to_event(1)), Beta, Dirichlet, Wishart, Bernoulli or "
        "Categorical" + advice
    )
