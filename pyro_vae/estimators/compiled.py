"""A recorded SVI loss: Pyro's ELBOs without re-running Pyro's Python on every step.

Every SVI step on a fixed model repeats the same Python: the poutine messenger stack, a
``pyro.param`` statement for each weight a ``PyroModule`` touches, ``Trace`` bookkeeping,
distribution objects and the ELBO's per-site sums, several thousand interpreter calls for
a two-layer VAE against a few hundred for the same step written by hand (see
``benchmarks/RESULTS.md``). When the model's structure is fixed by its arguments' shapes,
the tensor operations those calls issue are the same on every step. :class:`CompiledELBO`
records them once per call signature with ``torch.fx``'s ``make_fx`` (one flat list of ATen
operations, the parameters read in place) and replays that list on later calls under
ordinary autograd. It plays the part of Pyro's ``JitTrace_ELBO``, which records with
TorchScript, for any estimator here that keeps no state between steps.

What stays as in Pyro:

- the arithmetic: the recorded operations are the ones Pyro's ELBO ran, so losses and
  gradients equal the uncompiled estimator's (bit for bit with one particle or vectorized
  particles; tested), and the first call for each signature runs the wrapped ELBO itself,
  with Pyro's validation checks when they are on;
- the random stream: random draws are recorded as random operations and draw afresh on
  each replay, in the order the uncompiled step draws them (the recording itself runs on a
  forked generator, and puts back any ``torch.Generator`` of the model's own it drew
  from), so a compiled run reproduces an uncompiled one;
- gradients: a step is recorded with gradients on whatever the caller's mode (recorded
  under SVI's ``evaluate_loss``, its ``no_grad`` left no gradient path, and every step
  replayed it without moving a parameter: tester BT), and replayed under the caller's;
- parameters: a replay issues one ``pyro.param`` statement per recorded parameter, so
  ``SVI`` and :class:`pyro_vae.svi_step.SVIStep` still find what to optimize, and a
  parameter that was replaced by a new tensor triggers a new recording.

With ``backend="inductor"`` the recording is also compiled by ``torch.compile``, which
fuses the operations Pyro's general arithmetic adds (per-site scales, log-densities, the
surrogate's detach-and-add) into a few kernels. It needs a C++ compiler, takes tens of
seconds per call signature on its first replay, and its fused kernels round differently,
so losses are close to, not bit for bit, the uncompiled ones (the random draws stay
torch's); it pays on long runs only (``benchmarks/RESULTS.md``).

What it needs (as ``JitTrace_ELBO`` does): model and guide whose sites, shapes and
control flow depend only on the arguments' shapes and non-tensor values (the cache key).
Reading a value out of a tensor (``.item()``, ``float(t)``, ``if tensor:``), an argument,
a parameter or a constant alike, cannot be recorded and raises :class:`CaptureError` on
the first call (read out of a constant, ``float(kl_w)`` of a global annealed in place, it
was frozen in every replay: tester BT); so does a step that changes its own gradient (a
stop-gradient, a hook, a custom ``autograd.Function``: tester CB), which a recording of
the forward operations would lose. Python state that changes between steps is
frozen at its recorded value, so only estimators whose capabilities
(:func:`pyro_vae.estimators.capabilities_of`) say ``recordable`` are wrapped: not ``score``
with an ``ema`` or ``neural`` control variate, ``tracegraph`` (baselines), ``enum``, nor
an estimator that declares nothing; nor KL warm-up's rising β (``fit`` refuses ``compile``
with warm-up). Which models and guides may be recorded without being asked is their own
declaration, ``recordable = True`` (:func:`should_record`).

Mixed precision (:mod:`pyro_vae.precision`): a step taken inside
:func:`pyro_vae.precision.networks_in` (``fit`` with ``precision="bf16"`` or
``"16-mixed"``) is recorded with autocast's casts in it, so the recording computes the
networks in the low precision and everything else in float32, as the uncompiled step does;
it is replayed as recorded (the module hooks are suspended), and the precision is part of
the cache key. Under bf16 the replayed step equals the uncompiled one (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import pyro
import pyro.infer.trace_elbo
import pyro.infer.trace_mean_field_elbo
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.poutine.runtime import am_i_wrapped
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from pyro_vae import precision
from pyro_vae.devices import forked_streams
from pyro_vae.draw_tracking import VALUE_READS
from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.capabilities import Capabilities, capabilities_of
from pyro_vae.model_protocol import declares_recordable
from pyro_vae.pyro_compat import (
    elbo_loss_particle,
    elbo_trace,
    elbo_traces,
    guess_max_plate_nesting,
)
from pyro_vae.traces import buffers_kept
from pyro_vae.weights import module_of

COMPILABLE = (
    "trace (Trace_ELBO), analytic-kl (TraceMeanField_ELBO), iwae, vimco, and score with "
    "control_variate in ('none', 'leave-one-out')"
)


class CaptureError(RuntimeError):
    """One step of model and guide could not be recorded as a fixed list of operations."""


@dataclass
class _Recording:
    graph: Callable[..., torch.Tensor]  # the GraphModule, or torch.compile of it
    params: list[tuple[str, torch.Tensor]]  # (param-store name, unconstrained tensor)
    # (module, its training flag) for every module the step called, as they were recorded
    modes: tuple[tuple[torch.nn.Module, bool], ...] = ()
    # (module, buffer name, the tensor the recording reads) for those modules' buffers
    buffers: tuple[tuple[torch.nn.Module, str, torch.Tensor], ...] = ()
    # whether each of ``params`` took gradients when recorded
    trainable: tuple[bool, ...] = ()

    def modes_hold(self) -> bool:
        """Whether every module the step called is in the mode it was recorded in (a
        recording made in training mode holds Dropout's draws and BatchNorm's batch
        statistics, so replayed after ``.eval()`` it would give the training-mode loss)
        and still holds the buffers the recording reads (``load_state_dict(...,
        assign=True)`` replaces them: the replay read the old running statistics, tester
        AO's F4)."""
        return all(module.training == flag for module, flag in self.modes) and all(
            module._buffers.get(name) is tensor for module, name, tensor in self.buffers
        )


def compilable(elbo: ELBO) -> str | None:
    """``None`` if :class:`CompiledELBO` can wrap ``elbo``, else the reason it cannot.

    Reads the capabilities ``elbo``'s class declares (:func:`capabilities_of`): it must
    declare ``recordable``; one that declares nothing may keep state and is refused.
    """
    if isinstance(elbo, CompiledELBO):
        return "it is compiled already"
    capabilities = capabilities_of(elbo)
    if capabilities is not None and capabilities.recordable:
        return None
    if capabilities is not None and capabilities.state:
        return f"{capabilities.state}, which a recording would freeze"
    reason = f"{type(elbo).__name__} is not one of the estimators that keep no state between steps"
    if capabilities is None:
        reason += " (it declares no capabilities: pyro_vae.estimators.Capabilities)"
    return reason


def should_record(elbo: ELBO, model, guide=None, kl_warmup_epochs: float = 0) -> str | None:
    """``None`` if a run may record its steps without being asked to, else the reason not.

    A recording is exact only when nothing changes between steps but the tensors (see the
    module docstring), so all of these must hold:

    - ``model`` declares ``recordable = True`` in its own class (a subclass inherits no
      declaration: it may add a branch its parent lacked). ``model`` may be the class, an
      instance, a bound method of one (an object's ``model`` method), or a function that
      carries the attribute;
    - ``guide`` declares it likewise; ``None`` means the guide the model makes itself
      (``make_guide()`` or its object's ``guide`` method), which the model's declaration
      covers;
    - ``elbo`` is recordable (:func:`compilable`);
    - ``kl_warmup_epochs`` is 0: warm-up changes β between steps;
    - a path gradient (``gradient="stl"`` or ``"dreg"``), or an estimator that scores
      detached draws (``score``, ``vimco``), is not paired with a guide that declares
      ``path_gradients_recordable = False``: scoring a flow's draw off the path it was
      drawn on runs the flow's inverse, which reads values out of tensors
      (:class:`pyro_vae.guides.AmortizedFlow` declares it).

    Asking for a recording (``TrainConfig(compile=True)``) needs none of the declarations.
    """
    for arg, fn in (("model", model), ("guide", guide)):
        if fn is not None and not declares_recordable(fn):
            return (
                f"{arg}: {_name(fn)} does not declare recordable = True (no Python branching "
                "on tensor values, trace structure fixed by the batch shape)"
            )
    reason = compilable(elbo)
    if reason is not None:
        return f"elbo: {type(elbo).__name__} cannot be recorded: {reason}"
    if kl_warmup_epochs != 0:
        return f"kl_warmup_epochs: {kl_warmup_epochs!r}; warm-up changes β between steps"
    return path_gradient_reason(elbo, guide)


def path_gradient_reason(elbo: ELBO, guide) -> str | None:
    """Why ``elbo``'s step with ``guide`` cannot be recorded, where the guide declares
    ``path_gradients_recordable = False`` (a flow, whose inverse reads values out of
    tensors) and its draws are scored off the path they were drawn on, which runs that
    inverse: under detached parameters (a path gradient, ``gradient="stl"`` or ``"dreg"``)
    or detached themselves (an estimator declaring ``scores_detached_draws``: ``score``
    and ``vimco``); else None."""
    inner = getattr(elbo, "elbo", elbo)
    gradient = getattr(inner, "gradient", "reparam")
    if getattr(guide, "path_gradients_recordable", True) is not False:
        return None
    if gradient != "reparam":
        return (
            f"guide: {_name(guide)} with gradient={gradient!r}: scoring its draws under "
            "detached parameters runs its flow's inverse, which cannot be recorded"
        )
    if getattr(inner, "scores_detached_draws", False):  # tester DH: refused by auto
        return (
            f"guide: {_name(guide)} with estimator {type(inner).__name__}: scoring its "
            "detached draws runs its flow's inverse, which cannot be recorded"
        )
    return None


class CompiledELBO(SurrogateELBO):
    """``elbo`` recorded once per call signature and replayed (see the module docstring).

    A ``pyro.infer.ELBO`` defined by its :meth:`differentiable_loss` (``loss`` and
    ``loss_and_grads`` come from :class:`~pyro_vae.estimators.base.SurrogateELBO`): use it
    wherever ``elbo`` was used (``SVI``, ``fit``). Calls
    are keyed by the identity of model and guide, each tensor argument's shape, dtype and
    device, every other argument's value (which must be hashable), and the mixed precision
    in force (:func:`pyro_vae.precision.active`).

    Raises:
        ValueError: ``elbo`` keeps state between steps (see :func:`compilable`).
    """

    def __init__(self, elbo: ELBO, backend: str | None = None) -> None:
        reason = compilable(elbo)
        if reason is not None:
            raise ValueError(
                f"elbo: {type(elbo).__name__} cannot be compiled: {reason}; compilable "
                f"estimators are {COMPILABLE}"
            )
        if backend is not None:
            import torch._dynamo  # only with a backend: it is slow to import

        if backend is not None and backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(
                f"backend: {backend!r} is not a torch.compile backend; expected None (replay "
                f"the recording as it is) or one of {torch._dynamo.list_backends(exclude_tags=())}"
            )
        self.elbo, self.backend = elbo, backend
        self._recordings: dict[Hashable, list[_Recording]] = {}

    @property
    def capabilities(self) -> Capabilities:
        """The wrapped estimator's, except that it is not recorded a second time."""
        return dataclasses.replace(capabilities_of(self.elbo), recordable=False)

    def _get_trace(self, model, guide, args, kwargs):
        return elbo_trace(self.elbo, model, guide, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        guess_max_plate_nesting(self.elbo, model, guide, args, kwargs)

    def __getattr__(self, name: str):
        # num_particles, max_plate_nesting, vectorize_particles, ... of the wrapped ELBO.
        if name == "elbo":
            raise AttributeError(name)
        return getattr(self.elbo, name)

    @property
    def num_recordings(self) -> int:
        """How many recordings are kept: one per call signature and set of module modes."""
        return sum(len(kept) for kept in self._recordings.values())

    def loss_and_grads_and_params(
        self, model, guide, *args, **kwargs
    ) -> tuple[float, list[torch.Tensor]]:
        """:meth:`loss_and_grads` and the unconstrained parameters the step read: what an
        optimizer needs, without capturing ``pyro.param`` statements in a trace on replays
        (the step :class:`pyro_vae.svi_step.SVIStep` takes)."""
        run, recording = self._prepare(model, guide, args, kwargs, announce=False)
        if recording is not None:
            loss = run()
            params = [p for _, p in recording.params]
        else:
            with poutine.trace(param_only=True) as capture:
                loss = run()
            params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        if loss.requires_grad:
            loss.backward()
        return loss.item(), params

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A scalar whose value is the loss and whose gradient is the estimator's."""
        run, _ = self._prepare(model, guide, args, kwargs, announce=True)
        return run()

    def record(self, model, guide, *args, **kwargs) -> None:
        """Record the step for these arguments now, without taking it (kept for the calls
        with the same signature, which replay it): ``fit`` does so before it writes
        anything, so that a step that cannot be recorded is refused there, not at the first
        step after the run folder was written (tester BB: ``--compile on`` with a flow's
        ``dreg`` left a folder without a checkpoint, whose advised ``--resume`` failed
        again). The recording draws on a forked random stream and puts every buffer back.

        Raises:
            CaptureError: the step reads values out of tensors or has shapes that depend
                on them (see :meth:`differentiable_loss`)."""
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = _signature(model, guide, leaves, spec)
        if not any(r.modes_hold() for r in self._recordings.get(key, ())):
            self._record_and_keep(key, model, guide, leaves, spec)

    def _prepare(self, model, guide, args, kwargs, announce: bool):
        """``(run, recording)``: ``run()`` returns the loss. With a current recording of
        this call's signature it replays it; otherwise ``recording`` is None and ``run()``
        records the step and runs the ELBO itself."""
        if self._owes_guess():  # where and when the uncompiled estimator guesses
            guess_max_plate_nesting(self.elbo, model, guide, args, kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = _signature(model, guide, leaves, spec)
        kept = self._recordings.get(key, ())
        recording = next((r for r in kept if r.modes_hold()), None)
        if recording is not None and _params_unchanged(recording, announce):
            tensors = [x for x in leaves if torch.is_tensor(x)]
            return lambda: _replay(recording, tensors), recording
        return lambda: self._first_call(key, model, guide, leaves, spec, args, kwargs), None

    def _owes_guess(self) -> bool:
        """Whether the wrapped estimator is one of Pyro's that would guess its
        ``max_plate_nesting`` at this call (vectorized particles, none given), drawing from
        the global random stream: the guess is then made for real before anything is
        recorded or replayed (made inside a recording, on the forked stream, it left the
        compiled run's draws shifted from the uncompiled run's from the first step: tester
        BU). This package's estimators guess on a forked stream themselves."""
        return (
            not isinstance(self.elbo, SurrogateELBO)
            and bool(getattr(self.elbo, "vectorize_particles", False))
            and getattr(self.elbo, "max_plate_nesting", None) == float("inf")
        )

    def _first_call(self, key, model, guide, leaves, spec, args, kwargs) -> torch.Tensor:
        """Record on a forked random stream (twice where the first recording created
        parameters), then run the estimator itself (with Pyro's checks when validation is
        on), drawing what a replay would have drawn. Its loss is
        summed as the recording sums it (tensors, not Python floats), so a run's reported
        losses do not depend on which steps happened to record (a resumed run's history
        equals an uninterrupted one's to the last bit)."""
        self._record_and_keep(key, model, guide, leaves, spec)
        with _items_as_tensors():
            return _loss_with_gradient(self.elbo, model, guide, args, kwargs)

    def _record_and_keep(self, key, model, guide, leaves, spec) -> None:
        """Record the step (twice where the first recording created parameters) and keep
        it under ``key``, beside the recordings of the key's other module modes."""
        self._settle(model, guide, leaves, spec)
        store = pyro.get_param_store()
        before = set(store.keys())
        recording = self._record(model, guide, leaves, spec)
        if set(store.keys()) - before:
            # a pyro.param created while recording is a constant of the graph, not the
            # store's tensor, and its replays gave it no gradient (tester D's F2: plain SVI
            # on a fresh store coasted on step 1's momentum): record again, now it exists
            recording = self._record(model, guide, leaves, spec)
        kept = [r for r in self._recordings.get(key, ()) if r.modes != recording.modes]
        # the recordings of callables that have died since (a wrapper made per step) go
        self._recordings = {k: v for k, v in self._recordings.items() if _alive(k)}
        self._recordings[key] = [*kept, recording]

    def _settle(self, model, guide, leaves, spec) -> None:
        """The wrapped estimator's one-time work for this model, guide and argument shapes
        (this package's estimators check their vectorized particles, and ``score`` the plates
        a guide's draws escape, once each, on forked random streams), done before recording:
        recorded, its draws became the step's own and every replay drew them again, so a
        compiled ``iwae``, ``vimco`` or ``score`` wrapped fresh drew other numbers than the
        uncompiled one from its second step on (tester ET; ``fit`` was spared by its dry
        loss before recording). One loss, on forked streams, without gradients, every
        buffer put back."""
        if not isinstance(self.elbo, SurrogateELBO):
            return
        args, kwargs = pytree.tree_unflatten(leaves, spec)
        with forked_streams(), torch.no_grad(), buffers_kept(), poutine.block():
            self.elbo.loss(model, guide, *args, **kwargs)

    def _record(self, model, guide, leaves, spec) -> _Recording:
        positions = [i for i, x in enumerate(leaves) if torch.is_tensor(x)]

        def one_step(*tensors: torch.Tensor) -> torch.Tensor:
            filled = list(leaves)
            for i, tensor in zip(positions, tensors, strict=True):
                filled[i] = tensor
            args, kwargs = pytree.tree_unflatten(filled, spec)
            with _items_as_tensors():
                return _loss_with_gradient(self.elbo, model, guide, args, kwargs)

        tensors = [leaves[i] for i in positions]
        owed = self._owes_guess()  # recorded ahead of a step (record()): the step guesses
        try:
            if owed:  # here, on a forked stream: inside the recording, its draws were
                # recorded as the step's own, and each replay drew them again
                with forked_streams(), buffers_kept():
                    guess_max_plate_nesting(self.elbo, model, guide, *pytree.tree_unflatten(
                        leaves, spec))  # fmt: skip
            return self._recorded(model, guide, one_step, tensors)
        finally:
            if owed:
                self.elbo.max_plate_nesting = float("inf")

    def _recorded(self, model, guide, one_step, tensors) -> _Recording:
        """:meth:`_record`'s recording of ``one_step`` on ``tensors``: on a forked random
        stream, with gradients, Pyro's validation off and every buffer put back."""
        with (
            forked_streams(),
            # with gradients whatever the caller's mode: recorded under no_grad (SVI's
            # evaluate_loss first), the graph had no gradient path, and every later step
            # replayed it and left the parameters where they were (tester BT's F1)
            torch.enable_grad(),
            _RecordingGuard(),
            pyro.validation_enabled(False),
            poutine.trace(param_only=True) as params,
            # a recording is not a step: BatchNorm's running statistics took one more
            # update per recording, and eval-mode losses after (fit's val_elbo) differed
            # from the uncompiled run's (tester AN's F1). The modules it yields, called
            # through __call__, with their training flags, key the recording (see
            # _Recording.modes_hold)
            buffers_kept() as modes,
        ):
            try:
                graph = make_fx(one_step)(*tensors)
            except SyntaxError as err:  # torch.fx's code for the recording (tester BU)
                raise CaptureError(
                    f"could not record one step of {_name(model)} and {_name(guide)}: torch.fx "
                    f"could not write the recorded operations as Python ({err.msg}; an "
                    "operation named after a Python keyword, as Tensor.random_(from, to) "
                    "records aten.random_.from: torch.randint draws the same integers). "
                    "Train it uncompiled (fit: TrainConfig(compile=False)) or rewrite that "
                    "operation."
                ) from err
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                # make_fx's advice to its own callers (tracing_mode='symbolic') is not ours
                first = first.split(" It may be possible to trace")[0]
                why = _why_unrecordable(err)
                raise CaptureError(
                    f"could not record one step of {_name(model)} and {_name(guide)} as a "
                    f"fixed list of tensor operations: {first}\n{why}; train it uncompiled "
                    "(fit: TrainConfig(compile=False)) and do not declare it recordable."
                ) from err
        _refuse_value_dependent_shapes(graph.graph, model, guide)
        _drop_no_ops(graph.graph)
        graph.graph.eliminate_dead_code()  # random draws count as impure and stay
        graph.recompile()
        if self.backend is not None:
            # Fused kernels round differently: close to the uncompiled losses, no longer bit
            # for bit. fallback_random keeps torch's generator, so the draws stay those of
            # the uncompiled step. Compiles on the first replay.
            options = {"fallback_random": True} if self.backend == "inductor" else None
            # its forward: a module call runs bf16's global hooks, which Dynamo cannot trace
            graph = torch.compile(graph.forward, backend=self.backend, dynamic=False,
                                  fullgraph=True, options=options)  # fmt: skip
        store = pyro.get_param_store()
        recorded = [
            (name, site["value"].unconstrained())
            for name, site in params.trace.nodes.items()
            if name in store
        ]
        # a module run only through .forward skips the hook (as it skips PyTorch's own),
        # though the Dropout and BatchNorm layers it calls are seen; the model's and
        # guide's own modules are added whole. Not seen: a module a plain function holds
        # and runs only through .forward, reading its own self.training (call it as m(x))
        for root in filter(None, (module_of(model), module_of(guide))):
            for module in root.modules():
                modes.setdefault(module, module.training)
        buffers = tuple(
            (module, name, tensor)
            for module in modes
            for name, tensor in module._buffers.items()
            if tensor is not None
        )
        trainable = tuple(p.requires_grad for _, p in recorded)
        return _Recording(graph, recorded, tuple(modes.items()), buffers, trainable)


class _GradientEdit(RuntimeError):
    """A step changes its own gradient in a way its recording would lose."""


#: Changes to a step's gradient that a recording of its forward operations loses:
#: refused while recording (tester CB), each with why.
_GRADIENT_EDITS = {
    torch.Tensor.register_hook: "Tensor.register_hook changes a gradient in the backward "
    "pass, which a recording of the forward operations does not keep",
    torch.Tensor.register_post_accumulate_grad_hook: "Tensor.register_post_accumulate_"
    "grad_hook acts in the backward pass, which a recording does not keep",
    torch.Tensor.detach_: "Tensor.detach_ cuts a gradient in place, which a recording of "
    "the forward operations does not keep",
}
#: Draws whose result has no gradient whether or not gradients are on (a distribution's
#: ``sample()`` makes them under ``torch.no_grad``): they stop nothing a replay would pass.
_NO_GRADIENT_EITHER_WAY = frozenset(
    {torch.bernoulli, torch.Tensor.bernoulli, torch.Tensor.bernoulli_, torch.poisson,
     torch.multinomial, torch.Tensor.multinomial}
)  # fmt: skip


class _RecordingGuard(TorchFunctionMode):
    """While a step is recorded: refuse reading a value out of a tensor
    (:data:`~pyro_vae.estimators.plate_escapes.VALUE_READS`) inside the recording, and a
    change of the step's own gradient (:data:`_GRADIENT_EDITS`,
    :meth:`_follow_stopped_gradients`), and put back every ``torch.Generator`` a draw
    names (a model's own stream, ``torch.randn(..., generator=g)``), as ``fork_rng`` puts
    back the default one: the recording drew from it, and a compiled run's draws were
    shifted by one recording's worth from the uncompiled run's (tester BT's F3)."""

    def __init__(self) -> None:
        super().__init__()
        self._generators: dict[int, tuple[torch.Generator, torch.Tensor]] = {}
        # {id: weak reference} of tensors computed without gradients from ones with them
        self._stopped: dict[int, weakref.ref] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # not where the library's own checks step out of the recording on purpose
        # (disable_proxy_modes_tracing: the vectorization check compares values)
        recording = get_proxy_mode() is not None
        if recording and func in VALUE_READS:
            name = getattr(func, "__name__", str(func))
            raise RuntimeError(
                f"Tensor.{name} reads a value out of a tensor while the step is recorded, "
                "which would fix that value for every replay"
            )
        if recording and func in _GRADIENT_EDITS:
            raise _GradientEdit(_GRADIENT_EDITS[func])
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and id(generator) not in self._generators:
            self._generators[id(generator)] = (generator, generator.get_state())
        out = func(*args, **kwargs)
        if recording:
            self._follow_stopped_gradients(func, (args, kwargs), out)
        return out

    def _follow_stopped_gradients(self, func, inputs, out) -> None:
        """Refuse a tensor computed without gradients from one that has them (in
        ``torch.no_grad``, or in a custom ``torch.autograd.Function``'s forward) once an
        operation with gradients reads it: a recording keeps the forward operations only,
        so the replayed step's gradient would flow through it (tester CB: a stop-gradient
        factor, and a straight-through estimator's backward, were lost with no word). A
        draw of a discrete variable (``torch.bernoulli``: no gradient either way) and an
        integer or boolean result stop nothing."""
        leaves = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
        stopped = any(self._is_stopped(t) for t in leaves)
        if torch.is_grad_enabled():
            if stopped:
                raise _GradientEdit(
                    "a tensor computed without gradients (torch.no_grad, or a custom "
                    "torch.autograd.Function's forward and its own backward) from one with "
                    "them is used with gradients: a recording keeps only the forward "
                    "operations, so its replays would take another gradient"
                )
            return
        if func in _NO_GRADIENT_EITHER_WAY:
            return
        if not (stopped or any(t.requires_grad for t in leaves)):
            return
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                self._stopped[id(t)] = weakref.ref(t)

    def _is_stopped(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` was computed without gradients from one with them, and not
        made a leaf of its own since (``requires_grad_()``: Pyro's param store makes each
        parameter so, under ``torch.no_grad``). A custom ``autograd.Function``'s output
        requires gradients too, through its own backward: not a leaf, so still stopped."""
        ref = self._stopped.get(id(tensor))
        leaf = tensor.requires_grad and tensor.grad_fn is None
        return ref is not None and ref() is tensor and not leaf

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for generator, state in self._generators.values():
                generator.set_state(state)


_VIEWS = {
    torch.ops.aten.expand.default,
    torch.ops.aten.view.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.permute.default,
    torch.ops.aten.alias.default,
}
_IDENTITY_OPERAND = {
    torch.ops.aten.mul.Tensor: 1,
    torch.ops.aten.div.Tensor: 1,
    torch.ops.aten.add.Tensor: 0,
    torch.ops.aten.sub.Tensor: 0,
}


def _replay(recording: _Recording, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The recorded step on ``tensors``. Under mixed precision the recording already holds
    the casts autocast made while it was recorded; replaying it as it is keeps the
    operations outside the networks (log-densities, the ELBO's sums) in float32."""
    with precision.suspended(), contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):  # the user's own autocast: its casts are recorded
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        return recording.graph(*tensors)


# Operations whose output's shape depends on the values of their input: a recording fixes
# the shape the first step had, and every size computed from it after (a view, an expand),
# so a step where the count differs fails to replay, or replays the wrong computation.
_VALUE_DEPENDENT_SHAPES = {
    "aten.nonzero.default",
    "aten.argwhere.default",
    "aten.masked_select.default",
    "aten._unique.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
    "aten.bincount.default",  # its length is the largest value plus one (tester BU)
}


def _refuse_value_dependent_shapes(graph: torch.fx.Graph, model, guide) -> None:
    """Raise :class:`CaptureError` if a recorded operation's output shape depends on
    tensor values: one of :data:`_VALUE_DEPENDENT_SHAPES`, or reading with a boolean mask
    (``x[x > 0]``; Pyro's spline transforms pick the coordinates inside their box so). Not
    writing through one (``r[r < 0] = 0``, ``index_put``): its result keeps its input's
    shape, and values of the count's shape come from a read that is refused (tester BU:
    an in-place clamp was refused, and replays bit for bit)."""
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        masked = name.startswith("aten.index.") and any(
            getattr(getattr(i, "meta", {}).get("val"), "dtype", None) == torch.bool
            for i in (node.args[1] if len(node.args) > 1 else ())
            if i is not None
        )
        if masked or name in _VALUE_DEPENDENT_SHAPES:
            what = "indexing with a boolean mask" if masked else name
            raise CaptureError(
                f"could not record one step of {_name(model)} and {_name(guide)}: it uses "
                f"{what}, whose result's shape depends on tensor values, so a recording "
                "made on one step would not replay on a step where the count differs. Train "
                "it uncompiled (fit: TrainConfig(compile=False)) and do not declare it "
                "recordable."
            )


def _drop_no_ops(graph: torch.fx.Graph) -> None:
    """Bypass recorded operations that return their input unchanged: views to the same
    shape and strides (Pyro's broadcasts of already broadcast tensors, einsum's identity
    permutations) and x·1, x/1, x+0, x−0 (the ELBO's division by one particle, sums
    started at 0). Each still costs an operator call, and an autograd node, per step.
    Only a no-op that is its input's one user goes, so the gradients autograd sums into
    each tensor are summed in the same grouping as without the pass, bit for bit."""
    for node in list(graph.nodes):
        if (
            node.op != "call_function"
            or not node.args
            or not isinstance(node.args[0], torch.fx.Node)
        ):
            continue
        source = node.args[0]
        if node.target in _VIEWS:
            pass
        elif node.target in _IDENTITY_OPERAND and len(node.args) == 2 and not node.kwargs:
            if node.args[1] != _IDENTITY_OPERAND[node.target] or isinstance(node.args[1], bool):
                continue
        else:
            continue
        out, given = node.meta.get("val"), source.meta.get("val")
        if not (torch.is_tensor(out) and torch.is_tensor(given)):
            continue
        same = (out.shape, out.stride(), out.dtype) == (given.shape, given.stride(), given.dtype)
        # Only when the no-op is its input's one user: otherwise the gradients of the
        # no-op's users and of the input's other users would be summed in another grouping,
        # and float32 sums are not associative (the weights drifted by an ulp per step).
        sole = len(source.users) == 1
        if same and sole and not any(_mutates(user) for user in node.users):
            node.replace_all_uses_with(source)
            graph.erase_node(node)  # so its input's users are counted without it


def _mutates(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and schema.is_mutable


def _loss_with_gradient(elbo: ELBO, model, guide, args, kwargs) -> torch.Tensor:
    """``elbo``'s loss as one tensor whose gradient is ``elbo``'s gradient estimate."""
    if isinstance(elbo, SurrogateELBO):
        return elbo.differentiable_loss(model, guide, *args, **kwargs)
    loss, surrogate = 0.0, 0.0
    for model_trace, guide_trace in elbo_traces(elbo, model, guide, args, kwargs):
        loss_particle, surrogate_particle = elbo_loss_particle(elbo, model_trace, guide_trace)
        loss = loss + loss_particle / elbo.num_particles
        surrogate = surrogate + surrogate_particle / elbo.num_particles
    loss = loss if torch.is_tensor(loss) else torch.as_tensor(loss)
    if not torch.is_tensor(surrogate) or not surrogate.requires_grad:
        return loss
    return loss + (surrogate - surrogate.detach())


@contextlib.contextmanager
def _items_as_tensors():
    """Pyro's Trace_ELBO and TraceMeanField_ELBO take the loss's value with ``.item()``,
    which a recording cannot hold (it would freeze the number); while recording, those
    modules' ``torch_item`` returns the detached tensor instead."""
    modules = (pyro.infer.trace_elbo, pyro.infer.trace_mean_field_elbo)
    saved = [module.torch_item for module in modules]
    for module in modules:
        module.torch_item = lambda x: x.detach() if torch.is_tensor(x) else x
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.torch_item = original


def _signature(model, guide, leaves, spec) -> Hashable:
    parts = []
    for leaf in leaves:
        if torch.is_tensor(leaf):
            parts.append(("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad))
        else:
            try:
                hash(leaf)
            except TypeError as err:
                raise ValueError(
                    f"arguments: {leaf!r} ({type(leaf).__name__}) is not hashable; a compiled "
                    "ELBO keys its recordings on non-tensor arguments, so they must be"
                ) from err
            parts.append(leaf)
    return (
        _identity(model), _identity(guide), spec, tuple(parts), precision.active(),
        _autocast_state(),
    )  # fmt: skip


def _autocast_state() -> tuple:
    """The user's own ``torch.autocast`` per device type, (enabled, dtype): a recording
    carries the casts autocast made while it was recorded, so one made without them must
    not be replayed under autocast, nor the other way round (tester BX: a step recorded in
    float32 replayed under ``torch.autocast("cpu", torch.bfloat16)`` diverged from the
    second step)."""
    return tuple(
        (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        for device in ("cpu", "cuda")
    )


def _identity(fn) -> Hashable:
    """A key that is ``fn``'s for as long as ``fn`` lives, and no other callable's after:
    a bound method by its object and function (``vae.model`` is a new method object at
    every access, and keyed by ``id`` it was recorded again at every call), anything else
    by identity (a callable equal by value to another may hold other networks). Keyed by
    ``id`` alone, a dead callable's id could be reused by another, whose call replayed the
    first one's recording (tester AO: 30 models differing in one constant, 29 wrong
    losses); keyed by the callable itself, a wrapper made afresh at every step
    (``poutine.scale(model, s)``) kept every step's recording alive."""
    owner = getattr(fn, "__self__", None)
    function = getattr(fn, "__func__", None)
    if owner is not None and function is not None:
        return ("method", _Identity(owner), function)
    return _Identity(fn)


class _Identity:
    """Equal only to an ``_Identity`` of the same live object; held weakly where the object
    allows (else strongly, so its id cannot be reused while the key is kept)."""

    __slots__ = ("_id", "_ref", "_strong", "__weakref__")

    def __init__(self, obj) -> None:
        self._id = id(obj)
        try:
            self._ref, self._strong = weakref.ref(obj), None
        except TypeError:  # no weak references to it (a builtin, a __slots__ class)
            self._ref, self._strong = None, obj

    def get(self):
        return self._strong if self._ref is None else self._ref()

    def __hash__(self) -> int:
        return self._id

    def __eq__(self, other) -> bool:
        if not isinstance(other, _Identity):
            return NotImplemented
        mine = self.get()
        return mine is not None and mine is other.get()


def _alive(key) -> bool:
    """Whether every callable a recording's key names still lives."""
    return all(part.get() is not None for part in _identities(key))


def _identities(key):
    for part in key[:2]:
        if isinstance(part, _Identity):
            yield part
        elif isinstance(part, tuple):
            yield from (p for p in part if isinstance(p, _Identity))


def _params_unchanged(recording: _Recording, announce: bool) -> bool:
    """Check that each recorded parameter name still holds the tensor the recording reads;
    with ``announce``, as ``pyro.param`` statements that handlers on the stack (SVI's
    parameter capture) see."""
    # a network frozen since (requires_grad_(False)) is no longer a parameter of the step:
    # replayed, the recording announced it, and SVI's optimizer kept moving it (tester AO);
    # checked first, as the lookups below announce what they read
    pairs = zip(recording.params, recording.trainable, strict=True)
    if any(p.requires_grad != flag for (_, p), flag in pairs):
        return False
    store = pyro.get_param_store()
    lookup = pyro.param if announce and am_i_wrapped() else store.get_param
    for name, unconstrained in recording.params:
        if name not in store or lookup(name).unconstrained() is not unconstrained:
            return False
    return True


def _name(fn) -> str:
    """The user's name for ``fn`` in a message: through this package's wrappers (a
    ``Minibatched``'s ``fn``: tester U read "one step of Minibatched and Minibatched"), a
    bound method as ``Class.method``, a module or other callable object by its class."""
    while type(fn).__module__.startswith("pyro_vae.") and callable(getattr(fn, "fn", None)):
        fn = fn.fn
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", None)
    if owner is not None and name is not None:
        return f"{type(owner).__name__}.{name}"
    return name or type(fn).__name__


def _why_unrecordable(err: RuntimeError) -> str:
    """What in the model or guide kept make_fx from recording one step, for
    :class:`CaptureError`'s message."""
    if isinstance(err, _GradientEdit):
        return "The model or guide changes its own gradient"
    if "dynamo-optimized function" in str(err):  # (tester DQ: advice about value reads)
        return (
            "The model or guide calls a torch.compile'd module or function, which this "
            "recording cannot take in; call it uncompiled here"
        )
    return (
        "The model or guide reads a value out of a tensor (.item(), float(t), `if t:`), so "
        "its structure may change from step to step"
    )
