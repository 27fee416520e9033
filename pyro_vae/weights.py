"""The weights of a model/guide pair, wherever Pyro keeps them, for snapshots and checkpoints.

``pyro.infer.SVI`` optimizes whatever parameters a step touches in Pyro's global param
store: the weights of ``PyroModule``s, modules registered with ``pyro.module``, and plain
``pyro.param`` statements. A pair's weights are therefore

- the ``state_dict`` of the torch module behind the model and behind the guide, which holds
  its parameters and buffers (BatchNorm's running statistics among them), as checkpoints
  have always stored them (``"model"``, ``"guide"``). That module is found through the
  wrappers the pair was given in (:func:`module_of`), or else by running the pair once and
  watching which modules it calls (:func:`called_modules`): a lambda, a plain function, or
  an encoder and a decoder kept as globals (then a ``torch.nn.ModuleList`` of them); and
- every other parameter the pair reads from the param store (``"params"``, by its
  param-store name, unconstrained), found on the same run.

:class:`PairWeights` takes snapshots of both, restores them in place (so the tensors the
optimizer holds stay the same objects), and reads checkpoints written before ``"params"``
existed, or before a wrapped pair's module was found (its weights then saved as params).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from pyro_vae.devices import forked_streams
from pyro_vae.minibatch import Minibatched
from pyro_vae.module_hooks import global_forward_pre_hook

#: how many wrappers deep :func:`module_of` looks (a guard against cyclic ``__wrapped__``)
_MAX_WRAPPERS = 100


def module_of(fn) -> torch.nn.Module | None:
    """The torch module behind a model or guide, read from how ``fn`` was made: ``fn``
    itself, a bound method's owner, or either of those inside any number of wrappers:
    :class:`~pyro_vae.minibatch.Minibatched` (``.fn``), ``functools.partial`` (``.func``),
    Pyro handlers (``poutine.scale(fn, c)``, ``ScaleLatents(b)(fn)``: the ``fn`` of their
    ``partial(_context_wrap, messenger, fn)``) and ``__wrapped__`` chains.

    ``None`` where none shows (a lambda, a plain function: :func:`called_modules` finds
    what those run).
    """
    for _ in range(_MAX_WRAPPERS):
        if isinstance(fn, torch.nn.Module):
            return fn
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            return owner
        inner = _inner(fn)
        if inner is None:
            return None
        fn = inner
    return None


def _inner(fn):
    """The callable ``fn`` wraps, or ``None``."""
    if isinstance(fn, Minibatched):
        return fn.fn
    if isinstance(fn, functools.partial):
        # Pyro's _bound_partial keeps the handler's partial in .func but its args flattened
        if len(fn.args) == 2 and isinstance(fn.args[0], Messenger):
            return fn.args[1]
        return fn.func
    return getattr(fn, "__wrapped__", None)


@contextlib.contextmanager
def called_modules() -> Iterator[list[torch.nn.Module]]:
    """A list, filled while the block runs, of every torch module called (its ``forward``
    through ``__call__``), once each in the order first called, children included (see
    :func:`roots`). Process-global while open: a module called by another thread counts."""
    found: list[torch.nn.Module] = []
    seen: set[int] = set()

    def record(module, _inputs):
        if id(module) not in seen:
            seen.add(id(module))
            found.append(module)

    handle = global_forward_pre_hook(record)
    try:
        yield found
    finally:
        handle.remove()


def roots(modules: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """``modules`` less those that are a submodule of another of them, in their order."""
    inside = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    return [m for m in modules if id(m) not in inside]


def _one(modules: list[torch.nn.Module]) -> torch.nn.Module | None:
    """``None``, the one module, or several held in a ``ModuleList`` (one state_dict)."""
    if not modules:
        return None
    return modules[0] if len(modules) == 1 else torch.nn.ModuleList(modules)


def _sides(model, guide, in_model: list, in_guide: list) -> tuple:
    """``(model_module, guide_module)``: :func:`module_of` first (the checkpoint keys of
    every pair it sees stay as they were), else the roots of what each side called; the
    guide's ``None`` where it is the model's, or all of its modules are inside the model's."""
    model_module = module_of(model)
    if model_module is None:
        model_module = _one(roots(in_model))
    guide_module = module_of(guide)
    if guide_module is None:
        mine = set(model_module.modules()) if model_module is not None else set()
        guide_module = _one([m for m in roots(in_guide) if m not in mine])
    return model_module, None if guide_module is model_module else guide_module


def pair_modules(model, guide, args: tuple, kwargs: dict, seed: int = 0) -> tuple:
    """``(model_module, guide_module)`` of a pair as :class:`PairWeights` finds them, on one
    run of the pair (guide, then model replayed on its draws) seeded with ``seed``, outside
    the global random stream and without gradients. Either may be ``None``."""
    with forked_streams(), torch.no_grad(), poutine.block():
        pyro.set_rng_seed(seed)
        with called_modules() as in_guide:
            guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        with called_modules() as in_model:
            poutine.replay(model, trace=guide_tr)(*args, **kwargs)
    return _sides(model, guide, in_model, in_guide)


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
        with forked_streams(), torch.no_grad(), poutine.block():
            pyro.set_rng_seed(seed)
            with poutine.trace(param_only=True) as capture:
                with called_modules() as in_guide:
                    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
                with called_modules() as in_model:
                    poutine.replay(model, trace=guide_tr)(*args, **kwargs)
        self.model_module, self.guide_module = _sides(model, guide, in_model, in_guide)
        owned = {id(p) for m in self.modules() for p in m.parameters()}
        store = dict(pyro.get_param_store().named_parameters())
        self.names = [n for n in capture.trace.nodes if n in store and id(store[n]) not in owned]

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules behind model and guide (none, one or two)."""
        return [m for m in (self.model_module, self.guide_module) if m is not None]

    def parameters(self) -> list[torch.Tensor]:
        """Every unconstrained parameter tensor of the pair, once each."""
        store = dict(pyro.get_param_store().named_parameters())
        owned = {id(p): p for m in self.modules() for p in m.parameters()}
        return list(owned.values()) + [store[n] for n in self.names]

    def parameter_keys(self) -> dict[str, set[str]]:
        """{"model": …, "guide": …}: the keys of each module's state_dict that are
        parameters, not buffers (a buffer may hold inf by design: a mask, a bound)."""
        return {
            key: {n for n, _ in module.named_parameters()} if module is not None else set()
            for key, module in (("model", self.model_module), ("guide", self.guide_module))
        }

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of the weights: ``{"model": state_dict, "guide": state_dict, "params": …}``."""
        store = dict(pyro.get_param_store().named_parameters())
        return {
            key: _copy(module.state_dict()) if module is not None else {}
            for key, module in (("model", self.model_module), ("guide", self.guide_module))
        } | {"params": {n: store[n].detach().clone() for n in self.names}}

    def restore(self, weights: dict) -> None:
        """Put ``weights`` (a :meth:`snapshot`, or an older checkpoint's) back in place.

        Raises:
            WeightsMismatchError: a parameter is missing or has another shape.
        """
        for key, module in (("model", self.model_module), ("guide", self.guide_module)):
            if module is not None:
                state = weights.get(key)
                if state == {}:  # saved before this wrapping's module was found
                    state = _state_from_params(module, weights.get("params", {}))
                try:
                    module.load_state_dict(state if state is not None else weights[key])
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

    def generators(self) -> dict[str, torch.Generator]:
        """The ``torch.Generator`` objects the pair's modules hold as attributes (a
        dropout or noise layer seeded on its own), by ``model.`` or ``guide.`` and their
        path: random state outside torch's global one that a resumed run must continue
        (tester EX: rebuilt from its constructor's seed, it replayed the first epochs'
        noise and the resumed weights left the straight run's). A generator held
        elsewhere (a closure, a global) is not found."""
        found: dict[str, torch.Generator] = {}
        seen: set[int] = set()
        for key, module in (("model", self.model_module), ("guide", self.guide_module)):
            for path, sub in module.named_modules() if module is not None else ():
                for attr, value in vars(sub).items():
                    if isinstance(value, torch.Generator) and id(value) not in seen:
                        seen.add(id(value))
                        found[".".join(p for p in (key, path, attr) if p)] = value
        return found

    def finite(self) -> bool:
        """Whether every parameter is finite."""
        return all(torch.isfinite(p).all() for p in self.parameters())


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _state_from_params(module: torch.nn.Module, saved: dict) -> dict[str, torch.Tensor]:
    """``module``'s state_dict with its parameters as a checkpoint saved them by param-store
    name (written when its module was not found) and its buffers as they are (not saved
    then); ``{}`` (which does not fit, and is named so) where a parameter in the param
    store is not there, or not of its shape. A parameter outside the param store (a network
    the pair calls without ``pyro.module``: not trained, nor saved, then) keeps its value:
    refused as missing, such a pair's checkpoints stopped restoring (review of
    cb181f9..c795b70)."""
    names = {id(p): n for n, p in pyro.get_param_store().named_parameters()}
    state = module.state_dict()
    for key, p in module.named_parameters():
        name = names.get(id(p))
        if name is None:
            continue
        if name not in saved or saved[name].shape != p.shape:
            return {}
        state[key] = saved[name]
    return state


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
