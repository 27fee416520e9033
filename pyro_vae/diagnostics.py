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
``az.psislw``. When all S log-ratios agree to round-off the ratios are bounded and PSIS
has no tail to fit (``az.psislw`` would return +inf); k̂ is then reported as −inf.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.evaluate import data_arguments, eval_mode, prepare
from pyro_vae.plates import batch_rows, find_data_plate, frames_in, require_data_plate
from pyro_vae.plots import plot_reconstructions
from pyro_vae.predictive import reconstruct
from pyro_vae.traces import PARTICLES, particle_traces, stack_values

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


def _plate_nesting(model, guide, args: tuple, kwargs: dict, local: bool = False) -> int:
    """Batch dims used by the model and guide; checks the guide covers the model's latent
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
    return nesting


@torch.no_grad()
def _draw(model, guide, args: tuple, kwargs: dict, num_samples: int):
    """Guide and replayed model traces of S draws, the draws at dim −rank: vectorized by a
    plate, or drawn in a loop when the model cannot broadcast (:mod:`pyro_vae.traces`)."""
    nesting = _plate_nesting(model, guide, args, kwargs)
    with torch.no_grad(), eval_mode(model, guide):
        model_tr, guide_tr, _ = particle_traces(model, guide, args, kwargs, num_samples, nesting)
    return guide_tr, model_tr, nesting + 1


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
    if hasattr(guide, "variational_distributions"):
        guide = variational_guide(guide.variational_distributions())
    guide_tr, model_tr, rank = _draw(model, guide, args, kwargs, num_samples)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def pareto_khat(log_weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """k̂ of the generalized Pareto fit to each row's importance ratios (``az.psislw``).

    ``log_weights``: ``[..., S]`` log-ratios log p(x, z_s) − log q(z_s). Rows whose ratios
    are constant up to float32 round-off of the log-densities (spread ≤ 1e-3 + 1e-5 max|log
    w|) are bounded, so q matches p there; their k̂ is −inf.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    samples = lw.shape[-1]
    _check_count("num_samples", samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 draws in the tail")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log_weights: NaN or +inf log importance ratios; is q(z) = 0 somewhere?")
    rows = lw.reshape(-1, samples)
    if np.isneginf(rows.max(1)).any():
        raise ValueError("log_weights: every draw has p(x, z) = 0 for some rows")
    finite = np.where(np.isfinite(rows), rows, np.nan)
    spread = np.nanmax(finite, 1) - np.nanmin(finite, 1)
    spread[np.isneginf(rows.min(1))] = np.inf
    constant = spread <= 1e-3 + 1e-5 * np.nanmax(np.abs(finite), 1)
    khat = np.full(rows.shape[0], -np.inf)
    if (~constant).any():
        khat[~constant] = np.atleast_1d(az.psislw(rows[~constant], reff=1.0)[1])
    return khat.reshape(lw.shape[:-1])


@torch.no_grad()
def psis_khat(model, guide, *args: Any, num_samples: int = 1000, **kwargs: Any) -> float:
    """k̂ of the joint importance ratios p(x, z_s) / q(z_s | x), z_s ~ q: one number for
    the whole fit (Yao et al. 2018, §3; Pyro's ``psis_diagnostic`` computes the same)."""
    _check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 tail draws")
    if hasattr(guide, "variational_distributions"):
        guide = variational_guide(guide.variational_distributions())
    guide_tr, model_tr, rank = _draw(model, guide, args, kwargs, num_samples)
    log_w = _per_draw(model_tr, rank, num_samples) - _per_draw(guide_tr, rank, num_samples)
    return float(pareto_khat(log_w.numpy()))


@dataclass(frozen=True)
class PointwiseKhat:
    """k̂ of each datapoint's importance ratios p(x_n, z) / q(z | x_n)."""

    khat: np.ndarray
    num_samples: int

    def share_above(self, threshold: float) -> float:
        return float((self.khat > threshold).mean())

    def worst(self, num: int = 10) -> np.ndarray:
        """Indices of the ``num`` datapoints with the highest k̂, highest first."""
        return np.argsort(-self.khat, kind="stable")[:num]

    def summary(self, num_worst: int = 10) -> dict[str, Any]:
        worst = self.worst(num_worst)
        return {
            "num_points": int(self.khat.size),
            "num_samples": self.num_samples,
            "share_above_0.5": self.share_above(0.5),
            "share_above_0.7": self.share_above(0.7),
            "khat_median": float(np.median(self.khat)),
            "khat_max": float(self.khat.max()),
            "worst": [{"index": int(i), "khat": float(self.khat[i])} for i in worst],
        }


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
    """
    _check_count("num_samples", num_samples, PSIS_MIN_SAMPLES, "PSIS needs ≥ 5 tail draws")
    _check_count("max_elements", max_elements, 1, "expected a positive chunk size")
    _plate_nesting(model, guide, (x[:1],), {}, local=True)
    row = max(1, x[0].numel())
    batch = max(1, min(x.shape[0], max_elements // (num_samples * row)))
    chunk = max(1, min(num_samples, max_elements // (batch * row)))
    columns = []
    with eval_mode(model, guide):
        data = data_arguments(x)
        pair = prepare(model, guide, data, "k̂ per datapoint", probe_rows=batch)
        for start in range(0, x.shape[0], batch):
            xb = (x[start : start + batch],)
            columns.append(
                torch.cat(
                    [
                        pair.log_weights(xb, start, min(chunk, num_samples - s))
                        for s in range(0, num_samples, chunk)
                    ]
                )
            )
    return PointwiseKhat(pareto_khat(torch.cat(columns, 1).T.numpy()), num_samples)


def _save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_khat(khat: PointwiseKhat, path: str | os.PathLike, title: str = "") -> Path:
    """k̂ per datapoint (left) and its histogram (right), with Yao et al.'s 0.5 and 0.7."""
    k = khat.khat
    finite = k[np.isfinite(k)]
    floor = min(-0.5, float(finite.min())) if finite.size else -0.5
    shown = np.where(np.isfinite(k), k, floor)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    left.scatter(np.arange(k.size), shown, s=4, alpha=0.6, linewidths=0)
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
    if not np.isfinite(k).all():
        left.set_title(f"{int((~np.isfinite(k)).sum())} constant-ratio points drawn at {floor}")
    return _save_figure(fig, Path(path))


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
    summary.to_csv(out / "summary.csv")
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
    reconstructions E[x | z = E_q z]), diagnostics.nc (:func:`to_inference_data` of the
    first ``idata_points`` rows, ``idata_samples`` draws), summary.csv, posterior.png and
    ppc.png (:func:`write_summaries`). Returns :meth:`PointwiseKhat.summary` and the paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_count("idata_points", idata_points, 1, "expected a positive number of datapoints")
    khat = psis_khat_per_datapoint(model, guide, x, num_samples)
    with open(out / "khat.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "khat"])
        writer.writerows((i, f"{k:.6g}") for i, k in enumerate(khat.khat))
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
        k = khat.khat[worst]
        title = (
            f"the {len(worst)} inputs with the highest k̂ ({k.max():.2f} to {k.min():.2f}) "
            "and their reconstructions"
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
