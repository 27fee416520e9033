"""The amortized inverse autoregressive flow guide (Kingma et al. 2016).

    z₀ = μ₀(x) + σ₀(x) ⊙ ε,  ε ~ N(0, I)
    [m_t, s_t] = AutoregressiveNN_t(z_{t−1}, h(x)),  σ_t = sigmoid(s_t)
    z_t = σ_t ⊙ z_{t−1} + (1 − σ_t) ⊙ m_t
    log q(z_T | x) = log N(z₀; μ₀, diag σ₀²) − Σ_t Σ_i log σ_{t,i}

Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improving Variational
Inference with Inverse Autoregressive Flow", Algorithm 1 and eq. (14): the numerically
stable, gated update, its autoregressive networks (MADE, Germain et al. 2015) given the
encoder's context h(x), the variable order reversed after every step. Each step is Pyro's
``ConditionalAffineAutoregressive(..., stable=True)`` on a ``ConditionalAutoRegressiveNN``;
the sampling direction is the cheap one (one network pass per step), which is the one a
guide needs.
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN

from pyro_vae.guides.amortized_flow import AmortizedFlow


class AmortizedIAF(AmortizedFlow):
    """q(z | x): an amortized diagonal Normal followed by ``num_flows`` (default 2) inverse
    autoregressive flow steps conditioned on the encoder's context h(x).

    Takes :class:`~pyro_vae.guides.amortized_flow.AmortizedFlow`'s arguments (``x_dim``,
    ``latent_dim``, ``hidden_dims``, ``activation``, ``site``, ``num_flows``,
    ``flow_hidden_dims``, ``arch``, ``image_shape``, ``channels``) and raises its errors.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape (the
    #: recorded step is tested to equal the eager one).
    recordable = True

    def make_transform(self, context_dim: int, index: int) -> dist.ConditionalTransformModule:
        """IAF step ``index``: a gated affine autoregressive transform (stable form)."""
        network = ConditionalAutoRegressiveNN(
            self.latent_dim, context_dim, list(self.flow_hidden_dims), permutation=self.order(index)
        )
        return ConditionalAffineAutoregressive(network, stable=True)
