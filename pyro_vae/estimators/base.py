"""Plumbing shared by the estimators defined through a surrogate loss."""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_if_enumerated

from pyro_vae.devices import forked_streams
from pyro_vae.estimators.plate_escapes import CheckedGuides, refuse_plate_escapes
from pyro_vae.plates import batch_rows, find_data_plate, subsampled_data_plate
from pyro_vae.pointwise import particle_rank
from pyro_vae.pyro_compat import elbo_traces
from pyro_vae.traces import (
    SharedSubsamples,
    buffers_kept,
    check_vectorized,
    refuse_guide_only_latents,
    refuse_unscorable_draws,
    stack_particles,
    vectorized_or_looped,
)

# The boolean options of the registry's estimators (Pyro's ELBO takes all but the last,
# ScoreFunctionELBO's), each with what None means where it allows it; get() checks them all.
FLAGS = {
    "vectorize_particles": None,
    "strict_enumeration_warning": None,
    "ignore_jit_warnings": None,
    "retain_graph": "autograd's default",
    "normalize_variance": None,
}


def check_flag(option: str, value, none_means: str | None = None) -> None:
    """Refuse ``value`` unless it is ``True`` or ``False`` (or ``None``, where ``none_means``
    says what it means). The string ``"False"`` (what ``--estimator-opt key=False`` gives,
    not being JSON) is truthy, so it would silently switch the option on.

    Raises:
        ValueError: naming ``option``, ``value`` and what was expected.
    """
    if isinstance(value, bool) or (value is None and none_means is not None):
        return
    also = f", or null (None) for {none_means}" if none_means is not None else ""
    raise ValueError(
        f"{option}: {value!r} is not a boolean; expected true or false (JSON; True or False "
        f"in Python){also}"
    )


class RefusesMaskMismatches:
    """A mixin for Pyro's ELBO classes (``Trace_ELBO``, ``TraceMeanField_ELBO``,
    ``TraceGraph_ELBO``): each pair of traces Pyro's ``_get_trace`` draws is checked by
    :func:`~pyro_vae.traces.refuse_mask_mismatches` first (tester AK: a guide drawing and
    scoring padded steps the model masks off put ``trace``'s ELBO log 2 per padded step
    above the exact one, and above log p(x)), and for model latents the guide does not
    draw (Pyro only warns, and scores them as data).

    Raises:
        ValueError: (at a loss) a latent whose elements one side masks off and the other
            scores, or a model latent the guide does not draw, naming it."""

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        refuse_unscorable_draws(model_trace, guide_trace)
        # as SurrogateELBO refuses them (tester CU: trace's gradient on a model's latent
        # marked for enumeration, drawn from its prior, was 7 standard errors off the
        # enumerated ELBO's; analytic-kl and tracegraph failed with a KeyError)
        refuse_undrawn_latents(type(self).__name__, model_trace, guide_trace)
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        """Pyro's particles' traces, the guide checked first, once per guide and shape of
        the arguments, for draws outside a plate that read a plate's scored draws
        (:func:`~pyro_vae.estimators.plate_escapes.refuse_plate_escapes`)."""
        checked = self.__dict__.setdefault("_escapes_checked", CheckedGuides())
        shapes, name = argument_shapes((args, kwargs)), type(self).__name__

        def check() -> None:
            refuse_plate_escapes(name, guide, args, kwargs)

        for traces in super()._get_traces(model, guide, args, kwargs):
            checked.get(guide, shapes, check)  # after the first run: any lazy parameter made
            yield traces

    def _get_vectorized_trace(self, model, guide, args, kwargs):
        """Pyro's one run of the K particles under a plate (``vectorize_particles=True``),
        checked once per model, guide and shape of the arguments against plain runs
        (:func:`~pyro_vae.traces.check_vectorized`), as :class:`SurrogateELBO` checks its
        own: a model whose arithmetic pairs the particle dim with one of its own gave
        ``trace`` a gradient 5,971 standard errors from the exact one with no word, where
        ``score`` refused it (tester BK)."""
        key = (id(model), id(guide), argument_shapes((args, kwargs)))
        checked = self.__dict__.setdefault("_vectorization_checked", set())
        if self.num_particles == 1 or key in checked:
            return super()._get_vectorized_trace(model, guide, args, kwargs)
        # the check's plain runs draw the vectorized run's minibatch again (tester BL: a
        # subsampled w @ X.T went unchecked, 40 standard errors off)
        shared = SharedSubsamples()
        model, guide = shared(model), shared(guide)
        model_trace, guide_trace = super()._get_vectorized_trace(model, guide, args, kwargs)
        rank = particle_rank(self.max_plate_nesting, self.num_particles)
        check_vectorized(
            model, guide, model_trace, guide_trace, rank, args, kwargs, pinned=True, insisted=True
        )
        checked.add(key)
        return model_trace, guide_trace


class SurrogateELBO(ELBO):
    """An ELBO given by ``differentiable_loss``: ``loss`` is its value and ``loss_and_grads``
    back-propagates it, as Pyro's ELBOs do.

    Particles are vectorized when the model allows it: ``vectorize_particles=None`` (the
    default) runs them under one outer ``pyro.plate``, and if the model cannot run that
    way (boolean-mask indexing, shapes checked by hand, a ``pyro.param`` with its own batch
    dims) but runs once per particle, keeps to a loop from then on, with a
    :class:`~pyro_vae.traces.VectorizationWarning` that says why. ``True`` insists on the
    plate; ``False`` always loops (K runs stacked into the same layout,
    :func:`pyro_vae.traces.stack_particles`), as Pyro's ELBOs do by default.

    ``data_plate`` names the model's per-datapoint plate; by default it is found by the
    rule of :func:`pyro_vae.plates.find_data_plate`. ``min_particles`` and ``too_few`` let a
    subclass demand more than one particle and say why in the error.

    A subclass whose objective is a K-sample importance-weighted bound sets
    ``importance_weighted``: its guide may then draw no latent the model lacks (an
    auxiliary u of q(z, u)), since log (1/K) Σ_k p(x, z_k) / q(z_k, u_k) grows without
    limit in K, and those draws are refused as the evaluators refuse them
    (:func:`~pyro_vae.traces.refuse_unscored_guide_sites`). Every estimator refuses a
    latent whose elements one side masks off and the other scores
    (:func:`~pyro_vae.traces.refuse_mask_mismatches`): no objective of log p − log q is a
    bound then.
    """

    importance_weighted = False

    def __init__(
        self,
        num_particles: int,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
        min_particles: int = 1,
        too_few: str = "is not a positive integer",
        vectorize_particles: bool | None = None,
        data_plate: str | None = None,
    ) -> None:
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < min_particles
        ):
            raise ValueError(f"num_particles: {num_particles!r} {too_few}")
        check_flag("vectorize_particles", vectorize_particles, none_means="auto")
        check_flag("strict_enumeration_warning", strict_enumeration_warning)
        if data_plate is not None and not isinstance(data_plate, str):
            raise ValueError(f"data_plate: {data_plate!r} is not a plate name")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles is not False,
            strict_enumeration_warning=strict_enumeration_warning,
        )
        self._auto_vectorize = vectorize_particles is None
        # the nesting the caller gave, before Pyro counts a particle plate in it
        self._given_nesting = max_plate_nesting
        self.data_plate = data_plate
        # each subsampling plate's indices in the latest particle_traces (Pyro's importance
        # traces leave the subsample sites out)
        self.subsamples: dict[str, torch.Tensor] = {}

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Guessing runs model and guide once; that draw must not shift the random stream,
        # or two runs that guess at different moments (a resumed one) would diverge, nor
        # move a BatchNorm's running statistics: it is not a training step.
        with forked_streams(), buffers_kept():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def particle_traces(self, model, guide, args, kwargs):
        """Model and guide traces of all K particles in one layout, and its batch rank R.

        Particles sit at dim −R: one vectorized run, or K runs stacked. Warns, as Pyro's
        ``Trace_ELBO`` does, when a guide site is marked for enumeration.

        Raises:
            ValueError: a plate of model or guide lies deeper than the ``max_plate_nesting``
                given (:class:`_NestingGuard`), at the first such site of either way of
                drawing the particles.
        """
        vectorize = None if self._auto_vectorize else self.vectorize_particles
        (model_tr, guide_tr, rank), vectorized = vectorized_or_looped(
            vectorize,
            lambda: self._vectorized_traces(model, guide, args, kwargs),
            lambda: self._looped_traces(model, guide, args, kwargs),
            type(self).__name__,
            self.num_particles,
        )
        if self.vectorize_particles and not vectorized:
            self._keep_looping()
        if is_validation_enabled():
            check_if_enumerated(guide_tr)
        refuse_undrawn_latents(type(self).__name__, model_tr, guide_tr)
        refuse_unscorable_draws(model_tr, guide_tr)
        if self.importance_weighted:  # elsewhere a guide-only latent keeps Pyro's convention
            refuse_guide_only_latents(model_tr, guide_tr)
        return model_tr, guide_tr, rank

    def _vectorized_traces(self, model, guide, args, kwargs):
        """One run under the particle plate, checked against plain runs
        (:func:`~pyro_vae.traces.check_vectorized`) once per model, guide and shape of the
        arguments (a model's arithmetic pairs the particle dim with one of its own by its
        shapes; ``w @ X.T`` gave `iwae`, `vimco` and `score` bounds 39 nats below log p(y),
        with no warning, where the diagnostics caught it: tester O; keyed by shape alone, a
        second model went unchecked: tester Q). A minibatch is checked on its own rows."""
        key = (id(model), id(guide), argument_shapes((args, kwargs)))
        shared = SharedSubsamples()  # a minibatch's rows, drawn again by the check's runs
        self.subsamples = shared.indices
        model, guide = self._guarded(shared(model), shared(guide), vectorized=True)
        model_tr, guide_tr = next(elbo_traces(self, model, guide, args, kwargs))
        rank = particle_rank(self.max_plate_nesting, self.num_particles)
        checked = self.__dict__.setdefault("_vectorization_checked", set())
        if self.num_particles > 1 and key not in checked:  # one particle: a plain run
            insisted = not self._auto_vectorize
            check_vectorized(
                model, guide, model_tr, guide_tr, rank, args, kwargs, pinned=True, insisted=insisted
            )
            checked.add(key)
        return model_tr, guide_tr, rank

    def _looped_traces(self, model, guide, args, kwargs):
        nesting = self.max_plate_nesting
        if nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
            nesting = self.max_plate_nesting
        if self.vectorize_particles and self.num_particles > 1:
            nesting -= 1  # Pyro counted the particle plate in it
        shared = SharedSubsamples()  # the particles weigh the same datapoints (tester M)
        self.subsamples = shared.indices
        model, guide = self._guarded(shared(model), shared(guide), vectorized=False)
        pairs = [self._get_trace(model, guide, args, kwargs) for _ in range(self.num_particles)]
        rank = int(nesting) + 1
        return (*stack_particles(pairs, rank), rank)

    def _guarded(self, model, guide, vectorized: bool):
        """``model`` and ``guide`` under a :class:`_NestingGuard` of the
        ``max_plate_nesting`` given (as they are where it was left to be guessed), for a
        ``vectorized`` run (its particle plate at dim −max_plate_nesting, Pyro's) or not."""
        given = getattr(self, "_given_nesting", float("inf"))
        if given == float("inf"):
            return model, guide
        plate = vectorized and self.num_particles > 1
        particle_dim = -int(self.max_plate_nesting) if plate else None
        return _NestingGuard(given, particle_dim)(model), _NestingGuard(given, particle_dim)(guide)

    def _keep_looping(self) -> None:
        """After a fallback, loop from now on rather than failing over at every step."""
        if self.num_particles > 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting -= 1
        self.vectorize_particles = False
        self._auto_vectorize = False

    def per_datapoint_plate(self, model_trace, args, kwargs) -> str | None:
        """The model's per-datapoint plate in this call (:func:`find_data_plate`)."""
        return find_data_plate(
            model_trace, batch_rows(args, kwargs), self.data_plate, nameable=True
        )

    def bound_plate(self, model_trace, args, kwargs) -> str | None:
        """The plate a per-datapoint multi-sample bound is taken over: the per-datapoint
        plate (:meth:`per_datapoint_plate`), or, where none has the batch's rows, the plate
        that subsamples them inside the model (:func:`~pyro_vae.plates.subsampled_data_plate`)."""
        rows = batch_rows(args, kwargs)
        plate = find_data_plate(model_trace, rows, self.data_plate, nameable=True)
        return plate if plate is not None else subsampled_data_plate(model_trace, rows)

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


class _NestingGuard(Messenger):
    """Refuse, at its first sample site, a run whose plates lie deeper than the
    ``max_plate_nesting`` the caller gave. Too small a nesting puts the particle plate where
    a model's plate belongs; the vectorized run then failed as if the model did not
    broadcast, and the loop it fell back on ran under the nesting that still counted the
    particle plate, so the first step returned a number with a warning blaming
    vectorization and every later step raised "plate stack overflow" (tester's K2).

    It sits inside the particle plate, so it sees only the plates model and guide open; in
    a vectorized run (``particle_dim``, the particle plate's dim) a plate past the
    particle plate's dim counts one shallower, where it would lie without it."""

    def __init__(self, given: float, particle_dim: int | None = None) -> None:
        super().__init__()
        self.given = given
        self.particle_dim = particle_dim

    def _depth(self, frame) -> int:
        past = self.particle_dim is not None and frame.dim < self.particle_dim
        return -frame.dim - int(past)

    def _pyro_sample(self, msg) -> None:
        frames = [f for f in msg["cond_indep_stack"] if f.vectorized and f.dim is not None]
        deepest = max(frames, key=self._depth, default=None)
        if deepest is None or self._depth(deepest) <= self.given:
            return
        given = int(self.given) if float(self.given).is_integer() else self.given
        need = self._depth(deepest)
        raise ValueError(
            f"max_plate_nesting: {given!r} is too small for this model: site "
            f"{msg['name']!r} lies in plate {deepest.name!r} at dim -{need}, so the model "
            f"nests plates at least {need} deep; pass max_plate_nesting={need} or more, or "
            "leave it out to have it found from one run of model and guide"
        )


def argument_shapes(value) -> tuple:
    """The shapes of the tensors in ``value`` (nested tuples, lists and dicts), in order:
    what a vectorized run's broadcasting depends on."""
    if torch.is_tensor(value):
        return (tuple(value.shape),)
    if isinstance(value, (tuple, list)):
        return tuple(shape for item in value for shape in argument_shapes(item))
    if isinstance(value, dict):
        return tuple(
            shape for key in sorted(value, key=str) for shape in argument_shapes(value[key])
        )
    return ()


def refuse_undrawn_latents(
    estimator: str, model_trace, guide_trace, enumerated_summed: bool = False
) -> None:
    """A latent model site the guide does not draw would be drawn from its prior inside
    the model and scored as data: not the ELBO these estimators report. Pyro's ELBOs warn
    ("Found vars in model but not guide"); a site marked for enumeration would be summed
    out by ``TraceEnum_ELBO`` but is sampled here. ``enumerated_summed``: the estimator
    is ``TraceEnum_ELBO``, which sums out the marked sites (the others it samples too).

    Raises:
        ValueError: naming the sites and what to do instead.
    """
    guide_sites = {n for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    missing = [
        (n, bool(s["infer"].get("enumerate")))
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample"
        and not s["is_observed"]
        and n not in guide_sites
        and not site_is_subsample(s)
        and not (enumerated_summed and s["infer"].get("enumerate"))
    ]
    if not missing:
        return
    names = [n for n, _ in missing]
    if any(enumerated for _, enumerated in missing):
        hint = (
            "sites marked for enumeration are summed out only by the enum estimator "
            "(TraceEnum_ELBO); with this estimator give the guide a factor for them "
            "(e.g. pyro_vae.guides.AutoDiscreteMeanField) and drop the enumerate mark"
        )
    else:
        hint = (
            "if they are data, pass every data argument of the model; if latent, the guide "
            "must draw them"
        )
    raise ValueError(
        f"{estimator}: the model's latent sites {names} are not drawn by the guide, so they "
        f"would be drawn from their prior and scored as if observed; {hint}"
    )
