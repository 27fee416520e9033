"""A Newton step on the Normal factors' means, for ``AutoCAVI``'s convergence test.

Mean-field CAVI updates one factor at a time. On Normal latents linked far more tightly
than their data inform them, that is Gauss-Seidel on an ill-conditioned linear system: a
random walk of sd 3·10⁻⁵ under data of sd 1 gained 2·10⁻⁷ nats a sweep at its prior, 52
nats below mean field's optimum, and with ``tol=1e-6`` a fit stopped there ``converged_``
(tester S's F1). Neither the sweep's gain nor the over-relaxed step along it measures what
is left: the slow direction is not the sweep's.

Holding every factor's covariance and every other factor fixed, the ELBO is a function of
the Normal factors' means m alone (their entropies do not depend on them), and where the
model's log-density is at most quadratic in those latents jointly (linear-Gaussian links,
under any Gamma or Wishart precision held at its q), a concave quadratic. One Newton step,
m + (−H)⁻¹g, reaches its maximum, and ½ gᵀ(−H)⁻¹g, the Newton decrement's square over two
(Boyd & Vandenberghe 2004, §9.5.1), is the gain left along the means, exactly there. So
``AutoCAVI`` computes it where the sweeps would stop, and every :data:`NEWTON_EVERY` sweeps
while they crawl: a gain under ``tol`` confirms a stop; a larger one is taken (kept only
where the ELBO, computed in full, rises; halved up to :data:`HALVINGS` times otherwise) and
the sweeps go on from it (on factors that passed the round's precision check only; a larger
predicted gain leaves the stop unconfirmed whether or not a step was taken). Where the log-
density is not quadratic in the means (a product W z of two latents), the step is a
safeguarded Newton step, and where −H is not positive definite there, none is taken and the
sweeps' own test stands. g and H come from autograd through the bound's own contractions; H
is n backward passes (batched in one by torch's vmap where it can), so the test runs on at
most :data:`MAX_COORDINATES` coordinates.
"""

from __future__ import annotations

import torch

#: The most mean coordinates (summed over the Normal factors' batch and event elements) the
#: Hessian is made for: n² entries, from n backward passes (batched where torch can).
MAX_COORDINATES = 256
#: How many times a step that lowers the ELBO is halved before none is taken.
HALVINGS = 8
#: Sweeps between two steps taken where the sweeps crawl (gains shrinking by less than half
#: a sweep) before they would stop: each costs the Hessian.
NEWTON_EVERY = 5


def newton_step(objective, means: list[torch.Tensor]) -> tuple[list[torch.Tensor], float] | None:
    """The Newton step on ``objective`` (a 0-dim tensor made from a list of tensors shaped
    as ``means``) from ``means``: (the step, one tensor per mean, and the gain it predicts,
    ½ gᵀ(−H)⁻¹g, in the objective's units), or None where −H is not positive definite on
    the coordinates the objective reads (those where H's diagonal is not 0: an element the
    model leaves out, masked off, keeps a step of 0) or there are more than
    :data:`MAX_COORDINATES` of them."""
    sizes = [m.numel() for m in means]
    if sum(sizes) > MAX_COORDINATES:
        return None
    flat = torch.cat([m.detach().reshape(-1) for m in means]).requires_grad_(True)
    with torch.enable_grad():
        parts = [p.reshape(m.shape) for p, m in zip(flat.split(sizes), means, strict=True)]
        grad = torch.autograd.grad(objective(parts), flat, create_graph=True)[0]
        hessian = _jacobian(grad, flat)
    grad = grad.detach()
    read = hessian.diagonal() != 0
    if not bool(read.any()):
        return None
    sub = hessian[read][:, read]
    negative = -(sub + sub.T) / 2
    chol, info = torch.linalg.cholesky_ex(negative)
    if int(info) != 0:
        return None
    step = torch.zeros_like(flat.detach())
    step[read] = torch.cholesky_solve(grad[read].unsqueeze(-1), chol).squeeze(-1)
    predicted = 0.5 * float(grad[read] @ step[read])
    return [s.reshape(m.shape) for s, m in zip(step.split(sizes), means, strict=True)], predicted


def _jacobian(grad: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """∂grad/∂flat, [n, n]: one batched backward pass (``is_grads_batched``, torch's vmap
    over the rows), or one pass per row where an op of the graph has no batching rule."""
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    if not grad.requires_grad:  # the objective is linear in the means
        return torch.zeros_like(eye)
    try:
        rows = torch.autograd.grad(
            grad, flat, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )[0]
    except RuntimeError:
        rows = torch.stack(
            [
                _zero_if_none(
                    torch.autograd.grad(g, flat, retain_graph=True, allow_unused=True)[0], flat
                )
                for g in grad
            ]
        )
    return _zero_if_none(rows, eye).detach()


def _zero_if_none(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``tensor``, or zeros shaped as ``like`` where autograd found no dependence."""
    return torch.zeros_like(like) if tensor is None else tensor
