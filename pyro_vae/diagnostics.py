"""ArviZ diagnostics of a variational fit: InferenceData from any guide, PSIS k̂, figures.

Every ArviZ call of the package lives in this module (written for ArviZ 0.23's
``InferenceData``).

**Draws.** S draws z_s ~ q(z | x) from the guide, each replayed through the model, give
the ``posterior`` group (one chain, ``draw`` = s; the draws are from q, not from the exact
posterior), ``posterior_predictive`` x̃_s ~ p(x | z_s), the pointwise ``log_likelihood``
log p(x_n | z_s) that ``az.loo`` reads, ``observed_data``, and in ``sample_stats`` the log
joint ``lp`` = log p(x, z_s) (ArviZ's name) and ``log_q`` = log q(z_s | x). Dimensions
are named after the model's plates (``data`` for :func:`pyro_vae.plates.data_plate`) and
``{site}_dim_{i}`` for event dimensions.

**PSIS k̂** (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating
variational inference", ICML; Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed
importance sampling", JMLR 25(72)). The importance ratios r_s = p(x, z_s) / q(z_s | x),
z_s ~ q, have a right tail that a generalized Pareto distribution fits; its shape k says
that r has finite moments of order < 1/k. Yao et al.: k̂ < 0.5, q is close to the posterior;
0.5 ≤ k̂ ≤ 0.7, usable with care; k̂ > 0.7, q is unreliable. For an amortized guide the
ratios factor over datapoints, r_s(x_n) = p(x_n, z_s) / q(z_s | x_n), z_s ~ q(· | x_n),
so each datapoint gets its own k̂: the inputs where the encoder fails. k̂ comes from
``az.psislw`` and does not change when a constant is added to log p (r → e^c r). When
all S log-ratios agree to within the float rounding of the log-densities that produced
them, the ratios are bounded and PSIS has no tail to fit (``az.psislw`` would return
+inf); k̂ is then reported as −inf. When q is discrete its ratios take finitely many
values and have no generalized Pareto tail: k̂ is NaN (not applicable), and where q(z | x_n)
has at most S states they are enumerated, giving the exact log p(x_n),
KL(q ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q) instead (:func:`psis_khat_per_datapoint`).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.checkpoint import atomic_path
from pyro_vae.evaluate import PerDatapoint, check_finite, data_arguments, eval_mode, prepare
from pyro_vae.plates import batch_rows, find_data_plate, frames_in, require_data_plate
from pyro_vae.plots import plot_reconstructions
from pyro_vae.pointwise import per_datapoint_log_density
from pyro_vae.predictive import reconstruct
from pyro_vae.traces import PARTICLES, VectorizationWarning, particle_traces, stack_values

with warnings.catch_warnings():  # ArviZ's once-a-day notice about its 1.0 refactor
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    import arviz as az

FORMAT = "pyro_vae.diagnostics/1"
PSIS_MIN_SAMPLES = 21  # az.psislw fits the top ceil(min(S/5, 3√S)) ratios and needs ≥ 5
_DRAWS = PARTICLES  # a particle plate, so no rule mistakes it for the data's plate


def _check_count(arg: str, value: int, minimum: int, why: str) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{arg}: {value!r} is not an integer ≥ {minimum}; {why}")


def _sample_sites(trace) -> dict[str, dict]:
    return {n: s for n, s in prune_subsample_sites(trace).nodes.items() if s["type"] == "sample"}


def _plate_nesting(
    model, guide, args: tuple, kwargs: dict, local: bool = False
) -> tuple[int, Trace, str | None]:
    """Batch dims used by the model and guide, the guide's trace of that probe run, and
    (with ``local``) the data plate's name; checks the guide covers the model's latent
    sites and, with ``local``, that they all lie in the data plate."""
    with poutine.block(), torch.no_grad(), eval_mode(model, guide):
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    guide_sites, model_sites = _sample_sites(guide_tr), _sample_sites(model_tr)
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    name = getattr(guide, "__name__", type(guide).__name__)
    missing = [n for n in latent if n not in guide_sites]
    if missing:
        raise ValueError(
            f"guide: {name} has no sample site for the model's latent site(s) {missing} (it "
            f"samples {sorted(guide_sites)}); expected a guide over every latent site "
            f"{latent}, e.g. pyro.infer.autoguide.AutoNormal(model)"
        )
    clash = [n for n, s in model_sites.items() if s["is_observed"] and n in guide_sites]
    if clash:
        raise ValueError(f"guide: {name} samples {clash}, which the model observes")
    if not latent or len(latent) == len(model_sites):
        raise ValueError(
            f"model: sample sites {sorted(model_sites)} with latent {latent}; diagnostics "
            "need at least one latent and one observed site"
        )
    plate = None
    if local:
        plate = require_data_plate(
            find_data_plate(model_tr, batch_rows(args, kwargs)),
            batch_rows(args, kwargs),
            "k̂ per datapoint",
        )
        for n in latent:
            if not frames_in(model_sites[n], plate):
                raise ValueError(
                    f"site {n!r} is outside the per-datapoint plate {plate!r}, so it has no "
                    "per-datapoint importance ratio; use psis_khat for the joint k̂ of a "
                    "model with global latents"
                )
    nesting = 0
    for site in (*guide_sites.values(), *model_sites.values()):
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
        nesting = max([nesting, *dims])
    return nesting, guide_tr, plate


@torch.no_grad()
def _draw(model, guide, args: tuple, kwargs: dict, num_samples: int):
    """Guide and replayed model traces of S draws, the draws at dim −rank: vectorized by a
    plate, or drawn in a loop when the model cannot broadcast (:mod:`pyro_vae.traces`);
    and the guide's trace of one probe run (one draw, no particle dim)."""
    nesting, probe, _ = _plate_nesting(model, guide, args, kwargs)
    with torch.no_grad(), eval_mode(model, guide):
        model_tr, guide_tr, _ = particle_traces(model, guide, args, kwargs, num_samples, nesting)
    return guide_tr, model_tr, nesting + 1, probe


def _predictive(site: dict, rank: int) -> torch.Tensor:
    """x̃_s ~ p(x | z_s) for each draw s of an observed site (each draw's own likelihood
    when the draws were taken in a loop)."""
    fns = site.get("fns")
    if fns is None:
        return site["fn"].sample()
    return stack_values([fn.sample() for fn in fns], rank - 1, site["fn"].event_dim)


def _per_draw(trace, rank: int, num_samples: int) -> torch.Tensor:
    """Σ over sample sites of the (scaled, masked) log-density, for each draw: ``[S]``."""
    total = torch.zeros(num_samples, dtype=torch.float64)
    for site in _sample_sites(trace).values():
        lp = site["log_prob"]
        lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
        total = total + lp.reshape(lp.shape[0], -1).sum(1).double()
    return total


def _named(
    name: str, site: dict, value: torch.Tensor, event_dim: int, rank: int, draws: int | None
) -> tuple[np.ndarray, list[str]]:
    """``value`` as a numpy array with plate-named dims; ``[chain=1, draw, ...]`` for draws."""
    batch_rank = rank if draws else rank - 1
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != _DRAWS}
    v = value.detach()
    batch_ndim = v.dim() - event_dim
    v = v.reshape((1,) * (batch_rank - batch_ndim) + tuple(v.shape))
    keep, dims = list(range(1 if draws else 0)), []
    for i in range(len(keep), batch_rank):
        dim = i - batch_rank
        if dim in plates:
            dims.append(plates[dim])
        elif v.shape[i] != 1:
            dims.append(f"{name}_batch_dim_{-dim}")
        else:
            continue
        keep.append(i)
    keep += list(range(batch_rank, v.dim()))
    v = v.reshape([v.shape[i] for i in keep])
    dims += [f"{name}_dim_{j}" for j in range(event_dim)]
    if draws:
        v = v.expand(draws, *v.shape[1:])[None]
    array = v.cpu().numpy()
    return (array.astype(np.int64) if array.dtype == np.bool_ else array), dims


def _dataset(variables: dict[str, tuple[np.ndarray, list[str]]], attrs: dict, draws: bool):
    return az.dict_to_dataset(
        {k: a for k, (a, _) in variables.items()},
        dims={k: d for k, (_, d) in variables.items()},
        default_dims=None if draws else [],
        attrs=attrs,
        library=pyro,
    )


def variational_guide(distributions: Mapping[str, Any]) -> Callable[..., None]:
    """The guide q(z) = Π_site q_site(z_site) that draws each named site from a fixed
    distribution, e.g. a CAVI fit's ``variational_distributions()``; they stay readable
    as ``guide.distributions``."""
    if not distributions:
        raise ValueError("distributions: empty; expected {site name: pyro distribution}")
    items = dict(distributions)

    def guide(*args: Any, **kwargs: Any) -> None:
        for site, distribution in items.items():
            pyro.sample(site, distribution)

    guide.__name__ = f"variational_guide({', '.join(items)})"
    guide.distributions = items  # type: ignore[attr-defined]
    return guide


@torch.no_grad()
def to_inference_data(model, guide, *args: Any, num_samples: int = 1000, **kwargs: Any):
    """ArviZ ``InferenceData`` of ``num_samples`` draws z_s ~ q(z | x) replayed in the model.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` are a Pyro pair (any
    autoguide, an amortized guide, or a fitted :mod:`pyro_vae.cavi` estimator, whose
    ``variational_distributions()`` become the guide). The model must broadcast under an
    outer plate, as ``pyro.infer.Predictive(parallel=True)`` requires. Groups:
    ``posterior`` (latent sites), ``posterior_predictive`` and ``log_likelihood``
    (pointwise log p(x | z_s), unscaled) of each observed site, ``observed_data``, and
    ``sample_stats`` with ``lp`` = log p(x, z_s) and ``log_q`` = log q(z_s | x).
    """
    _check_count("num_samples", num_samples, 2, "expected at least 2 draws from the guide")
    check_finite((*args, *kwargs.values()), "args")
    if hasattr(guide, "variational_distributions"):
        guide = variational_guide(guide.variational_distributions())
    guide_tr, model_tr, rank, _ = _draw(model, guide, args, kwargs, num_samples)
    plate = find_data_plate(model_tr, batch_rows(args, kwargs)) or ""
    attrs = {"pyro_vae_format": FORMAT, "num_samples": num_samples, "data_plate": plate}
    groups: dict[str, dict] = {k: {} for k in ("posterior", "predictive", "loglik", "observed")}
    for name, site in _sample_sites(model_tr).items():
        fn = site["fn"]
        if not site["is_observed"]:
            groups["posterior"][name] = _named(
                name, site, site["value"], fn.event_dim, rank, num_samples
            )
            continue
        groups["observed"][name] = _named(name, site, site["value"], fn.event_dim, rank, None)
        groups["predictive"][name] = _named(
            name, site, _predictive(site, rank), fn.event_dim, rank, num_samples
        )
        log_p = site["unscaled_log_prob"]
        if site["mask"] is not None:
            log_p = log_p * site["mask"]
        groups["loglik"][name] = _named(name, site, log_p, 0, rank, num_samples)
    stats = {
        "lp": _per_draw(model_tr, rank, num_samples).numpy()[None],
        "log_q": _per_draw(guide_tr, rank, num_samples).numpy()[None],
    }
    return az.InferenceData(
        attrs=attrs,
        posterior=_dataset(groups["posterior"], attrs, True),
        posterior_predictive=_dataset(groups["predictive"], attrs, True),
        log_likelihood=_dataset(groups["loglik"], attrs, True),
        observed_data=_dataset(groups["observed"], attrs, False),
        sample_stats=az.dict_to_dataset(stats, attrs=attrs, library=pyro),
    )


def save_inference_data(idata, path: str | os.PathLike) -> Path:
    """Write ``idata`` as ArviZ netCDF (h5netcdf), atomically: a temporary file, renamed."""
    path = Path(path)
    with atomic_path(path, lock=False) as tmp:  # HDF5 locks the file itself
        idata.to_netcdf(tmp)
    return path


def load_inference_data(path: str | os.PathLike):
    """Read a file written by :func:`save_inference_data`, refusing other versions' files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {path} is not a file; expected RUN/diagnostics.nc")
    try:
        idata = az.from_netcdf(path)
    except Exception as err:
        raise ValueError(f"path: {path} could not be read as ArviZ netCDF ({err})") from err
    found = idata.attrs.get("pyro_vae_format")
    if found != FORMAT:
        raise ValueError(
            f"path: {path} has format {found!r}; this version of pyro_vae reads {FORMAT!r}. "
            "Re-run `pyro-vae diagnose RUN` with this version."
        )
    return idata


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
    """A bound on the float rounding error of each draw's :func:`_per_draw` sum: ``[S]``.

    Each site's terms are summed in the site's dtype, so its total is within about
    2 ε Σ|terms| of exact; the sites' totals are then added in float64. A site whose total
    is the same in every draw (a ``pyro.factor`` constant, a likelihood no latent reaches)
    shifts every log-weight by the same float64 number, so it adds no spread, however
    large it is, and is left out.
    """
    bound = torch.zeros(num_samples, dtype=torch.float64)
    for site in _sample_sites(trace).values():
        lp = site["log_prob"]
        lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
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
    total = bound = torch.zeros((), dtype=torch.float64)
    for name, site in _sample_sites(trace).items():
        lp = site.get("unscaled_log_prob")
        if lp is None:
            lp = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            lp = lp * site["mask"]
        densities = []
        for value in (lp, _magnitude(lp)):
            single = Trace()
            single.add_node(name, **{**site, "unscaled_log_prob": value, "mask": None})
            densities.append(per_datapoint_log_density(single, num, rows, rank, plate))
        log_p, magnitude = densities
        total = total + log_p.double()
        varies = (log_p != log_p[:1]).any(0)
        bound = bound + torch.where(varies, magnitude.double(), 0.0)
    return total.expand(num, rows), bound.expand(num, rows)


class _Site(NamedTuple):
    """A discrete site of a probe run: its base distribution's C values ``[C, *base event
    shape]``, how many of them its value holds (``units``), the value's shape, the position
    of the data plate's dim in it, and its event dim."""

    values: torch.Tensor
    units: int
    shape: torch.Size
    data_dim: int
    event_dim: int


@dataclass(frozen=True)
class _Support:
    """The joint states of a guide whose sample sites are all discrete: ``count`` of them
    in a probe run (``math.inf`` when a support cannot be enumerated, or past 2**62)."""

    count: float
    sites: dict[str, _Site]


def _discrete_support(probe: Trace, plate: str | None = None) -> _Support | None:
    """None unless every sample site of a guide's ``probe`` trace has a discrete support.

    A site whose base distribution (under ``Independent``) enumerates C values and that
    holds u of them (its value's elements, or one-hot vectors) has C^u states; the guide
    has their product. With ``plate`` (a one-row probe) that is the number of states of
    q(z | x_n) for one datapoint, and each site must lie in ``plate``.
    """
    sites = _sample_sites(probe)
    if not sites or not all(s["fn"].support.is_discrete for s in sites.values()):
        return None
    none = _Support(math.inf, {})
    count, table = 1, {}
    for name, site in sites.items():
        base = site["fn"]
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        if not base.has_enumerate_support:
            return none
        try:
            values = base.enumerate_support(expand=False)
        except NotImplementedError:  # e.g. a Binomial whose total_count varies
            return none
        value, event_dim = site["value"], site["fn"].event_dim
        pos = 0
        if plate is not None:
            frames = [f for f in site["cond_indep_stack"] if f.name == plate]
            pos = value.dim() - event_dim + frames[0].dim if frames else -1
            if pos < 0 or value.shape[pos] != 1:
                return none
        event = tuple(base.event_shape)
        values = values.reshape(values.shape[0], *event)
        units = value.numel() // max(1, math.prod(event))
        if math.log(count) + units * math.log(values.shape[0]) > 62 * math.log(2):
            return none
        count *= values.shape[0] ** units
        table[name] = _Site(values, units, value.shape, pos, event_dim)
    return _Support(count, table)


def _state_values(
    support: _Support, rows: int, start: int, count: int, nesting: int
) -> dict[str, tuple[torch.Tensor, int]]:
    """Joint states ``start .. start + count`` (mixed-radix digits over the sites' elements)
    as each site's value for ``rows`` datapoints, ``[count, *value shape]``, with the
    number of singleton dims that put its batch dims at the rank of a particle plate."""
    out = {}
    index = None
    for name, site in support.sites.items():
        if index is None:
            index = torch.arange(start, start + count, device=site.values.device)
        radix = site.values.shape[0]
        digits = torch.empty(count, site.units, dtype=torch.long, device=site.values.device)
        for j in range(site.units):
            digits[:, j] = index % radix
            index = index // radix
        value = site.values[digits].reshape(count, *site.shape)
        sizes = [count, *site.shape]
        sizes[site.data_dim + 1] = rows
        pad = nesting - (len(site.shape) - site.event_dim)
        out[name] = (value.expand(sizes).contiguous(), pad)
    return out


class _States:
    """``guide`` with its sample sites set to given states instead of drawn: under a
    particle plate all K at once, or in a loop (``looped``) the next state on each call."""

    def __init__(self, guide, states: dict[str, tuple[torch.Tensor, int]], looped: bool):
        self.guide, self.states, self.looped, self.calls = guide, states, looped, 0

    def __call__(self, *args: Any, **kwargs: Any):
        trace = Trace()
        for name, (value, pad) in self.states.items():
            if self.looped:
                value = value[self.calls]
            else:
                value = value.reshape(value.shape[0], *(1,) * pad, *value.shape[1:])
            trace.add_node(name, type="sample", is_observed=False, value=value, infer={})
        self.calls += 1
        return poutine.replay(self.guide, trace=trace)(*args, **kwargs)


def _log_densities(
    pair: PerDatapoint, args: tuple, start: int, num: int, states: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x_n, z_k), log q(z_k | x_n) and a bound on the rounding error of their
    difference, for the rows ``start..`` in ``args``: ``[K, B]`` each, float64
    (:func:`_per_datapoint`). The z_k are ``num`` draws from the guide, taken as
    :meth:`PerDatapoint.log_weights` takes them, or the given ``states`` of a discrete
    guide."""
    rows = int(args[0].shape[0])
    kwargs = {"subsample": pair.subsample(start, rows).to(args[0].device)}
    nesting = pair.nesting
    if states is None:
        model_tr, guide_tr, pair.vectorize = particle_traces(
            pair.model, pair.guide, args, kwargs, num, nesting, pair.vectorize
        )
    else:
        model_tr, guide_tr = None, None
        if pair.vectorize is not False:
            try:
                guide = _States(pair.guide, states, looped=False)
                model_tr, guide_tr, _ = particle_traces(
                    pair.model, guide, args, kwargs, num, nesting, True
                )
                pair.vectorize = True
            except Exception as err:
                if pair.vectorize:
                    raise
                warnings.warn(
                    f"the model and guide could not run under vectorized particles "
                    f"({type(err).__name__}: {err}); enumerating the guide's {num} states "
                    "one at a time instead, which gives the same results more slowly",
                    VectorizationWarning,
                    stacklevel=3,
                )
                pair.vectorize = False
        if model_tr is None:
            guide = _States(pair.guide, states, looped=True)
            model_tr, guide_tr, _ = particle_traces(
                pair.model, guide, args, kwargs, num, nesting, False
            )
    log_p, model_round_off = _per_datapoint(model_tr, num, rows, nesting + 1, pair.plate)
    log_q, guide_round_off = _per_datapoint(guide_tr, num, rows, nesting + 1, pair.plate)
    return log_p, log_q, model_round_off + guide_round_off


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
    _check_count("num_samples", samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 draws in the tail")
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
        khat[fit] = np.atleast_1d(az.psislw(rows[fit], reff=1.0)[1])
    return khat.reshape(lw.shape[:-1])


@torch.no_grad()
def psis_khat(model, guide, *args: Any, num_samples: int = 1000, **kwargs: Any) -> float:
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
    draws repeat a ratio in the fitted tail.
    """
    _check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 tail draws")
    if hasattr(guide, "variational_distributions"):
        guide = variational_guide(guide.variational_distributions())
    guide_tr, model_tr, rank, probe = _draw(model, guide, args, kwargs, num_samples)
    support = _discrete_support(probe)
    if support is not None and support.count <= num_samples:
        return math.nan
    log_w = _per_draw(model_tr, rank, num_samples) - _per_draw(guide_tr, rank, num_samples)
    round_off = _per_draw_round_off(model_tr, rank, num_samples) + _per_draw_round_off(
        guide_tr, rank, num_samples
    )
    return float(pareto_khat(log_w.numpy(), float(round_off.max()), discrete=support is not None))


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
        out = {
            "num_points": int(self.khat.size),
            "num_samples": self.num_samples,
            "share_above_0.5": self.share_above(0.5),
            "share_above_0.7": self.share_above(0.7),
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


def _exact(log_p: torch.Tensor, log_q: torch.Tensor, num_samples: int) -> PointwiseKhat:
    """Exact log p(x_n), KL and χ² from log p(x_n, z_k) and log q(z_k | x_n) at every
    state z_k of q (``[K, N]``)."""
    lp, lq = log_p.double(), log_q.double()
    mass = torch.logsumexp(lq, 0)
    # float32 log q of each of K ≤ S states is good to ~1e-6, far inside 1e-3
    if (mass.abs() > 1e-3).any():
        raise ValueError(
            f"guide: q(z | x_n) sums to {float(mass.exp().min()):.6g} to "
            f"{float(mass.exp().max()):.6g} over the {lp.shape[0]} states of its discrete "
            "sites; expected 1, i.e. sites whose supports do not depend on one another"
        )
    log_evidence = torch.logsumexp(lp, 0)
    log_post = lp - log_evidence
    kl = torch.where(lq > -math.inf, lq.exp() * (lq - log_post), 0.0).sum(0)
    chi2 = torch.logsumexp(
        torch.where(log_post > -math.inf, 2 * log_post - lq, -math.inf), 0
    ).expm1()
    return PointwiseKhat(
        np.full(lp.shape[1], math.nan),
        num_samples,
        lp.shape[0],
        log_evidence.numpy(),
        kl.numpy(),
        chi2.numpy(),
    )


@torch.no_grad()
def psis_khat_per_datapoint(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_elements: int = 2**23,
) -> PointwiseKhat:
    """k̂ for each row x_n from S = ``num_samples`` ratios p(x_n, z_s) / q(z_s | x_n).

    Needs every latent site inside the per-datapoint plate (an amortized or local guide;
    :func:`pyro_vae.plates.find_data_plate`).
    Datapoints and draws are taken in chunks of at most ``max_elements`` values of x.
    Each site's per-datapoint log-density is added to the others in float64, so a
    per-datapoint constant in log p leaves k̂ as it is, and the constant-ratio test
    (k̂ = −inf) is against each datapoint's rounding error, 2 ε Σ|log-density terms| over
    the sites that vary between draws (:func:`pareto_khat`).

    **Discrete guides.** When every latent site of q is discrete (a sigmoid belief net's
    binary z), the ratios r(z) = p(x_n, z) / q(z | x_n) take at most K values, K the
    number of states of q(z | x_n): they are bounded, every moment is finite, and the top
    of their distribution is an atom, not a generalized Pareto tail (the limit of one
    would be the degenerate k = −∞, for a good q and a bad one alike). k̂ therefore says
    nothing there and is NaN. Its question, can S draws from q be trusted, has an exact
    answer when K ≤ S: the K states are enumerated, which costs no more than the S draws
    would, and :class:`PointwiseKhat` holds, for every datapoint, the exact log p(x_n),
    KL(q ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q). For K > S the ratios are drawn as usual,
    and a datapoint whose draws repeat a ratio in the fitted tail gets NaN.
    """
    _check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 tail draws")
    _check_count("max_elements", max_elements, 1, "expected a positive chunk size")
    _, probe, plate = _plate_nesting(model, guide, (x[:1],), {}, local=True)
    support = _discrete_support(probe, plate)
    enumerated = support is not None and support.count <= num_samples
    draws = int(support.count) if enumerated else num_samples
    row = max(1, x[0].numel())
    batch = max(1, min(x.shape[0], max_elements // (draws * row)))
    chunk = max(1, min(draws, max_elements // (batch * row)))
    # per batch: log w (or, enumerated, log p and log q) [K, B]; the rounding bound [B]
    log_w: list[torch.Tensor] = []
    log_q: list[torch.Tensor] = []
    round_off: list[torch.Tensor] = []
    with eval_mode(model, guide):
        data = data_arguments(x)
        pair = prepare(model, guide, data, "k̂ per datapoint", probe_rows=batch)
        for start in range(0, x.shape[0], batch):
            xb = (x[start : start + batch],)
            parts = []
            for s in range(0, draws, chunk):
                num = min(chunk, draws - s)
                states = (
                    _state_values(support, xb[0].shape[0], s, num, pair.nesting)
                    if enumerated
                    else None
                )
                parts.append(_log_densities(pair, xb, start, num, states))
            lp, lq, bound = (torch.cat(chunks).cpu() for chunks in zip(*parts, strict=True))
            log_w.append(lp if enumerated else lp - lq)
            if enumerated:
                log_q.append(lq)
            round_off.append(bound.max(0).values)
    if enumerated:
        return _exact(torch.cat(log_w, 1), torch.cat(log_q, 1), num_samples)
    khat = pareto_khat(
        torch.cat(log_w, 1).T.numpy(),
        torch.cat(round_off).numpy(),
        discrete=support is not None,
    )
    return PointwiseKhat(khat, num_samples)


def _save_figure(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_khat(khat: PointwiseKhat, path: str | os.PathLike, title: str = "") -> Path:
    """k̂ per datapoint (left) and its histogram (right), with Yao et al.'s 0.5 and 0.7.

    Datapoints whose k̂ does not apply (NaN) are left out and counted in the title; for
    enumerated states (``khat.num_states``) the exact 1 + χ²(p ‖ q) is drawn instead."""
    if khat.num_states:
        return _plot_chi2(khat, Path(path), title)
    applicable = ~np.isnan(khat.khat)
    k = khat.khat[applicable]
    finite = k[np.isfinite(k)]
    floor = min(-0.5, float(finite.min())) if finite.size else -0.5
    shown = np.where(np.isfinite(k), k, floor)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    left.scatter(np.flatnonzero(applicable), shown, s=4, alpha=0.6, linewidths=0)
    left.set_xlabel("datapoint")
    left.set_ylabel("k̂")
    right.hist(shown, bins=50, color="C0", alpha=0.8)
    right.set_xlabel("k̂")
    right.set_ylabel("datapoints")
    for value, style in ((0.5, "--"), (0.7, "-")):
        left.axhline(value, color="C3", linestyle=style, linewidth=1)
        right.axvline(value, color="C3", linestyle=style, linewidth=1, label=f"k̂ = {value}")
    right.legend(fontsize=8)
    above = [f"{100 * khat.share_above(t):.1f}% above {t}" for t in (0.5, 0.7)]
    shares = ", ".join(above)
    fig.suptitle(
        (title or f"PSIS k̂ per datapoint, S = {khat.num_samples} draws") + f": {shares}",
        fontsize=10,
    )
    notes = []
    if not np.isfinite(k).all():
        notes.append(f"{int((~np.isfinite(k)).sum())} constant-ratio points drawn at {floor}")
    if not applicable.all():
        notes.append(f"{int((~applicable).sum())} with k̂ not applicable (discrete q) left out")
    if notes:
        left.set_title("; ".join(notes))
    return _save_figure(fig, Path(path))


def _plot_chi2(khat: PointwiseKhat, path: Path, title: str) -> Path:
    """The exact 1 + χ²(p(z | x_n) ‖ q(z | x_n)) = S / ESS of enumerated states."""
    ratio = 1.0 + khat.chi2
    finite = np.isfinite(ratio)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    left.scatter(np.flatnonzero(finite), ratio[finite], s=4, alpha=0.6, linewidths=0)
    left.set_yscale("log")
    left.set_xlabel("datapoint")
    left.set_ylabel("1 + χ²(p ‖ q) = S / ESS")
    right.hist(np.log10(ratio[finite]), bins=50, color="C0", alpha=0.8)
    right.set_xlabel("log₁₀(1 + χ²)")
    right.set_ylabel("datapoints")
    fig.suptitle(
        (title or f"exact, by enumerating the {khat.num_states} states of q(z | x)")
        + ": k̂ does not apply to a discrete q",
        fontsize=10,
    )
    if not finite.all():
        left.set_title(f"{int((~finite).sum())} points where q misses a state of p(z | x)")
    return _save_figure(fig, path)


def _first_elements(data, max_panels: int, plate: str):
    """The first datapoint and first elements of each variable, for a readable plot."""
    out = {}
    for name, var in data.data_vars.items():
        extra = [d for d in var.dims if d not in ("chain", "draw")]
        var = var.isel({d: 0 for d in extra if d == plate})
        extra = [d for d in extra if d != plate]
        picks = {d: slice(0, max_panels) if i == 0 else 0 for i, d in enumerate(extra)}
        out[name] = var.isel(picks)
    return type(data)(out)


def _ppc_statistic(idata, plate: str):
    """Per-datapoint mean of each observed variable over its non-data dims."""
    groups = {}
    for group in ("posterior_predictive", "observed_data"):
        ds = idata[group]
        groups[group] = type(ds)(
            {
                name: var.mean([d for d in var.dims if d not in ("chain", "draw", plate)])
                for name, var in ds.data_vars.items()
            }
        )
    return az.InferenceData(**groups)


def write_summaries(idata, out_dir: str | os.PathLike, max_panels: int = 4) -> list[Path]:
    """summary.csv (``az.summary`` of the global latents, or of the local ones for the
    first datapoint when there are none), posterior.png and ppc.png."""
    with warnings.catch_warnings():  # ArviZ 0.23's plots against Matplotlib ≥ 3.11
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        return _write_summaries(idata, Path(out_dir), max_panels)


def _write_summaries(idata, out: Path, max_panels: int) -> list[Path]:
    post = idata.posterior
    plate = idata.attrs.get("data_plate", "data") or "data"
    global_vars = [n for n, v in post.data_vars.items() if plate not in v.dims]
    names = global_vars or list(post.data_vars)
    summary = az.summary(
        _first_elements(post[names], 10**6 if global_vars else 10, plate), kind="stats"
    )
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp)
    axes = az.plot_posterior(_first_elements(post[names], max_panels, plate), textsize=9)
    if not global_vars:
        np.ravel(axes)[0].figure.suptitle("q(z | x) of the first datapoint", fontsize=10)
    posterior_png = _save_figure(np.ravel(axes)[0].figure, out / "posterior.png")
    axes = az.plot_ppc(_ppc_statistic(idata, plate), num_pp_samples=min(100, post.sizes["draw"]))
    for ax in np.ravel(axes):
        ax.set_xlabel(f"per-datapoint mean of {ax.get_xlabel()}")
    ppc_png = _save_figure(np.ravel(axes)[0].figure, out / "ppc.png")
    return [out / "summary.csv", posterior_png, ppc_png]


def write_report(
    model,
    guide,
    x: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = 1000,
    idata_points: int = 100,
    idata_samples: int = 200,
    num_worst: int = 12,
    image_shape: tuple[int, ...] | None = None,
    pixel_max: float = 1.0,
) -> dict[str, Any]:
    """Diagnose an amortized fit on inputs ``x``; write the files into ``out_dir``.

    khat.csv and khat.png (k̂ of every row of ``x`` from ``num_samples`` draws),
    khat_worst.png (for images: the ``num_worst`` highest-k̂ inputs above their
    reconstructions E[x | z = E_q z]; for a discrete q whose states were enumerated,
    :func:`psis_khat_per_datapoint`, khat.csv adds the exact log_evidence, kl and chi2
    columns, khat.png draws 1 + χ², and khat_worst.png ranks by χ²), diagnostics.nc
    (:func:`to_inference_data` of the first ``idata_points`` rows, ``idata_samples``
    draws), summary.csv, posterior.png and ppc.png (:func:`write_summaries`). Returns
    :meth:`PointwiseKhat.summary` and the paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_count("idata_points", idata_points, 1, "expected a positive number of datapoints")
    khat = psis_khat_per_datapoint(model, guide, x, num_samples)
    with atomic_path(out / "khat.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        exact = [] if not khat.num_states else [khat.log_evidence, khat.kl, khat.chi2]
        writer.writerow(["index", "khat"] + (["log_evidence", "kl", "chi2"] if exact else []))
        writer.writerows(
            (i, *(f"{v[i]:.6g}" for v in (khat.khat, *exact))) for i in range(khat.khat.size)
        )
    files = [out / "khat.csv", plot_khat(khat, out / "khat.png")]
    skipped: dict[str, str] = {}
    worst = khat.worst(num_worst)
    x_hat = None
    if image_shape is not None:
        x_worst = x[torch.as_tensor(worst)]
        try:
            x_hat = reconstruct(model, guide, x_worst)
        except ValueError as err:
            skipped["khat_worst.png"] = str(err)
    if x_hat is not None:
        if khat.num_states:
            name, k, form = "χ²(p ‖ q)", khat.chi2[worst], ".3g"
        else:
            name, k, form = "k̂", khat.khat[worst], ".2f"
        shown = k[~np.isnan(k)]
        span = f"{shown.max():{form}} to {shown.min():{form}}" if shown.size else "not applicable"
        title = (
            f"the {len(worst)} inputs with the highest {name} ({span}) and their reconstructions"
        )
        files.append(
            plot_reconstructions(
                x_worst, x_hat, image_shape, pixel_max, out / "khat_worst.png", title
            )
        )
    idata = to_inference_data(model, guide, x[:idata_points], num_samples=idata_samples)
    files.append(save_inference_data(idata, out / "diagnostics.nc"))
    files += write_summaries(idata, out)
    result = {**khat.summary(num_worst), "files": [str(f) for f in files]}
    if skipped:
        result["skipped"] = skipped
    return result
