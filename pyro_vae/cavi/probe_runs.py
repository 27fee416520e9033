"""Runs of a Pyro model at probe points of its latents, for :mod:`pyro_vae.cavi.conjugate_forms`.

A set of S probe points is held stacked: each site's values ``[S, *batch, *event]`` and each
factor's log-density ``[S, *log_prob shape]``. They are computed in ONE model run when the
model broadcasts: the model runs inside ``pyro.plate("_probes", S, dim=-(n + 1))``, n its
plate nesting, with every latent conditioned on its S values (as Pyro's
``vectorize_particles`` runs particles). A model that does not broadcast over that extra
leftmost dim — the run raises, a site's log-density lacks the probe dim, or the first
batched run disagrees with a plain run at the same point (a ``.view(-1)`` or
``x.shape[0]`` that mixes probes, a chain's ``Vindex(A)[..., s, :]`` with its rows plated
and s scalar) — is run under ``torch.func.vmap`` over the S points instead: each op sees one
point's shapes, as in a plain run, and torch batches it (one run again). Only a model that
vmap cannot run either (``.item()``, Python control flow on a latent's value, an op without
a batching rule) is run once per probe point, with the same results. The choice is made
once per :class:`ProbeRunner`, and every way must reproduce a plain run at the reference
point to be taken.

Fit points (any ``key`` but ``"check"``) hold each discrete latent in a plate at one value
across the plate (a stride-0 expansion of one balanced draw per point), so a design whose
other members are global is the same at every element and is solved once with many
right-hand sides; check points draw every element apart, so a factor that reads a
discrete latent at another element than its own still fails its check. Where the model takes
them, the discrete latents in plates are enumerated at the fit points instead of drawn
(:meth:`ProbeRunner.prefetch_enumerated`, :mod:`pyro_vae.cavi.probe_enumeration`): one run
at S points then scores every combination of their values at each.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES
from pyro_vae.cavi.probe_enumeration import agrees, conditioned, fit_rows, grid, to_rows
from pyro_vae.cavi.probe_frames import from_local
from pyro_vae.progress import bar

_AGREE = 1e-9  # batched vs plain log-density, relative to 1 + its magnitude
#: Points run one at a time from which the loop shows a progress bar (on a terminal).
_LOOP_PROGRESS = 1_000
#: Elements (of a run's estimated footprint, see ``ProbeRunner._chunk``) per batched model
#: run: 2²⁵ float64, 256 MiB; a run's temporaries are a few times that.
_RUN_BUDGET = 1 << 25


def is_factor(site) -> bool:
    """A sample site whose log-density is a factor of the log joint: ``pyro.factor`` terms
    included (Pyro marks them auxiliary, but they are observed and count in every ELBO);
    ``pyro.deterministic`` sites (and ``obs_mask``'s combined site) are not: their Delta
    scores 0, in the default dtype whatever the model's; nor a site masked off by its
    distribution's ``.mask(False)``, which scores 0 everywhere."""
    return _scored_site(site) and not _masked_off(site["fn"])


def is_latent(site) -> bool:
    """An unobserved sample site that is a latent variable of the model, also where its
    prior is masked off by ``.mask(False)``: it then has a flat prior where a child
    mentions it, as under ``poutine.mask(mask=False)`` (it had vanished from the model, and
    its children were refused as reading no latent: tester AM's F5)."""
    return _scored_site(site) and not site.get("is_observed", False)


def _scored_site(site) -> bool:
    infer = site.get("infer", {})
    auxiliary_latent = infer.get("is_auxiliary", False) and not site.get("is_observed", False)
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not auxiliary_latent
        and not infer.get("_deterministic", False)
    )


def _masked_off(fn) -> bool:
    """Whether ``fn`` is ``.mask(False)`` (through wrappers): it scores 0 everywhere, in
    whatever dtype (a ``Delta``'s is the default dtype's). ``LocScaleReparam`` observes
    its recentred site so (tester 37's F2: refused as "scores in torch.float32")."""
    while fn is not None:
        mask = getattr(fn, "_mask", None)
        if mask is False or (torch.is_tensor(mask) and mask.dtype == torch.bool
                             and not bool(mask.any())):  # fmt: skip
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def score_factors(trace) -> None:
    """``trace.compute_log_prob`` of its factors (:func:`is_factor`), each observed value
    not in float64 (integer, boolean, float32) scored as float64 first: torch's Poisson,
    Binomial and Multinomial compute log k! of an integer count in the default float32
    (about 2.4e-4 nats off for a count of 1,000), and the float64 rate then hides it in a
    float64 log-density; a Bernoulli cannot score a boolean at all. The values the model
    saw are kept in its run (an observed label may index a parameter); only the trace's
    copy is cast (tester 37's F1: integer counts put Dirichlet-Multinomial and
    Gamma-Poisson bounds up to 0.05 nats above the exact log evidence). A float32
    observation alike (exact in float64): one that ``fit``'s arguments do not carry
    (closed over, or in a dataclass) is not cast there, and torch's log k! of it in
    float32 moved Binomial, Multinomial and Poisson bounds by up to 0.03 nats, above the
    evidence too (tester Z's F2)."""
    for site in trace.nodes.values():
        value = site.get("value")
        if (site["type"] == "sample" and site["is_observed"] and torch.is_tensor(value)
                and value.dtype != torch.float64 and not value.is_complex()):  # fmt: skip
            site["value"] = value.to(torch.float64)
    trace.compute_log_prob(site_filter=lambda name, site: is_factor(site))


def site_log_probs(model, args, kwargs, values: dict) -> tuple[dict, object]:
    """Every sample site's scaled, masked log_prob (float64) with ``values`` conditioned."""
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    score_factors(trace)
    out = {
        name: site["log_prob"].to(torch.float64)
        for name, site in trace.nodes.items()
        if is_factor(site)
    }
    return out, trace


@dataclass
class Runs:
    """S probe points: ``values`` {site: [S, *batch, *event]}, ``log_probs`` {site: [S, …]};
    ``stats`` caches each latent unit's statistics there (filled by
    :mod:`pyro_vae.cavi.conjugate_forms`, which reads them for every factor); ``frames``
    {unit: :class:`~pyro_vae.cavi.probe_frames.Frame`}: the units whose points were drawn
    around q, whose statistics are then taken in the frame's local coordinates; ``grid``
    ((unit, n), …): the points are the grid of those units' n points each, row-major
    (:mod:`pyro_vae.cavi.kronecker_probe`); None: drawn one by one."""

    values: dict
    log_probs: dict
    stats: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)
    grid: tuple | None = None

    def __len__(self) -> int:
        return next(iter(self.values.values())).shape[0]

    def __add__(self, other: Runs) -> Runs:
        return Runs(
            {k: _stacked(v, other.values[k]) for k, v in self.values.items()},
            {k: torch.cat([v, other.log_probs[k]]) for k, v in self.log_probs.items()},
            frames=self.frames,
        )


def unexpanded_value(value: torch.Tensor) -> torch.Tensor:
    """``value`` [S, …] with each dim but the first along which it is expanded (stride 0:
    the same at every index, as a shared discrete fit probe) cut to size 1."""
    for dim in range(1, value.dim()):
        if value.stride(dim) == 0 and value.shape[dim] > 1:
            value = value.narrow(dim, 0, 1)
    return value


def _stacked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a, b])`` of two sets of points, the dims that both hold at one value per
    point (a shared fit probe, expanded with stride 0) kept so: the solves read stride 0 as
    one design for the whole plate (copied, a Bayesian HMM's 50 sequences were 50 designs
    of 80 unknowns each, solved 50 times over)."""
    narrow_a, narrow_b = unexpanded_value(a), unexpanded_value(b)
    if narrow_a.shape[1:] != narrow_b.shape[1:] or narrow_a.shape == a.shape:
        return torch.cat([a, b])
    return torch.cat([narrow_a, narrow_b]).expand((a.shape[0] + b.shape[0],) + a.shape[1:])


def _nesting(trace) -> int:
    """The model's plate nesting: its plates' dims and its log-densities' ranks."""
    n = 0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        n = max([n] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim])
        if "log_prob" in site:
            n = max(n, site["log_prob"].dim())
    return n


class ProbeRunner:
    """Runs ``model(*args, **kwargs)`` at stacked probe points, batched when it broadcasts.

    Args:
        model, args, kwargs: the model and its inputs.
        latents: {unit: :class:`~pyro_vae.cavi.latent_units.Latent`}; each unit's sites.
        generator: the probe points' random source.
        reference: (values, log-densities, trace) of one plain run at a probe point; it fixes
            each factor's log-density shape and checks the first batched run.
        batched: True: try a probe plate, then vmap, then one run per point (the first run
            decides); ``"plate"`` or ``"vmap"``: that way, already found to reproduce the
            reference; False: one run per probe point.
        try_plate: False: with ``batched`` True, try vmap and then one run per point only
            (after a misfit in a probe plate, which a model can mix points in unseen).
        frames: {unit: Frame}, units whose points are drawn around q
            (:mod:`pyro_vae.cavi.probe_frames`); the others at their family's fixed place.
    """

    def __init__(self, model, args, kwargs, latents, generator, reference, batched=True,
                 frames=None, try_plate=True):  # fmt: skip
        self.model, self.args, self.kwargs = model, args, kwargs
        self.latents, self.generator = latents, generator
        self.frames = frames or {}
        self._reference_values, self._reference_log_probs, trace = reference
        self.nesting = _nesting(trace)
        self.shapes = {n: lp.shape for n, lp in self._reference_log_probs.items()}
        self.batched = None if batched is True else batched  # None: not yet tried
        self._ways = ("plate", "vmap") if try_plate else ("vmap",)
        # torch.Size(...): MaskedMixture and the zero-inflated distributions give their
        # shapes as tuples (tester N2: 'tuple' object has no attribute 'numel')
        events = [torch.Size(getattr(site["fn"], "event_shape", ())).numel()
                  for site in trace.nodes.values() if site["type"] == "sample"]  # fmt: skip
        points = sum(lp.numel() for lp in self._reference_log_probs.values())
        self._point_size = max(max(1, points) * max([1, *events]), _parameter_elements(trace))
        self.model_runs = 0
        self._ready = {}  # (count, key) -> Runs drawn ahead by prefetch
        self._batch_sizes = {
            name: torch.Size(site["fn"].batch_shape).numel()
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and hasattr(site["fn"], "batch_shape")
        }

    def prefetch(self, requests) -> None:
        """Draw ahead, in one batched model run, the points of several later ``runs(count,
        fixed, key)`` calls given as ``(count, fixed, key)``; this run decides whether the
        model broadcasts. Nothing is drawn ahead for a model that does not."""
        if self.batched is False or not requests:
            return
        drawn = [self.draw(count, fixed, key != "check") for count, fixed, key in requests]
        values = {k: torch.cat([d[k] for d in drawn]) for k in drawn[0]}
        out = self._plain(values, sum(count for count, _, _ in requests))
        if out is None:
            return
        start = 0  # each request keeps its own draw (a shared probe stays an expansion)
        for (count, _, key), points in zip(requests, drawn, strict=True):
            log_probs = {k: v[start : start + count] for k, v in out.items()}
            self._ready[(count, key)] = Runs(points, log_probs, frames=self.frames)
            start += count

    def draw(self, count: int, fixed=None, shared: bool = False) -> dict:
        """``count`` random probe points {site: [count, *batch, *event]}, ``fixed`` sites
        ({site: [*batch, *event]}) held at one value; ``shared``: each discrete latent in a
        plate at one value per point across its plate (expanded, stride 0)."""
        values = {}
        shape = torch.Size([count])
        for latent in self.latents.values():
            if shared and latent.family.name in DISCRETE_FAMILIES and latent.batch_shape:
                ones = (1,) * len(latent.batch_shape)
                value = latent.family.probe(shape + ones, self.generator)
                values[latent.name] = value.expand(shape + latent.batch_shape)
                continue
            value = latent.family.probe(shape + latent.batch_shape, self.generator)
            if latent.name in self.frames:
                value = from_local(latent.family, self.frames[latent.name], value)
            values.update(
                zip(latent.sites, value if len(latent.sites) > 1 else (value,), strict=True)
            )
        for site, value in (fixed or {}).items():
            values[site] = value.expand(shape + value.shape)
        return values

    def runs(self, count: int, fixed=None, key=None) -> Runs:
        """``count`` random probe points (``fixed`` sites held; ``key`` names that choice
        for :meth:`prefetch`) and the log-densities there."""
        if (count, key) in self._ready:
            return self._ready.pop((count, key))
        values = self.draw(count, fixed, key != "check")
        return Runs(values, self.log_probs(values, count), frames=self.frames)

    def log_probs(self, values: dict, count: int, sites=None) -> dict:
        """Each factor's log-density at the stacked points, {site: [count, *its shape]};
        ``sites``: only those factors' (the others are dropped run by run, so a grid of
        10⁵ points never holds the likelihood's [points, N]: tester 28's F1)."""
        if self.batched is None:
            self.batched = self._try_batched(values, count)
            if self.batched:
                return _only(self.batched_result, sites)
        if self.batched:
            out = self._batched(values, count, sites=sites)
            if out is not None:
                return out
            self.batched = False  # a later batch failed: loop from here on
        return self._looped(values, count, sites)

    def _plain(self, values: dict, count: int) -> dict | None:
        """The log-densities at ``values`` in batched runs, the first of which decides
        whether the model broadcasts (:meth:`_try_batched`); None, with ``batched`` False,
        where it does not."""
        if self.batched is None:
            self.batched = self._try_batched(values, count)
            return self.batched_result if self.batched else None
        out = self._batched(values, count)
        if out is None:
            self.batched = False
        return out

    def _try_batched(self, values: dict, count: int) -> str | bool:
        """Run the first batch with the reference point among them, in a probe plate and,
        failing that, under vmap: the first way that runs and reproduces the plain run
        there (``"plate"`` or ``"vmap"``, its result kept as ``batched_result``), else
        False. The reference sits in the middle of the first run's points, not at either
        end: a model that reads one point for all (``mu.reshape(-1)[0]``, or ``[-1]``)
        then scores it at another point's value, also where the points are split over
        runs (tester 21's F3, F4; appended last, ``[-1]`` read the reference everywhere,
        and a run of it alone mixed nothing). The warnings of a way not taken are dropped:
        a model's ``x.T`` on the probe plate's extra dim is the plate's, not the model's."""
        at = min(self._chunk(1), count + 1) // 2
        extended = {
            k: torch.cat([v[:at], self._reference_values[k].unsqueeze(0), v[at:]])
            for k, v in values.items()
        }
        for mode in self._ways:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = self._batched(extended, count + 1, mode)
                taken = out is not None and self._reproduces_reference(out, at)
            if taken:
                for w in caught:  # the model's own, in a way that runs: passed on
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                self.batched_result = {k: torch.cat([v[:at], v[at + 1 :]]) for k, v in out.items()}
                return mode
        return False

    def _reproduces_reference(self, out: dict, at: int) -> bool:
        """Whether point ``at`` of a batched run scored every factor as the plain run at the
        reference point did."""
        for site, lp in self._reference_log_probs.items():
            scored = out[site][at]
            if not bool(((scored - lp).abs() <= _AGREE * (1 + lp.abs())).all()):
                return False
        return True

    def _batched(self, values: dict, count: int, mode: str | None = None,
                 sites=None) -> dict | None:  # fmt: skip
        """Batched runs (``mode``, else the runner's: ``"plate"`` with a leading probe
        plate, ``"vmap"`` under ``torch.func.vmap``), as few as the memory budget allows
        (see :meth:`_chunk`), or None when the model does not run that way; ``sites``: the
        factors kept (None: all)."""
        once = self._vmapped_once if (mode or self.batched) == "vmap" else self._batched_once
        size, parts = self._chunk(1), []
        for start in range(0, count, size):
            chunk = {k: v[start : start + size] for k, v in values.items()}
            part = once(chunk, min(size, count - start))
            if part is None:
                return None
            parts.append(_only(part, sites))
        return {site: torch.cat([part[site] for part in parts]) for site in parts[0]}

    def _vmapped_once(self, values: dict, count: int) -> dict | None:
        """One model run under ``torch.func.vmap`` over the points' leading dim: the model
        sees one point's shapes, as in a plain run. None where vmap cannot run it (it
        raises: ``.item()``, Python control flow on a latent's value, random draws, an
        op without a batching rule), where the run left a tensor of its own in the model's
        attributes (put back as it was: a cache on ``self`` kept past the run would fail
        every later run of the model, tester 21's F2), or where a log-density's shape is
        not the reference's."""
        data = {k: v.contiguous() for k, v in values.items()}  # an expansion: see _padded

        def one(point):
            return site_log_probs(self.model, self.args, self.kwargs, point)[0]

        self.model_runs += 1
        before = _attributes(self.model)
        try:
            # validation's checks branch on values, which vmap cannot (AutoCAVI's runs are
            # unvalidated anyway: see pyro_vae.cavi.validation)
            with warnings.catch_warnings(), pyro.validation_enabled(False):
                # ops without a batching rule are looped by torch, correctly, with a warning
                warnings.filterwarnings("ignore", message=".*performance drop because")
                log_probs = torch.func.vmap(one, randomness="error")(data)
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
            _restore_escaped(before)
            return None
        if _restore_escaped(before):
            return None
        for site, shape in self.shapes.items():
            lp = log_probs.get(site)
            if lp is None or lp.shape != torch.Size((count,) + tuple(shape)):
                return None
        return {site: log_probs[site] for site in self.shapes}

    def _batched_once(self, values: dict, count: int) -> dict | None:
        log_probs = self._run(self._padded(values), count)
        if log_probs is None:
            return None
        n, out = self.nesting, {}
        for site, shape in self.shapes.items():
            lp = log_probs.get(site)
            want = torch.Size((count,) + (1,) * (n - len(shape)) + tuple(shape))
            if lp is None or lp.shape != want:
                return None
            out[site] = lp.reshape((count,) + tuple(shape))
        return out

    def _chunk(self, combinations: int) -> int:
        """Probe points per model run: all of them, unless their estimated footprint (each
        point's log-densities times the largest event size, times ``combinations``
        enumerated) exceeds :data:`_RUN_BUDGET` elements. A mixture of 10⁵ points in 5 dims
        scored 26 points x 10 components in one run at a 3.8 GiB peak."""
        return max(1, _RUN_BUDGET // (self._point_size * combinations))

    def _padded(self, values: dict, skip=()) -> dict:
        """Each latent site's stacked values with size-1 dims between the probe dim and its
        batch, to the model's plate nesting (``skip``: units left out)."""
        data = {}
        for latent in self.latents.values():
            if latent.name in skip:
                continue
            for site in latent.sites:
                v = values[site]
                pad = (1,) * (self.nesting - len(latent.batch_shape))
                # a copy: a shared value is an expansion, which .view() in a model refuses
                data[site] = v.reshape(v.shape[:1] + pad + v.shape[1:]).contiguous()
        return data

    def _run(self, data: dict, count: int, combinations: int = 1) -> dict | None:
        """The log-densities of one model run inside ``pyro.plate("_probes", count)`` with
        ``data`` conditioned (``combinations``: of the latents it enumerates), or None when
        it raises, or when a site's distribution holds more elements than ``count`` points
        (times ``combinations``) of the reference run's: the model mixes the probe points
        (:class:`_BroadcastGuard`)."""
        limits = {name: size * count * combinations for name, size in self._batch_sizes.items()}

        def probed(*args, **kwargs):
            with _BroadcastGuard(limits), pyro.plate("_probes", count, dim=-(self.nesting + 1)):
                return self.model(*args, **kwargs)

        self.model_runs += 1
        try:
            return site_log_probs(probed, self.args, self.kwargs, data)[0]
        except (RuntimeError, ValueError, IndexError, TypeError):
            return None

    def prefetch_enumerated(self, count: int, names: tuple[str, ...], checks: int) -> bool:
        """Draw ``count`` fit points with the discrete latents ``names`` enumerated (see
        :mod:`pyro_vae.cavi.probe_enumeration`: C·``count`` rows, C their combinations) and
        ``checks`` check points, for ``runs(count, None, "fit")`` and ``runs(checks, None,
        "check")``: one run of the check points with the fit rows of the first point (and
        the reference point, when whether the model broadcasts is not yet known), one
        enumerated run. False, with nothing kept, where either run fails or they disagree,
        or where the model runs under vmap, not in a probe plate (the enumerated values'
        dims are laid out for the plate)."""
        if self.batched in (False, "vmap"):
            return False
        latents = [self.latents[name] for name in names]
        points = self.draw(count, None, True)
        rows = fit_rows(points, latents, grid(latents), count)
        first = {site: value[::count] for site, value in rows.items()}
        check_points = self.draw(checks, None, False)
        joined = {k: torch.cat([check_points[k], first[k]]) for k in check_points}
        plain = self._plain(joined, checks + len(first[names[0]]))
        if plain is None or self.batched == "vmap":
            return False
        enumerated = self._enumerated(points, latents, count)
        rest = {site: lp[checks:] for site, lp in plain.items()}
        if enumerated is None or not agrees(enumerated, rest, count):
            return False
        check_lp = {site: lp[:checks] for site, lp in plain.items()}
        self._ready[(checks, "check")] = Runs(check_points, check_lp, frames=self.frames)
        self._ready[(count, "fit")] = Runs(rows, enumerated, frames=self.frames)
        return True

    def _enumerated(self, points: dict, latents: list, count: int) -> dict | None:
        """The enumerated runs' log-densities as fit rows {factor: [C·count, *shape]} (row
        c·count + s: point s at combination c), in as few runs as :meth:`_chunk` allows."""
        combinations = len(grid(latents)[0])
        size, parts = self._chunk(combinations), []
        names = tuple(latent.name for latent in latents)
        for start in range(0, count, size):
            chunk = {k: v[start : start + size] for k, v in points.items()}
            taken = min(size, count - start)
            data = {**self._padded(chunk, skip=names), **conditioned(latents, self.nesting)}
            log_probs = self._run(data, taken, combinations)
            rows = None if log_probs is None else to_rows(
                log_probs, latents, self.shapes, taken, self.nesting
            )  # fmt: skip
            if rows is None:
                return None
            parts.append({k: v.unflatten(0, (combinations, taken)) for k, v in rows.items()})
        return {
            site: torch.cat([part[site] for part in parts], 1).reshape(
                (combinations * count,) + tuple(shape)
            )
            for site, shape in self.shapes.items()
        }

    def _looped(self, values: dict, count: int, sites=None) -> dict:
        """One model run per point; past :data:`_LOOP_PROGRESS` points, with a progress bar
        on a terminal (a grid of 289,272 points took 173 s silently, tester 28's F3)."""
        per_point = []
        points = range(count)
        if count >= _LOOP_PROGRESS:
            desc = "AutoCAVI: one model run per probe point (the model does not batch)"
            points = bar(points, desc=desc, unit="run", leave=False)
        for i in points:
            self.model_runs += 1
            point = {k: v[i].contiguous() for k, v in values.items()}
            log_probs = site_log_probs(self.model, self.args, self.kwargs, point)[0]
            _refuse_changed_structure(log_probs, self.shapes)
            per_point.append(_only(log_probs, sites))
        return {site: torch.stack([lp[site] for lp in per_point]) for site in per_point[0]}


def _only(log_probs: dict, sites) -> dict:
    """``log_probs`` at ``sites`` alone (None: all of them)."""
    return log_probs if sites is None else {site: log_probs[site] for site in sites}


def _parameter_elements(trace) -> int:
    """The elements of every sample site's distribution parameters in a plain run (a
    MultivariateNormal's N x N covariance and its Cholesky factor): a probe point's
    footprint that its log-densities do not show (an N = 5,000 covariance scaled by a
    latent precision held 7.3 GB for 16 points run at once, tester 21's F1)."""
    return sum(_tensor_elements(site["fn"]) for site in trace.nodes.values()
               if site["type"] == "sample")  # fmt: skip


def _tensor_elements(fn, depth: int = 0) -> int:
    """The elements of the tensors a distribution holds (and its base distribution's)."""
    total = 0
    for value in getattr(fn, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            total += value.numel()
        elif isinstance(value, torch.distributions.Distribution) and depth < 4:
            total += _tensor_elements(value, depth + 1)
    return total


def _attributes(model) -> list[tuple[dict, dict]]:
    """(attribute dict, a copy of it) of ``model`` and, for an ``nn.Module``, of each
    submodule and its buffers: where a model keeps state between runs."""
    model = inspect.unwrap(model)  # AutoCAVI's rewrite of it (plate_events)
    model = getattr(model, "__self__", model)  # a bound method's object
    if isinstance(model, torch.nn.Module):
        owners = [d for m in model.modules() for d in (vars(m), m._buffers)]
    else:  # a function's state, if any (a closure's list), lies where this cannot see it
        owners = [vars(model)] if hasattr(model, "__dict__") else []
    return [(owner, dict(owner)) for owner in owners]


def _restore_escaped(before: list[tuple[dict, dict]]) -> bool:
    """Put back each attribute a vmapped run set to a tensor of its own (one that escaped
    vmap: any op on it raises); whether there was one."""
    escaped = False
    for owner, old in before:
        for key, value in list(owner.items()):
            if (key not in old or old[key] is not value) and _escaped(value):
                escaped = True
                if key in old:
                    owner[key] = old[key]
                else:
                    del owner[key]
    return escaped


def _escaped(value) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    try:
        value.detach().reshape(-1)[:0].add(0)
    except RuntimeError:
        return True
    return False


class _MixesProbes(ValueError):
    """A batched probe run's site holds more elements than its points allow."""


class _BroadcastGuard(Messenger):
    """Stops a batched probe run at the first sample site whose distribution holds more
    elements than ``limits[site]`` (its reference run's batch size times the points): a
    model that indexes without the leading ellipsis (``Vindex(A)[..., s, :]`` with A's rows
    plated and s scalar) makes each of S points read all S points' values, [S, S, K] at
    every step, and a Bayesian HMM of 8 states and 100 steps held 11 GB of them before the
    run failed anyway (tester 19). The run then counts as not broadcasting (one run per
    point)."""

    def __init__(self, limits: dict) -> None:
        super().__init__()
        self.limits = limits

    def _pyro_sample(self, msg) -> None:
        limit = self.limits.get(msg["name"])
        shape = getattr(msg["fn"], "batch_shape", None)
        if limit is not None and shape is not None and torch.Size(shape).numel() > limit:
            raise _MixesProbes(f"site {msg['name']!r}: batch shape {tuple(shape)}")


def _refuse_changed_structure(log_probs: dict, shapes: dict) -> None:
    """Raise unless a run at another probe point has the reference run's factors and shapes.

    Raises:
        ValueError: naming the sites that came or went, or the first whose shape changed:
            the model branches on a latent's value (``if mu > 0: pyro.sample("a", ...)``),
            so its log joint is not one fixed sum of factors and has no conjugate form.
    """
    gone, new = sorted(set(shapes) - set(log_probs)), sorted(set(log_probs) - set(shapes))
    changed = [n for n in shapes if n in log_probs and log_probs[n].shape != shapes[n]]
    if gone or new or changed:
        what = (
            f"sites {gone} missing and {new} new"
            if gone or new
            else f"site {changed[0]!r} "
            f"has shape {tuple(log_probs[changed[0]].shape)}, not {tuple(shapes[changed[0]])}"
        )
        raise ValueError(
            f"model: its sample sites change with the latents' values ({what} at another "
            "probe point): it branches on a latent's value, so its log joint is not one fixed "
            "sum of factors; AutoCAVI needs the same sites and shapes at every value"
        )
