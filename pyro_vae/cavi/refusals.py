"""What AutoCAVI says when a factor is not conjugate: the latent whose statistics the factor's
log-density is not linear in, found by probing again with the others held (:func:`refuse`),
a dependence the model hides from Pyro's provenance (random numbers drawn outside
``pyro.sample``, :func:`hidden_dependence`), a log-density that is not finite at some probe
point (:func:`not_finite_refusal`), and when float64 rounding of data far from zero may be the
cause (:func:`rounding_reach`). Beside those, what it says when the model's first run fails
on an empty or a float32 argument (:func:`first_run_refusal`), when the model raises where
q is checked (:func:`unverifiable`), and its warning that rounding may still move the bound
(:func:`warn_imprecise`).
"""

from __future__ import annotations

import re

import torch

from pyro_vae.cavi.caller_warnings import warn_at_caller
from pyro_vae.cavi.data_indexing import ReadAcrossPlate, reads_several
from pyro_vae.cavi.exponential_families import (
    DISCRETE_FAMILIES,
    NotConjugateError,
    described,
)
from pyro_vae.cavi.least_squares import CONSTANT_RTOL, solve_factor
from pyro_vae.cavi.probe_counts import enough_runs, first_count
from pyro_vae.cavi.probe_runs import (
    Runs,
)

#: What a refusal advises, where no one latent is to blame.
SVI_ADVICE = (
    "leave the latents that break conjugacy to SVI and fit the rest in closed form with "
    "pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[...]), or fit the whole model by SVI"
)


def not_finite_refusal(site, trace, members, runs) -> str:
    """Why ``site``'s log-density is not finite at some probe points: −inf where a
    parameter in its domain puts no mass on the data (a Poisson rate λ·s of 0 under a
    positive count: a hard constraint, which was blamed on a parameter leaving its domain,
    tester N2), else a parameter leaving its domain (NaN)."""
    names = ", ".join(
        f"latent site {m.name!r} ({distribution_name(trace.nodes[m.name])})"
        if m.name in trace.nodes
        else repr(m.name)
        for m in members
    )
    head = f"factor {site!r} ({distribution_name(trace.nodes[site])}): its log-density is "
    tail = (
        f"it is no conjugate factor of them; AutoCAVI updates only conditionally "
        f"conjugate-exponential models ({SVI_ADVICE})"
    )
    if bool(torch.isneginf(runs.log_probs[site]).any()):
        return (
            f"{head}−inf at some probe points of {names}: there the data are impossible (a "
            "rate of 0 under a positive count, as Poisson(λ·s) gives at s = 0), a hard "
            "constraint that no exponential-family update holds. Give the factor a floor, "
            f"Poisson(λ·s + 1e-12·(1 − s)), which fits; or {SVI_ADVICE}"
        )
    return (
        f"{head}not finite (NaN or +inf) at some probe points of {names}, where its "
        "parameters leave their domain (a negative scale or rate, a probability above 1), "
        "as a latent whose support reaches beyond it takes them (a Normal latent as a "
        "Poisson rate or as a scale): " + tail
    )


def distribution_name(site) -> str:
    fn = site["fn"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return type(fn).__name__


#: A refusal says that float64 rounding in the model's own arithmetic may be the cause
#: where |log f| at the probe points, or a framed latent's distance from zero in units of its
#: points' spread, exceeds this (crossed intercepts and slopes on data near 10⁶, probed
#: around q at 10⁶ ± 0.01, missed their form by rounding alone: tester 15)
_ROUNDING_HINT = 1e6


def rounding_reach(members, runs: Runs, site: str) -> float:
    """The larger of the largest |log f| at the points of ``runs`` and the largest |m| / s
    of a member's frame (location m, spread s: the Cholesky factor's diagonal)."""
    reach = float(runs.log_probs[site].abs().max())
    for member in members:
        frame = runs.frames.get(member.name)
        if frame is None or frame.loc is None or frame.scale_tril is None:
            continue
        spread = frame.scale_tril.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300)
        reach = max(reach, float((frame.loc.abs() / spread).max()))
    return reach


def moved_beyond_rounding(log_probs: torch.Tensor) -> float:
    """How far the total log f moves over the points of ``log_probs`` [S, …] (nats), where that is
    beyond :data:`~pyro_vae.cavi.least_squares.CONSTANT_RTOL` of 1 + its mean Σ|log f|; else 0."""
    totals = log_probs.to(torch.float64).reshape(log_probs.shape[0], -1)
    sums = totals.sum(-1)
    moved, size = float(sums.max() - sums.min()), float(totals.abs().sum(-1).mean())
    return moved if moved > CONSTANT_RTOL * (1 + size) else 0.0


def hidden_dependence(site: str, distribution: str, moved: float, where: str = "probe",
                      read=(), every: bool = False) -> str:  # fmt: skip
    """The refusal of a factor whose log-density moves although nothing provenance saw it
    read moves (``read``: those latents, held fixed; none: it read none; ``every``: they
    are all the model's latents), by ``moved`` nats, at the ``where`` points ("probe",
    "q")."""
    places = "points drawn from the fitted q" if where == "q" else "the probe points"
    if read and every:
        seen = (
            f"its log-density moves between model runs, by {moved:.3g} nats at {places}, "
            f"with every latent ({list(read)}) held at one value"
        )
    elif read:
        seen = (
            f"its log-density moves, by {moved:.3g} nats at {places}, when only latents "
            f"other than {list(read)} (those Pyro's provenance tracking saw it read) move"
        )
    else:
        seen = (
            "Pyro's provenance tracking saw its log-density read no latent, yet it moves "
            f"between model runs, by {moved:.3g} nats at {places}"
        )
    return (
        f"factor {site!r} ({distribution}): {seen}. Either an op hid a latent it reads (an "
        "out= argument, torch.func.vmap, a round trip through float(), .item(), .tolist() "
        "or numpy, a write into another tensor), or it draws random numbers outside "
        "pyro.sample (torch.randn in the model), which probing cannot tell from a "
        "dependence. Compute it from the sampled values and the data with plain torch ops, "
        "so AutoCAVI sees what it depends on, or fit this model by SVI"
    )


def _hidden_elsewhere(runner, members, site, trace, base) -> None:
    """Refuse ``site`` by :func:`hidden_dependence` where its log-density moves with every
    member held at ``base`` and only the other latents drawn (a float(τ) hid τ, and the
    fit's failure was blamed on the member μ: tester 17's F4). Where the members are every
    latent, nothing else is drawn, and a log-density that moves still is the model's own
    random numbers (tester S's F3: a torch.randn beside the one latent was blamed on it)."""
    held = {s: base[s] for m in members for s in m.sites}
    every = len(held) == sum(len(latent.sites) for latent in runner.latents.values())
    if every:  # no point to draw (the probe points' stream is left as it was)
        points = {s: v.expand((_HIDDEN_POINTS, *v.shape)) for s, v in held.items()}
        log_probs = runner.log_probs(points, _HIDDEN_POINTS)
    else:
        log_probs = runner.runs(_HIDDEN_POINTS, held).log_probs
    moved = moved_beyond_rounding(log_probs[site])
    if moved:
        distribution = distribution_name(trace.nodes[site])
        names = [m.name for m in members]
        message = hidden_dependence(site, distribution, moved, read=names, every=every)
        raise NotConjugateError(message)


def _refuse_reads_within_plate(runner, latent, site, trace, base, detail: str) -> None:
    """Raise :class:`~pyro_vae.cavi.data_indexing.ReadAcrossPlate` where an element of
    factor ``site`` reads other elements of ``latent`` along the one plate they share
    (``z_d ~ N(w.sum(), 1)`` inside w's plate; one plate used for both data and features,
    N = D, with ``X @ w`` inside it): moving the latent's first element alone moves the
    factor's other elements there. Its probe assumed element d reads element d, and
    blamed the misfit on the latent's family ("not linear in (1, x0, x0*x0)", testers AP
    and AQ); AutoCAVI then fits the latent as one vector over that plate
    (:mod:`pyro_vae.cavi.plate_events`), or refuses, saying this. One model run of two
    points, on this refusal's path only."""
    node = trace.nodes[site]
    shared = latent.plates & frozenset(f.name for f in node["cond_indep_stack"] if f.vectorized)
    batch = latent.batch_shape
    if len(shared) != 1 or batch.numel() < 2:
        return
    (name,) = latent.sites
    first = torch.zeros(batch.numel(), dtype=torch.bool, device=base[name].device)
    first[0] = True
    first = first.reshape(batch)
    event = base[name].dim() - len(batch)
    other = _another_value(runner, latent, base[name])
    moved = torch.where(first.reshape(batch + (1,) * event), other, base[name])
    points = {s: torch.stack([v, moved if s == name else v]) for s, v in base.items()}
    log_prob = runner.log_probs(points, 2)[site]
    still, shifted = log_prob[0], log_prob[1]
    try:
        allowed = first.expand(still.shape) if first.dim() <= still.dim() else None
    except RuntimeError:  # not aligned with the factor's dims: no verdict
        return
    if allowed is None:
        return
    changed = (shifted - still).abs() > _READS_AGREE * (1 + still.abs())
    if bool((changed & ~allowed).any()):
        raise ReadAcrossPlate(
            f"factor {site!r} reads several elements of latent site {name!r} along the plate "
            f"{sorted(shared)} they share (moving {name!r}'s first element alone moves "
            f"other elements of {site!r}), which its plate declares independent; "
            f"as probed element by element, {detail}",
            site,
            latent.name,
            latent.sites,
            shared,
        )


def _refuse_reads_across_plate(runner, latent, site, trace, base) -> None:
    """Raise :class:`~pyro_vae.cavi.data_indexing.ReadAcrossPlate` where an element of
    factor ``site`` reads several elements of ``latent`` across a plate ``site`` is not
    inside: moving each of the latent's first :data:`_SINGLE_MOVES` elements alone, two
    of them move the same element of ``site``. The data-index probe
    (:func:`~pyro_vae.cavi.data_indexing.find_indices`) moves groups of elements at once,
    and a function symmetric in them can stand still at each of its points (an Ising
    energy with no field under a flip of every spin, −½ Σ J s_i s_j; tester BN: refused as
    "not linear in (1, x)" of the plated spins, where an asymmetric field gave this
    refusal and its advice, one scalar site per spin). One model run of up to
    1 + :data:`_SINGLE_MOVES` points, on this refusal's path only."""
    if latent.index is not None:  # as the factor read it, through a data index: the latent
        latent = runner.latents[latent.name]
    node = trace.nodes[site]
    inside = frozenset(f.name for f in node["cond_indep_stack"] if f.vectorized)
    batch = latent.batch_shape
    if not (latent.plates - inside) or batch.numel() < 2:
        return
    (name,) = latent.sites
    count = min(batch.numel(), _SINGLE_MOVES)
    event = base[name].dim() - len(batch)
    other = _another_value(runner, latent, base[name])
    moved = [base[name]]
    for i in range(count):
        alone = torch.zeros(batch.numel(), dtype=torch.bool, device=base[name].device)
        alone[i] = True
        moved.append(torch.where(alone.reshape(batch + (1,) * event), other, base[name]))
    points = {s: torch.stack(moved if s == name else [v] * (count + 1)) for s, v in base.items()}
    log_prob = runner.log_probs(points, count + 1)[site]
    still, singles = log_prob[0], log_prob[1:]
    changed = (singles - still).abs() > _READS_AGREE * (1 + still.abs())
    if bool((changed.sum(0) > 1).any()):
        raise reads_several(site, latent, "moving one of them alone moves it, and so does "
                            "moving another")  # fmt: skip


def _another_value(runner, latent, value: torch.Tensor) -> torch.Tensor:
    """A value of ``latent``'s one site other than ``value`` at every element: the next
    category of a discrete latent, a fresh draw of a continuous one (another value almost
    surely)."""
    if latent.family.name in DISCRETE_FAMILIES:
        k = getattr(latent.family, "k", 2)
        return ((value.long() + 1) % k).to(value.dtype)
    return runner.draw(1)[latent.sites[0]][0]


#: Elements of a latent moved one at a time by :func:`_refuse_reads_across_plate`.
_SINGLE_MOVES = 8

#: Relative change of a factor element taken as moved (as the data-index probe's).
_READS_AGREE = 1e-9


#: Points at which a factor that failed its fit is run with its members held.
_HIDDEN_POINTS = 8


def refuse(runner, members, site, trace, reach: float = 0.0):
    """Name the latent of ``members`` whose statistics ``site``'s log-density is not linear
    in; ``reach``: :func:`rounding_reach` (beyond :data:`_ROUNDING_HINT`, the message says
    to centre the data first)."""
    latents = {m.name: m for m in members}
    names = list(latents)
    base = {k: v[0] for k, v in runner.draw(1).items()}
    _hidden_elsewhere(runner, members, site, trace, base)
    rank = trace.nodes[site]["log_prob"].dim()
    culprit = names
    for name in names:
        latent = latents[name]
        held = {k: v for k, v in base.items() if k not in latent.sites}

        def make_runs(count, key, held=held):
            return runner.runs(count, held, key)

        need = [([latent], rank, frozenset())]
        runs, checks = enough_runs(make_runs, need, first_count(need, runner.batched))
        if not solve_factor([latent], runs, checks, site, rank)[1]:
            culprit = [name]
            break
    latent = latents[culprit[0]]
    stats = f" ({_listed(latent.family.statistic_names())})" if len(culprit) == 1 else ""
    detail = (
        f"the log-density of factor {site!r} ({distribution_name(trace.nodes[site])}) is not "
        f"{'multi' if len(names) > 1 else ''}linear in the sufficient statistics{stats} of "
        f"{', '.join(repr(n) for n in culprit)}"
    )
    if reach > _ROUNDING_HINT:
        detail += (
            " (its probe points or log-densities are far from zero for their spread, "
            f"{reach:.0e} times it, where float64 rounding in the model's own arithmetic can "
            "break a conjugate form: if the data or the priors' locations are far from zero, "
            "centre them (y − ȳ) and fit again first)"
        )
    if len(culprit) == 1 and len(latent.sites) == 1:
        _refuse_reads_within_plate(runner, latent, site, trace, base, detail)
        _refuse_reads_across_plate(runner, latent, site, trace, base)
    if len(latent.sites) > 1:  # a block: mean field may still fit it
        raise NotConjugateError(
            f"block {culprit[0]!r} ({latent.family.name}) is not conjugate as one factor: "
            f"{detail}; leave {latent.sites} out of blocks (mean field updates them apart)"
        )
    if len(culprit) > 1:  # no one latent alone: the factor as a whole
        raise NotConjugateError(
            f"factor {site!r} is not conjugate: {detail}; AutoCAVI updates only "
            f"conditionally conjugate-exponential models ({SVI_ADVICE})"
        )
    head = (
        f"latent site {culprit[0]!r} ({described(latent.prior)}) is not conditionally "
        f"conjugate: {detail}; AutoCAVI updates only conditionally conjugate-exponential models"
    )
    if set(runner.latents) == {culprit[0]}:  # nothing left for CAVI beside it (tester DR)
        raise NotConjugateError(f"{head}, and {culprit[0]!r} is the model's only latent: fit "
                                "it by SVI (an autoguide, or a guide of your own)")  # fmt: skip
    raise NotConjugateError(
        f"{head}: leave {culprit[0]!r} to SVI and fit the rest in closed form with "
        f"pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[{culprit[0]!r}]), or fit "
        "the whole model by SVI"
    )


#: torch's messages when float64 meets float32, or a floating op meets an integer or
#: boolean tensor (``"dirichlet" not implemented for 'Bool'``: a Beta prior built by
#: ``x.new_tensor(2.0)`` from boolean data, tester 38's P2)
_DTYPE_CLASH = re.compile(
    r"dtype|scalar type|Double|Float|not implemented for '(Bool|Long|Int|Short|Char|Byte)'"
)


#: torch's name of a tensor inside an error message, torch.DoubleTensor{[3, 1]}
_TENSOR_REPR = re.compile(r"torch\.\w*Tensor\{[^}]*\}")

#: errors that may come of an empty argument (an optional empty one, a list of no
#: missing indices, is not blamed for another failure)
_EMPTY = re.compile(r"empty|zero|0 elements", re.IGNORECASE)


def first_run_refusal(error: Exception, args: tuple, kwargs: dict) -> ValueError | None:
    """AutoCAVI's own message for the model's first run failing with ``error``, where it
    can tell why: an empty argument, where the error is about sizes (Pyro's plate raised
    ``ZeroDivisionError: size cannot be zero``, tester 38), or a float32 or integer tensor
    meeting the float64 ones; else None (the model's own error stands)."""
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    about_size = isinstance(error, ZeroDivisionError) or _EMPTY.search(first_line)
    for where, value in [*enumerate(args), *kwargs.items()]:
        if about_size and isinstance(value, torch.Tensor) and value.numel() == 0:
            return ValueError(
                f"fit: argument {where!r} is empty (shape {tuple(value.shape)}), and the model "
                f"fails on it ({type(error).__name__}: {first_line}); AutoCAVI fits data of "
                "one observation at least"
            )
    if not isinstance(error, (RuntimeError, TypeError, NotImplementedError)):
        return None
    # torch names a tensor in a shape error by its type, expand(torch.DoubleTensor{[3, 1]},
    # ...): that is no dtype clash (tester AT's F6: told to call model.double())
    if not _DTYPE_CLASH.search(_TENSOR_REPR.sub("", str(error))):
        return None
    return ValueError(
        f"model: it fails on the float64 arguments fit passes it ({first_line}); AutoCAVI "
        "runs in float64, so build the model's parameters and priors in float64: "
        "model.double() converts a module's parameters, not the tensors a PyroSample "
        "prior was built from (build those from float64 tensors, or after "
        "torch.set_default_dtype(torch.float64)); fit leaves integer and boolean "
        "arguments as they are, and x.new_tensor(2.0) from such data is an integer "
        "or boolean tensor (a prior's parameters from it: torch.tensor(2.0, "
        "dtype=torch.float64))"
    )


def unverifiable(error: Exception, latents: dict) -> str:
    """The refusal of a fit whose factors cannot be checked where q lies: the model raised
    ``error`` at points drawn from q (tester 28's F2: a MultivariateNormal whose precision
    Mᵀ diag(α) M a Gamma draw near 0 makes singular, its Cholesky failing)."""
    first = (str(error).splitlines() or [""])[0]
    return (
        f"the model raised {type(error).__name__} ({first}) at points drawn from the fitted q "
        f"of {sorted(latents)} and from q widened, where AutoCAVI checks its factors (see "
        "pyro_vae.cavi.verification): its log-density cannot be computed there, so the fit "
        "cannot be verified. Where a precision matrix built from Gamma latents turns "
        "singular as one of them nears 0 (MultivariateNormal(0, precision_matrix=M.T @ "
        "diag(alpha) @ M)), write the weights as a linear map of a vector with a diagonal "
        "prior (u ~ Normal(0, alpha.rsqrt()).to_event(1), w = torch.linalg.solve(M, u)), "
        "or fit this model by SVI"
    )


def warn_imprecise(
    error: float, bound: float, rounds: int, unchecked=None, located: bool = True
) -> None:
    """The rounding warning; ``unchecked``: the Normal units whose fixed point the model's
    own gradient could not check, {unit: its factor without an autograd graph};
    ``located``: whether a latent has a location that centring the data would move (a
    Normal's mean): counts of order 10⁹ under Beta or Gamma latents have none (tester EI:
    a Beta-Binomial was advised to centre its counts)."""
    named = ", ".join(f"{n!r} (its factor {f!r} has no autograd graph)"
                      for n, f in (unchecked or {}).items())  # fmt: skip
    advice = (
        "Centre and scale the data (or the prior) so that the latents are of order one"
        if located
        else "No latent here has a location to centre: the data's own size (counts, "
        "exposures) sets the log-densities', and the rounding is "
        f"{error / max(abs(bound), 1e-300):.2g} of the bound"
    )
    warn_at_caller(
        f"AutoCAVI: after {rounds} probing rounds, float64 rounding in the factors may still "
        f"move the bound by about {error:.3g} nats (bound {bound:.6g}): the log-densities are "
        f"large where q puts its mass. {advice}"
        + (
            f". The model's own gradient could not check q's means of {named}, which such "
            "rounding can hold away from the fixed point"
            if named
            else ""
        ),
        RuntimeWarning,
    )


def _listed(names: list[str], most: int = 8) -> str:
    """``names`` joined, or, past ``most`` of them, the first few, an ellipsis, the last and
    how many there are (a 30-vector's 496 statistics)."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[: most - 2])}, …, {names[-1]}: {len(names)} statistics"
