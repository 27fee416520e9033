"""Observation models p(x | z) for images, parameterized by a decoder network's output.

Each likelihood maps the decoder output ``h`` (``[..., out_features]``) to a distribution
over a flattened image ``x`` (``[..., D]``, event dimension 1):

- ``bernoulli``: x_d ~ Bernoulli(sigmoid(h_d)), for binarized pixels.
- ``gaussian``: x_d ~ N(sigmoid(h_d), s_d^2), for intensities in [0, 1]; the per-pixel
  scale s_d = s_min + softplus(h_{D+d}) is decoded too, floored at ``s_min`` so the density
  stays bounded on pixels that are always 0.
- ``categorical``: x_d ~ Categorical(softmax(h_{d,1..L})) over L quantized pixel levels:
  the lecture's softmax likelihood Pr(x | z) = softmax(w φ(z)) (Rush, CS281 lecture 18).
- ``normal``: x_d ~ N(h_d, s_d^2), the Gaussian with an unbounded mean, for real-valued
  data such as standardized table columns (``gaussian``'s sigmoid mean cannot reach
  values outside (0, 1)); the scale as ``gaussian``'s.
- ``continuous-bernoulli``: x_d ~ CB(sigmoid(h_d)), the continuous Bernoulli density on
  [0, 1], p(x | λ) = C(λ) λ^x (1 − λ)^(1−x) with C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ)
  (Loaiza-Ganem & Cunningham 2019), for grey-level intensities without binarizing them:
  the Bernoulli's log-probability on such pixels lacks log C(λ) and is no density on
  [0, 1]. Torch's ``ContinuousBernoulli``, its density, mean and draws computed from the
  logit (:class:`LogitContinuousBernoulli`); its mean is not λ but
  λ / (2λ − 1) + 1 / (2 artanh(1 − 2λ)).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_vae.pyro_compat import validate_sample, validates_args

LIKELIHOODS = ("bernoulli", "gaussian", "categorical", "normal", "continuous-bernoulli")


class Likelihood:
    """A family p(x | h) over flattened images with D pixels."""

    name: str

    def __init__(self, x_dim: int) -> None:
        self.x_dim = x_dim

    @property
    def out_features(self) -> int:
        """Width of the decoder output this likelihood reads."""
        return self.x_dim

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        """p(x | h), with event shape ``[D]``."""
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """E[x | h], in the units of x."""
        raise NotImplementedError

    def check_data(self, x: torch.Tensor, arg: str = "x") -> None:
        """Raise ``ValueError`` naming ``arg`` unless ``x`` is ``[N, D]`` data in the support."""
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(
                f"{arg}: shape {tuple(x.shape)} does not match the model; expected "
                f"[N, {self.x_dim}] flattened images"
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{arg}: {bad} entries are NaN or infinite; expected finite pixels")


class Bernoulli(Likelihood):
    name = "bernoulli"

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliImage(dist.Bernoulli(logits=h), 1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)

    def check_data(self, x: torch.Tensor, arg: str = "x") -> None:
        super().check_data(x, arg)
        if not ((x == 0) | (x == 1)).all():
            values = torch.unique(x)[:5].tolist()
            raise ValueError(
                f"{arg}: Bernoulli likelihood needs binary pixels in {{0, 1}}, got values such "
                f"as {values}; binarize the data (static or dynamic) or use the gaussian likelihood"
            )


class BernoulliImage(dist.Independent):
    """``dist.Bernoulli(logits=ℓ).to_event(1)`` with the pixel sum taken in two passes.

    log p(x | ℓ) = Σ_d x_d ℓ_d − softplus(ℓ_d). Torch's ``Bernoulli.log_prob`` broadcasts x
    to the logits' shape and calls ``binary_cross_entropy_with_logits``, which materializes
    1 − x, a log-sigmoid and a negation over every element before the sum; with K
    particles per image that elementwise work costs as much as the decoder's matrix product
    (``benchmarks/RESULTS.md``). Here Σ_d x_d ℓ_d is a contraction over pixels and
    softplus(ℓ) one pass. Same density (to float32 rounding), samples, mean and support.
    Build it as ``BernoulliImage(dist.Bernoulli(logits=ℓ), 1)``.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.reinterpreted_batch_ndims != 1:
            raise ValueError(
                f"reinterpreted_batch_ndims: {self.reinterpreted_batch_ndims}; BernoulliImage "
                "sums exactly one pixel dimension"
            )
        if validates_args(self):
            validate_sample(self.base_dist, value)
        logits = self.base_dist.logits
        return _sum_of_products(logits, value) - F.softplus(logits).sum(-1)


def _sum_of_products(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_d ℓ_d x_d over the last dimension, broadcasting; one contraction when ``x`` is a
    batch of images ``[B, D]`` and ``logits`` is ``[K, ..., B, D]`` (particles in front),
    a product and a sum (two small kernels) otherwise."""
    if x.dim() == 2 and logits.dim() > 2 and logits.shape[-2:] == x.shape:
        flat = logits.reshape(-1, *x.shape)
        return torch.einsum("kbd,bd->kb", flat, x.to(logits.dtype)).reshape(logits.shape[:-1])
    return (logits * x).sum(-1)


class Gaussian(Likelihood):
    name = "gaussian"

    def __init__(self, x_dim: int, min_scale: float = 0.05) -> None:
        super().__init__(x_dim)
        self.min_scale = min_scale

    @property
    def out_features(self) -> int:
        return 2 * self.x_dim

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc_h, scale_h = h.split(self.x_dim, dim=-1)
        scale = self.min_scale + F.softplus(scale_h)
        return dist.Normal(torch.sigmoid(loc_h), scale).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h[..., : self.x_dim])


class Normal(Gaussian):
    """N(h, s²) per coordinate: :class:`Gaussian` without the sigmoid on the mean, for
    real-valued data (standardized table columns), whose values the sigmoid cannot reach."""

    name = "normal"

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, scale_h = h.split(self.x_dim, dim=-1)
        return dist.Normal(loc, self.min_scale + F.softplus(scale_h)).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return h[..., : self.x_dim]


class ContinuousBernoulli(Likelihood):
    """CB(sigmoid(h_d)) per pixel, on intensities in [0, 1] (module docstring)."""

    name = "continuous-bernoulli"

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        return LogitContinuousBernoulli(logits=h).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return LogitContinuousBernoulli(logits=h).mean

    def check_data(self, x: torch.Tensor, arg: str = "x") -> None:
        super().check_data(x, arg)
        if not ((x >= 0) & (x <= 1)).all():
            raise ValueError(
                f"{arg}: continuous Bernoulli likelihood needs intensities in [0, 1], got "
                f"values from {x.min().item():g} to {x.max().item():g}"
            )


class LogitContinuousBernoulli(dist.ContinuousBernoulli):
    """Torch's ``ContinuousBernoulli`` with its log-density, mean and inverse CDF computed
    from the logit h, not from λ = sigmoid(h): torch clamps λ to [ε, 1 − ε] before its
    normalizer, so past |h| ≈ 16 in float32 (36 in float64) log C(λ) stopped growing while
    the Bernoulli part went on, the density no longer integrated to 1 (0.53 at h = ±30),
    the mean stuck at 0.0627 and 0.9373, and a digits VAE, 19% of whose logits were past
    16, scored 2.6 nats per image too low (tester EW). With 2λ − 1 = tanh(h/2):
    C = h / tanh(h/2), E[x] = 1/2 + 1/(2 tanh(h/2)) − 1/h, and F⁻¹(u) = log1p(u (exp(h) − 1))/h,
    each with its Taylor series near h = 0."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if validates_args(self):
            validate_sample(self, value)
        h, value = torch.broadcast_tensors(self.logits, value.to(self.logits.dtype))
        return value * h - F.softplus(h) + _log_normalizer(h)

    @property
    def mean(self) -> torch.Tensor:
        h = self.logits
        small, safe = _near_zero(h, 0.1)
        far = 0.5 + 0.5 / torch.tanh(safe / 2) - 1 / safe
        return torch.where(small, 0.5 + h / 12 - h**3 / 720, far)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        h = self.logits
        small, safe = _near_zero(h, 1e-3)
        # log1p(u expm1(h)) for h < 0; h + log(u + (1 − u) e⁻ʰ) for h > 0 (no overflow)
        below = torch.log1p(value * torch.expm1(torch.clamp(safe, max=0.0)))
        above = safe + torch.log(value + (1 - value) * torch.exp(-torch.clamp(safe, min=0.0)))
        far = torch.where(safe < 0, below, above) / safe
        return torch.where(small, value + h * value * (1 - value) / 2, far)


def _near_zero(h: torch.Tensor, within: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(where |h| < ``within``, h with 1 there): the closed forms run on the second, whose
    values there give way to the series, so neither they nor their gradients are 0/0."""
    small = h.abs() < within
    return small, torch.where(small, torch.ones_like(h), h)


def _log_normalizer(h: torch.Tensor) -> torch.Tensor:
    """log C = log(h / tanh(h/2)), log 2 + h²/12 − 7h⁴/1440 near 0 (its series)."""
    small, safe = _near_zero(h, 1e-3)
    far = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
    return torch.where(small, math.log(2.0) + h**2 / 12 - 7 * h**4 / 1440, far)


class Categorical(Likelihood):
    name = "categorical"

    def __init__(self, x_dim: int, levels: int) -> None:
        super().__init__(x_dim)
        if levels < 2:
            raise ValueError(f"levels: {levels} is fewer than the 2 a categorical needs")
        self.levels = levels

    @property
    def out_features(self) -> int:
        return self.x_dim * self.levels

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(*h.shape[:-1], self.x_dim, self.levels)

    def distribution(self, h: torch.Tensor) -> dist.TorchDistribution:
        return _LevelCategorical(logits=self._logits(h)).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self._logits(h), dim=-1)
        return probs @ torch.arange(self.levels, dtype=probs.dtype, device=probs.device)

    def check_data(self, x: torch.Tensor, arg: str = "x") -> None:
        super().check_data(x, arg)
        if not ((x == x.round()) & (x >= 0) & (x < self.levels)).all():
            raise ValueError(
                f"{arg}: categorical likelihood needs integer levels 0..{self.levels - 1}, got "
                f"values from {x.min().item()} to {x.max().item()}"
            )


class _LevelCategorical(dist.Categorical):
    """A Categorical that scores float-typed integer levels, so x can stay one float tensor."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value.long())


def make_likelihood(name: str, x_dim: int, levels: int | None = None) -> Likelihood:
    """The likelihood called ``name`` over ``x_dim`` pixels (``levels`` for categorical)."""
    if name == "bernoulli":
        return Bernoulli(x_dim)
    if name == "gaussian":
        return Gaussian(x_dim)
    if name == "normal":
        return Normal(x_dim)
    if name == "continuous-bernoulli":
        return ContinuousBernoulli(x_dim)
    if name == "categorical":
        if levels is None:
            raise ValueError("levels: categorical likelihood needs the number of pixel levels")
        return Categorical(x_dim, levels)
    raise ValueError(f"likelihood: {name!r} is not one of {', '.join(LIKELIHOODS)}")


def check_observations(model, x: torch.Tensor, arg: str = "x") -> None:
    """Raise ``ValueError`` naming ``arg`` if ``x`` cannot be observed by ``model``.

    Uses the model's ``likelihood`` when it has one of this module's; otherwise checks
    only that ``x`` is a finite ``[N, ...]`` tensor.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"{arg}: expected a tensor with a leading data dimension, got {x!r:.80}")
    likelihood = getattr(model, "likelihood", None)
    if isinstance(likelihood, Likelihood):
        likelihood.check_data(x, arg)
    elif not torch.isfinite(x).all():
        raise ValueError(f"{arg}: holds NaN or infinite entries; expected finite data")
