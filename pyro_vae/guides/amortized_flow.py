"""Amortized normalizing-flow guides: a diagonal Gaussian pushed through conditional flows.

    z₀ = μ_λ(x) + σ_λ(x) ⊙ ε,  ε ~ N(0, I)
    z_t = f_t(z_{t−1}; h_λ(x)),  t = 1..T
    log q_λ(z_T | x) = log N(z₀; μ_λ(x), diag σ_λ(x)²) − Σ_t log |det ∂f_t / ∂z_{t−1}|

The encoder trunk φ(x; λ) gives μ, log σ through linear heads and the context
h_λ(x) = φ(x; λ) on which every flow step is conditioned (Rezende & Mohamed 2015 for
flows in variational inference; Kingma et al. 2016 for the encoder's context). The flow
steps are Pyro's conditional transforms (``pyro.distributions.transforms``), made by a
subclass's :meth:`AmortizedFlow.make_transform`; consecutive steps reverse the order of the
autoregressive conditioning, as Kingma et al. do. Samples are reparameterized, and the
density of a sample the guide drew is read from the transforms' cache, so no flow is
inverted during training.

A flow has no closed-form mean: ``encode(x).mean`` raises ``NotImplementedError``, and
figures and metrics that need E_q[z | x] use a Monte Carlo mean of the guide's draws
(:func:`pyro_vae.latent_summaries.latent_means`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.checks import check_count
from pyro_vae.convnets import default_activation
from pyro_vae.guides.gaussian_encoder import add_gaussian_encoder, check_sizes
from pyro_vae.nn import layer_widths
from pyro_vae.plate_declaration import data_plate


class AmortizedFlow(PyroModule):
    """q_λ(z | x): an amortized diagonal Normal followed by ``num_flows`` conditional flow
    steps, each given the encoder's context h_λ(x). Subclasses say which step
    (:meth:`make_transform`).

    Args:
        x_dim: number of input features D.
        latent_dim: size of z.
        hidden_dims: widths of the encoder trunk φ; its last width is the context size.
        activation: nonlinearity of the trunk (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        site: name of the latent sample site in the model.
        num_flows: number of flow steps T (default 2).
        flow_hidden_dims: widths of each step's autoregressive network (default
            ``(10 * latent_dim,)``, Pyro's own default); each at least ``latent_dim``.
        arch: ``"mlp"`` (the trunk above) or ``"conv"``: stride-2 convolutions of widths
            ``channels`` on the ``image_shape`` images, then the ``hidden_dims`` MLP
            (:func:`pyro_vae.convnets.encoder_trunk`).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``; needed by ``arch="conv"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``).

    Raises:
        ValueError: ``num_flows`` is not a positive integer, or a width of
            ``flow_hidden_dims`` is not a positive integer ≥ ``latent_dim``.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values in the base and the encoder; a subclass
    #: declares it again for its own steps (a declaration is not inherited), as
    #: :class:`~pyro_vae.guides.AmortizedIAF` and :class:`~pyro_vae.guides.AmortizedSplineFlow`
    #: do, each tested.
    recordable = True

    #: With ``gradient="stl"`` or ``"dreg"`` a draw is scored under detached parameters,
    #: which runs the flow's inverse; Pyro's reads values out of tensors, so such a step
    #: is not recorded by ``--compile auto`` (:func:`~pyro_vae.estimators.compiled.should_record`).
    path_gradients_recordable = False

    @staticmethod
    def default_flow_hidden_dims(latent_dim: int) -> tuple[int, ...]:
        """``flow_hidden_dims`` left unset: one layer of 10·``latent_dim`` (what a resume
        compares a given value with)."""
        return (10 * latent_dim,)

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str | None = None,
        site: str = "z",
        num_flows: int = 2,
        flow_hidden_dims: Sequence[int] | None = None,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        check_sizes(x_dim, latent_dim)  # before the default flow widths read latent_dim
        activation = default_activation(arch, activation)
        check_count("num_flows", num_flows, 1, "; AmortizedNormal is the guide without flows")
        if flow_hidden_dims is None:
            flow_hidden_dims = self.default_flow_hidden_dims(latent_dim)
        flow_hidden_dims = layer_widths(flow_hidden_dims, "flow_hidden_dims")  # 16 is (16,)
        if not flow_hidden_dims or min(flow_hidden_dims) < latent_dim:
            raise ValueError(
                f"flow_hidden_dims: {tuple(flow_hidden_dims)}; expected at least one width, each ≥ "
                f"latent_dim = {latent_dim} (an autoregressive network needs it)"
            )
        super().__init__(name="guide")
        self.num_flows, self.flow_hidden_dims = num_flows, tuple(flow_hidden_dims)
        width = add_gaussian_encoder(
            self, x_dim, latent_dim, site, hidden_dims, activation, arch, image_shape, channels
        )
        self.flows = nn.ModuleList(self.make_transform(width, t) for t in range(num_flows))

    def make_transform(self, context_dim: int, index: int) -> dist.ConditionalTransformModule:
        """Flow step ``index`` (0-based): a Pyro conditional transform of ``latent_dim``
        coordinates given a context of ``context_dim``."""
        raise NotImplementedError(f"{type(self).__name__} does not say which flow step to use")

    def order(self, index: int) -> torch.Tensor:
        """The autoregressive order of step ``index``: 0..latent_dim−1, reversed on every
        other step, so each coordinate is conditioned on every other one within two steps."""
        order = torch.arange(self.latent_dim)
        return order if index % 2 == 0 else order.flip(0)

    def encode(self, x: torch.Tensor) -> dist.TransformedDistribution:
        """q_λ(z | x) for each row of ``x``: batch shape ``[N]``, event shape
        ``[latent_dim]``, with ``rsample`` and ``log_prob``; no closed-form ``mean``."""
        h = self.trunk(x)
        base = dist.Normal(self.loc_head(h), torch.exp(self.log_scale_head(h))).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(h) for flow in self.flows])

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data):
            return pyro.sample(self.site, self.encode(x))
