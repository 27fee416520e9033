"""The weights of a model/guide pair, wherever Pyro keeps them, for snapshots and checkpoints.

``pyro.infer.SVI`` optimizes whatever parameters a step touches in Pyro's global param
store: the weights of ``PyroModule``s, modules registered with ``pyro.module``, and plain
``pyro.param`` statements. A pair's weights are therefore

- the ``state_dict`` of the torch module behind the model and behind the guide (the
  module itself, or the owner of a bound method such as ``vae.model``), which holds its
  parameters and buffers, as checkpoints have always stored them (``"model"``,
  ``"guide"``); and
- every other parameter the pair reads from the param store (``"params"``, by its
  param-store name, unconstrained), found by running the pair once.

:class:`PairWeights` takes snapshots of both, restores them in place (so the tensors the
optimizer holds stay the same objects), and reads checkpoints written before ``"params"``
existed.
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch

from pyro_vae.minibatch import Minibatched


def module_of(fn) -> torch.nn.Module | None:
    """The torch module behind a model or guide: itself, or a bound method's owner."""
    fn = fn.fn if isinstance(fn, Minibatched) else fn
    if isinstance(fn, torch.nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


class WeightsMismatchError(ValueError):
    """Saved weights do not fit the model and guide they are loaded into."""


class PairWeights:
    """Snapshots and restores of a model/guide pair's weights.

    Args:
        model, guide: the pair (functions, bound methods, modules, autoguides).
        args, kwargs: one batch to run the pair on, so that every parameter it reads
            exists in the param store (lazily built autoguides create theirs then);
            seeded with ``seed`` and outside the global random stream.
    """

    def __init__(self, model, guide, args: tuple, kwargs: dict, seed: int = 0) -> None:
        self.model_module = module_of(model)
        guide_module = module_of(guide)
        self.guide_module = None if guide_module is self.model_module else guide_module
        with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
            pyro.set_rng_seed(seed)
            with poutine.trace(param_only=True) as capture:
                guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
                poutine.replay(model, trace=guide_tr)(*args, **kwargs)
        owned = {id(p) for m in self._modules() for p in m.parameters()}
        store = dict(pyro.get_param_store().named_parameters())
        self.names = [n for n in capture.trace.nodes if n in store and id(store[n]) not in owned]

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.model_module, self.guide_module) if m is not None]

    def parameters(self) -> list[torch.Tensor]:
        """Every unconstrained parameter tensor of the pair."""
        store = dict(pyro.get_param_store().named_parameters())
        return [p for m in self._modules() for p in m.parameters()] + [store[n] for n in self.names]

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of the weights: ``{"model": state_dict, "guide": state_dict, "params": …}``."""
        store = dict(pyro.get_param_store().named_parameters())
        return {
            "model": _copy(self.model_module.state_dict()) if self.model_module else {},
            "guide": _copy(self.guide_module.state_dict()) if self.guide_module else {},
            "params": {n: store[n].detach().clone() for n in self.names},
        }

    def restore(self, weights: dict) -> None:
        """Put ``weights`` (a :meth:`snapshot`, or an older checkpoint's) back in place.

        Raises:
            WeightsMismatchError: a parameter is missing or has another shape.
        """
        for key, module in (("model", self.model_module), ("guide", self.guide_module)):
            if module is not None:
                try:
                    module.load_state_dict(weights[key])
                except (KeyError, RuntimeError) as err:
                    raise WeightsMismatchError(
                        f"weights: the saved {key} does not fit {type(module).__name__} ({err})"
                    ) from err
        store = dict(pyro.get_param_store().named_parameters())
        saved = weights.get("params", {})
        for name in self.names:
            if name not in saved or saved[name].shape != store[name].shape:
                found = tuple(saved[name].shape) if name in saved else "nothing"
                raise WeightsMismatchError(
                    f"weights: parameter {name!r} has shape {tuple(store[name].shape)} here, "
                    f"and the saved weights hold {found} for it"
                )
            with torch.no_grad():
                store[name].copy_(saved[name])

    def others(self) -> dict[str, torch.Tensor]:
        """Copies of the param store's entries that are not the pair's weights: the state
        estimators keep there (``TraceGraph_ELBO``'s decaying-average baselines, a neural
        control variate's network), saved beside the weights so a resumed run has it."""
        mine = {id(p) for p in self.parameters()}
        return {
            name: p.detach().clone()
            for name, p in pyro.get_param_store().named_parameters()
            if id(p) not in mine
        }

    def finite(self) -> bool:
        """Whether every parameter is finite."""
        return all(torch.isfinite(p).all() for p in self.parameters())


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def check_dtypes(args: tuple, model, guide) -> None:
    """Refuse floating data whose dtype differs from the networks' weights.

    Raises:
        ValueError: naming the data's dtype and the weights'.
    """
    weights = [
        p
        for fn in (model, guide)
        if (m := module_of(fn)) is not None
        for p in m.parameters()
        if p.is_floating_point()
    ]
    if not weights:
        return
    expected = weights[0].dtype
    for i, a in enumerate(args):
        if torch.is_tensor(a) and a.is_floating_point() and a.dtype != expected:
            raise ValueError(
                f"data: argument {i} is {a.dtype} and the model's weights are {expected}; "
                f"expected data of the weights' dtype (convert it with .to({expected}), or "
                "the model and guide with .to(dtype))"
            )
