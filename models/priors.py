"""Learned priors p(z) for the VAE: a mixture of Gaussians and the VampPrior.

Both are mixtures, built from Pyro's ``MixtureSameFamily`` (torch's), whose ``log_prob``
is log Σ_k π_k p_k(z) by log-sum-exp and whose ``sample`` draws a component, then a code:

- :class:`GaussianMixturePrior`: p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), with free μ_k,
  log σ_k and mixture logits (the "MoG prior" Tomczak & Welling 2018 compare with, §2.2);
- :class:`VampPrior`: p(z) = (1/K) Σ_k q(z | u_k), the variational mixture of posteriors
  (Tomczak & Welling 2018, eq. 9), with K learned pseudo-inputs u_k in data space passed
  through the guide's encoder. The prior is then a function of the encoder's weights, so
  gradients of log p(z) reach both the pseudo-inputs and the encoder.

Neither has a closed-form KL(q ‖ p): Pyro's ``TraceMeanField_ELBO`` (``analytic-kl``)
falls back to the Monte Carlo log p(z) − log q(z | x) for them, as it does for any pair
without a registered ``kl_divergence``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.checks import check_count


class GaussianMixturePrior(nn.Module):
    """p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), K = ``components``, every part learned.

    Started at μ_k ~ N(0, I) (drawn from torch's global stream), σ_k = 1 and equal
    weights, so the initial prior is spread around the standard Normal's mass.

    Args:
        latent_dim: size of z (D).
        components: number of mixture components K.

    Raises:
        ValueError: ``components`` or ``latent_dim`` is not a positive integer.
    """

    #: No Python branching on tensor values (``pyro_vae.estimators.compiled``): a model
    #: holding it records exactly, as ``tests/models/test_vae.py`` checks bit for bit.
    recordable = True

    def __init__(self, latent_dim: int, components: int = 10) -> None:
        super().__init__()
        check_count("latent_dim", latent_dim, 1)
        check_count("prior_components", components, 1)
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.MixtureSameFamily:
        """The mixture with batch shape ``batch_shape`` and event shape ``[latent_dim]``."""
        k, d = self.loc.shape
        shape = tuple(batch_shape)
        mixing = dist.Categorical(logits=self.logits.expand(*shape, k))
        components = dist.Normal(
            self.loc.expand(*shape, k, d), self.log_scale.exp().expand(*shape, k, d)
        ).to_event(1)
        return dist.MixtureSameFamily(mixing, components)


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q(z | u_k): the encoder's posteriors at K learned pseudo-inputs
    (Tomczak & Welling 2018, "VAE with a VampPrior", eq. 9).

    The pseudo-inputs are u_k = hardtanh(w_k) clipped to the data's range [0,
    ``data_max``], as in the authors' implementation (a "pseudo-input layer" with a
    hardtanh); w_k starts uniform on [0, ``data_max``] per pixel (random images over the
    data's range; the authors draw w from a narrow Normal or from training images). A
    pixel pushed outside the range stops receiving gradient there, as in theirs. Data
    without bounds (a table's standardized columns, ``data_max=None``) leave u_k = w_k
    unclipped, starting N(0, 1) per column (tester EL: clipped to [0, 1], a third of a
    standardized table's pseudo-input coordinates sat at 0, pushed below it).

    ``encoder`` is held, not owned: it is the guide the model is paired with, whose weights
    live (and are saved) with the guide; the pseudo-inputs live with the prior. Its
    ``encode(x)`` must give q(z | x) for the rows of ``x`` ``[K, x_dim]``: a distribution
    with batch shape ``[K, latent_dim]`` and no event shape (a diagonal Normal, which is
    made one event) or batch shape ``[K]`` and event shape ``[latent_dim]``.

    Args:
        encoder: the guide whose ``encode`` defines q(z | x).
        x_dim: number of input features D of the encoder.
        components: number of pseudo-inputs K.
        data_max: largest data value (1 for binary or [0, 1] pixels, L − 1 for L levels),
            or ``None`` for data on the whole real line (standardized columns).

    Raises:
        ValueError: a count is not a positive integer, ``data_max`` not positive, or the
            encoder has no ``encode(x)``.
    """

    #: No Python branching on tensor values (``pyro_vae.estimators.compiled``): a model
    #: holding it records exactly, as ``tests/models/test_vae.py`` checks bit for bit.
    recordable = True

    def __init__(self, encoder, x_dim: int, components: int = 50, data_max: float | None = 1.0):
        super().__init__()
        check_count("x_dim", x_dim, 1)
        check_count("prior_components", components, 1)
        if data_max is not None and not data_max > 0:
            raise ValueError(f"data_max: {data_max!r}; expected a positive number")
        if not callable(getattr(encoder, "encode", None)):
            raise ValueError(
                f"encoder: {type(encoder).__name__} has no encode(x); the VampPrior needs "
                "the guide's q(z | x)"
            )
        # Held outside torch's module registry: registering it would make the guide's
        # weights the model's too (saved twice, optimized twice, renamed in Pyro's store).
        self._held = (encoder,)
        self.data_max = None if data_max is None else float(data_max)
        start = (
            torch.randn(components, x_dim)
            if self.data_max is None
            else torch.rand(components, x_dim) * self.data_max
        )
        self.pseudo_input_weights = nn.Parameter(start)
        # the range u_k is clipped to, kept with the weights: a run saved before it was
        # kept is read with the range it was trained with (_load_from_state_dict)
        bounds = (-math.inf, math.inf) if self.data_max is None else (0.0, self.data_max)
        self.register_buffer("data_range", torch.tensor(bounds))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Weights saved before the range was kept with them (tester EN): those of data
        without bounds were trained clipped to [0, 1], as every VampPrior was then, and
        are read so, in an evaluation and in a resume alike (as ``BatchNorm`` reads a
        checkpoint without ``num_batches_tracked``)."""
        key = prefix + "data_range"
        if key not in state_dict:
            bounded = bool(torch.isfinite(self.data_range).all())
            state_dict[key] = self.data_range.clone() if bounded else torch.tensor([0.0, 1.0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def encoder(self):
        """The guide whose ``encode`` this prior uses."""
        return self._held[0]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u_k = hardtanh(w_k) on [0, ``data_max``] (w_k itself for unbounded data):
        ``[K, x_dim]``, data units."""
        low, high = self.data_range
        return self.pseudo_input_weights.clamp(low, high)

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.MixtureSameFamily:
        """The mixture with batch shape ``batch_shape`` and event shape ``[latent_dim]``."""
        q = self.encoder.encode(self.pseudo_inputs)
        if len(q.event_shape) == 0:
            q = q.to_event(1)
        k = self.pseudo_input_weights.shape[0]
        shape = tuple(batch_shape)
        mixing = dist.Categorical(logits=self.pseudo_input_weights.new_zeros(*shape, k))
        return dist.MixtureSameFamily(mixing, q.expand(torch.Size(shape) + q.batch_shape))


PRIORS = ("normal", "mog", "vamp")
