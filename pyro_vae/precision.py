"""Mixed precision for the training step: networks in a low precision, densities in float32.

A run's ``precision`` is one of

- ``"32"``: everything in float32 (the default; nothing below is switched on);
- ``"bf16"``: every ``torch.nn.Module`` forward runs under ``torch.autocast(device, bfloat16)``
  (matrix products and convolutions in bfloat16, on the CPU too), and what each forward
  returns is float32 again (:func:`networks_in`);
- ``"16-mixed"``: the same with float16, and the loss scaled before the backward pass and
  the gradients unscaled before the optimizer step, a step with an infinite or NaN gradient
  skipped (:class:`torch.amp.GradScaler`'s algorithm; Micikevicius et al. 2018, "Mixed
  Precision Training"). float16 autocast is for GPUs: it is refused on the CPU
  (:func:`refuse_on_device`).

The boundary. ``torch.autocast`` alone leaves a decoder's logits and an encoder's loc and
scale in the low precision, so Pyro's distributions would compute their log-densities, and
the ELBO its sums, in it. Here the boundary is every module call: while :func:`networks_in`
is active, global module hooks (``torch.nn.modules.module.register_module_forward_pre_hook``
and ``register_module_forward_hook``) turn autocast on when the outermost module call starts
and off when it returns, and cast each module's bfloat16/float16 outputs (tensors in
tuples, lists and dicts too) to float32 (except the layers inside an ``nn.Sequential``,
whose outputs only feed the next layer: the Sequential's own output is cast). Nothing has
to be registered: this covers modules held by a ``PyroModule``, registered with
``pyro.module``, or kept in a closure, so any model and guide work unchanged. Code
outside module forwards (Pyro's distributions and ELBO sums, ``pyro.param`` arithmetic in
a model function) runs in float32 as before.
Weights and optimizer state stay float32: autocast casts copies for each product.

Limits, which follow from that rule:

- a module whose ``forward`` *is* the model or guide (a ``PyroModule`` that samples) runs
  its whole body under autocast; its submodules' outputs are float32, but a matrix product
  written directly in that body (``z @ W``, ``F.linear``), or a distribution that multiplies
  matrices when built or sampled there (``MultivariateNormal``, ``LowRankMultivariateNormal``),
  computes in the low precision. Put such products in a submodule, or in
  ``torch.autocast(device, enabled=False)``. Log-densities are computed by the ELBO after the
  model has run, outside every forward, so they are float32 whenever the distribution's
  parameters are;
- a forward that returns a distribution object, not tensors, is not cast;
- the hooks are process-wide while active: run one training step at a time per process
  (:class:`Precision` is entered around each step, not around a whole program);
- under ``"16-mixed"`` the loss is scaled where a backward pass starts
  (:func:`scaled_backward`): an estimator that sets gradients from ``torch.autograd.grad``
  instead would have them divided by the scale. Every estimator here and in Pyro calls
  ``backward``.

Validation and evaluation run in float32 on the float32 weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils import _pytree as pytree

from pyro_vae.module_hooks import global_forward_hook, global_forward_pre_hook

PRECISIONS = ("32", "bf16", "16-mixed")
_DTYPES = {"bf16": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(value, arg: str = "precision") -> str:
    """``value`` as one of :data:`PRECISIONS` (the integer 32 means ``"32"``).

    Raises:
        ValueError: naming ``arg``, the value and the accepted ones.
    """
    if value == 32 and not isinstance(value, bool):
        value = "32"
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(
            f"{arg}: {value!r} is not a precision; expected one of "
            f"{', '.join(repr(p) for p in PRECISIONS)}"
        )
    return value


def refuse_on_device(precision: str, device: torch.device, arg: str = "precision") -> None:
    """Refuse ``"16-mixed"`` on the CPU, where float16 autocast has no fast kernels and
    gradient scaling is a GPU practice; ``"bf16"`` works everywhere.

    Raises:
        ValueError: naming ``arg``, the value and what was expected.
    """
    if precision == "16-mixed" and torch.device(device).type == "cpu":
        raise ValueError(
            f"{arg}: '16-mixed' (float16 with gradient scaling) needs a GPU, and this run "
            "computes on the CPU; expected '32' or 'bf16' there, or a CUDA device"
        )


def refuse_float64_networks(precision: str, *callables, arg: str = "precision") -> None:
    """Refuse a mixed ``precision`` for networks whose floating parameters are float64 (the
    ``torch.nn.Module`` behind each callable, as :func:`pyro_vae.devices.move_modules`
    finds it): autocast casts float32 operations only and leaves float64 ones as they are,
    so nothing would run in the lower precision the run records (tester CP: a ``.double()``
    VAE's bf16 losses were its float32-setting losses bit for bit).

    Raises:
        ValueError: naming ``arg``, the value, the first float64 parameter and the ways out.
    """
    for fn in callables:
        owner = getattr(fn, "__self__", fn)
        if isinstance(owner, torch.nn.Module):
            named = owner.named_parameters()
            refuse_float64_parameters(
                precision, ((f"{type(owner).__name__}'s {n!r}", p) for n, p in named), arg
            )


def refuse_float64_parameters(
    precision: str, parameters: Iterable[tuple[str, torch.Tensor]], arg: str = "precision"
) -> None:
    """:func:`refuse_float64_networks` for network ``parameters`` given as (where, tensor)
    pairs: those of the networks a function model or guide runs, known once the pair has
    run (any module whose forward ran, :func:`modules_run`, however it is held: registered
    with ``pyro.module``, a ``PyroModule``, a module closed over). Tester CR, then CW: a
    float64 network so held trained under bf16 as under precision 32, bit for bit, without
    a word.

    Raises:
        ValueError: naming ``arg``, the value, the first float64 parameter and the ways out.
    """
    if precision == "32":
        return
    for where, parameter in parameters:
        if parameter.dtype == torch.float64:
            raise ValueError(
                f"{arg}: {precision!r} with float64 networks ({where} is float64): autocast "
                "lowers float32 operations only, so nothing would run in the lower "
                "precision; expected float32 networks (.float()) or precision '32'"
            )


@contextlib.contextmanager
def modules_run() -> Iterator[list[torch.nn.Module]]:
    """The modules whose forward runs inside the block, each once, in order (a global
    forward pre-hook): the networks a step computes with, however the model and guide
    hold them (given as model or guide, registered with ``pyro.module``, a ``PyroModule``
    or a plain module a function closes over)."""
    seen: set[int] = set()
    ran: list[torch.nn.Module] = []

    def record(module, args) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            ran.append(module)

    handle = global_forward_pre_hook(record)
    try:
        yield ran
    finally:
        handle.remove()


def own_parameters(
    modules: list[torch.nn.Module], labels: dict[int, str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(where, parameter) of each module's own parameters (not its children's, which are
    modules of their own in ``modules`` when they ran): ``labels[id(parameter)]`` where
    given (the name a ``pyro.module`` registered it under), else the module's class and
    the parameter's name."""
    labels = labels or {}
    for module in modules:
        for name, parameter in module.named_parameters(recurse=False):
            default = f"{type(module).__name__}'s {name!r}"
            yield labels.get(id(parameter), default), parameter


class _NetworkAutocast:
    """The hooks' state: autocast on while any module forward runs, outputs cast back."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        self.device_type, self.dtype = device_type, dtype
        self.depth, self.paused = 0, 0
        self.context: torch.autocast | None = None
        self.counted: list[bool] = []
        self.calls: list[torch.nn.Module] = []

    def before(self, module, args) -> None:
        # a torch.fx graph (a recording, or the backward graph a torch.compile backend
        # runs as one: aot_eager's ran under autocast, and mixed bfloat16 with float32 in
        # a matmul) holds the casts it needs already; it runs as it is
        counted = not self.paused and not isinstance(module, torch.fx.GraphModule)
        self.counted.append(counted)
        self.calls.append(module)
        if counted:
            self.depth += 1
            if self.depth == 1:
                self.context = torch.autocast(self.device_type, dtype=self.dtype)
                self.context.__enter__()

    def after(self, module, args, output):
        if self.calls:
            self.calls.pop()
        if self.counted and self.counted.pop():
            self.depth -= 1
            if self.depth == 0:
                self.close()
        if isinstance(module, torch.fx.GraphModule):
            return output  # its outputs as its recorded casts left them
        if output is None or (self.calls and isinstance(self.calls[-1], torch.nn.Sequential)):
            # A Sequential only passes each output to the next layer: cast its own output,
            # not each layer's, and save a cast kernel and its way back per layer.
            return output
        return pytree.tree_map(_to_float32, output)

    def close(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None
        self.depth = 0


def _to_float32(value):
    if torch.is_tensor(value) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


_ACTIVE: list[_NetworkAutocast] = []


@contextlib.contextmanager
def networks_in(dtype: torch.dtype, device_type: str) -> Iterator[None]:
    """Within the block, every ``torch.nn.Module`` forward runs under
    ``torch.autocast(device_type, dtype)`` and returns float32 tensors where it would
    return ``dtype`` ones (see the module docstring for the rule and its limits)."""
    state = _NetworkAutocast(device_type, dtype)
    pre = global_forward_pre_hook(state.before)
    post = global_forward_hook(state.after, always_call=True)
    _ACTIVE.append(state)
    try:
        yield
    finally:
        _ACTIVE.remove(state)
        pre.remove()
        post.remove()
        state.close()  # a forward that raised past a caller's except leaves no autocast on


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Module calls in the block run as they are, without autocast or casts: for replaying
    a recording (:class:`pyro_vae.estimators.compiled.CompiledELBO`) whose operations
    already carry the casts autocast made when it was recorded."""
    for state in _ACTIVE:
        state.paused += 1
    try:
        yield
    finally:
        for state in _ACTIVE:
            state.paused -= 1


def active() -> tuple[str, torch.dtype] | None:
    """``(device type, dtype)`` of the innermost :func:`networks_in` block, or ``None``."""
    if not _ACTIVE:
        return None
    return _ACTIVE[-1].device_type, _ACTIVE[-1].dtype


@contextlib.contextmanager
def scaled_backward(scale: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, every ``tensor.backward()`` (and ``torch.autograd.backward``)
    starts from ``scale(gradient)`` instead of ``gradient`` (1 for a scalar): the loss
    scaled before backward, for estimators that call backward themselves (every
    ``pyro.infer.ELBO``'s ``loss_and_grads``). The value the estimator returns is not
    scaled. Gradients computed with ``torch.autograd.grad`` are not scaled."""
    original = torch.autograd.backward

    def backward(tensors, grad_tensors=None, *args, **kwargs):
        single = torch.is_tensor(tensors)
        outputs = (tensors,) if single else tuple(tensors)
        if grad_tensors is None:
            grads = [torch.ones_like(t) if t.numel() == 1 else None for t in outputs]
        else:
            grads = [grad_tensors] if torch.is_tensor(grad_tensors) else list(grad_tensors)
        grads = [g if g is None else scale(g) for g in grads]
        return original(tensors, grads[0] if single else grads, *args, **kwargs)

    torch.autograd.backward = backward
    try:
        yield
    finally:
        torch.autograd.backward = original


class _Stepped:
    """What ``GradScaler.unscale_`` and ``step`` need of an optimizer: the parameters of
    this step and a ``step()`` that calls Pyro's optimizer on them."""

    def __init__(self, optim, params: list[torch.Tensor]) -> None:
        self.param_groups = [{"params": params}]
        self._optim, self._params = optim, params

    def step(self) -> None:
        self._optim(self._params)


class Precision:
    """A run's precision on its device: the context each training step runs in, and its
    optimizer step (with gradient scaling under ``"16-mixed"``).

    Args:
        name: one of :data:`PRECISIONS`.
        device: where the run computes.
        scaler: the gradient scaler for ``"16-mixed"`` (default: ``torch.amp.GradScaler``
            on ``device``'s type, initial scale 2¹⁶, halved on a skipped step, doubled
            after 2000 steps without one).

    Attributes:
        skipped_steps: optimizer steps skipped for an infinite or NaN gradient (16-mixed).

    Raises:
        ValueError: a bad ``name``, or ``"16-mixed"`` on the CPU (:func:`refuse_on_device`).
    """

    def __init__(
        self,
        name: str = "32",
        device: torch.device | str = "cpu",
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.name = check_precision(name)
        self.device = torch.device(device)
        refuse_on_device(self.name, self.device)
        if self.name == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(self.device.type)
        self.scaler = scaler if self.name == "16-mixed" else None
        self.skipped_steps = 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype networks compute in (float32 for ``"32"``)."""
        return _DTYPES.get(self.name, torch.float32)

    @contextlib.contextmanager
    def step_context(self) -> Iterator[None]:
        """Where a step's loss and gradients are computed: networks under autocast, and
        under ``"16-mixed"`` the backward pass started from the scaled loss."""
        if self.name == "32":
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(networks_in(self.dtype, self.device.type))
            if self.scaler is not None:
                stack.enter_context(scaled_backward(self.scaler.scale))
            yield

    def step(self, optim, params: list[torch.Tensor]) -> bool:
        """Call ``optim(params)`` (a ``pyro.optim.PyroOptim`` step) on the gradients that
        :meth:`step_context` left; under ``"16-mixed"`` unscale them first and skip the step
        when one is infinite or NaN (the scale is then halved). Returns whether it stepped.
        """
        if self.scaler is None or not params:
            optim(params)
            return True
        stepped = _Stepped(optim, params)
        before = self.scaler.get_scale()
        self.scaler.step(stepped)  # unscales, and steps only when every gradient is finite
        self.scaler.update()
        skipped = self.scaler.get_scale() < before
        self.skipped_steps += skipped
        return not skipped
