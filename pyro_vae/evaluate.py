"""Evaluate a fitted model/guide pair per datapoint.

All estimates rest on the importance weights of the guide for the model,

    log w_k(x_n) = log p(x_n, z_k) − log q(z_k | x_n),    z_k ~ q(· | x_n),

computed for K particles at once (a vectorized ``pyro.plate`` outside the model's own
plates, or a loop over particles for models that cannot broadcast; see
:mod:`pyro_vae.traces`) and summed within each datapoint of the model's per-datapoint
plate (:func:`pyro_vae.plates.find_data_plate`):

- the ELBO, E_q[log w] ≤ log p(x_n) (Jordan et al. 1999; the lecture's eq. 18.3);
- the importance-weighted bound log (1/K) Σ_k w_k (Burda, Grosse & Salakhutdinov 2015),
  which is ≥ the ELBO in expectation, increases with K, and tends to log p(x_n); it is
  computed in chunks of particles with a running log-sum-exp, so memory is bounded by
  ``max_elements`` whatever K is;
- the whole-data ELBO of a pair with global latents (:func:`elbo_estimate`).

What the guide says of each row's latents (E_q[z | x], the active units) is
:mod:`pyro_vae.latent_summaries`'.

Every term is read off the traces' own log-densities, so nothing here assumes a standard
Normal prior or a closed-form KL: a learned mixture prior (``models.priors``) is scored by
its ``log_prob``, and the KL of :func:`elbo_terms_per_datapoint` is always Monte Carlo.

``x`` is the model's data: one tensor, or a tuple of tensors (``(x, y)`` for a model
called as ``model(x, y)``) sharing their leading, per-datapoint dim. Rows are evaluated in
chunks; the per-datapoint plate gets the chunk's row indices in 0..N−1 and the full size N
(:mod:`pyro_vae.minibatch`), so a guide with free per-datapoint parameters scores the
rows it was fitted to. A model site that is neither observed nor drawn by the guide (a
data argument left out, say) is refused rather than scored as a latent.

A pair with :class:`~pyro_vae.annealing.ScaleLatents` in it (β-VAE as plain ``SVI`` trains
it) is scored under :func:`~pyro_vae.annealing.unscaled`, where every such handler is a
no-op wherever it sits (around the model, under ``functools.partial`` or
``poutine.block``, in a wrapper function, or entered inside the model's code), as
:func:`pyro_vae.fit` validates it: β weights the training objective, while log p(x) and
the ELBO belong to the model. The pair :func:`prepare` returns runs unscaled whoever runs
it (:class:`UnscaledMinibatched`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae.annealing import unscaled, unwrap
from pyro_vae.checks import check_count
from pyro_vae.devices import forked_streams, resolve_device, to_device
from pyro_vae.enumerated_sites import enumerated_runs, enumerated_sites, marginal_terms
from pyro_vae.guides.fixed import as_guide
from pyro_vae.interruptions import reraise_interruption
from pyro_vae.mapped_rows import MappedRows
from pyro_vae.minibatch import (
    Minibatched,
    align_autoguide,
    fitted_rows,
    refuse_reading_the_batch_by_plate,
)
from pyro_vae.module_hooks import global_forward_pre_hook
from pyro_vae.moved import hand_over
from pyro_vae.plates import (
    DeclaredSubsamples,
    batch_rows,
    find_data_plate,
    frames_in,
    refuse_self_subsampling,
    require_data_plate,
)
from pyro_vae.pointwise import (
    common_scale,
    data_plate_scale,
    per_datapoint_log_density,
    refuse_inner_subsampling,
    unscaled_by,
)
from pyro_vae.progress import bar as progress_bar
from pyro_vae.traces import (
    PointMassWarning,
    base_distribution,
    check_vectorized_pair,
    particle_traces,
    plate_nesting,
    point_mass_latents,
    point_mass_message,
    refuse_scored_guide_observations,
    refuse_unscorable_draws,
    run_pair,
    sample_sites,
    sample_sites_where,
    vectorize_for,
    vectorized_or_looped,
)
from pyro_vae.weights import check_dtypes, module_of

# Moved to pyro_vae.latent_summaries (what a fitted guide says of each row's latents);
# resolved on first use, with a warning.
_MOVED = {
    "active_units",
    "label_metrics",
    "latent_draws",
    "latent_draws_of",
    "latent_means",
    "reconstruction_error",
}
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    return hand_over(__name__, "pyro_vae.latent_summaries", _MOVED, name, _WARNED)


@contextlib.contextmanager
def eval_mode(*fns: object) -> Iterator[None]:
    """Torch modules in eval mode (no dropout, BatchNorm on its running statistics, which
    it then leaves as they are) while the block runs; every flag as it was on leaving.

    Two ways, so that no wrapping of a model hides its modules: the modules behind ``fns``
    (:func:`~pyro_vae.weights.module_of`: modules, bound methods, and both inside
    ``functools.partial``, Pyro handlers, ``Minibatched``) are switched on entry, with
    their submodules; and every module called while the block is open (a lambda's, a plain
    function's, globals') is switched as it is called, by a forward pre-hook, itself only.
    The flags are restored one by one, in reverse (a child the user had put in eval mode
    under a training parent stays so), on any exit, an exception's too.

    Process-global while open: a module another thread calls meanwhile is switched too, and
    restored on leaving. Blocks may nest: a module's flag is recorded once, by the first
    open block to switch it, in a record they share, and put back by that block (an outer
    block that met a module only when an inner one had switched it recorded eval mode, and
    left the network in it for good: review of cb181f9..c795b70).
    """
    mine: list[int] = []  # the modules this block recorded, in order

    def switch(module: torch.nn.Module, _inputs=None) -> None:
        if id(module) not in _RECORDED_MODES:
            _RECORDED_MODES[id(module)] = (module, module.training)
            mine.append(id(module))
        module.training = False  # this module only: its children are switched when called

    behind = [m for m in map(module_of, fns) if m is not None]
    for m in behind:
        for sub in m.modules():
            switch(sub)
        m.train(False)  # as before, for modules whose own train() does more than the flag
    handle = global_forward_pre_hook(switch)
    try:
        yield
    finally:
        handle.remove()
        restored = {key: _RECORDED_MODES.pop(key) for key in mine}
        for m in reversed(behind):
            if id(m) in restored:
                m.train(restored[id(m)][1])
        for module, mode in reversed(list(restored.values())):
            module.training = mode


#: {id(module): (module, its flag before the first open eval_mode block switched it)}
_RECORDED_MODES: dict[int, tuple[torch.nn.Module, bool]] = {}


def bare_pair(model, guide) -> tuple:
    """``(model, guide)`` without the ``ScaleLatents(b)(fn)`` wrappers around the outside of
    either, for what they are made of: their torch modules (:func:`eval_mode`), a
    ``num_data`` keyword, a Pyro autoguide's rows, none of which shows through the wrapper's
    ``functools.partial``. Not what makes the numbers the model's: handlers at any depth
    are no-ops under :func:`~pyro_vae.annealing.unscaled`, which the evaluators run in, so
    peeling the outer ones changes no number."""
    bare = []
    for fn in (model, guide):
        inner, handler = unwrap(fn)
        while handler is not None:
            fn = inner
            inner, handler = unwrap(fn)
        bare.append(fn)
    return tuple(bare)


class UnscaledMinibatched(Minibatched):
    """:class:`~pyro_vae.minibatch.Minibatched`, run under :func:`~pyro_vae.annealing.
    unscaled`: the pair :func:`prepare` returns scores the model's log-densities whoever
    runs it (:mod:`pyro_vae.diagnostics.psis` runs it directly), whatever β handlers are
    inside it."""

    def __call__(self, *args, subsample: torch.Tensor | None = None, **kwargs):
        with unscaled():
            return super().__call__(*args, subsample=subsample, **kwargs)


def _warn_point_masses(names: list[str], stacklevel: int) -> None:
    """A :class:`~pyro_vae.traces.PointMassWarning` where the guide puts point masses on the
    continuous latents ``names``: the evaluators' numbers are then not bounds."""
    if names:
        message = "guide: " + point_mass_message(names)
        warnings.warn(message, PointMassWarning, stacklevel=stacklevel)


def check_num(arg: str, value: int) -> None:
    """Refuse a count below 1, naming ``arg`` (:func:`~pyro_vae.checks.check_count`)."""
    check_count(arg, value, 1)


def rescaled(nats: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``nats`` ``[B]``, a value of the unscaled ratios, times the common ``scale`` (a float,
    or ``[1, B]``) of each datapoint: what a scaled objective counts; unchanged at 1.0."""
    if isinstance(scale, float) and scale == 1.0:
        return nats
    return nats * (scale.reshape(-1) if torch.is_tensor(scale) else scale)


def check_finite(args: tuple, arg: str = "x") -> None:
    """Refuse NaN or infinite entries in any floating tensor among ``args``, naming them
    as :func:`refuse_non_finite` does (``{arg}``, or ``{arg}[i]`` among several)."""
    for i, a in enumerate(args):
        refuse_non_finite(arg if len(args) == 1 else f"{arg}[{i}]", a)


def refuse_non_finite(name: str, x) -> None:
    """Refuse a floating tensor ``x`` with NaN or infinite entries: the count, and the row
    of the first (one wording for every evaluator: tester FK found two).

    Raises:
        ValueError: ``"{name}: {count} of its {numel} entries are NaN or infinite (the
            first in row {row}); expected finite values"``."""
    if not (torch.is_tensor(x) and x.is_floating_point()) or bool(torch.isfinite(x).all()):
        return
    bad = ~torch.isfinite(x).reshape(x.shape[0], -1) if x.dim() else ~torch.isfinite(x)
    first = int(bad.any(-1).nonzero()[0]) if x.dim() else 0
    raise ValueError(
        f"{name}: {int(bad.sum())} of its {x.numel()} entries are NaN or infinite (the first "
        f"in row {first}); expected finite values"
    )


def data_arguments(x) -> tuple[torch.Tensor, ...]:
    """``x`` as the tuple of the model's data arguments, checked to share their rows.
    Memory-mapped rows (:class:`pyro_vae.mapped_rows.MappedRows`, checked when loaded)
    pass as they are: the evaluators slice them a chunk at a time."""
    args = tuple(x) if isinstance(x, tuple | list) else (x,)
    rows_like = (torch.Tensor, MappedRows)
    if not args or not all(isinstance(a, rows_like) and a.dim() >= 1 for a in args):
        raise ValueError(
            f"x: expected a tensor or a tuple of tensors with a leading datapoint dim, got "
            f"{type(x).__name__}"
        )
    rows = {int(a.shape[0]) for a in args}
    if len(rows) != 1:
        raise ValueError(
            f"x: the data arguments have {sorted(rows)} rows; expected one row per datapoint "
            "in each"
        )
    check_finite(args)
    return args


def _chunk(args: tuple, start: int, stop: int) -> tuple:
    return tuple(a[start:stop] for a in args)


def max_plate_nesting(model, guide, *args, **kwargs) -> int:
    """How many batch dimensions the model and guide use, read from one trace of each."""
    model, guide = bare_pair(model, guide)
    with torch.no_grad(), forked_streams(), unscaled():
        model_tr, guide_tr = run_pair(model, guide, args, kwargs)
    return plate_nesting(model_tr, guide_tr)


@dataclass
class PerDatapoint:
    """A model/guide pair ready to score the rows of ``data`` (see :func:`prepare`).

    ``model`` and ``guide`` are wrapped to receive the per-datapoint plate's full size and
    each chunk's row indices (``rows``, the data's rows among ``num_data``); ``plate`` is that
    plate's name, ``nesting`` the batch dims the pair uses, ``vectorize`` the particle mode
    (``None``: vectorized unless that fails).
    """

    model: Minibatched
    guide: Minibatched
    plate: str
    nesting: int
    num_data: int
    rows: torch.Tensor
    vectorize: bool | None = None
    #: model sites summed out by enumeration (:mod:`pyro_vae.enumerated_sites`)
    enumerated: tuple = ()
    #: continuous latents the guide draws from a point mass (:func:`point_mass_latents`)
    point_masses: tuple = ()

    def warn_point_masses(self) -> None:
        """:func:`_warn_point_masses` of this pair's guide."""
        _warn_point_masses(list(self.point_masses), stacklevel=4)

    def subsample(self, start: int, count: int) -> torch.Tensor:
        """The row indices of the data's rows ``start .. start + count``."""
        return self.rows[start : start + count]

    def log_weights(self, args: tuple, start: int, num_samples: int) -> torch.Tensor:
        """log p(x_n, z_k) − log q(z_k | x_n) for the rows ``start..`` in ``args``: ``[K, B]``
        (the model's enumerated sites summed out of p), each site at its own scale relative
        to the plate's subsampling: a ``poutine.scale(c)`` around model and guide is in it,
        as Pyro's ELBOs count it, so its mean over k is c × the ELBO."""
        return self.scaled_log_weights(args, start, num_samples)[0]

    def importance_log_weights(
        self, args: tuple, start: int, num_samples: int
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """The importance log-ratios log w_k(x_n) / c ``[K, B]`` and the scale c that every
        site of model and guide shares in each datapoint (:meth:`scale_of`).

        c multiplies the whole objective (a ``poutine.scale(c)`` around both, a user
        rescaling a minibatch by hand), not the densities: the ratios p(x_n, z) / q(z | x_n)
        are those of the unscaled pair, and a value in nats built on them is c times the
        unscaled one, c · log (1/K) Σ_k exp(log w_k / c) for IWAE, as the ``iwae`` and
        ``vimco`` estimators take it (:func:`~pyro_vae.pointwise.common_scale`). Folded
        into each weight instead, the scaled IWAE estimate at c = 3 came out 0.07 nats above
        c · log p(x_1), which no bound can exceed. c is 1.0 (and the ratios exactly
        :meth:`log_weights`) where the sites' scales differ (β on the latents, a scale on
        the observations alone)."""
        log_w, scale = self.scaled_log_weights(args, start, num_samples)
        return unscaled_by(log_w, scale), scale

    def scaled_log_weights(
        self, args: tuple, start: int, num_samples: int
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """(:meth:`log_weights`, :meth:`scale_of` their traces), from one set of draws."""
        if self.enumerated:
            (observed, latent, guide), scale = self._terms(args, start, num_samples)
            return observed + latent - guide, scale
        model_tr, guide_tr = self._traces(args, start, num_samples)
        log_w = self._density(model_tr, args, num_samples) - self._density(
            guide_tr, args, num_samples
        )
        return log_w, self.scale_of(model_tr, guide_tr)

    def scale_of(self, model_tr, guide_tr) -> float | torch.Tensor:
        """The scale c common to every sample site of the two traces beyond the plate's
        subsampling factor (:func:`~pyro_vae.pointwise.common_scale`, read relative to the
        plate's subsampling as :meth:`log_weights` reads each site): a float (1.0 where
        there is none), or ``[1, B]``, one per datapoint, for per-datapoint tensor scales."""
        plate_scale = data_plate_scale(model_tr, self.plate)
        return common_scale((model_tr, guide_tr), self.nesting + 1, self.plate, plate_scale)

    def log_weight_terms(
        self, args: tuple, start: int, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x_n | z_k) (the model's observed sites), log p(z_k) (its latent sites) and
        log q(z_k | x_n) for the rows ``start..`` in ``args``, from the same draws:
        ``[K, B]`` each; ``first + second − third`` is :meth:`log_weights`."""
        return self._terms(args, start, num_samples)[0]

    def _terms(self, args: tuple, start: int, num_samples: int):
        """(:meth:`log_weight_terms`, :meth:`scale_of` their traces)."""
        model_tr, guide_tr = self._traces(args, start, num_samples)
        scale = self.scale_of(model_tr, guide_tr)
        if self.enumerated:  # log Σ_c p(x_n, z_n = c | u) in the first, log p(u) the second
            return (*self._summed_out(model_tr, guide_tr, args, start, num_samples),
                    self._density(guide_tr, args, num_samples)), scale  # fmt: skip
        observed = sample_sites_where(model_tr, lambda _, site: site["is_observed"])
        latent = sample_sites_where(model_tr, lambda _, site: not site["is_observed"])
        return (
            self._density(observed, args, num_samples),
            self._density(latent, args, num_samples),
            self._density(guide_tr, args, num_samples),
        ), scale

    def _traces(self, args: tuple, start: int, num_samples: int):
        rows = int(args[0].shape[0])
        subsample = self.subsample(start, rows).to(args[0].device)
        model_tr, guide_tr, vectorized = particle_traces(
            self.model,
            self.guide,
            args,
            {"subsample": subsample},
            num_samples,
            self.nesting,
            self.vectorize,
        )
        self.vectorize = vectorized
        return model_tr, guide_tr

    def _summed_out(self, model_tr, guide_tr, args: tuple, start: int, num_samples: int):
        """:func:`~pyro_vae.enumerated_sites.marginal_terms` of the rows ``start..``."""
        runs = self.summed_runs(model_tr, guide_tr, args, start, num_samples)
        rows, rank = int(args[0].shape[0]), self.nesting + 1
        return marginal_terms(runs, self.enumerated, num_samples, rows, rank, self.plate)

    def summed_runs(self, model_tr, guide_tr, args: tuple, start: int, num_samples: int):
        """:func:`~pyro_vae.enumerated_sites.enumerated_runs` of the rows ``start..``: one
        model run per value of the sites summed out, the guide's draws replayed.

        Raises:
            ValueError: the particles were drawn in a loop, not under a particle plate."""
        if not self.vectorize:
            raise ValueError(
                f"model: the sites {list(self.enumerated)} are summed out by enumeration, "
                "which the per-datapoint evaluators do in a run per value with the guide's "
                "draws replayed under the particle plate; this pair's particles were drawn "
                "in a loop (vectorize_particles=False, or a model that does not broadcast). "
                "Use pyro_vae.evaluate.elbo_estimate (TraceEnum_ELBO)"
            )
        rows, rank = int(args[0].shape[0]), self.nesting + 1
        kwargs = {"subsample": self.subsample(start, rows).to(args[0].device)}
        return enumerated_runs(
            self.model, model_tr, guide_tr, args, kwargs, self.enumerated, num_samples, rank
        )

    def _density(self, trace, args: tuple, num_samples: int) -> torch.Tensor:
        rows, rank = int(args[0].shape[0]), self.nesting + 1
        # each site at its scale relative to the plate's subsampling: a scale of the model's
        # own (poutine.scale) is its density's, as Pyro's ELBOs and elbo_estimate count it
        return per_datapoint_log_density(
            trace, num_samples, rows, rank, self.plate, True, args[0].device
        )


def _refuse_fitted_estimator(guide, what: str) -> None:
    """Refuse a fitted :mod:`pyro_vae.cavi` estimator as the guide of a per-datapoint
    evaluation: its q is of the whole data set, and these evaluations draw the guide on
    chunks of rows (tester BR: drawn on all N rows against a chunk of 100, Pyro's "Shape
    mismatch inside plate"; before, "object is not callable").

    Raises:
        ValueError: naming the evaluation and what takes a fit."""
    if hasattr(guide, "variational_distributions") and not callable(guide):
        raise ValueError(
            f"guide: a fitted {type(guide).__name__}, whose q is of the whole data set; "
            f"{what} draws the guide on chunks of rows. Score a fit on the whole data with "
            "elbo_estimate, psis_khat or to_inference_data (they take it as the guide)"
        )


def _check_rows(x, model) -> None:
    """Refuse data with no rows (of any model), and rows the model does not take
    (:func:`check_rows`); their entries were checked by :func:`data_arguments`, which every
    caller's data came through, so they are not read again."""
    if int(x.shape[0]) == 0:
        raise _no_rows(x)
    _refuse_rows_not_taken(x, model)


def _no_rows(x, name: str = "x") -> ValueError:
    return ValueError(
        f"{name}: shape {tuple(x.shape)} has no rows; expected at least one datapoint"
    )


def check_rows(x, model, name: str = "x") -> None:
    """Where ``model`` (or the module of its bound method) declares ``x_dim``, refuse ``x`` (named
    ``name`` in the errors) that is not ``[N, ...]`` rows of ``x_dim`` values, N ≥ 1 (tester
    CJ: one image ``x[0]``, of shape [64], was scored as 64 rows; ``x[:0]`` raised a
    ZeroDivisionError, ``x[:, :63]`` PyTorch's "mat1 and mat2 shapes cannot be multiplied";
    tester CO: the same in ``elbo_estimate``, the latent summaries and ``amortization_gap``;
    tester FC: in ``to_inference_data``, ``psis_khat_per_datapoint`` and ``write_report``,
    and a NumPy array failed inside ``linear``). A tensor of no rows, or with NaN or
    infinite entries (tester FJ: ``amortization_gap`` fitted the local guides to NaN and
    failed in Pyro's constraint check on the encoder's loc), is refused whatever the model;
    other models, and ``x`` that is not a tensor or an array, pass.

    Raises:
        ValueError: naming the shape (or the type, or the entries) and what was expected."""
    if torch.is_tensor(x) and x.dim() >= 1 and int(x.shape[0]) == 0:
        raise _no_rows(x, name)
    refuse_non_finite(name, x)
    _refuse_rows_not_taken(x, model, name)


def _refuse_rows_not_taken(x, model, name: str = "x") -> None:
    """:func:`check_rows`' refusal of rows that are not of the model's ``x_dim``."""
    x_dim = getattr(getattr(model, "__self__", model), "x_dim", None)
    if not isinstance(x_dim, int) or isinstance(x_dim, bool):
        return
    if isinstance(x, np.ndarray):
        raise ValueError(
            f"{name}: a NumPy array of shape {x.shape}; expected a torch.Tensor [N, {x_dim}] "
            "(torch.as_tensor(x, dtype=torch.float32))"
        )
    if not torch.is_tensor(x):
        return
    width = math.prod(x.shape[1:])
    if width != x_dim:
        one = x.dim() == 1 and x.shape[0] == x_dim
        raise ValueError(
            f"{name}: shape {tuple(x.shape)}, rows of {width} value{'s' * (width != 1)}; the model "
            f"takes x_dim={x_dim}, expected [N, {x_dim}]"
            + (f" (one datapoint is {name}[None], of shape [1, {x_dim}])" if one else "")
        )


def prepare(
    model,
    guide,
    data: tuple[torch.Tensor, ...],
    what: str,
    data_plate: str | None = None,
    vectorize_particles: bool | None = None,
    probe_rows: int = 100,
    rows: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    multi_sample: bool = False,
) -> PerDatapoint:
    """Find the per-datapoint plate and check the pair before any per-datapoint work.

    The plate is found on a run of the model alone, outside the random stream; the pair
    is then run once on the first ``probe_rows`` rows to read its plate nesting and check
    that the guide covers the model's latent sites. That run draws from the global stream,
    as one guide-and-model run per evaluation always has, so seeded results stay as they were.

    ``rows``: for a guide with free per-datapoint parameters (an autoguide ``fit`` trained
    over local latents), which rows of the data it was fitted to ``data`` holds; the first
    ``len(data)`` when ``None``. Such a guide has nothing to say about other data.
    ``device``: where the pair computes; the probe rows and ``rows`` are put there
    (``None``: where ``data`` is). ``multi_sample``: ``what`` takes a log-sum-exp over
    each datapoint's draws (IWAE's log p(x_n), PSIS ratios), so no other plate may be
    subsampled (:func:`~pyro_vae.pointwise.refuse_inner_subsampling`).

    Raises:
        pyro_vae.plates.DataPlateError: the model has no per-datapoint plate; with
            ``multi_sample``, another plate is subsampled.
        ValueError: a model site is neither observed nor in the guide; ``rows`` of the
            wrong length or beyond the rows a local autoguide was fitted to.

    The returned pair's model and guide run under :func:`~pyro_vae.annealing.unscaled`
    (:class:`UnscaledMinibatched`): the model's ELBO and log p(x), not a β-objective, from
    whatever :class:`~pyro_vae.annealing.ScaleLatents` handlers are in it.
    """
    model, guide = bare_pair(model, guide)
    _refuse_fitted_estimator(guide, what)
    count = int(data[0].shape[0])
    _check_rows(data[0], model)
    device = data[0].device if device is None else resolve_device(device, "device")
    probe = to_device(_chunk(data, 0, min(count, probe_rows)), device)
    num_rows = batch_rows(probe)
    check_dtypes(probe, model, guide)
    num_data, rows = _rows_of(guide, count, rows, device)
    # the probes pass num_data=N where the functions take it, as every later run does
    probe_model = Minibatched(model, None, num_data)
    probe_guide = Minibatched(guide, None, num_data)
    with torch.no_grad(), eval_mode(model, guide):
        prior_tr = _prior_probe(probe_model, probe, num_rows, what)
        refuse_self_subsampling(prior_tr, num_rows, what)
        plate = find_data_plate(prior_tr, num_rows, data_plate, nameable=True)
        if plate is None:
            refuse_uncovered_sites(probe_model, probe_guide, probe)
        plate = require_data_plate(plate, num_rows, what)
        _refuse_reading_chunks_by_plate(model, probe, plate, num_data, rows, what)
        dim = next(f.dim for s in sample_sites(prior_tr).values() for f in frames_in(s, plate))
        align_autoguide(guide, plate, dim, num_data)
        pair = PerDatapoint(
            UnscaledMinibatched(model, plate, num_data),
            UnscaledMinibatched(guide, plate, num_data),
            plate,
            0,
            num_data,
            rows,
            vectorize_particles,
        )
        subsample = pair.subsample(0, num_rows).to(probe[0].device)
        model_tr, guide_tr = run_pair(pair.model, pair.guide, probe, {"subsample": subsample})
    check_guide_covers_model(model_tr, guide_tr)
    if multi_sample:
        refuse_inner_subsampling(model_tr, guide_tr, plate, what)
    with forked_streams(), torch.no_grad(), eval_mode(model, guide):
        _, again = run_pair(pair.model, pair.guide, probe, {"subsample": subsample})
    pair.point_masses = tuple(point_mass_latents(model_tr, guide_tr, again))
    pair.nesting = plate_nesting(model_tr, guide_tr)
    pair.enumerated = enumerated_sites(model_tr, guide_tr, plate, what)
    return pair


def _refuse_reading_chunks_by_plate(
    model, probe: tuple, plate: str, num_data: int, rows: torch.Tensor, what: str
) -> None:
    """Refuse a model that reads each chunk by ``plate``'s indices, which are the chunk's
    ``rows`` among the ``num_data`` (:func:`~pyro_vae.minibatch.
    refuse_reading_the_batch_by_plate`), run on the ``probe`` chunk with the last rows:
    those furthest past a chunk's own positions."""
    last = rows[len(rows) - batch_rows(probe) :]
    refuse_reading_the_batch_by_plate(model, probe, plate, num_data, last, what)


def _prior_probe(model, probe: tuple, rows: int | None, what: str) -> poutine.Trace:
    """A run of the model alone on the ``probe`` rows, outside the random stream; a run
    that Pyro fails because a data plate declares a ``subsample_size`` larger than the
    rows is refused as :func:`~pyro_vae.plates.refuse_self_subsampling` refuses."""
    declared = DeclaredSubsamples()
    try:
        with forked_streams(), poutine.block(), declared:
            return poutine.trace(model).get_trace(*probe)
    except ValueError as error:
        refusal = declared.refusal(rows, what)
        if refusal is None:
            raise
        raise refusal from error


def _rows_of(
    guide, count: int, rows: torch.Tensor | None, device: torch.device
) -> tuple[int, torch.Tensor]:
    """N and the data's rows among them (on the data's ``device``).

    N is the guide's own where it says how many rows it holds (:func:`~pyro_vae.minibatch.
    fitted_rows`: a local autoguide, ``LocalNormal``), and ``rows`` must lie below it.
    Any other guide (``pyro.param`` tensors indexed by the plate's rows, say) does not say:
    N is then the fewest rows ``rows`` implies, max(count, max(rows) + 1), and whether the
    guide holds those rows is its own indexing's to tell. Nothing scored depends on N
    beyond that: each site is read at its scale relative to the plate's subsampling."""
    if rows is None:
        rows = torch.arange(count, device=device)
    rows = torch.as_tensor(rows, dtype=torch.long, device=device)
    if rows.shape != (count,):
        raise ValueError(f"rows: shape {tuple(rows.shape)}; expected one index per row ({count},)")
    if count and int(rows.min()) < 0:
        raise ValueError(
            f"rows: indices {int(rows.min())}..{int(rows.max())}; expected indices ≥ 0 into "
            "the rows of the data the guide was fitted to"
        )
    fitted = fitted_rows(guide)
    if fitted is None:
        return max(count, int(rows.max()) + 1 if count else 0), rows
    if count and int(rows.max()) >= fitted:
        raise ValueError(
            f"rows: indices {int(rows.min())}..{int(rows.max())}, but the guide holds "
            f"per-datapoint parameters for {fitted} rows; evaluate it on rows of the data it "
            "was fitted to (rows= says which)"
        )
    return fitted, rows


def refuse_uncovered_sites(
    model, guide, args: tuple, kwargs: dict | None = None, tolerant: bool = True
) -> None:
    """Run the pair once (outside the random stream) and apply
    :func:`check_guide_covers_model`. ``tolerant``: a pair that does not run here is let
    through (a caller about to refuse for another reason checks first whether the real
    cause is a data argument left out, whose site is then neither observed nor drawn)."""
    try:
        with forked_streams(), torch.no_grad():
            model_tr, guide_tr = run_pair(model, guide, args, kwargs or {})
    except Exception as err:
        reraise_interruption(err)
        if tolerant:
            return
        raise
    check_guide_covers_model(model_tr, guide_tr)


def check_guide_covers_model(model_trace, guide_trace) -> None:
    """Refuse a model latent site that the guide does not draw (or the model enumerate),
    or that the guide draws from a family of another kind (discrete for continuous).

    An uncovered site would be drawn from the prior inside the model and scored as if it
    were part of the data, which is how a model called without one of its data arguments
    (``model(x)`` for ``model(x, y)``) gets a meaningless ELBO. A Bernoulli guide for a
    Gaussian latent trains and reports numbers, but q puts its mass on {0, 1}.

    Raises:
        ValueError: naming the sites.
    """
    guide_sites = sample_sites(guide_trace)
    model_sites = sample_sites(model_trace)
    missing = [
        n
        for n, s in model_sites.items()
        if not s["is_observed"] and n not in guide_sites and not s["infer"].get("enumerate")
    ]
    if missing:
        raise ValueError(
            f"model: the sites {missing} are neither observed nor drawn by the guide (which "
            f"draws {sorted(guide_sites)}); if they are data, pass every data argument of "
            "the model (x=(x, y) for model(x, y)); if they are latent, the guide must draw them"
        )
    for name, site in guide_sites.items():
        model_site = model_sites.get(name)
        if model_site is None or model_site["is_observed"]:
            continue
        kinds = [_kind(s["fn"]) for s in (model_site, site)]
        if kinds[0] != kinds[1]:
            raise ValueError(
                f"guide: site {name!r} is {kinds[1]} in the guide ({_family(site['fn'])}) but "
                f"{kinds[0]} in the model ({_family(model_site['fn'])}); expected a guide "
                "family of the same kind as the model's latent"
            )


def _kind(fn) -> str:
    return "discrete" if fn.support.is_discrete else "continuous"


def _family(fn) -> str:
    return type(base_distribution(fn)).__name__


def log_importance_weights(
    model,
    guide,
    x,
    num_samples: int,
    nesting: int | None = None,
    data_plate: str | None = None,
    vectorize_particles: bool | None = None,
) -> torch.Tensor:
    """The log importance ratios log p(x_n, z_k) − log q(z_k | x_n) for K = ``num_samples``
    draws z_k ~ q(· | x_n): ``[K, N]``, nats.

    They are the unscaled pair's ratios: a scale c that every site of model and guide
    shares in a datapoint (``poutine.scale(c)`` around both) is divided out
    (:meth:`PerDatapoint.importance_log_weights`), since it weighs the objective, not the
    densities; so c · (logsumexp_k − log K) of a column is :func:`iwae_log_likelihood`'s
    value, and c times its mean is :func:`elbo_per_datapoint`'s. Scales that differ
    between sites (β on the latents) stay in each ratio, as the evaluators count them.
    ``nesting`` is accepted for compatibility and read from the model when ``None``.
    """
    check_num("num_samples", num_samples)
    data = data_arguments(x)
    pair = prepare(
        model, guide, data, "log_importance_weights", data_plate, vectorize_particles, len(data[0])
    )
    if nesting is not None:
        pair.nesting = max(pair.nesting, int(nesting))
    return pair.importance_log_weights(data, 0, num_samples)[0]


def _batches(
    data: tuple, batch_size: int, device: torch.device | None = None
) -> Iterator[tuple[int, tuple]]:
    """The rows of ``data`` in chunks of ``batch_size``, each put on ``device`` as it is
    drawn (``None``: left where it is)."""
    check_num("batch_size", batch_size)
    for start in range(0, data[0].shape[0], batch_size):
        chunk = _chunk(data, start, start + batch_size)
        yield start, chunk if device is None else to_device(chunk, torch.device(device))


@torch.no_grad()
def elbo_per_datapoint(
    model,
    guide,
    x,
    num_samples: int = 1,
    batch_size: int = 1000,
    data_plate: str | None = None,
    vectorize_particles: bool | None = None,
    rows: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Monte Carlo ELBO of each row of ``x`` (nats), averaged over ``num_samples`` draws.

    Args:
        x: the data: ``[N, ...]`` or a tuple of such tensors (all the model's data arguments).
        num_samples: draws from the guide per datapoint.
        batch_size: rows per chunk.
        data_plate: the per-datapoint plate's name (found by the rule of
            :func:`pyro_vae.plates.find_data_plate` when ``None``).
        vectorize_particles: ``True``, ``False`` (a loop over draws) or ``None`` (auto).
        rows: for a guide with free per-datapoint parameters, the rows of the data it was
            fitted to that ``x`` holds (default: the first ``len(x)``); see :func:`prepare`.
        device: where the pair computes (its modules' device): each chunk of ``x`` is put
            there as it is scored, so ``x`` may stay on the CPU (``None``: where ``x`` is).

    Returns:
        ``[N]``, nats per datapoint, on ``device``.

    Raises:
        pyro_vae.plates.DataPlateError: no per-datapoint plate, or a site outside it.
        ValueError: bad counts, or a model site neither observed nor in the guide.
    """
    return torch.cat(
        _scored_chunks(
            model,
            guide,
            x,
            (num_samples, batch_size, data_plate, vectorize_particles, rows, device),
            lambda pair, chunk, start: pair.log_weights(chunk, start, num_samples).mean(0),
        )
    )


def _scored_chunks(model, guide, x, settings: tuple, score) -> list:
    """``score(pair, chunk, start)`` for each chunk of ``x``'s rows, the pair prepared once
    (:func:`prepare`); ``settings`` are ``(num_samples, batch_size, data_plate,
    vectorize_particles, rows, device)`` as :func:`elbo_per_datapoint` takes them."""
    num_samples, batch_size, data_plate, vectorize_particles, rows, device = settings
    check_num("num_samples", num_samples)
    check_num("batch_size", batch_size)
    model, guide = bare_pair(model, guide)
    data = data_arguments(x)
    with eval_mode(model, guide):
        pair = prepare(
            model,
            guide,
            data,
            "a per-datapoint ELBO",
            data_plate,
            vectorize_particles,
            batch_size,
            rows,
            device,
        )
        pair.warn_point_masses()
        return [score(pair, chunk, start) for start, chunk in _batches(data, batch_size, device)]


class ElboTerms(NamedTuple):
    """The two terms of each datapoint's ELBO = ``log_likelihood`` − ``kl`` (nats, ``[N]``).

    ``log_likelihood``: E_q[log p(x_n | z)], the expected log-likelihood (the negative
    distortion of Alemi et al. 2018); ``kl``: E_q[log q(z | x_n) − log p(z)], the KL
    divergence from the prior to the guide (the rate), both Monte Carlo averages over the
    same draws. ``kl`` ≥ 0 in expectation, not in every draw.
    """

    log_likelihood: torch.Tensor
    kl: torch.Tensor


@torch.no_grad()
def elbo_terms_per_datapoint(
    model,
    guide,
    x,
    num_samples: int = 1,
    batch_size: int = 1000,
    data_plate: str | None = None,
    device: torch.device | str | None = None,
) -> ElboTerms:
    """Each row's ELBO split into expected log-likelihood and KL (:class:`ElboTerms`).

    Arguments as :func:`elbo_per_datapoint`, which gives their difference (for the same
    draws: the same seed gives ``log_likelihood − kl`` equal to it to float32 rounding).
    The model's observed sites make the likelihood, its latent sites the prior; a
    hierarchical model's KL is that of the joint over all its latent sites.

    Returns:
        :class:`ElboTerms` of ``[N]`` tensors, nats per datapoint, on ``device``.

    Raises:
        pyro_vae.plates.DataPlateError: no per-datapoint plate, or a site outside it.
        ValueError: bad counts, or a model site neither observed nor in the guide.
    """

    def terms(pair, chunk, start):
        log_lik, log_prior, log_q = pair.log_weight_terms(chunk, start, num_samples)
        return log_lik.mean(0), (log_q - log_prior).mean(0)

    settings = (num_samples, batch_size, data_plate, None, None, device)
    likelihood, kl = zip(*_scored_chunks(model, guide, x, settings, terms), strict=True)
    return ElboTerms(torch.cat(likelihood), torch.cat(kl))


@torch.no_grad()
def iwae_log_likelihood(
    model,
    guide,
    x,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 2**23,
    progress: bool = False,
    data_plate: str | None = None,
    vectorize_particles: bool | None = None,
    rows: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    rise: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted estimate of log p(x_n) for each row of ``x`` (nats).

    log p(x_n) ≈ log (1/K) Σ_k exp(log w_k(x_n)), K = ``num_samples`` (Burda et al. 2015
    use K = 5000). Where every site of model and guide shares a scale c in a datapoint
    (``poutine.scale(c)`` around both), that datapoint's value is
    c · (log Σ_k exp(log w_k / c) − log K): c × the unscaled pair's estimate, as the
    ELBO is c × its ELBO and the ``iwae`` estimator counts it
    (:meth:`PerDatapoint.importance_log_weights`). Particles are drawn in chunks of at
    most ``max_elements / (batch · D)`` and merged by log-sum-exp, so peak memory does not
    grow with K (it is set by the largest tensor a particle makes: the image, or a mixture
    prior's components × latent size, 50 × 20 for a VampPrior on 8x8 digits, which raises
    the peak about 1.6 times there). ``progress`` shows a progress bar over datapoints.
    ``x``, ``data_plate``, ``vectorize_particles``, ``rows``
    and ``device`` (chunks of ``x`` streamed there) as in :func:`elbo_per_datapoint`.

    ``rise`` (K ≥ 2): also each row's rise of the estimate from h = ⌊K/2⌋ draws to 2h, on
    the same draws (≥ 0): about its remaining bias where the weights' variance is finite
    (the bias then falls as 1/K), several times less where it is not (q narrower).

    Returns:
        ``[N]``, nats per datapoint, on ``device``; with ``rise``, ``([N], [N])``.
    """
    check_num("num_samples", num_samples)
    if rise and num_samples < 2:
        raise ValueError(f"num_samples: {num_samples}; the rise needs at least 2 draws")
    check_num("batch_size", batch_size)
    check_num("max_elements", max_elements)
    model, guide = bare_pair(model, guide)
    owner = getattr(model, "__self__", model)
    if getattr(owner, "generative", True) is False:
        raise ValueError(
            f"model: {type(owner).__name__} is not a generative model (it puts no prior on its "
            "code), so log p(x) is not defined for it"
        )
    data = data_arguments(x)
    out = []
    with eval_mode(model, guide):
        pair = prepare(
            model,
            guide,
            data,
            "an importance-weighted log p(x_n)",
            data_plate,
            vectorize_particles,
            batch_size,
            rows,
            device,
            multi_sample=num_samples > 1,
        )
        pair.warn_point_masses()
        bar = progress_bar(
            None,
            progress,
            total=data[0].shape[0],
            desc=f"log p(x), K={num_samples}",
            unit="image",
            leave=False,
            dynamic_ncols=True,
        )
        for start, chunk_args in _batches(data, batch_size, device):
            bar.update(chunk_args[0].shape[0])
            out.append(_iwae_rows(pair, chunk_args, start, num_samples, max_elements, rise))
        bar.close()
    if rise:
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
    return torch.cat(out)


def _iwae_rows(
    pair: PerDatapoint, args: tuple, start: int, num_samples: int, most: int, rise=False
):
    """:func:`iwae_log_likelihood` of the rows ``start..`` in ``args``: ``[B]`` nats, the
    particles drawn ``most // (values in args)`` at a time and merged by log-sum-exp.
    ``rise``: also the estimate's rise from h = ⌊K/2⌋ draws to 2h, the same draws (the
    estimate from draws 0..2h less the mean of those from 0..h and h..2h; ``([B], [B])``)."""
    chunk = max(1, min(num_samples, most // max(1, args[0].numel())))
    acc, half = None, num_samples // 2
    parts: list = [None, None]  # the log-sum-exp of each half's draws
    for first in range(0, num_samples, chunk):
        k = min(chunk, num_samples - first)
        # Every chunk scores the same rows; Pyro's argument and support checks have
        # seen them in the first, and repeating them costs ~10% of the evaluation.
        checked = contextlib.nullcontext() if first == 0 else pyro.validation_enabled(False)
        with checked:
            log_w, scale = pair.importance_log_weights(args, start, k)
        lw = torch.logsumexp(log_w, dim=0)
        acc = lw if acc is None else torch.logaddexp(acc, lw)
        for i, (lo, hi) in enumerate(((0, half), (half, 2 * half)) if rise else ()):
            own = log_w[max(lo - first, 0) : max(min(hi - first, k), 0)]
            if len(own):
                lse = torch.logsumexp(own, dim=0)
                parts[i] = lse if parts[i] is None else torch.logaddexp(parts[i], lse)
    # a scale every site shares multiplies the bound, outside the log-sum-exp
    estimate = rescaled(acc - math.log(num_samples), scale)
    if not rise:
        return estimate
    # log((e^a + e^b) / 2h) − (a + b) / 2 + log h, a and b each half's log-sum-exp: ≥ 0
    doubling = torch.logaddexp(parts[0], parts[1]) - math.log(2) - (parts[0] + parts[1]) / 2
    return estimate, rescaled(doubling, scale)


@torch.no_grad()
def elbo_estimate(
    model,
    guide,
    *args,
    num_samples: int = 100,
    num_chunks: int = 10,
    vectorize_particles: bool | None = None,
    **kwargs,
) -> tuple[float, float]:
    """The whole-data ELBO of a model with global latents, and its Monte Carlo error (nats).

        ELBO = E_q[log p(X, θ) − log q(θ)] ≤ log p(X)       (Blei et al. 2017, eq. 13)

    estimated from ``num_samples`` draws of the guide. Discrete latents the guide does not
    sample and the model marks for enumeration (``infer={"enumerate": "parallel"}``) are
    summed out exactly, as :class:`pyro.infer.TraceEnum_ELBO` does; that is the ELBO of
    the guide's family with those latents at their exact conditional. Draws are taken in
    ``num_chunks`` chunks, each vectorized (``vectorize_particles=True``), drawn in a loop
    (``False``), or vectorized unless that fails (``None``, with a
    :class:`~pyro_vae.traces.VectorizationWarning`); the standard error is the
    batch-means one, sd(chunk means) / √chunks (nan with a single chunk).

    ``guide`` may be a fitted :mod:`pyro_vae.cavi` estimator (``AutoCAVI``,
    ``BayesianGaussianMixture``, …): its q is drawn from, as the diagnostics draw it
    (:func:`~pyro_vae.guides.fixed.as_guide`); for a fit whose mean field is exact (one
    conjugate pair) every draw's term is its ``lower_bound_``.

    :class:`~pyro_vae.annealing.ScaleLatents` handlers in the pair, at any depth, are
    no-ops here (:func:`~pyro_vae.annealing.unscaled`): the ELBO, not the β-objective.

    Returns:
        ``(elbo, standard_error)``.

    Raises:
        ValueError: a model latent the guide neither draws nor the model enumerates
            (:func:`check_guide_covers_model`), a guide draw of an observed site or an
            observation the guide scores with a density, or a
            latent whose elements one side masks off and the other scores
            (:func:`~pyro_vae.traces.refuse_mask_mismatches`), before any draw.
    """
    check_num("num_samples", num_samples)
    model, guide = bare_pair(model, guide)
    check_rows(args[0] if args else None, model)
    guide = as_guide(guide, model, args, kwargs)
    check_num("num_chunks", num_chunks)
    chunks = min(num_samples, num_chunks)
    sizes = [num_samples // chunks + (i < num_samples % chunks) for i in range(chunks)]
    with eval_mode(model, guide), poutine.block(), unscaled():
        with forked_streams(), torch.no_grad():
            nesting = max_plate_nesting(model, guide, *args, **kwargs)
            model_tr, guide_tr = run_pair(model, guide, args, kwargs)
            # as the other evaluators (tester CW: a latent the guide left out was drawn
            # from its prior and scored as data, 1.4 nats off, with no word)
            check_guide_covers_model(model_tr, guide_tr)
            refuse_scored_guide_observations(guide_tr)  # its log q(y | x): no ELBO of p
            refuse_unscorable_draws(model_tr, guide_tr)
            _, again = run_pair(model, guide, args, kwargs)
            point_masses = point_mass_latents(model_tr, guide_tr, again)
        _warn_point_masses(point_masses, stacklevel=3)
        vectorize = vectorize_for(guide, vectorize_particles)
        means = _chunk_means(model, guide, args, kwargs, sizes, nesting, vectorize)
    means_t = torch.tensor(means, dtype=torch.float64, device="cpu")  # Python floats
    weights = torch.tensor(sizes, dtype=torch.float64, device="cpu") / num_samples
    elbo = float((weights * means_t).sum())
    stderr = float(means_t.std() / math.sqrt(chunks)) if chunks > 1 else math.nan
    return elbo, stderr


def _chunk_means(model, guide, args, kwargs, sizes, nesting: int, vectorize) -> list[float]:
    """Each chunk's ELBO estimate, its particles vectorized where ``vectorize`` allows
    (:func:`~pyro_vae.traces.vectorized_or_looped`); the first vectorized chunk checks the
    pair first (:func:`~pyro_vae.traces.check_vectorized_pair`: Pyro's own vectorized run
    is out of reach of the checks)."""
    means, checked = [], []

    def vectorized(size: int) -> float:
        if not checked:
            insisted = vectorize is True
            check_vectorized_pair(model, guide, args, kwargs, size, nesting + 1, insisted)
            checked.append(size)
        return _enum_elbo(model, guide, args, kwargs, size, nesting, True)

    for size in sizes:
        mean, vectorized_here = vectorized_or_looped(
            vectorize if size > 1 else False,
            lambda s=size: vectorized(s),
            lambda s=size: _enum_elbo(model, guide, args, kwargs, s, nesting, False),
            "elbo_estimate",
            size,
        )
        means.append(mean)
        vectorize = vectorize if vectorized_here or size == 1 else False
    return means


def _enum_elbo(model, guide, args, kwargs, size: int, nesting: int, vectorize) -> float:
    estimator = TraceEnum_ELBO(
        num_particles=size,
        vectorize_particles=size > 1 and vectorize,
        max_plate_nesting=nesting,
        strict_enumeration_warning=False,
    )
    return -estimator.loss(model, guide, *args, **kwargs)
