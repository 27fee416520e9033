"""One SVI step with less bookkeeping than ``pyro.infer.SVI`` + ``pyro.optim.Adam``.

A step is what ``SVI.step`` does: run ``elbo.loss_and_grads(model, guide, ...)`` under a
parameter-capturing trace, take an Adam step on every captured parameter, clear the
gradients. Two things in Pyro's version cost time without changing the result:

- ``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter and steps each on its own
  (ten optimizer calls, hooks and profiler records for a two-layer VAE);
  :class:`GroupedAdam` holds them all in one optimizer. Adam updates every parameter
  independently, so the arithmetic is identical; ``get_state``/``set_state`` keep
  ``PyroOptim``'s per-parameter format, so checkpoints load either way.
- ``SVI.step`` zeroes gradients by allocating fresh zero tensors; :class:`SVIStep` sets
  them to ``None`` as ``torch.optim.Optimizer.zero_grad`` does, so the next backward
  writes gradients instead of adding them to zeros.
"""

from __future__ import annotations

import copy
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.optim import PyroOptim

from pyro_vae.precision import Precision
from pyro_vae.pyro_compat import pop_waiting_optim_state


class GroupedAdam(PyroOptim):
    """Adam over every parameter Pyro hands it, in one ``torch.optim.Adam``.

    A drop-in for ``pyro.optim.Adam({"lr": lr, ...})``: parameters join the optimizer the
    first time they are seen (taking any state waiting from :meth:`set_state`), and a call
    steps only the parameters it is given, as ``PyroOptim`` does.
    """

    def __init__(self, optim_args: dict[str, Any]) -> None:
        if not isinstance(optim_args, dict):
            raise TypeError(f"optim_args: expected a dict of Adam settings, got {optim_args!r}")
        super().__init__(torch.optim.Adam, optim_args)
        self._optimizer: torch.optim.Adam | None = None
        self._params: list[torch.Tensor] = []
        self._known: set[torch.Tensor] = set()

    def __call__(self, params, *args, **kwargs) -> None:
        params = list(params)
        for p in params:
            if p not in self._known:
                self._add(p)
        stepped = set(params)
        hidden = [(p, p.grad) for p in self._params if p not in stepped and p.grad is not None]
        for p, _ in hidden:
            p.grad = None
        if self._optimizer is not None:  # None until a step has had a parameter
            self._optimizer.step(*args, **kwargs)
        for p, grad in hidden:
            p.grad = grad

    def _add(self, p: torch.Tensor) -> None:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam([p], **self.pt_optim_args)
        else:
            self._optimizer.param_groups[0]["params"].append(p)
        self._params.append(p)
        self._known.add(p)
        state = pop_waiting_optim_state(self, pyro.get_param_store().param_name(p))
        if state is not None:
            saved = state["state"].get(0)
            if saved is not None:
                self._optimizer.state[p] = copy.deepcopy(saved)

    def get_state(self) -> dict:
        """``{param name: per-parameter Adam state_dict}``, the format ``PyroOptim`` writes."""
        if self._optimizer is None:
            return {}
        settings = {k: v for k, v in self._optimizer.param_groups[0].items() if k != "params"}
        store = pyro.get_param_store()
        result = {}
        for p in self._params:
            state = self._optimizer.state.get(p)
            result[store.param_name(p)] = {
                "state": {0: copy.deepcopy(state)} if state else {},
                "param_groups": [{**copy.deepcopy(settings), "params": [0]}],
            }
        return result


class SVIStep:
    """``step(*args, **kwargs)``: one gradient step on ``elbo``'s loss; returns the loss.

    The same contract as ``pyro.infer.SVI(model, guide, optim, elbo).step``. An ``elbo``
    with a ``loss_and_grads_and_params(model, guide, *args, **kwargs)`` method, returning
    the loss and the unconstrained parameters it read (as
    :class:`pyro_vae.estimators.compiled.CompiledELBO` does, which knows the parameters it
    replays), is asked for them instead of having its ``pyro.param`` statements traced.

    ``precision`` (:class:`pyro_vae.precision.Precision`, default float32 throughout) is the
    context the loss and gradients are computed in (networks under autocast, densities in
    float32) and, under ``"16-mixed"``, scales the loss for backward and unscales the
    gradients before the step, skipping a step whose gradients overflowed.

    Attributes:
        measure_grad_norm: set it before a step to have that step measure
            :attr:`grad_norm` (it costs a device synchronization, so only when wanted).
        grad_norm: the last measured step's global gradient norm ‖∇‖₂ over every
            parameter it updates (:func:`gradient_norm`), after backward and before the
            optimizer step, unscaled under ``"16-mixed"``; ``None`` for a step not measured.
    """

    def __init__(
        self, model, guide, optim: PyroOptim, elbo: ELBO, precision: Precision | None = None
    ) -> None:
        self.model, self.guide, self.optim, self.elbo = model, guide, optim, elbo
        self.precision = precision or Precision()
        self.measure_grad_norm = False
        self.grad_norm: float | None = None

    def step(self, *args, **kwargs) -> float:
        with self.precision.step_context():
            loss, params = self._loss_and_grads(*args, **kwargs)
        # A parameter the loss does not differentiate (TraceGraph_ELBO's decaying-average
        # baseline, replaced by a new tensor every step) has nothing for Adam to do, and
        # handing it over would grow the optimizer by one tensor per step.
        params = [p for p in params if p.grad is not None]
        self.grad_norm = None
        if self.measure_grad_norm:
            scaler = self.precision.scaler  # 16-mixed: the gradients are still scaled here
            self.grad_norm = gradient_norm(params) / (scaler.get_scale() if scaler else 1.0)
        self.precision.step(self.optim, params)
        for p in params:
            p.grad = None
        return torch_item(loss)

    def _loss_and_grads(self, *args, **kwargs) -> tuple[torch.Tensor | float, list[torch.Tensor]]:
        own_params = getattr(self.elbo, "loss_and_grads_and_params", None)
        if own_params is not None:
            return own_params(self.model, self.guide, *args, **kwargs)
        with poutine.trace(param_only=True) as capture:
            loss = self.elbo.loss_and_grads(self.model, self.guide, *args, **kwargs)
        return loss, [site["value"].unconstrained() for site in capture.trace.nodes.values()]


def gradient_norm(params: list[torch.Tensor]) -> float:
    """‖∇‖₂ = (Σ_p ‖∇_p‖₂²)^½ over the gradients of ``params`` (0 without any), the global
    norm that ``torch.nn.utils.clip_grad_norm_`` clips."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    return torch.linalg.vector_norm(norms).item()
