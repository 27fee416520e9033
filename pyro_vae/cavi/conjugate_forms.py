"""How each factor of a Pyro model's log joint depends on its latents, recovered by probing.

In a conditionally conjugate-exponential model every factor log f (one sample site's
``log_prob``, observed or latent, scaled and masked as the trace scores it) is multilinear in
the sufficient statistics of the latents it mentions (Winn & Bishop 2005; Hoffman & Johnson
2018, autoconj):

    log f = Σ_{a,b,…} C_{a b …} T_{1a}(x₁) T_{2b}(x₂) …      (T_{j0} = 1 for all but Categorical)

autoconj finds C by rewriting the traced log-joint symbolically. Here the model is re-run
with its latents conditioned (``poutine.condition``) at random probe points and C is solved
for in float64, then checked at fresh points: a factor that is not multilinear in some
latent's statistics is not conjugate for it, and is refused naming the site, its
distribution and the factor. Probing needs no access to how the model computed a parameter
(``(tau * lambda0).rsqrt()``, a sum, an indexing), only its values, so it covers any
parameterization a tracer would have to pattern-match; one set of runs probes every factor
at once, and it runs once per fit.

Plates: a latent inside a plate is one variable per element; a factor element depends on the
latent elements at its own plate indices (Pyro's broadcasting aligns batch dims by plate dim),
so the coefficients are solved per element and then summed over the factor's plate dims the
latents do not vary along (they multiply the same expectations there).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from pyro_vae.cavi.data_indexing import (
    collapse_by_group,
    find_indices,
)
from pyro_vae.cavi.exponential_families import (
    DISCRETE_FAMILIES,
    NotConjugateError,
)
from pyro_vae.cavi.factor_form import Factor, to_natural, trimmed
from pyro_vae.cavi.kronecker_probe import (
    MAX_POINTS,
    axis_counts,
    eligible,
    grid_runs,
)
from pyro_vae.cavi.least_squares import magnitudes_by_component, solve_factor, summed_to
from pyro_vae.cavi.mixture_components import (
    Components,
)
from pyro_vae.cavi.mixture_roles import (
    components_hint,
    mixture_design,
    mixture_factor,
    mixture_roles,
)
from pyro_vae.cavi.probe_counts import shared_runs
from pyro_vae.cavi.probe_runs import (
    ProbeRunner,
    is_factor,
)
from pyro_vae.cavi.refusals import (
    SVI_ADVICE,
    distribution_name,
    hidden_dependence,
    moved_beyond_rounding,
    not_finite_refusal,
    refuse,
    rounding_reach,
)

#: Most coefficients per element of one factor (the product of its latents' statistic
#: counts): a D = 100 Normal vector with a Gamma precision has 15,453; beyond, refused.
MAX_UNKNOWNS = 20_000


def probe_runner(model, args, kwargs, latents, trace, generator, batched) -> ProbeRunner:
    """A :class:`~pyro_vae.cavi.probe_runs.ProbeRunner` at points the caller draws, whose reference
    is ``trace`` (a plain run at probe values); ``batched``: how the probe runs found the model to
    batch (``"plate"``, ``"vmap"`` or False), so the first batched run is not checked again."""
    runner = _runner(model, args, kwargs, latents, trace, generator, batched, None)
    runner.batched = batched
    return runner


def _runner(model, args, kwargs, latents, trace, generator, batched, frames,
            try_plate=True) -> ProbeRunner:  # fmt: skip
    """A :class:`~pyro_vae.cavi.probe_runs.ProbeRunner` whose reference is ``trace`` (a plain run at
    probe values)."""
    sites = [s for latent in latents.values() for s in latent.sites]
    values = {s: trace.nodes[s]["value"] for s in sites}
    log_probs = {
        name: node["log_prob"].to(torch.float64)
        for name, node in trace.nodes.items()
        if is_factor(node)
    }
    reference = (values, log_probs, trace)
    return ProbeRunner(
        model, args, kwargs, latents, generator, reference, batched, frames, try_plate
    )


def probe_factors(model, args, kwargs, latents, depends, trace, generator, *, batched=True,
                  info=None, frames=None, try_plate=True, precision_only=frozenset()):  # fmt: skip
    """Solve every factor's coefficients from one set of probe runs, and verify them.

    ``trace`` is a run at probe values (from :func:`~pyro_vae.cavi.first_trace.find_dependencies`).
    The probe points are run in one batched model run when the model broadcasts over a leading probe
    dim, else under ``torch.func.vmap``, else one by one (``batched=False`` forces that;
    ``try_plate=False`` skips the probe plate); see :mod:`pyro_vae.cavi.probe_runs`. A factor that
    misfits in a probe plate is probed again under vmap or one by one. ``info``, a dict, receives
    ``batched`` (``"plate"``, ``"vmap"`` or False: how the runs were batched) and ``model_runs``
    (model calls made). ``frames`` {unit: Frame}: draw those units' points around q and solve in
    their local coordinates (:mod:`pyro_vae.cavi.probe_frames`). ``precision_only``: the factor
    sites of one member, a Normal-Gamma or Normal-Wishart block, whose log-density reads the block's
    precision site alone (:func:`~pyro_vae.cavi.first_trace.precision_only_factors`), solved on its
    statistics alone. Returns a list of :class:`~pyro_vae.cavi.factor_form.Factor` on the natural
    statistics, in the trace's site order."""
    runner = _runner(model, args, kwargs, latents, trace, generator, batched, frames, try_plate)
    runner.precision_only = frozenset(precision_only)
    info = {} if info is None else info
    try:
        factors = _probe_all(runner, depends, trace)
        info.update(batched=runner.batched or False, model_runs=runner.model_runs)
        return factors
    except NotConjugateError:
        if runner.batched != "plate":  # vmap and single runs cannot mix points: a misfit
            raise
    # a misfit in a probe plate may be a model that mixes its points where the reference
    # check did not see it: redo them under vmap, which cannot, else one by one
    factors = probe_factors(
        model,
        args,
        kwargs,
        latents,
        depends,
        trace,
        generator,
        batched=batched,
        info=info,
        frames=frames,
        try_plate=False,
        precision_only=precision_only,
    )
    info["model_runs"] += runner.model_runs
    return factors


def _probe_all(runner, depends, trace, probed_components=frozenset()) -> list[Factor]:
    """Every factor solved from one set of fit runs and verified at one set of check runs,
    drawn together in one batched model run when the model broadcasts; with the discrete
    latents in plates enumerated, where there are any, in a second (see
    :mod:`pyro_vae.cavi.probe_enumeration`)."""
    latents = runner.latents
    roles = {site: mixture_roles(site, names, latents, trace) for site, names in depends.items()}
    # components in several plates of K elements, or a mixture that failed its fit as one
    # (``probed_components``): some may be read by a data index instead
    candidates = {
        site: set(components)
        for site, (selector, components, _) in roles.items()
        if selector is not None
        and (len({latents[c].plates for c in components}) > 1 or site in probed_components)
    }
    reads = {
        site: [*indexed, *sorted(candidates.get(site, ()))]
        for site, (_, _, indexed) in roles.items()
        if indexed or site in candidates
    }
    gates = sorted({n for site in reads for n in depends[site]
                    if latents[n].family.name in DISCRETE_FAMILIES})  # fmt: skip
    indices = find_indices(runner, reads, gates, candidates) if reads else {}
    designs = {}
    for site, (selector, components, _) in roles.items():
        found = {n: i for n, i in indices.get(site, {}).items() if i is not None}
        rank = trace.nodes[site]["log_prob"].dim()
        if selector is None:
            designs[site] = ([latents[n] for n in depends[site]], rank, frozenset())
        else:
            picked = Components({c: dim for c, dim in components.items() if c not in found})
            designs[site] = mixture_design(latents, depends, site, selector, picked, rank)
        members = [
            replace(m, batch_shape=trimmed(found[m.name].shape), index=found[m.name])
            if m.name in found else m
            for m in designs[site][0]
        ]  # fmt: skip
        designs[site] = (members,) + designs[site][1:]
    on_grid = {site for site, (members, _, comps) in designs.items() if eligible(members, comps)}
    for site, (members, _, _) in designs.items():
        _check_unknowns(site, members, trace, site in on_grid)
    needs = [design for site, design in designs.items() if site not in on_grid]
    runs, checks = shared_runs(runner, needs)
    factors = []
    for site in depends:
        fit_runs = grid_runs(runner, designs[site][0], site) if site in on_grid else runs
        try:
            factors.append(_factor(runner, site, designs[site], fit_runs, checks, trace))
        except NotConjugateError:
            selector, components, _ = roles[site]
            if selector is None or not components or site in candidates:
                raise
            # a lone would-be component may be an intercept whose plate has K elements
            return _probe_all(runner, depends, trace, probed_components | {site})
    return factors


def _check_unknowns(site: str, members, trace, on_grid: bool = False) -> None:
    """Refuse, before any probe run, a factor with more than :data:`MAX_UNKNOWNS`
    coefficients per element: its probe would take about as many model evaluations and a
    least-squares design of that many rows and columns per element (an HMM step reading
    five Dirichlet rows, 194,400, asked the allocator for 12 GB and failed). ``on_grid``:
    the factor is probed on a grid (:mod:`pyro_vae.cavi.kronecker_probe`), whose solves
    are small; refused beyond :data:`~pyro_vae.cavi.kronecker_probe.MAX_POINTS` grid points
    (model evaluations) instead."""
    sizes = [m.family.size for m in members]
    unknowns = math.prod(sizes)
    points = math.prod(axis_counts(members)) if on_grid else 0
    count, cap = (points, MAX_POINTS) if on_grid else (unknowns, MAX_UNKNOWNS)
    if count <= cap:
        return
    names = [m.name for m in members]
    vectors = [m.name for m in members if m.family.name == "Gamma vector"]
    limit = (
        f"{points:,} grid points, more than AutoCAVI evaluates ({MAX_POINTS:,})"
        if on_grid
        else f"more than AutoCAVI solves for ({MAX_UNKNOWNS:,})"
    )
    too_many = (
        f"factor {site!r} ({distribution_name(trace.nodes[site])}): its log-density has "
        f"{unknowns:,} coefficients per element (the statistics of {names}, of sizes "
        f"{sizes}, multiplied), whose probe needs {limit}: "
    )
    if vectors:  # ARD over many coordinates: a plate would be refused in turn
        raise NotConjugateError(
            too_many + f"ARD over this many coordinates (its probe grows as D³) is not "
            f"fitted in closed form here; leave {vectors} to SVI with "
            f"pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites={vectors}), which "
            "fits the rest in closed form given each draw"
        )
    raise NotConjugateError(
        too_many + "probing would need as many model evaluations and a design that large per "
        "element. Put independent elements in a pyro.plate (each is then its own "
        "variable), fit this model by SVI, or leave some of these latents to SVI with "
        "pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[...])"
    )


def _factor(runner, site, design, runs, checks, trace) -> Factor:
    """``site``'s factor solved on ``design`` (members, rank, components), on the natural
    statistics, or NotConjugateError."""
    factor = _local_factor(runner, site, design, runs, checks, trace)
    magnitude = float(runs.log_probs[site].abs().amax(0).sum())
    local = factor.coefficients if set(runs.frames) & set(factor.latents) else None
    natural = to_natural(factor, runner.latents, runs.frames)
    return replace(natural, magnitude=magnitude, local=local,
                   component_magnitudes=magnitudes_by_component(factor, runs))  # fmt: skip


def _local_factor(runner, site, design, runs, checks, trace) -> Factor:
    """``site``'s factor solved on ``design`` in the coordinates of ``runs``' frames."""
    members, rank, components = design
    columns = None
    if site in getattr(runner, "precision_only", ()) and len(members) == 1:
        columns = members[0].family.precision_columns()
    coefficients, good, pruned = solve_factor(
        members, runs, checks, site, rank, components, columns
    )
    selector = members[0].name if components else None
    names = tuple(m.name for m in members if m.name != selector)
    if coefficients is None:
        raise NotConjugateError(not_finite_refusal(site, trace, members, runs))
    if not members:  # constant up to the model's own rounding, or something is hidden
        moved = moved_beyond_rounding(torch.cat([runs.log_probs[site], checks.log_probs[site]]))
        if moved:
            raise NotConjugateError(
                hidden_dependence(site, distribution_name(trace.nodes[site]), moved)
            )
    if not good and selector is None:
        refuse(runner, members, site, trace, rounding_reach(members, runs, site))
    partly_observed = selector is not None and selector.endswith("_unobserved")
    if not good and partly_observed and runner.latents[selector].present is not None:
        raise NotConjugateError(
            f"factor {site!r} ({distribution_name(trace.nodes[site])}): the component it picks is "
            f"read from {selector!r}, whose site is partly observed (obs_mask): where the "
            "label is observed the model reads it instead, which no latent assignment "
            "explains. AutoCAVI picks each element's component either by a latent "
            "assignment (a mixture) or by known labels (a data index, a[..., label]), not "
            "by both, so partly labelled data are not fitted in closed form: fit this model "
            "by SVI, "
            "where TraceEnum_ELBO enumerates the unobserved assignments"
        )
    if not good:
        raise NotConjugateError(
            f"factor {site!r} ({distribution_name(trace.nodes[site])}): for some value of "
            f"{selector!r} its log-density is not multilinear in the sufficient statistics of "
            f"{list(names)} (the component it picks); AutoCAVI updates only conditionally "
            f"conjugate-exponential models ({SVI_ADVICE}){components_hint(components, runner)}"
        )
    if selector is None:
        # summed over the dims along which none of its latents varies (not the design's
        # size-1 dims: a shared discrete probe's design is size 1 where its latent varies)
        batch = torch.broadcast_shapes(*(m.batch_shape for m in members))
        batch = (1,) * (rank - len(batch)) + tuple(batch)
        summed = summed_to(coefficients, torch.Size(batch + coefficients.shape[-1:]))
        shape = summed.shape[:-1] + tuple(m.family.size for m in members)
        name = distribution_name(trace.nodes[site])
        factor = Factor(site, name, names, summed.reshape(shape), rank, pruned=pruned)
        return _by_group(factor, members, runner.latents)
    return mixture_factor(runner.latents, site, design, coefficients, trace)


def _by_group(factor: Factor, members, latents) -> Factor:
    """``factor`` with its latents read through data indices (none: as it is), its
    coefficients summed over the elements reading the same groups where that makes fewer
    of them (:func:`~pyro_vae.cavi.data_indexing.collapse_by_group`), else per element."""
    indexed = [m for m in members if m.index is not None]
    if not indexed:
        return factor
    c = factor.coefficients
    others = [m.batch_shape for m in members if m.index is None]
    shared = torch.broadcast_shapes(*others) if others else torch.Size()
    shared = torch.Size((1,) * (factor.rank - len(shared)) + tuple(shared))
    groups = [(m.index, latents[m.name].batch_shape.numel()) for m in indexed]
    collapsed = collapse_by_group(c, shared, groups)
    if collapsed is None:
        return replace(factor, index={m.name: m.index for m in indexed})
    summed, index, rows = collapsed  # one new leading axis per distinct index
    index = {m.name: i for m, i in zip(indexed, index, strict=True)}
    rank = summed.dim() - len(factor.latents)
    return replace(factor, coefficients=summed, rank=rank, rows=rows, index=index)
