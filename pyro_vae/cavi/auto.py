"""``AutoCAVI``: closed-form coordinate ascent (variational message passing) for a
conditionally conjugate-exponential model written in Pyro syntax.

For each latent site x_j the mean-field optimum given the other factors is (Blei et al.
2017, eq. 17; Winn & Bishop 2005)

    q_j*(x_j) ∝ exp E_{−j}[log p(x, y)] = exp(η_j · T_j(x_j)),
    η_j = Σ_{factors f ∋ x_j} ∂ E_q[log f] / ∂ E[T_j]

and by multilinearity of each factor in its latents' statistics (see
:mod:`pyro_vae.cavi.conjugate_forms`) that derivative is the factor's coefficient tensor
contracted with the other latents' expected statistics E_q[T_k] — exact, not estimated.
The evidence lower bound is likewise exact, every constant kept:

    L(q) = Σ_f E_q[log f] + Σ_j H[q_j]  ≤  log p(y)       (nats, whole data set)

The model is probed once per ``fit`` (its probe points batched into one or a few model runs
when it broadcasts, see :mod:`pyro_vae.cavi.probe_runs`, a mixture's assignments
enumerated, :mod:`pyro_vae.cavi.probe_enumeration`); the sweeps are then tensor algebra
in float64. When the fitted q lies far outside the probe points (data near 10⁶ probed at
N(0, 1)), the factors are solved again from points drawn around q, in q's local coordinates
(:mod:`pyro_vae.cavi.probe_frames`), and the sweeps go on from q (or start again, when q
was set by the first, unchecked sweep): float64 rounding in the first solve would otherwise
be multiplied by E_q[T] ≈ 10¹², and a factor conjugate only near the first points would go
unverified where q is.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from pyro_vae.cavi._checks import (
    check_on_cpu,
    float64_arguments,
    non_negative,
    positive_int,
    seed_of,
    squares_finite_nested,
)
from pyro_vae.cavi.blocks import block_advice, find_blocks, regroup
from pyro_vae.cavi.chains import find_chains
from pyro_vae.cavi.conjugate_forms import probe_factors, probe_runner
from pyro_vae.cavi.convergence import warn_sweeps_unconverged
from pyro_vae.cavi.coordinate_updates import CoordinateUpdates
from pyro_vae.cavi.cpu_default import in_float64, on_the_cpu
from pyro_vae.cavi.data_indexing import ReadAcrossPlate
from pyro_vae.cavi.event_flattening import (
    flat_init,
    flattenable,
    in_site_shape,
    with_events_flattened,
)
from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES, NotConjugateError
from pyro_vae.cavi.first_trace import (
    dependencies,
    find_dependencies,
    first_run,
    precision_only_factors,
    reference_is_finite,
)
from pyro_vae.cavi.fitted_guide import fitted_guide
from pyro_vae.cavi.initial_factors import drawn_starts, initial_statistics, products
from pyro_vae.cavi.latent_units import check_float64, check_whole_data, find_latents
from pyro_vae.cavi.newton_means import HALVINGS, NEWTON_EVERY, newton_step
from pyro_vae.cavi.overrelaxation import FIRST_RATE, crawling, next_rate, overrelaxed_q
from pyro_vae.cavi.plate_events import (
    convertible_plate,
    declined_because,
    event_over_plate,
    may_take_as_vectors,
    plate_companions,
    vector_init,
    with_plates_as_events,
)
from pyro_vae.cavi.plug_in_start import plug_in_priors
from pyro_vae.cavi.probe_frames import (
    frame_of,
    has_frames,
    numerical_error,
    prior_frame,
)
from pyro_vae.cavi.probe_runs import is_latent
from pyro_vae.cavi.refusals import first_run_refusal, unverifiable, warn_imprecise
from pyro_vae.cavi.stationarity import DRAWS, mean_steps
from pyro_vae.cavi.validation import (
    check_factor_dims,
    check_observations,
    validated_on_failure,
)
from pyro_vae.cavi.verification import Misfit, point_count, points_at_q, worst_misfit

#: Probing rounds at most: the first, then re-probes around q while it is imprecise (a
#: mixture 10⁶ wide, from random responsibilities, takes 5, and a mean-field regression on
#: regressors near 10⁶ from a prior draw 9: the precision's q crosses 12 to 20 orders of
#: magnitude on the way, each round's points covering a few).
_MAX_PROBE_ROUNDS = 10
#: Re-probe around q when E_q[T] in the probes' coordinates exceeds this (q lies outside the
#: points the factors were solved from; about 1 when it lies among them).
_AMPLIFICATION = 16.0
#: Re-probe around q where the sweeps settle, whatever the rounding, beyond this: q's mean
#: some 30 probe scales away, where a factor conjugate only near the points (a clamp, a
#: where) would go unverified.
_FAR = 1e3


class AutoCAVI(CoordinateUpdates, BaseEstimator):
    """CAVI for any conditionally conjugate Pyro model (scikit-learn style): mean field,
    with Markov chains of Categorical sites kept whole (structured mean field).

    Recognized latents (their prior's class picks the family of q): Normal, scalar or
    ``.to_event(1)`` (q is a full-covariance MultivariateNormal when the factors couple its
    coordinates), MultivariateNormal, Gamma (also an Exponential or Chi2 prior), Beta,
    Dirichlet, Wishart, Bernoulli and Categorical, each under any conjugate children
    (Normal with known or latent mean and precision, Poisson, Exponential, Bernoulli,
    Binomial, Categorical, …), whatever arithmetic the model uses to build their
    parameters. Each latent's elements inside a ``pyro.plate`` are separate variables; a
    factor may mention a latent only from inside all of that latent's plates.

    Args:
        model: a Pyro model callable as ``model(*args, **kwargs)``; observed sites carry
            ``obs=``; every unobserved sample site is a latent.
        max_iter: most sweeps (each updates every latent once).
        tol: stop when a sweep changes the bound by less than this (nats).
        init: optional ``{site: q}`` initial factors (a distribution of the site's family;
            for a Categorical site also a tensor of probabilities, e.g. responsibilities;
            for a block a fitted ``NormalGamma``/``NormalWishart`` or a tuple of values).
            A sweep updates first the latents that start at their prior's expectations or
            at a block's forward-run values, in the order the model samples them, then the
            discrete latents and those ``init`` sets (a start set by a draw or by you is
            fitted to first, not overwritten by the first update). A latent not set
            starts, seeded by ``random_state``: a discrete one at a random hard assignment
            balanced over its categories (so a mixture's components start apart, with
            equal shares), a block at its values in a seeded forward run, any other at its
            prior's expectations (see :mod:`pyro_vae.cavi.initial_factors`).
        blocks: pairs ``(mean site, precision site)`` to update as one joint factor instead
            of q(μ) q(τ): a Normal mean with a Wishart precision (Normal-Wishart, Bishop 2006
            §10.2) or with a scalar Gamma precision (Normal-Gamma; μ scalar or a D-vector
            sharing τ, as in Bayesian linear regression). ``"auto"``: every pair whose mean's
            prior is scaled by the precision and whose factors all mention both (see
            :mod:`pyro_vae.cavi.blocks`); the pairs chosen are in ``blocks_``. A block's unit
            in ``init``, ``markov_blankets_`` and ``fitted_blocks_`` is named
            ``"mean+precision"``. Default ``()``: mean field, as the hand-written classes.
        markov_chains: keep each chain of Categorical sites (a ``pyro.markov`` loop; in a
            plate of sequences, one chain per element; see :mod:`pyro_vae.cavi.chains`)
            whole in q, updated by forward-backward (structured mean field); False: one
            factor per site (naive mean field).
        n_init: starts (as in scikit-learn), from the seeded draws of the discrete latents
            and of the Normal latents a factor multiplies together (W z_n, which start at a
            draw: see :mod:`pyro_vae.cavi.initial_factors`), with seeds ``random_state``,
            ``random_state + 1``, …; the highest bound is kept (mean-field CAVI has local
            optima: a mixture's, a spike-and-slab's). The model is probed once for all of
            them. A model with no such latent, or with all of them set by ``init``, has
            one start, whatever ``n_init`` is.
        random_state: seed of the probe points and of that forward run (which also tracks,
            by provenance, the latents each factor reads). None: a seed drawn afresh at
            each fit from the operating system's entropy, as the hand-written classes
            (and scikit-learn) take None; it is kept in ``seed_``, to fit again alike. A
            NumPy ``RandomState`` or ``Generator``: a seed drawn from it at each fit.
        overrelax: after a sweep of crawling latents, try a step 2, 4, … (at most 2¹⁶)
            times as long along the sweep's change of the natural parameters, kept only
            where it raises the ELBO
            (adaptive over-relaxation, Salakhutdinov & Roweis 2003; see
            :mod:`pyro_vae.cavi.overrelaxation`): the same fixed point, in fewer sweeps
            where latents are confounded (crossed random effects: 1,136 sweeps to 83).
            Models with a discrete latent sweep plainly whatever this is. False: plain
            sweeps, as the hand-written classes.

    Attributes (after ``fit``):
        blocks_: the (mean, precision) pairs updated jointly.
        plates_as_events_: ``{site: plate}`` of the latents declared in a plate that some
            factor outside it reads whole (fixed effects ``X @ w`` with ``w`` in a features
            plate; ARD's α read by w's prior), fitted as one vector over that plate: the
            same joint density, with q joint over the plate's elements (a Normal's a
            full-covariance MultivariateNormal, a Gamma's independent Gammas; see
            :mod:`pyro_vae.cavi.plate_events`); random slopes ``b[..., group, :]`` with
            ``b`` in plates groups and features, one vector per group, and the latents
            that follow them into their events (``None``: a trailing batch dim of size 1,
            a group mean beside the slopes; see ``plate_events.plate_companions``). Where
            no plate it is read across is the site's rightmost batch dim, a handler masks
            or scales it, or its prior is not a scalar Normal or Gamma, the factor is
            refused as before, saying why. Empty: none was.
        flattened_events_: ``{site: event shape}`` of the Normal latents with two or more
            event dims (Pyro's ``Normal(0., 1.).expand([K, D]).to_event(2)`` weight
            matrix), fitted as one vector of their elements in row-major order: the same
            joint density, with a full-covariance MultivariateNormal q over them (see
            :mod:`pyro_vae.cavi.event_flattening`). Empty: none was.
        lower_bound_, lower_bounds_: the ELBO (nats, total over the data) after the last
            sweep, and after each sweep.
        n_iter_: sweeps run. converged_: whether a sweep, and the over-relaxed step after
            it, changed the bound by less than ``tol`` before ``max_iter`` ran out
            (``pyro_vae.cavi``'s meaning; latents linked far more tightly than the data
            inform them can crawl under ``tol`` a sweep far from the fixed point).
        start_bounds_: each start's final bound (nats; one per start, see ``n_init``):
            starts that disagree beyond ``tol`` reached different local optima.
        markov_blankets_: ``{latent: factor sites whose log-density mentions it}``.
        fitted_chains_: ``{chain of sites: (marginals [T, *batch, K], pairwise marginals
            [T−1, *batch, K, K])}`` of each chain kept whole (batch: the plates of a chain
            whose sites are plated, one sequence per element; else empty).
        probe_seconds_: wall time spent tracing and probing the model (once per fit).
        seed_: the seed this fit used: ``random_state``, or the one drawn for None.
        probe_batched_: how the probe points ran, in one or a few model runs: ``"plate"``,
            stacked along a leading batch dim (a ``pyro.plate("_probes", S)`` left of the
            model's plates); ``"vmap"``, under ``torch.func.vmap`` over the points, where the
            model does not broadcast over that dim (a run raised, a log-density lacked the
            dim, or it disagreed with a plain run at the same point: a chain's
            ``Vindex(A)[..., s, :]`` with A's rows plated and s scalar); False where vmap
            cannot run it either (Python control flow on a latent's value), and they
            ran one model run per point instead (``.item()`` of a latent, or its write into a
            plain buffer, hides it from the provenance run: refused, naming the factor).
            Every way solves to the same factors.
        probe_model_runs_: model runs made while solving the factors and checking them
            where q lies (a batched run counts once; the seeded first run, which also
            tracks dependencies, is not counted). A mixture's assignments (the one discrete
            latent in a plate) are enumerated at the fit points, as
            ``TraceEnum_ELBO`` enumerates them: one run scores every component at each
            point, beside one run of the check points (see
            :mod:`pyro_vae.cavi.probe_enumeration`).
        probe_rounds_: times the factors were solved (at most 10): 1, plus one per re-probe
            around q, made when, after any sweep, the estimated rounding below exceeds 1e-9
            of the bound while q lies over 16 outside the points in E_q[T] (their
            coordinates) or they are the first points (which can be far wider than q); when
            the sweeps settle with q over 10³ outside the points, whatever the rounding; or
            around the priors and q when an update came out
            improper (with data far from zero, rounding can do that). A round stopped
            after its first sweep starts the next from the initial statistics; one stopped
            later, from that q. After the last sweep every factor is checked at points
            drawn where q puts its mass (:mod:`pyro_vae.cavi.verification`): one that
            misses there (conjugate only in part of the space: a clamp q settled beyond)
            is probed again around q, or, where no frame can move its points or the rounds
            ran out, refused. ``lower_bounds_`` and ``n_iter_`` are those of the last
            round's sweeps.
        numerical_error_: the estimated float64 error of Σ E_q[log f] from the last solve
            (nats; :func:`~pyro_vae.cavi.probe_frames.numerical_error`, counting E_q[log p]
            of Beta and Dirichlet latents, ≈ −1/a for a tiny concentration a and no
            counts, which no frame can bring nearer the points). The bound sums each
            E_q[log f] in the coordinates its factor was solved in (q's, after a re-probe),
            so terms of 10¹² (data near 10⁶) do not cancel in it: a single Normal, Gamma or
            Wishart latent, or a Normal-Gamma or Normal-Wishart block, near 10⁶ has its
            exact bound to about 1e-11 nats (tested against the closed-form evidence), and a
            mixture 10⁴ from zero has its unshifted fit.

    Runs on the CPU in float64: ``fit`` casts floating arguments to float64 and refuses
    tensors on another device (its solves are tiny; a GPU would only add transfers).

    Raises:
        NotConjugateError (a ValueError), naming the latent site, its distribution and the
        factor that breaks conjugacy, or, where float64 rounding in the probed factors is
        warned of, a q whose Normal means the model's own gradient would move by more than
        one of q's sds (a fixed point of factors rounding left wrong: data near 10⁶ under
        a prior at 0; :mod:`~pyro_vae.cavi.stationarity`); ValueError for
        bad settings or ``init``, or an argument off the CPU; Pyro's own ValueError for an
        invalid parameter or observation.

    Warns:
        RuntimeWarning when, after the last probing round, the estimated rounding of the
        bound (``numerical_error_``) exceeds 1e-6 of 1 + |bound| nats (so at least 1e-6
        nats: a bound near 0 is not warned of for rounding below that), or 1e-9 of it with
        q outside the points.
        A mixture solved one component at a time is charged per component, weighted by
        E_q[z = k]: a mixture with components 10⁶ apart fits to within 1e-10 of its
        unshifted bound, without a warning (tested).
    """

    def __init__(self, model, *, max_iter: int = 1000, tol: float = 1e-8, init=None,
                 blocks=(), markov_chains: bool = True, n_init: int = 1,
                 random_state: int = 0, overrelax: bool = True) -> None:  # fmt: skip
        self.model = model
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.blocks = blocks
        self.markov_chains = markov_chains
        self.n_init = n_init
        self.random_state = random_state
        self.overrelax = overrelax

    @on_the_cpu
    @in_float64
    def fit(self, *args, **kwargs) -> AutoCAVI:
        """Probe ``model(*args, **kwargs)`` (floating tensors cast to float64, NumPy arrays
        made tensors, float64 torch's default dtype while it runs, so the model's own
        constants are float64) and run CAVI. No autograd graph is built (a model's ``PyroParam``
        constants are read as values). A fit that raises (a refusal, an interrupt) leaves
        the estimator as the last fit left it: its q, bound and guide still agree (tester
        AP: a refused refit kept the earlier q beside the refused model's plates, and its
        guide drew a site in the wrong shape)."""
        before = dict(self.__dict__)  # a fit that raises leaves the last one whole
        self.plates_as_events_, self.flattened_events_ = {}, {}
        with torch.no_grad():
            try:
                return self._fit(args, kwargs)
            except BaseException as error:
                converted, flattened = self.plates_as_events_, self.flattened_events_
                self.__dict__.clear()
                self.__dict__.update(before)
                if not isinstance(error, NotConjugateError) or isinstance(error, ReadAcrossPlate):
                    raise
                note = _as_vectors(_named(converted, error)) + _flattened(_named(flattened, error))
                if not note:
                    raise
                raise NotConjugateError(f"{error}{note}") from error

    def _fit(self, args, kwargs) -> AutoCAVI:
        tol, max_iter, auto_blocks, n_init, self._seed = self._check_settings()
        self.seed_ = self._seed
        for where, value in [*enumerate(args), *kwargs.items()]:
            check_on_cpu(f"fit: argument {where!r}", value)
        args, kwargs = float64_arguments(args), float64_arguments(kwargs)
        for where, value in [*enumerate(args), *kwargs.items()]:  # as the other classes'
            squares_finite_nested(f"fit: argument {where!r}", value)  # data (tester BQ)
        start = time.perf_counter()
        self._model, self.plates_as_events_, self._event_frames = self.model, {}, {}
        self.flattened_events_ = {}
        self._observed_events = {}  # observed sites that follow a latent into its event
        while True:
            with validated_on_failure(self._model, args, kwargs, self._seed):
                try:
                    latents, factors, stats = self._probe(args, kwargs, auto_blocks)
                    break
                except ReadAcrossPlate as error:  # fitted as one vector over its plate, if it can
                    if not self._plate_as_event(error):
                        raise
        self.probe_seconds_ = time.perf_counter() - start
        self._latents, self._witnesses = latents, []
        self._constants = {n: latent.family.has_constant for n, latent in latents.items()}
        self._framed = any(has_frames(latent.family) for latent in latents.values())
        chains = find_chains(latents, factors) if self.markov_chains else []
        multiplied = products(latents, factors) - set(self.init or {})
        stats = drawn_starts(latents, stats, multiplied, self._starts, self._seed)
        drawn = [n for n, lt in latents.items() if lt.family.name in DISCRETE_FAMILIES]
        drawn += multiplied
        starts = n_init if set(drawn) - set(self.init or {}) else 1  # else all starts agree
        best, self.start_bounds_ = None, []
        for offset in range(starts):
            if offset:  # the next seed's draws of the discrete latents
                seed = self._seed + offset
                stats = initial_statistics(latents, self._init, self._first, seed, self._starts)
                stats = drawn_starts(latents, stats, multiplied, self._starts, seed)
            fitted = self._start(args, kwargs, factors, stats, chains, tol, max_iter)
            self.start_bounds_.append(fitted[0][-1])
            if best is None or fitted[0][-1] > best[0][-1]:
                best = fitted
        bounds, converged, frames, stats, state = best
        self.__dict__.update(state)
        imprecise = self._imprecise(stats, frames, bounds)
        self.numerical_error_ = numerical_error(
            self._factors, self._latents, self._q, stats, frames, unframed=True
        )[0]
        self.fitted_blocks_ = {n: q for n, q in self._q.items() if len(latents[n].sites) > 1}
        self.fitted_chains_ = {
            chain: (torch.stack([stats[s] for s in chain]), torch.stack(
                [self._pairs[link] for link in zip(chain, chain[1:], strict=False)]))
            for chain in chains
        }  # fmt: skip
        if imprecise or self.numerical_error_ > 1e-6 * (1 + abs(bounds[-1])):
            unchecked = self._refuse_unstationary(args, kwargs, bounds, converged)
            located = any("Normal" in latent.family.name for latent in self._latents.values())
            warn_imprecise(
                self.numerical_error_, bounds[-1], self.probe_rounds_, unchecked, located
            )
        self.lower_bound_, self.lower_bounds_ = bounds[-1], bounds
        self.n_iter_, self.converged_ = len(bounds), converged
        if not converged:
            warn_sweeps_unconverged(bounds, max_iter, tol, self.overrelax)
        return self

    def _start(self, args, kwargs, factors, stats, chains, tol, max_iter) -> tuple:
        """One start's rounds of sweeps from the probed ``factors`` and initial ``stats``:
        (bounds, converged, frames, stats, the fitted state to keep if it is the best)."""
        self._q, self._chain_entropy, self._absent, self._local_cache = {}, {}, {}, {}
        self._chain_sites = frozenset(site for chain in chains for site in chain)
        self._pairs = {
            link: stats[link[0]].unsqueeze(-1) * stats[link[1]].unsqueeze(-2)
            for chain in chains
            for link in zip(chain, chain[1:], strict=False)
        }
        self._use(factors, {})
        bounds, converged, frames = self._rounds(args, kwargs, stats, chains, tol, max_iter)
        kept = ("_q", "_pairs", "_chain_entropy", "_absent", "_factors", "_frames_used",
                "_blanket", "markov_blankets_", "probe_rounds_")  # fmt: skip
        return bounds, converged, frames, stats, {k: getattr(self, k) for k in kept}

    def _rounds(self, args, kwargs, stats, chains, tol, max_iter):
        """Sweeps, probing the model again around q when the factors are imprecise there
        (checked after every sweep, so that imprecise factors do not pick a mixture's
        basin), or around the priors and q when an update comes out improper: (bounds of
        the last round's sweeps, converged, the frames used).

        A round stopped after its first sweep starts again from the initial statistics:
        that q was reached from the start by factors never checked on the way, and a start
        moved by imprecise factors can lead the next sweeps to another local optimum (a
        1-D mixture 10⁶ wide ended 53 nats low). A round stopped after a later sweep goes
        on from that q, the update of a q the factors held precisely (checked after the
        sweep before): started again, its sweeps would cross the whole path from the start
        (a precision 10⁻¹² to 1 in a mixture 10⁶ wide), which no one frame covers, and its
        frames swung between the path's early and converged q until the rounds ran out.

        Where these rounds fail and some update in them came out improper, the rounds run
        once more from the start, resuming (:meth:`_probe_rounds` with ``resuming``); the
        first error is raised if that fails too (tester 26's F2: ARD on targets of 10⁴ was
        refused in every round). Tried first, the rounds above keep every fit they made
        before (tester 27 compared 130)."""
        start_stats, start_pairs = dict(stats), dict(self._pairs)
        first = (self._factors, self._frames_used)
        self.probe_rounds_ = 1
        try:
            return self._probe_rounds(args, kwargs, stats, chains, tol, max_iter, False)
        except NotConjugateError as error:
            if not self._improper:
                raise
            stats.clear()
            stats.update(start_stats)
            self._pairs, self._q = dict(start_pairs), {}
            self._use(*first)
            try:
                return self._probe_rounds(args, kwargs, stats, chains, tol, max_iter, True)
            except NotConjugateError:
                raise error from None

    def _probe_rounds(self, args, kwargs, stats, chains, tol, max_iter, resuming: bool):
        """:meth:`_rounds`' loop; ``resuming``: the fallback of :meth:`_rounds`' last
        paragraph. An update that comes out improper in a round started again from the
        start (its first updates read the start's statistics, perhaps far outside the
        frames around q: ARD on targets of 10⁴ read w's start at 0 some 10⁵ sds from its
        frame) goes on from the q that round set out from, with the same factors; one that
        comes out improper in a round going on from a q, after some update of the sweep
        moved q (ARD's α from 1 to 10⁻⁹), probes again around the q reached and goes on
        from it. Not first: the q a round sets out from may be a first sweep's, reached by
        imprecise factors 10⁸ sds off (data at 10⁶ ± 10⁻⁶), which only a start around the
        priors mends (tester 27's F1: a bound 1.75e17 nats low)."""
        frames, rounds, self._improper = {}, 1, False
        start_stats, start_pairs = dict(stats), dict(self._pairs)
        at_q = False  # whether the current factors were solved around a q of the sweeps
        resumable = None  # the q a round started again from the start left, and its frames
        from_start = True  # whether this round's sweeps began at the start's statistics
        while True:
            last = rounds >= _MAX_PROBE_ROUNDS
            set_out_from = dict(self._q)
            try:
                bounds, converged, stopped = self._sweeps(
                    stats, chains, tol, max_iter, None if last else frames, at_q
                )
            except NotConjugateError:  # an improper update: perhaps rounding, far from the points
                self._improper = True
                if resuming and resumable is not None:  # go on from the q set out from
                    saved, self._pairs, self._q, frames = resumable
                    stats.clear()
                    stats.update(saved)
                    resumable, at_q, from_start = None, True, False
                    continue
                moved = any(self._q.get(n) is not q for n, q in set_out_from.items())
                if not resuming or from_start or last or not moved:
                    frames = {**self._prior_frames(), **self._frames()}
                    restart, at_q = True, False
                else:  # probe again around the q reached, and go on from it
                    frames, restart, at_q = self._frames(), False, True
                if last or not frames:
                    raise
            else:
                if not stopped:
                    misfit = self._verify(args, kwargs, stats)
                    if misfit is None:
                        return bounds, converged, frames
                    if last or not self._movable(misfit):
                        depends = self._probe_inputs[2]
                        advice = block_advice(self._latents, depends, misfit.latents)
                        raise NotConjugateError(misfit.message() + advice)
                frames, restart, at_q = self._frames(), len(bounds) == 1, True
            start = time.perf_counter()
            with validated_on_failure(self._model, args, kwargs, self._seed):
                self._use(self._reprobe(frames), frames)
            self.probe_seconds_ += time.perf_counter() - start
            self.probe_rounds_ += 1
            rounds += 1
            resumable, from_start = None, restart
            if restart:
                if at_q:
                    resumable = (dict(stats), dict(self._pairs), dict(self._q), frames)
                stats.clear()
                stats.update(start_stats)
                self._pairs, self._q = dict(start_pairs), {}

    def _verify(self, args, kwargs, stats) -> Misfit | None:
        """The factor worst reproduced at points drawn from q, or at the points that
        missed in earlier rounds (witnesses, kept: a re-probe draws fresh points, and one
        lucky round must not accept a kink an earlier one found), if any misses beyond
        float64 rounding (see :mod:`pyro_vae.cavi.verification`); else None. One more
        model run, batched when the probe runs were."""
        start = time.perf_counter()
        _, _, _, trace, generator = self._probe_inputs
        with validated_on_failure(self._model, args, kwargs, self._seed):
            values = points_at_q(self._latents, self._q, point_count(self._latents), generator)
            count = next(iter(values.values())).shape[0]  # with the tail points
            runner = probe_runner(
                self._model, args, kwargs, self._latents, trace, generator, self.probe_batched_
            )
            try:
                log_probs = runner.log_probs(values, count)
            except NotConjugateError:
                raise
            except (RuntimeError, ValueError) as error:  # the model's own, at some point
                raise NotConjugateError(unverifiable(error, self._latents)) from error
        self.probe_model_runs_ += runner.model_runs
        rounding = numerical_error(
            self._factors, self._latents, self._q, stats, self._frames_used, unframed=True
        )[0]
        found = [
            worst_misfit(self._factors, self._latents, self._frames_used, points, densities,
                         trace, rounding)
            for points, densities in [(values, log_probs), *self._witnesses]
        ]  # fmt: skip
        if found[0] is not None:
            self._witnesses.append((values, log_probs))
        self.probe_seconds_ += time.perf_counter() - start
        missed = [misfit for misfit in found if misfit is not None]
        return max(missed, key=lambda misfit: misfit.misfit, default=None)

    def _movable(self, misfit: Misfit) -> bool:
        """Whether probing again around q can move the points of the factor that missed:
        some latent of it takes a frame (a Beta's, a Dirichlet's and a discrete latent's
        points stay where they were, so a second look there would find the same)."""
        return any(has_frames(self._latents[n].family) for n in misfit.latents)

    def _use(self, factors, frames: dict) -> None:
        """Take ``factors`` (solved in ``frames``) as the model's, with each latent's Markov
        blanket."""
        self._factors, self._frames_used, self._stacks = factors, frames, {}
        self._blanket = {
            n: [f for f in factors if n in f.latents or n == f.selector] for n in self._latents
        }
        self.markov_blankets_ = {n: tuple(f.name for f in fs) for n, fs in self._blanket.items()}

    def _sweeps(self, stats, chains, tol: float, max_iter: int, frames=None, at_q=True):
        """Sweeps until the bound changes by less than ``tol`` (or ``max_iter`` sweeps):
        (the bound after each, whether it converged, whether it stopped to probe again).
        ``frames``: those of the current factors, to check q against after every sweep
        (None: no check); ``at_q``: whether they were drawn around a q of the sweeps (see
        :meth:`_imprecise`). ``stats`` is updated in place."""
        order = _update_order(self._latents, self.init)
        depends = self._probe_inputs[2]
        first_order = _update_order(self._latents, self.init, first_sweep=True, depends=depends)
        heads = {chain[0]: chain for chain in chains}
        in_chains = {s for chain in chains for s in chain}
        overrelaxes = self._overrelaxes(chains)
        newton, tried = self._newton_latents() if overrelaxes else [], -math.inf
        bounds, gains, rate, self._eta, ever_kept = [], [], FIRST_RATE, {}, False
        for _ in range(max_iter):
            before = dict(self._eta)
            for name in order if bounds else first_order:
                if name in heads:
                    self._update_chain(heads[name], stats)
                elif name not in in_chains:
                    self._q[name] = self._update(name, stats)
                    stats[name] = self._latents[name].family.expected_statistics(self._q[name])
            bounds.append(self._bound(stats))
            converged = len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < tol
            gains.append(bounds[-1] - bounds[-2] if len(bounds) > 1 else math.inf)
            # on the last sweep too: there only the longer step can tell a ridge's small
            # gain from a fixed point's (tester S's F4: max_iter=200 ran out 4,300 tol
            # short of the fixed point, reported converged without a warning)
            if overrelaxes and (ever_kept or crawling(gains)) and len(before) == len(order):
                swept = bounds[-1]
                kept = self._overrelax(before, stats, bounds, rate)
                # converged only where a longer step gains less than tol too (kept), or the
                # shortest is declined: a sweep's small change can be a ridge's (crossed
                # effects sharing a level crawl 4e-9 nats a sweep 3e-5 below the optimum)
                settled = bounds[-1] - swept < tol and (kept or rate == FIRST_RATE)
                converged, rate = converged and settled, next_rate(rate, kept)
                ever_kept |= kept
            last = converged or len(bounds) == max_iter
            if frames is not None and self._imprecise(stats, frames, bounds, at_q, last):
                return bounds, False, True
            # a stop is confirmed only where the means have less than tol left too; a crawl
            # (on a ridge of tightly linked means) jumps to their optimum, every few sweeps.
            # Taken only on factors that passed the check above (in a last round, which has
            # none, a stop is only checked): a step taken on the first sweep's rounding
            # jumped a mean 10⁶ away, and the rounds ran out around it (tester Y: data near
            # 10⁶, a bound 1.4e7 nats short)
            crawl = crawling(gains[1:]) and len(bounds) - tried >= NEWTON_EVERY
            if newton and (converged or crawl and frames is not None):
                tried = len(bounds)
                left = self._newton(newton, stats, bounds, tol, take=frames is not None)
                converged = converged and left < tol
                last = converged or len(bounds) == max_iter
            if last:
                return bounds, converged, False
        return bounds, False, False

    def _refuse_unstationary(
        self, args, kwargs, bounds, converged: bool = True
    ) -> dict[str, str] | None:
        """Where float64 rounding in the probed factors is warned of, refuse a q whose
        Normal means the model's own gradient would move: E_q[∇ log p(x, z)] at seeded
        draws of q, by autograd (:mod:`pyro_vae.cavi.stationarity`), asks for a step of
        more than one of q's sds, or of the sds of the model's own curvature along it (the
        wrong factors can leave q's variance wrong too: a q(μ) 10⁶ times too narrow, 1.5·10⁶
        off, asked for 0.96 of its sds), beyond 6 standard errors of the draws. The sweeps' fixed
        point is then one of factors wrong where q is, by more than their estimated
        rounding (tester Y: a hierarchical model of data near 10⁶ gave a bound of −2.1e12
        nats, reported converged with 3.6e9 nats of rounding warned of, another seed −5e12
        with 3.7e3 nats; its evidence is −82.7). Its seeds whose bounds are right, warned
        of 1e-6 to 1e-2 nats, ask for steps of at most 0.4 sds at under 2 standard errors
        (the draws' noise), and still fit.

        A fit whose sweeps ran out (``converged`` False) is checked too, since rounding can
        hold the sweeps crawling as well as stopped (tester Y's rounds ran out), and its
        refusal says so and to raise ``max_iter`` (tester BC's F4: ``max_iter=1`` was
        refused as sweeps that "settled").

        Returns the units not checked, {unit: a factor of its without an autograd graph}
        (the warning names them), or None where none could be (the model raised at a draw).

        Raises:
            NotConjugateError: naming the latent, the step and the way out.
        """
        checked = mean_steps(self._model, args, kwargs, self._latents, self._q,
                             self.variational_guide(), self._seed,
                             self.markov_blankets_)  # fmt: skip
        if checked is None:
            return None
        steps, unchecked = checked
        moved = {
            n: (step, z, model_step)
            for n, (step, z, model_step) in steps.items()
            if max(step, model_step) > 1 and z > 6
        }
        if not moved:
            return unchecked
        name, (step, z, model_step) = max(moved.items(), key=lambda item: max(item[1][::2]))
        if converged:
            stopped = f"after {self.probe_rounds_} probing rounds the sweeps settled"
            advice = "Centre and scale the data (or the prior)"
        else:  # not known to be a fixed point, nor free of the factors' rounding
            stopped = f"the sweeps stopped at max_iter={len(bounds)} without converging"
            advice = "Raise max_iter; if the converged fit is refused too, centre and scale "
            advice += "the data (or the prior)"
        raise NotConjugateError(
            f"AutoCAVI: {stopped} (bound {bounds[-1]:.6g} nats) where the model's own "
            f"gradient moves the mean of latent site {name!r} by {step:.3g} of q's sds and "
            f"{model_step:.3g} sds of the model's own curvature along it ({z:.3g} standard "
            f"errors over {DRAWS} draws of q): q cannot be told from a fixed point of probed "
            "factors that float64 rounding left wrong where q is (their rounding estimated "
            f"at {self.numerical_error_:.3g} nats): the log-densities are large where q puts "
            f"its mass. {advice} so that the latents are of order one"
        )

    def _overrelaxes(self, chains) -> bool:
        """Whether sweeps take over-relaxed steps (:mod:`pyro_vae.cavi.overrelaxation`): when
        ``overrelax`` is on and no latent is discrete (a mixture's sweeps stay the
        hand-written class's, each basin its own: a longer step could cross to another)."""
        return (
            self.overrelax
            and not chains
            and not any(
                latent.family.name in DISCRETE_FAMILIES for latent in self._latents.values()
            )
        )

    def _overrelax(self, before: dict, stats, bounds: list, rate: float) -> bool:
        """Propose q at ``rate`` times the last sweep's step in natural parameters from
        ``before`` (each latent's η at the sweep's start); keep it, in ``self._q``,
        ``stats`` and ``bounds[-1]``, when its ELBO is finite and above the sweep's."""
        proposal = overrelaxed_q(before, self._eta, self._latents, self._frames_used, rate)
        if proposal is None:
            return False
        trial = {
            name: self._latents[name].family.expected_statistics(q) for name, q in proposal.items()
        }
        kept_q, self._q = self._q, {**self._q, **proposal}
        bound = self._bound({**stats, **trial})
        if not (math.isfinite(bound) and bound > bounds[-1]):
            self._q = kept_q
            return False
        stats.update(trial)
        bounds[-1] = bound
        return True

    def _newton_latents(self) -> list[str]:
        """The Normal latents (not in a block) whose means :meth:`_newton` steps on, where
        there are two at least (one latent's update maximizes over its own mean already);
        else []."""
        names = [
            name
            for name, latent in self._latents.items()
            if latent.family.name == "Normal" and len(latent.sites) == 1
        ]
        return names if len(names) > 1 else []

    def _newton(self, names: list[str], stats, bounds: list, tol: float, take=True) -> float:
        """Where the sweeps would stop: the gain a Newton step on the means of latents
        ``names`` predicts (:mod:`pyro_vae.cavi.newton_means`); where it is ``tol`` or more,
        the step is taken (halved until the ELBO rises, in ``self._q``, ``stats`` and
        ``bounds[-1]``; not with ``take`` False). Returns the predicted gain, taken or not
        (a stop is confirmed only below ``tol``: a random walk of sd 10⁻⁵ predicted 35 nats
        that its imprecise factors gave only in part, and was reported converged 34 nats
        short); 0 where no step is defined."""
        kept = {name: self._q.get(name) for name in names}
        normal = (torch.distributions.Normal, torch.distributions.MultivariateNormal)
        if not all(isinstance(q, normal) for q in kept.values()):
            return 0.0

        def moved(means) -> dict:
            trial = {n: _with_mean(kept[n], m) for n, m in zip(names, means, strict=True)}
            self._q.update(trial)
            return {n: self._latents[n].family.expected_statistics(q) for n, q in trial.items()}

        try:
            found = newton_step(
                lambda means: self._expected_log_joint({**stats, **moved(means)}),
                [kept[n].loc for n in names],
            )
        finally:
            self._q.update(kept)
        if found is None:
            return 0.0
        if not (take and found[1] >= tol):
            return found[1]
        step = found[0]
        for halving in range(HALVINGS + 1):
            scale = 0.5**halving
            trial = moved([kept[n].loc + scale * s for n, s in zip(names, step, strict=True)])
            bound = self._bound({**stats, **trial})
            if math.isfinite(bound) and bound > bounds[-1]:
                stats.update(trial)
                bounds[-1] = bound
                self._eta = {}  # the next sweep's over-relaxed step would start before this one
                return found[1]
        self._q.update(kept)
        return found[1]

    def _imprecise(self, stats, frames, bounds, at_q=True, settled=True) -> bool:
        """Whether to probe again around q: float64 rounding in the factors' solve may move
        the bound by more than 1e-9 of its size (see
        :func:`~pyro_vae.cavi.probe_frames.numerical_error`) while q lies outside the probe
        points (amplification above ``_AMPLIFICATION``) or they were not drawn around a q
        of the sweeps (``at_q`` False: the first points, or the priors', can be far wider
        than q, with log-densities of 10⁸ where q's are of order one, and q still inside
        them); or, once the sweeps have ``settled`` (converged, or out of sweeps), q lies
        far outside the points whatever the rounding (amplification above ``_FAR``: the
        factors there are extrapolated, and the last round's points are best drawn at the
        fixed point). Not before: hierarchical means crawling many of their sds a round
        (rats' growth curves) re-probed every few sweeps until the 10 rounds ran out, with
        rounding of 1e-8 nats at each."""
        local = {  # the sweep's E_q[T] in the frames, where kept for this q and frame
            name: hit[2]
            for name, hit in self._local_cache.items()
            if hit[0] is self._q.get(name) and hit[1] is frames.get(name)
        }
        error, amplification = numerical_error(
            self._factors, self._latents, self._q, stats, frames, local=local
        )
        if settled and amplification > _FAR:
            return True
        rounding = error > 1e-9 * (1 + abs(bounds[-1]))
        # points drawn again at the same fixed place (no latent takes a frame) change nothing
        return rounding and (amplification > _AMPLIFICATION or not at_q and self._framed)

    def _prior_frames(self) -> dict:
        """A frame at each latent's prior (in the first run), for the families that take
        one: where to probe again when the first points left an update improper."""
        _, _, _, trace, _ = self._probe_inputs
        frames = {}
        for name, latent in self._latents.items():
            frame = prior_frame(latent.family, tuple(trace.nodes[s]["fn"] for s in latent.sites))
            if frame is not None:
                frames[name] = frame
        return frames

    def _frames(self) -> dict:
        """A frame at each latent's current q, for the families that take one."""
        return {
            name: frame_of(latent.family, self._q[name])
            for name, latent in self._latents.items()
            if has_frames(latent.family) and name in self._q
        }

    def _reprobe(self, frames) -> list:
        """The factors solved again from points drawn around q (``frames``)."""
        args, kwargs, depends, trace, generator = self._probe_inputs
        info = {}
        factors = probe_factors(
            self._model,
            args,
            kwargs,
            self._latents,
            depends,
            trace,
            generator,
            info=info,
            frames=frames,
            precision_only=self._precision_only,
        )
        self.probe_model_runs_ += info["model_runs"]
        return factors

    def _probe(self, args, kwargs, auto_blocks: bool):
        """(latents, factors, initial statistics): the model run once seeded, under
        provenance tracking, then probed (Pyro's validation off, see
        :mod:`pyro_vae.cavi.validation`)."""
        generator = torch.Generator().manual_seed(self._seed)
        first, read = self._first_run(args, kwargs)
        self._first, self._read = first, read  # for _plate_as_event, where the probes refuse
        check_float64(first)
        check_whole_data(first)
        check_observations(first)
        check_factor_dims(first)
        unblocked = None  # a block refused on the sites as declared
        try:
            latents = find_latents(first, () if auto_blocks else self.blocks)
        except ValueError as refusal:
            if auto_blocks or not may_take_as_vectors(first):
                raise
            # a block's mean may be a plated site AutoCAVI takes as one vector (w in a
            # features plate beside its precision τ outside it): probe without the blocks
            # to take it so, then pair them (tester AT's F2); else the refusal stands
            unblocked, latents = refusal, find_latents(first, ())
        if not latents:
            raise ValueError("model: it has no latent (unobserved) sample site to fit")
        if reference_is_finite(first):
            depends, trace = dependencies(read, latents), first
        else:  # a run at probe values instead, to be the probe runs' reference point
            depends, trace = find_dependencies(self._model, args, kwargs, latents, generator)
        self.blocks_ = find_blocks(latents, depends) if auto_blocks else list(self.blocks)
        if auto_blocks and self.blocks_:
            latents = find_latents(first, self.blocks_)
            depends = regroup(depends, latents)
        self._precision_only = precision_only_factors(read, latents)
        self._starts = self._plug_in(args, kwargs, latents, depends)
        info = {}
        try:
            factors = probe_factors(
                self._model, args, kwargs, latents, depends, trace, generator, info=info,
                precision_only=self._precision_only,
            )  # fmt: skip
        except NotConjugateError as error:
            if unblocked is None or isinstance(error, ReadAcrossPlate):
                raise
            raise unblocked from None
        if unblocked is not None:  # no site was taken as a vector: the blocks' refusal
            raise unblocked
        # after the probes, which take a plated site read whole into its event: a start
        # given for such a site as declared (a scalar per element) is made that vector
        init = flat_init(self.init, self.flattened_events_)
        self._init = vector_init(init, latents, self.plates_as_events_)
        stats = initial_statistics(latents, self._init, first, self._seed, self._starts)
        self.probe_batched_, self.probe_model_runs_ = info["batched"], info["model_runs"]
        self._probe_inputs = (args, kwargs, depends, trace, generator)
        self._first = first
        return latents, factors, stats

    def _follower_note(self, factor: str) -> str:
        """Where the observed site ``factor`` was itself taken into its event, following a
        latent whose plates moved (``plate_events.plate_companions``): that cause, and the
        way to keep it as declared (tester AT's F4: PPCA's z in the rows plate of x)."""
        if factor not in self._observed_events:
            return ""
        plate = self._observed_events[factor]
        over = f"plate {plate!r}" if plate else "its last batch dim"
        return (
            f"; {factor!r} was itself taken into its event over {over}, following a latent "
            f"that shares a plate with it and was taken as a vector: declare that latent in "
            f"a plate of its own name, not one of {factor!r}'s, and {factor!r} stays as "
            "declared"
        )

    def _first_run(self, args, kwargs):
        """The model's first run (:func:`first_run`): (trace, reads). Where it has Normal
        latents of several event dims not flattened yet, again with them flattened
        (:mod:`pyro_vae.cavi.event_flattening`), from then on."""
        first, read = self._seeded_run(args, kwargs)
        new = {
            name: site["fn"].event_shape
            for name, site in first.nodes.items()
            if name not in self.flattened_events_ and is_latent(site) and flattenable(site)
        }
        if not new:
            return first, read
        self.flattened_events_ = {**self.flattened_events_, **new}
        self._model = self._rewritten_model()
        return self._seeded_run(args, kwargs)

    def _seeded_run(self, args, kwargs):
        try:
            return first_run(self._model, args, kwargs, self._seed)
        except Exception as error:
            refusal = first_run_refusal(error, args, kwargs)
            if refusal is None:
                raise
            raise refusal from error

    def _rewritten_model(self):
        """The user's model with its flattened events and its plates taken as events."""
        model = self.model
        if self.flattened_events_:
            model = with_events_flattened(model, self.flattened_events_)
        events = {**self.plates_as_events_, **self._observed_events}
        return with_plates_as_events(model, events) if events else model

    def _plate_as_event(self, error: ReadAcrossPlate) -> bool:
        """Take the plate ``error`` reads the latent across into the latent's event, if the
        model stays the same model that way (:func:`~pyro_vae.cavi.plate_events.
        convertible_plate` at each of its sites in that plate), and run the model so from
        now on (:func:`~pyro_vae.cavi.plate_events.with_plates_as_events`): whether it did.
        Where a site of it cannot be taken so, ``error`` again, saying why
        (:func:`~pyro_vae.cavi.plate_events.declined_because`)."""
        nodes = self._first.nodes
        taken = {**self.plates_as_events_, **self._observed_events}
        converted = {}
        for site in error.sites:
            if site not in nodes:
                return False
            if site in self.plates_as_events_:  # one plate of a site goes into its event
                raise error.with_note(
                    f"{site!r} is fitted as one vector over its plate "
                    f"{self.plates_as_events_[site]!r}, its dim -1, and is still read across "
                    f"{sorted(error.plates)}; AutoCAVI takes one plate of a site into its "
                    "event, and a data index then reads it where one plate is left: with "
                    "two plates nested the other way, declare the plate it is read whole "
                    "across at dim -1, pyro.plate(name, size, dim=-1), and the plate a data "
                    "index picks left of it; with a third plate, declare one site per "
                    f"element of it{self._follower_note(error.factor)}"
                ) from error
            if not any(f.name in error.plates for f in nodes[site]["cond_indep_stack"]):
                continue  # a block's precision outside the plate
            plate = convertible_plate(nodes[site], error.plates)
            if plate is None:
                factor = nodes.get(error.factor)
                event = "" if factor is None or error.factor in taken else (
                    event_over_plate(factor, nodes[site], error.plates))  # fmt: skip
                raise error.with_note(
                    "AutoCAVI fits a plated Normal or Gamma read whole as one vector over its "
                    f"plate, but not {site!r}: "
                    f"{declined_because(nodes[site], error.plates)}{event}"
                ) from error
            converted[site] = plate
        if not converted:
            return False
        try:
            followers = plate_companions(nodes, self._read, converted, taken)
        except NotConjugateError as refusal:
            raise error.with_note(str(refusal)) from error
        observed = {s: p for s, p in followers.items() if nodes[s]["is_observed"]}
        converted.update({s: p for s, p in followers.items() if s not in observed})
        self._event_frames.update({site: nodes[site]["cond_indep_stack"] for site in converted})
        self.plates_as_events_ = {**self.plates_as_events_, **converted}
        self._observed_events = {**self._observed_events, **observed}
        self._model = self._rewritten_model()
        return True

    def _plug_in(self, args, kwargs, latents, depends) -> dict:
        """{site: prior given its parents at their means} for the continuous latents
        ``init`` does not set, from one more model run, where one of them has a latent
        parent and its start is read (an update before its own mentions it: not the
        regression's weights, updated first) (:mod:`pyro_vae.cavi.plug_in_start`); else {}
        (a root's prior is the same in both runs)."""
        first_sweep = _update_order(latents, self.init, first_sweep=True, depends=depends)
        position = {name: i for i, name in enumerate(first_sweep)}
        sites = {
            name
            for name, latent in latents.items()
            if len(latent.sites) == 1
            and latent.family.name not in DISCRETE_FAMILIES
            and name not in (self.init or {})
        }
        # a start matters only where an update before the latent's own reads it
        read_early = {
            name
            for names in depends.values()
            for name in names
            if name in sites and any(position[m] < position[name] for m in names)
        }
        if not any(set(depends.get(name, ())) - {name} for name in read_early):
            return {}
        return plug_in_priors(self._model, args, kwargs, sites, self._seed) or {}

    def _check_settings(self) -> tuple[float, int, bool, int, int]:
        """(tol, max_iter, whether blocks is "auto", n_init, random_state as an int), or
        ValueError naming the argument."""
        if not callable(self.model):
            raise ValueError(
                f"model: {self.model!r} is not callable; expected a Pyro model, a function "
                "or a PyroModule whose call runs pyro.sample statements"
            )
        tol = non_negative("tol", self.tol)
        max_iter = positive_int("max_iter", self.max_iter)
        n_init = positive_int("n_init", self.n_init)
        seed = seed_of("random_state", self.random_state)
        if seed is None:  # fresh entropy, as NumPy's default_rng(None) and the classes'
            seed = int(np.random.default_rng().integers(2**31))
        if not isinstance(self.init, (dict, type(None))):
            raise ValueError(f"init: {self.init!r} is not a dict of site name -> initial q")
        if not isinstance(self.markov_chains, bool):
            raise ValueError(f"markov_chains: {self.markov_chains!r} is not True or False")
        if not isinstance(self.overrelax, bool):
            raise ValueError(f"overrelax: {self.overrelax!r} is not True or False")
        auto_blocks = isinstance(self.blocks, str) and self.blocks == "auto"
        if not auto_blocks and not isinstance(self.blocks, (list, tuple)):
            raise ValueError(
                f"blocks: {self.blocks!r} is neither 'auto' nor a list of (mean site, "
                "precision site) pairs"
            )
        # the seed as an int: a NumPy integer too (torch's manual_seed takes only int)
        return tol, max_iter, auto_blocks, n_init, int(seed)

    @on_the_cpu
    def variational_distributions(self) -> dict[str, torch.distributions.Distribution]:
        """The fitted factors q_j, keyed by latent site name (float64; batch shape = the
        site's plates, but for a site in ``plates_as_events_``, whose q has that plate's
        dim as its event: [*batch, D], a MultivariateNormal or independent Gammas; for a
        site in ``flattened_events_``, the MultivariateNormal over its elements in
        row-major order (its ``base_dist``) reshaped to the site's event shape). A
        block's joint q(μ, Λ) (``fitted_blocks_``) appears here as its
        marginals: q(Λ) Wishart and q(μ) a multivariate Student-t. An element absent from
        the model (masked off, and mentioned by no factor: ``obs_mask``'s
        ``<site>_unobserved`` where data are observed) keeps its place in the batch, with a
        standard placeholder (N(0, I), Gamma(1, 1), a uniform Categorical, …) that the
        bound leaves out."""
        if not hasattr(self, "_q"):
            raise NotFittedError("AutoCAVI: not fitted yet; call fit(*args) first")
        out = {}
        for name, q in self._q.items():
            sites = self._latents[name].sites
            out.update(zip(sites, q.marginals(), strict=True) if len(sites) > 1 else {name: q})
        for site, shape in self.flattened_events_.items():
            out[site] = in_site_shape(out[site], shape)
        # copies: q edited in place changed the fit's own q, its guide's and its
        # predictions, its bound not (tester DL)
        return copy.deepcopy(out)

    @on_the_cpu
    def variational_guide(self):
        """The fitted q as a Pyro guide ``guide(*args, **kwargs)`` (the arguments are
        ignored), joint where q is: a block draws its precision and then its mean given
        that draw, a chain kept whole draws its sites in order from their pairwise
        marginals, and elements absent from the model are masked out of log q
        (:mod:`pyro_vae.cavi.fitted_guide`). :func:`pyro_vae.diagnostics.to_inference_data`
        and :func:`~pyro_vae.diagnostics.psis_khat` take the fit itself and use this.

        Raises:
            sklearn.exceptions.NotFittedError (a ValueError): not fitted yet."""
        if not hasattr(self, "_q"):
            raise NotFittedError("AutoCAVI: not fitted yet; call fit(*args) first")
        plates = {
            site: tuple(f for f in self._first.nodes[site]["cond_indep_stack"] if f.vectorized)
            for latent in self._latents.values()
            for site in latent.sites
        }
        events = {
            site: (
                tuple(f for f in frames if f.vectorized),
                self._first.nodes[site]["fn"].batch_shape
                + self._first.nodes[site]["fn"].event_shape,
            )
            for site, frames in self._event_frames.items()
        }
        return fitted_guide(self._latents, self._q, self.fitted_chains_, self._absent, plates,
                            events, self.flattened_events_)  # fmt: skip


def _named(sites: dict, error: Exception) -> dict:
    """The entries of ``sites`` whose site ``error``'s message names."""
    return {site: v for site, v in sites.items() if f"{site!r}" in str(error)}


def _flattened(sites: dict[str, torch.Size]) -> str:
    """A refusal's note on the sites fitted as one vector of their elements (its
    ``Normal (.to_event(1))`` and statistics x0, x1, … are that vector's); "" for none."""
    if not sites:
        return ""
    named = ", ".join(f"{site!r}, event shape {tuple(shape)}" for site, shape in sites.items())
    return (
        f" ({named}: a Normal of several event dims, taken as one vector of its elements in "
        "row-major order; what this says of such a site is of that vector)"
    )


def _as_vectors(converted: dict[str, str | None]) -> str:
    """A refusal's note on the sites fitted as one vector over a plate they were declared in
    (a name such as ``Normal (.to_event(1))`` is then that vector's), or over their last
    batch dim of size 1 (a site that followed one, ``plate_events.plate_companions``); ""
    for none."""
    if not converted:
        return ""
    sites = ", ".join(
        f"{site!r} over plate {plate!r}" if plate else f"{site!r} over its last batch dim"
        for site, plate in converted.items()
    )
    return (
        f" ({sites}: declared in a plate that a factor outside it reads whole, or beside such "
        "a site in a factor inside its other plates, and so taken as one vector, "
        ".to_event(1); what this says of such a site is of that vector)"
    )


def _with_mean(q, mean: torch.Tensor):
    """The Normal (or multivariate Normal) ``q`` moved to ``mean``, its scale kept."""
    if isinstance(q, torch.distributions.MultivariateNormal):
        return dist.MultivariateNormal(mean, scale_tril=q.scale_tril, validate_args=False)
    return dist.Normal(mean, q.scale, validate_args=False)


def _update_order(latents: dict, init, first_sweep: bool = False, depends=None) -> list[str]:
    """The order a sweep updates the latents in: those started at their prior (or at a
    block's forward-run values), in sampling order; then the discrete latents ``init`` does
    not set, started at a seeded draw; then those ``init`` sets, last. So the others are
    first fitted to a start rather than it to their priors' expectations (a spike-and-slab
    s_j updated first saw E[b_j] = 0 and switched off), and a start the user gave is read
    before anything updated after it overwrites it: a mixture's components set by ``init``
    give the responsibilities of the first sweep, not the other way round (tester 23: the
    components' ``init`` of a 1-D mixture and of LDA changed nothing, each overwritten by
    an update from the drawn assignments before any update read it).

    ``first_sweep``: the order of a sweep from the starts, in which the Normal latents
    started at their prior come before the other latents so started, in sampling order
    within each. A precision updated first reads its Normals' second moments at their
    starts, a vague prior's 10⁸: tester BA's Bayesian PCA with a latent mean m ~ N(0, 10⁴)
    got E[τ] = 10⁻⁸ from its first update, the loadings and factors collapsed to 10⁻¹⁴
    given it, and the sweeps stopped, converged, at the saddle W = z = 0, 54.6 nats below
    the optimum. A Normal's update reads only the others' means and its precisions' means,
    which a start has right. And the discrete latents a factor (``depends``: {factor: the
    latents it reads}) reads beside a Normal latent ``init`` sets (a mixture's means) come
    first of all: their seeded draws say nothing, the start the user gave does. Updated
    after the latents started at their prior, they read those latents fitted to the
    draws: tester BC's 1-D mixture with ``init`` at the true means had its precisions
    fitted to random assignments first, and ended with a component emptied, 14.7 nats
    below the fit from the same start with the assignments updated first. Later sweeps
    keep the order above, whose last updates are those of the latents ``init`` sets, as
    the hand-written classes end theirs."""
    given = set(init or {})
    drawn = {
        name for name, latent in latents.items()
        if latent.family.name in DISCRETE_FAMILIES and name not in given
    }  # fmt: skip
    started = [n for n in latents if n not in given | drawn]
    informed = []  # discrete latents whose first update reads a start the user gave
    if first_sweep:
        normals = [n for n in started if latents[n].family.name == "Normal"]
        started = normals + [n for n in started if n not in normals]
        read = [set(names) for names in (depends or {}).values()]
        # the means a mixture's assignments read say where its components are; a start of
        # its weights or precisions alone, the same for every component or not, does not
        # (tester BF: the assignments updated first from the means' prior, 0 for all,
        # made three components one, 26 nats below no init at all)
        located = {n for n in given if n in latents and latents[n].family.name == "Normal"}
        informed = [n for n in latents if n in drawn and any(n in r and r & located for r in read)]
    return (
        informed
        + started
        + [n for n in latents if n in drawn and n not in informed]
        + [n for n in latents if n in given]
    )
