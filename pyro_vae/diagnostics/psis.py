"""PSIS k̂: can S draws from q be trusted as importance proposals for p(z | x)?

Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational
inference", ICML; Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed importance
sampling", JMLR 25(72). The importance ratios r_s = p(x, z_s) / q(z_s | x), z_s ~ q, have
a right tail that a generalized Pareto distribution fits; its shape k says that r has
finite moments of order < 1/k. Yao et al.: k̂ < 0.5, q is close to the posterior;
0.5 ≤ k̂ ≤ 0.7, usable with care; k̂ > 0.7, q is unreliable. For an amortized guide the
ratios factor over datapoints, r_s(x_n) = p(x_n, z_s) / q(z_s | x_n), z_s ~ q(· | x_n),
so each datapoint gets its own k̂: the inputs where the encoder fails. k̂ comes from
``az.psislw`` and does not change when a constant is added to log p (r → e^c r). When
all S log-ratios agree to within the float rounding of the log-densities that produced
them, the ratios are bounded and PSIS has no tail to fit (``az.psislw`` would return
+inf); k̂ is then reported as −inf. When q is discrete its ratios take finitely many
values and have no generalized Pareto tail: k̂ is NaN (not applicable), and where q(z | x_n)
has at most S states they are enumerated, giving the exact log p(x_n),
KL(q ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q) instead (:func:`psis_khat_per_datapoint`,
:mod:`pyro_vae.diagnostics.enumeration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro.poutine import Trace

from pyro_vae.annealing import unscaled
from pyro_vae.checks import check_count, check_memory
from pyro_vae.devices import resolve_device
from pyro_vae.diagnostics.arviz_compat import az
from pyro_vae.diagnostics.draws import (
    draw,
    log_density_per_draw,
    probe,
    to_given_device,
    trace_device,
)
from pyro_vae.diagnostics.enumeration import (
    DiscreteSupport,
    StateGuide,
    discrete_support,
    exact_answers,
    state_values,
)
from pyro_vae.enumerated_sites import (
    marginal_terms,
    runs_per_value,
    summed_log_joint,
    summed_sites,
)
from pyro_vae.evaluate import (
    PerDatapoint,
    bare_pair,
    check_finite,
    check_rows,
    data_arguments,
    eval_mode,
    prepare,
)
from pyro_vae.guides.fixed import as_guide
from pyro_vae.pointwise import (
    common_scale,
    masked_log_prob,
    per_datapoint_log_density,
    unscaled_by,
)
from pyro_vae.traces import (
    full_rank,
    particle_traces,
    point_mass_message,
    point_masses_of,
    sample_sites,
    vectorized_or_looped,
)

#: Bytes k̂ per datapoint holds per ratio (S draws of N rows) at its peak: the log-ratios
#: in float64, their concatenation, the NumPy copy and ArviZ's smoothed copies. Measured
#: 66 to 78 on S = 50,000 to 200,000 draws of 100 to 200 rows (the peak resident memory's
#: growth over the ratios); counted generously.
BYTES_PER_RATIO = 96


def check_ratio_memory(num_samples: int, rows: int, arg: str = "num_samples") -> None:
    """Refuse ``num_samples`` draws of each of ``rows`` datapoints where their ratios would
    take more than half this machine's memory (:data:`BYTES_PER_RATIO` each): ``diagnose
    --samples 10⁹`` grew until the machine killed it, with nothing said.

    Raises:
        ValueError: naming ``arg``, the draws, the memory they need and the most that fit.
    """
    check_memory(arg, num_samples, max(1, rows) * BYTES_PER_RATIO,
                 f"draws of each of {rows:,} rows", " for their importance ratios",
                 " (or fewer rows)")  # fmt: skip


PSIS_MIN_SAMPLES = 21  # az.psislw fits the top ceil(min(S/5, 3√S)) ratios and needs ≥ 5

CONSTANT_NATS = 1e-3  # ratios within 0.1% of one another count as constant whatever the floats
# A float sum of log-density terms is within about 2 ε Σ|terms| of exact: the log-weights
# of exact guides in float32 (constant ratios; 20 to 20,000 datapoints, S = 1000, 5 seeds
# each) spread over 1.1 to 1.9 ε Σ|terms|, so each draw is within ~1 ε Σ|terms|; 2 gives
# a margin of 2.
ROUND_OFF_ULPS = 2.0


def _magnitude(lp: torch.Tensor) -> torch.Tensor:
    """ROUND_OFF_ULPS ε |lp| elementwise (ε: lp's machine epsilon), 0 for non-finite terms."""
    eps = torch.finfo(lp.dtype).eps if lp.is_floating_point() else 0.0
    return torch.where(torch.isfinite(lp), ROUND_OFF_ULPS * eps * lp.abs(), 0.0)


def _per_draw_round_off(trace, rank: int, num_samples: int) -> torch.Tensor:
    """A bound on the float rounding error of each draw's
    :func:`pyro_vae.diagnostics.draws.log_density_per_draw` sum: ``[S]``.

    Each site's terms are summed in the site's dtype, so its total is within about
    2 ε Σ|terms| of exact; the sites' totals are then added in float64. A site whose total
    is the same in every draw (a ``pyro.factor`` constant, a likelihood no latent reaches)
    shifts every log-weight by the same float64 number, so it adds no spread, however
    large it is, and is left out.
    """
    bound = torch.zeros(num_samples, dtype=torch.float64, device=trace_device(trace))
    for site in sample_sites(trace).values():
        lp = full_rank(site["log_prob"], rank)
        lp = lp.reshape(lp.shape[0], -1)
        totals = lp.sum(1)
        if bool((totals == totals[0]).all()):
            continue
        bound = bound + _magnitude(lp).sum(1).double()
    return bound


def _per_datapoint(
    trace: Trace, num: int, rows: int, rank: int, plate: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over sample sites of each one's :func:`per_datapoint_log_density`, added in
    float64, ``[K, B]``, and a bound on its rounding error.

    Each site's terms are summed in the site's dtype, within about 2 ε Σ|terms| of exact.
    A site whose total for a datapoint is the same in every draw (a per-datapoint
    ``pyro.factor`` constant) shifts that datapoint's log-weights alike, so it adds no
    spread, however large it is, and is left out of that datapoint's bound.
    """
    total = bound = torch.zeros((), dtype=torch.float64, device=trace_device(trace))
    for name, site in sample_sites(trace).items():
        lp = masked_log_prob(site)
        densities = []
        for value in (lp, _magnitude(lp)):
            single = Trace()
            single.add_node(name, **{**site, "unscaled_log_prob": value, "mask": None})
            densities.append(per_datapoint_log_density(single, num, rows, rank, plate, True))
        log_p, magnitude = densities
        total = total + log_p.double()
        varies = (log_p != log_p[:1]).any(0)
        bound = bound + torch.where(varies, magnitude.double(), 0.0)
    return total.expand(num, rows), bound.expand(num, rows)


def _log_densities(
    pair: PerDatapoint, args: tuple, start: int, num: int, states: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x_n, z_k), log q(z_k | x_n) and a bound on the rounding error of their
    difference, for the rows ``start..`` in ``args``: ``[K, B]`` each, float64
    (:func:`_per_datapoint`), and each datapoint's common scale c ``[B]`` float64. The z_k
    are ``num`` draws from the guide, taken as :meth:`PerDatapoint.log_weights` takes
    them, or the given ``states`` of a discrete guide.

    The three are those of the unscaled pair: a scale c that every site of model and guide
    shares (``poutine.scale(c)`` around both; :meth:`PerDatapoint.scale_of`) weighs the
    objective, not the densities, so it is divided out (scaled by c = 3, log q of a
    discrete guide's states summed to 3 log 1 and its exact answers were refused; the
    ratios r^c have another tail than r), and put back by the caller on values in nats."""
    rows = int(args[0].shape[0])
    kwargs = {"subsample": pair.subsample(start, rows).to(args[0].device)}
    nesting = pair.nesting
    if states is None:
        model_tr, guide_tr, pair.vectorize = particle_traces(
            pair.model, pair.guide, args, kwargs, num, nesting, pair.vectorize
        )
    else:

        def vectorized():
            guide = StateGuide(pair.guide, states, looped=False)
            return particle_traces(pair.model, guide, args, kwargs, num, nesting, True)[:2]

        def looped():
            guide = StateGuide(pair.guide, states, looped=True)
            return particle_traces(pair.model, guide, args, kwargs, num, nesting, False)[:2]

        what = f"k̂ per datapoint over the guide's {num} enumerated states"
        (model_tr, guide_tr), pair.vectorize = vectorized_or_looped(
            pair.vectorize, vectorized, looped, what, num
        )
    if pair.enumerated:  # log p(x_n, u) = log Σ_c p(x_n, z_n = c, u), each run's terms bounded
        runs = pair.summed_runs(model_tr, guide_tr, args, start, num)
        conditional, prior = marginal_terms(
            runs, pair.enumerated, num, rows, nesting + 1, pair.plate
        )
        log_p = (conditional + prior).double()
        bounds = [_per_datapoint(run, num, rows, nesting + 1, pair.plate)[1] for run in runs]
        model_round_off = torch.stack(bounds).amax(0)
    else:
        log_p, model_round_off = _per_datapoint(model_tr, num, rows, nesting + 1, pair.plate)
    log_q, guide_round_off = _per_datapoint(guide_tr, num, rows, nesting + 1, pair.plate)
    scale = pair.scale_of(model_tr, guide_tr)
    densities = [unscaled_by(d, scale) for d in (log_p, log_q, model_round_off + guide_round_off)]
    per_row = torch.as_tensor(scale, dtype=torch.float64, device=log_p.device)
    return (*densities, per_row.reshape(-1).expand(rows))


def _tail_length(samples: int) -> int:
    """M = ⌈min(S/5, 3√S)⌉: how many of the largest ratios ``az.psislw`` fits (r_eff = 1)."""
    return int(np.ceil(min(samples / 5.0, 3 * samples**0.5)))


def pareto_khat(
    log_weights: np.ndarray | torch.Tensor,
    round_off: float | np.ndarray = 0.0,
    discrete: bool = False,
) -> np.ndarray:
    """k̂ of the generalized Pareto fit to each row's importance ratios (``az.psislw``).

    ``log_weights``: ``[..., S]`` log-ratios log r_s = log p(x, z_s) − log q(z_s). PSIS
    (Vehtari et al. 2024) fits a generalized Pareto distribution to the excesses of the
    M = ⌈min(S/5, 3√S)⌉ largest ratios over the (M+1)-th; ``az.psislw`` subtracts each
    row's maximum first, so k̂ does not change when a constant c is added to a row
    (r → e^c r), up to the rounding of log r + c (1e-10 nats at c = 1e6 in float64).
    Rows where that fit has no meaning get no fit:

    - **−inf, constant ratios** (bounded: q matches p up to a constant). A row is constant
      when its spread max − min log r is at most 1e-3 + 2δ, δ a bound on each log-ratio's
      rounding error: ``round_off`` (scalar or one per row; the rounding of the
      log-densities that produced the ratios, which :func:`psis_khat` and
      :func:`psis_khat_per_datapoint` pass as 2 ε Σ|log-density terms|, ε = 1.2e-7 in
      float32) plus half an ulp of the row's largest |log r| in ``log_weights``' own
      dtype (its values can be no more precise than that: 0.03 nats at 1e6 in float32,
      1e-10 in float64). Two draws' rounding errors can have opposite signs, hence 2δ.
      The floor, 1e-3 nats, holds whatever the floats: ratios within 0.1% of one another
      give importance-sampling estimates exact to 0.1%. A spread is thus compared with
      the precision of the numbers behind it, never with the size of a constant shared
      by every draw.
    - **NaN, not applicable: an atom in the tail.** The generalized Pareto is continuous;
      the ratios of a discrete q take finitely many values. With ``discrete`` (the
      ratios come from a q whose latent sites are all discrete), a row whose M + 1 largest
      log-ratios repeat a value (weights below e^−708 of the largest aside) has drawn one
      of q's states more than once in its tail, and the fit to it means nothing.
      Whatever ``discrete``, a row whose tail holds fewer than 5 distinct values above
      the cutoff is NaN too: ``az.psislw`` needs 5, and would return +inf, as though the
      tail were infinitely heavy, or fit a few repeated values (M ≥ 5 draws of a
      continuous q are distinct). A tail of fewer than 5 draws because the rest are
      below e^−708 of the largest stays +inf: that one is infinitely heavy for any S.
    """
    raw = np.asarray(log_weights)
    lw = raw.astype(np.float64)
    samples = lw.shape[-1]
    check_count("num_samples", samples, PSIS_MIN_SAMPLES, "; PSIS needs ≥ 5 draws in the tail")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log_weights: NaN or +inf log importance ratios; is q(z) = 0 somewhere?")
    rows = lw.reshape(-1, samples)
    if np.isneginf(rows.max(1)).any():
        raise ValueError("log_weights: every draw has p(x, z) = 0 for some rows")
    bound = np.asarray(round_off, dtype=np.float64)
    if not (np.isfinite(bound) & (bound >= 0)).all():
        raise ValueError(f"round_off: {round_off!r}; expected finite rounding errors ≥ 0")
    try:
        bound = np.broadcast_to(bound, lw.shape[:-1]).reshape(-1)
    except ValueError:
        raise ValueError(
            f"round_off: shape {bound.shape} does not broadcast to the rows of log_weights, "
            f"{lw.shape[:-1]}; expected a scalar or one value per row"
        ) from None
    finite = np.where(np.isfinite(rows), rows, np.nan)
    spread = np.nanmax(finite, 1) - np.nanmin(finite, 1)
    spread[np.isneginf(rows.min(1))] = np.inf
    eps = np.finfo(raw.dtype).eps if np.issubdtype(raw.dtype, np.floating) else 0.0
    precision = eps / 2 * np.nanmax(np.abs(finite), 1)
    constant = spread <= CONSTANT_NATS + 2 * (bound + precision)
    top = np.sort(rows, 1)[:, -(_tail_length(samples) + 1) :]  # the cutoff, then the tail
    tail = top[:, 1:] > top[:, :1]
    distinct = (tail & (top[:, 1:] > top[:, :-1])).sum(1)
    atom = (top[:, 0] - top[:, -1] > np.log(np.finfo(float).tiny)) & (distinct < 5)
    if discrete:  # a repeat among the cutoff and tail, weights below e^−708 aside
        relevant = top[:, 1:] - top[:, -1:] > np.log(np.finfo(float).tiny)
        atom |= (relevant & (np.diff(top, axis=1) == 0)).any(1)
    khat = np.full(rows.shape[0], -np.inf)
    khat[~constant & atom] = np.nan
    fit = ~constant & ~atom
    if fit.any():
        # ArviZ's Zhang-Stephens fit weighs its grid of candidate shapes by 1 / Σ exp(Δ): a
        # Δ past 709 overflows to a weight of 0, as it should, with a RuntimeWarning that
        # reached users of heavy tails (tester CQ: diagnose --samples 30,000,000)
        with np.errstate(over="ignore"):
            khat[fit] = np.atleast_1d(az.psislw(rows[fit], reff=1.0)[1])
    return khat.reshape(lw.shape[:-1])


@torch.no_grad()
@unscaled()  # the model's densities, not a β-objective (tester AH)
def psis_khat(
    model, guide, *args: Any, num_samples: int = 1000, device: Any = None, **kwargs: Any
) -> float:
    """k̂ of the joint importance ratios p(x, z_s) / q(z_s | x), z_s ~ q: one number for
    the whole fit (Yao et al. 2018, §3; Pyro's ``psis_diagnostic`` computes the same).

    A constant added to log p (a ``pyro.factor``, a large dataset's log-likelihood) leaves
    k̂ as it is: a site whose log-density is the same in every draw shifts every log-ratio
    alike, and the constant-ratio test of :func:`pareto_khat` is against each draw's
    rounding error, 2 ε Σ|log-density terms| over the sites that vary between draws, not
    against the size of the log-ratios. −inf: constant ratios (q exact). NaN: q is
    discrete and k̂ does not apply, because its support has at most ``num_samples`` joint
    states (the ratios are a few atoms, bounded, with no tail; enumerate the states
    instead, as :func:`psis_khat_per_datapoint` does for local latents) or because the
    draws repeat a ratio in the fitted tail. ``device`` (``None``: where the tensors in
    ``args`` are): the tensors in ``args`` and ``kwargs`` are put there, where the pair's
    modules must be (:func:`pyro_vae.diagnostics.draws.to_given_device`). A site the
    model sums out by enumeration (marked, not drawn by the guide) is summed out of each
    ratio per datapoint (:func:`~pyro_vae.enumerated_sites.summed_log_joint`). A scale c
    that every site of model and guide shares (``poutine.scale(c)`` around both) is divided
    out of each log-ratio first: it weighs the objective, and the ratios are the pair's.

    Raises:
        ValueError: ``num_samples`` < 21 (``PSIS_MIN_SAMPLES``); a ``device`` this machine
            does not have; a guide that draws a continuous latent from a point mass; a
            site summed out that is not one variable per datapoint, or that a site
            outside the data plate depends on.
    """
    check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "; PSIS needs ≥ 5 tail draws")
    check_finite((*args, *kwargs.values()), "args")  # tester FK: Pyro's constraint error
    args, kwargs = to_given_device(args, kwargs, device)
    guide = as_guide(guide, model, args, kwargs)
    _refuse_point_masses(point_masses_of(model, guide, args, kwargs))
    guide_tr, model_tr, rank, probe_tr = draw(model, guide, args, kwargs, num_samples)
    support = discrete_support(probe_tr)
    if support is not None and support.count <= num_samples:
        return math.nan
    sites = summed_sites(model_tr, guide_tr)
    if sites:
        log_p, model_round_off = _summed_log_joint(
            model, model_tr, guide_tr, args, kwargs, sites, num_samples, rank
        )
    else:
        log_p = log_density_per_draw(model_tr, rank, num_samples)
        model_round_off = _per_draw_round_off(model_tr, rank, num_samples)
    log_w = log_p - log_density_per_draw(guide_tr, rank, num_samples)
    round_off = model_round_off + _per_draw_round_off(guide_tr, rank, num_samples)
    # a scale every site shares weighs the objective, not the ratios: k̂ is of r, not r^c
    scale = common_scale((model_tr, guide_tr), rank, None, 1.0)
    log_w, round_off = unscaled_by(log_w, scale), unscaled_by(round_off, scale)
    log_w = log_w.cpu().numpy()
    return float(pareto_khat(log_w, float(round_off.max()), discrete=support is not None))


def _summed_log_joint(model, model_tr, guide_tr, args, kwargs, sites, num_samples, rank):
    """log p(x, u_s) ``[S]`` with the model's enumerated ``sites`` summed out per datapoint
    (:func:`~pyro_vae.enumerated_sites.summed_log_joint`), and a bound on its rounding
    error: the largest of the runs' per-draw bounds (one run per value)."""
    what = "psis_khat with sites summed out by enumeration"
    runs, plate = runs_per_value(
        model, (model_tr, guide_tr), (args, kwargs), sites, num_samples, rank, what
    )
    log_p = summed_log_joint(runs, sites, num_samples, rank, plate)
    bounds = [_per_draw_round_off(run, rank, num_samples) for run in runs]
    return log_p, torch.stack(bounds).amax(0)


def _refuse_point_masses(names: list[str]) -> None:
    """ValueError where the guide draws continuous latents from a point mass: the ratios
    are constant in them, and k̂ = −∞ would say q is exact (tester O)."""
    if names:
        raise ValueError(
            f"guide: {point_mass_message(names)}; k̂ would be −∞ whatever the posterior. "
            "Diagnose a guide with a density for those sites (AutoNormal, the amortized "
            "encoders)"
        )


def sample_size_threshold(num_samples: int) -> float:
    """The k̂ above which S = ``num_samples`` draws cannot be trusted, min(1 − 1/log10 S,
    0.7) (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR; the
    threshold ArviZ's ``loo`` uses): 0.24 at S = 21, 0.67 at S = 1000, 0.7 from S = 2155.
    The fixed 0.5 and 0.7 alone overstated few draws (tester CI: every k̂ of 21 draws
    above 0.24, and "share above 0.7: 0%")."""
    return min(1 - 1 / math.log10(num_samples), 0.7)


@dataclass(frozen=True)
class PointwiseKhat:
    """k̂ of each datapoint's importance ratios p(x_n, z) / q(z | x_n).

    ``khat`` is −inf where the ratios are constant (q exact) and NaN where k̂ does not
    apply (a discrete q; :func:`pareto_khat`). When q(z | x_n) has ``num_states`` ≤ S
    states they were enumerated instead of drawn (``khat`` is then NaN throughout), and
    the exact answers replace it, one per datapoint: ``log_evidence`` = log p(x_n),
    ``kl`` = KL(q(z | x_n) ‖ p(z | x_n)) = log p(x_n) − ELBO(x_n), and ``chi2`` =
    χ²(p(z | x_n) ‖ q(z | x_n)) = Var_q(r) / p(x_n)², so that S draws from q estimate
    p(x_n) with relative sd √(χ²/S), as well as S/(1 + χ²) exact draws would.
    """

    khat: np.ndarray
    num_samples: int
    num_states: int = 0
    log_evidence: np.ndarray | None = None
    kl: np.ndarray | None = None
    chi2: np.ndarray | None = None

    def share_above(self, threshold: float) -> float:
        """Share of the datapoints with a k̂ (not NaN) whose k̂ exceeds ``threshold``; NaN
        when no datapoint has one."""
        defined = self.khat[~np.isnan(self.khat)]
        return float((defined > threshold).mean()) if defined.size else math.nan

    def worst(self, num: int = 10) -> np.ndarray:
        """Indices of the ``num`` datapoints with the highest k̂, highest first (NaN last);
        for enumerated states, the highest χ²."""
        key = self.chi2 if self.num_states else self.khat
        return np.argsort(-key, kind="stable")[:num]

    def summary(self, num_worst: int = 10) -> dict[str, Any]:
        worst = self.worst(num_worst)
        defined = self.khat[~np.isnan(self.khat)]
        threshold = sample_size_threshold(self.num_samples)
        out = {
            "num_points": int(self.khat.size),
            "num_samples": self.num_samples,
            "share_above_0.5": self.share_above(0.5),
            "share_above_0.7": self.share_above(0.7),
            "khat_threshold": threshold,
            "share_above_threshold": self.share_above(threshold),
            "khat_median": float(np.median(defined)) if defined.size else math.nan,
            "khat_max": float(defined.max()) if defined.size else math.nan,
            "khat_not_applicable": int(self.khat.size - defined.size),
            "worst": [{"index": int(i), "khat": float(self.khat[i])} for i in worst],
        }
        if self.num_states:
            out |= {
                "num_states": self.num_states,
                "kl_median": float(np.median(self.kl)),
                "chi2_median": float(np.median(self.chi2)),
                "chi2_max": float(self.chi2.max()),
            }
            for entry in out["worst"]:
                i = entry["index"]
                entry |= {"chi2": float(self.chi2[i]), "kl": float(self.kl[i])}
        return out


@torch.no_grad()
def psis_khat_per_datapoint(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_elements: int = 2**23,
    device: Any = None,
    rows: torch.Tensor | None = None,
) -> PointwiseKhat:
    """k̂ for each row x_n from S = ``num_samples`` ratios p(x_n, z_s) / q(z_s | x_n).

    Needs every latent site inside the per-datapoint plate (an amortized or local guide;
    :func:`pyro_vae.plates.find_data_plate`). ``rows``: for a guide with free per-datapoint
    parameters (``LocalNormal``, an autoguide over local latents), the rows of its data
    ``x`` holds (default: the first ``len(x)``). Chunks of ≤ ``max_elements`` values of x.
    Each site's per-datapoint log-density is added to the others in float64 (a
    per-datapoint constant in log p leaves k̂ as it is), and the constant-ratio test
    (k̂ = −inf) is against each datapoint's rounding error, 2 ε Σ|log-density terms| over
    the sites that vary between draws (:func:`pareto_khat`).

    **Discrete guides.** When every latent site of q is discrete (a sigmoid belief net's
    binary z), the ratios r(z) = p(x_n, z) / q(z | x_n) take at most K values, K the
    number of states of q(z | x_n): they are bounded, every moment is finite, and the top
    of their distribution is an atom, not a generalized Pareto tail (the limit of one
    would be the degenerate k = −∞, for a good q and a bad one alike). k̂ therefore says
    nothing there and is NaN. Its question, can S draws from q be trusted, has an exact
    answer when K ≤ S: the K states are enumerated (costing no more than S draws), and
    :class:`PointwiseKhat` holds, for every datapoint, the exact log p(x_n),
    KL(q ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q). For K > S the ratios are drawn as usual;
    a datapoint whose draws repeat a ratio in the fitted tail gets NaN.

    ``device`` (``None``: ``x``'s): where the pair computes, chunk by chunk. A site summed out
    by enumeration is summed out of each ratio, p(x_n, u) = Σ_c p(x_n, z_n = c, u)
    (:mod:`pyro_vae.enumerated_sites`, as the per-datapoint evaluators do). A scale c of every
    site (``poutine.scale(c)`` on both) leaves k̂ and χ²; ``log_evidence`` and ``kl`` are c ×.

    Raises:
        ValueError: ``num_samples`` < 21 (``PSIS_MIN_SAMPLES``) or beyond the memory
            (:func:`check_ratio_memory`); ``max_elements`` < 1; no rows, or rows not of the
            model's ``x_dim``; a ``device`` this machine does not have; a latent site
            outside the data plate; ``rows`` of the wrong length or beyond the local guide's.
    """
    check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "; PSIS needs ≥ 5 tail draws")
    check_count("max_elements", max_elements, 1, "; expected a positive chunk size")
    check_rows(x, bare_pair(model, guide)[0])  # (tester FC: x[:0] raised an IndexError)
    check_ratio_memory(num_samples, int(x.shape[0]))
    device = x.device if device is None else resolve_device(device, "device")
    # log w (or, enumerated, log p and log q) [K, B] and the rounding bound [B] per batch
    log_w: list[torch.Tensor] = []
    log_q: list[torch.Tensor] = []
    round_off: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []  # each row's common scale c, put back on nats
    row = max(1, x[0].numel())
    with eval_mode(model, guide):
        # the first batch of drawn ratios' rows (enumerated ones take batches as large or
        # larger): a local guide that holds only its whole batch fits them when they all fit
        first = max(1, min(x.shape[0], max_elements // (num_samples * row)))
        pair, support = _prepared(model, guide, x, first, rows, device)
        enumerated = support is not None and support.count <= num_samples
        draws = int(support.count) if enumerated else num_samples
        batch = max(1, min(x.shape[0], max_elements // (draws * row)))
        chunk = max(1, min(draws, max_elements // (batch * row)))
        for start in range(0, x.shape[0], batch):
            xb = (x[start : start + batch].to(device),)
            lp, lq, bound, scale = _batch_log_densities(
                pair, xb, start, draws, chunk, support if enumerated else None
            )
            scales.append(scale)
            log_w.append(lp if enumerated else lp - lq)
            if enumerated:
                log_q.append(lq)
            round_off.append(bound.max(0).values)
    if enumerated:
        return _exact(log_w, log_q, scales, num_samples, int(support.count))
    khat = pareto_khat(
        torch.cat(log_w, 1).T.numpy(),
        torch.cat(round_off).numpy(),
        discrete=support is not None,
    )
    return PointwiseKhat(khat, num_samples)


def _exact(log_p: list, log_q: list, scales: list, num_samples: int, states: int):
    """:class:`PointwiseKhat` of the enumerated ``states`` of a discrete guide, from the
    batches' log p and log q ``[K, B]`` of the unscaled pair and their rows' common scales
    ``[B]``: log p(x_n) and the KL, in nats, are put back at c × the unscaled ones."""
    answers = exact_answers(torch.cat(log_p, 1), torch.cat(log_q, 1))
    nan = np.full(answers.log_evidence.shape[0], math.nan)
    c = torch.cat(scales).numpy()
    evidence, kl = c * answers.log_evidence, c * answers.kl
    return PointwiseKhat(nan, num_samples, states, evidence, kl, answers.chi2)


def _prepared(model, guide, x: torch.Tensor, first: int, rows, device):
    """(the pair :func:`~pyro_vae.evaluate.prepare` wraps, probed on the ``first`` rows,
    and the guide's :func:`discrete_support` per datapoint, from a probe of that pair: a
    local guide sees the rows it was fitted to)."""
    pair = prepare(model, guide, data_arguments(x), "k̂ per datapoint", probe_rows=first,
                   rows=rows, device=device, multi_sample=True)  # fmt: skip
    _refuse_point_masses(list(pair.point_masses))
    subsample = {"subsample": pair.subsample(0, first)}
    _, probe_tr, plate = probe(
        pair.model, pair.guide, (x[:first].to(device),), subsample, local=True
    )
    return pair, discrete_support(probe_tr, plate)


def _batch_log_densities(
    pair: PerDatapoint,
    xb: tuple[torch.Tensor],
    start: int,
    draws: int,
    chunk: int,
    support: DiscreteSupport | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_log_densities` of ``draws`` draws (or, with ``support``, enumerated states)
    for one batch of rows, ``chunk`` at a time, joined: ``[K, B]`` each, and the rows'
    common scales ``[B]`` (the sites' scales, the same in every chunk), on the CPU."""
    parts = []
    for s in range(0, draws, chunk):
        num = min(chunk, draws - s)
        states = None
        if support is not None:
            states = state_values(support, xb[0].shape[0], s, num, pair.nesting)
        parts.append(_log_densities(pair, xb, start, num, states))
    lp, lq, bound = (torch.cat(chunks).cpu() for chunks in list(zip(*parts, strict=True))[:3])
    return lp, lq, bound, parts[0][3].cpu()
