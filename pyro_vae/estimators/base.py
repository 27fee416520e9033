"""Plumbing shared by the estimators defined through a surrogate loss."""

from __future__ import annotations

import torch
from pyro.infer import ELBO


class SurrogateELBO(ELBO):
    """An ELBO given by ``differentiable_loss``: ``loss`` is its value and ``loss_and_grads``
    back-propagates it, as Pyro's ELBOs do. Particles are always vectorized.

    ``min_particles`` and ``too_few`` let a subclass demand more than one particle and say
    why in the error.
    """

    def __init__(
        self,
        num_particles: int,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
        min_particles: int = 1,
        too_few: str = "is not a positive integer",
    ) -> None:
        if not isinstance(num_particles, int) or num_particles < min_particles:
            raise ValueError(f"num_particles: {num_particles!r} {too_few}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Guessing runs model and guide once; that draw must not shift the random stream,
        # or two runs that guess at different moments (a resumed one) would diverge.
        with torch.random.fork_rng(devices=[]):
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss; accumulates its gradient into the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()
