"""KL warm-up: scale the latent terms of the ELBO by β ∈ (0, 1].

    ELBO_β = E_q[log p(x | z)] + β · E_q[log p(z) − log q(z | x)]

β grows linearly to 1 over the first epochs, so the decoder learns to use z before the
KL term pulls q onto the prior (Bowman et al. 2016; Sønderby et al. 2016). The handler
multiplies the log-density scale of every *unobserved* sample site, in the model and the
guide alike, so it works for any model/guide pair and any ``pyro.infer.ELBO`` without the
model knowing about it. Sites the model marks for enumeration are left alone: they are
summed out exactly (``TraceEnum_ELBO``), part of the likelihood term, not of a KL, and
``TraceEnum_ELBO`` needs all of them to share one scale.
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class ScaleLatents(Messenger):
    """Multiply the log-density of unobserved sample sites by ``beta`` (mutable)."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg) -> None:
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and not msg["infer"].get("enumerate")
            and self.beta != 1.0
        ):
            msg["scale"] = self.beta * msg["scale"]


def linear_warmup(step: int, warmup_steps: int) -> float:
    """β after ``step`` optimizer steps: (step + 1) / warmup_steps, capped at 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class KLWarmup:
    """β for each optimizer step of a fit: linear over ``epochs`` epochs of
    ``steps_per_epoch`` steps (:func:`linear_warmup`), applied by one :class:`ScaleLatents`.

    Attributes:
        steps: round(epochs · steps_per_epoch), the steps β takes to reach 1 (0: no warm-up).
        handler: the :class:`ScaleLatents` to wrap model and guide in, or ``None`` without
            warm-up (β is 1 throughout, so no handler runs as a no-op on every site).
        beta: the current β.
    """

    def __init__(self, epochs: float, steps_per_epoch: int) -> None:
        self.steps = round(epochs * steps_per_epoch)
        self._scale = ScaleLatents()
        self.handler = self._scale if self.steps else None

    @property
    def beta(self) -> float:
        return self._scale.beta

    def at_step(self, step: int) -> float:
        """Set β for optimizer step ``step`` (counted from 0 over the whole fit); return it."""
        self._scale.beta = linear_warmup(step, self.steps)
        return self._scale.beta
