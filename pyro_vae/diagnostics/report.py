"""The diagnostics report of a fit: k̂ per datapoint, ArviZ summaries and their figures.

:func:`write_report` writes the files that ``pyro-vae diagnose RUN`` leaves in a run
folder; :func:`plot_khat` and :func:`write_summaries` are its parts. Every figure is a
``matplotlib.figure.Figure`` of its own, ArviZ's included (it draws on axes given to it),
never pyplot's global state, so writing a report changes no backend and leaves no figure
open in a notebook.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from pyro_vae.checkpoint import atomic_path, remove_stale_staging_folders, staging_folder
from pyro_vae.checks import check_count, check_memory
from pyro_vae.diagnostics.arviz_compat import az, default_grid
from pyro_vae.diagnostics.inference_data import save_inference_data, to_inference_data
from pyro_vae.diagnostics.psis import (
    PointwiseKhat,
    check_ratio_memory,
    psis_khat_per_datapoint,
    sample_size_threshold,
)
from pyro_vae.plots import plot_reconstructions, save_png
from pyro_vae.predictive import reconstruct


def plot_khat(khat: PointwiseKhat, path: str | os.PathLike, title: str = "") -> Path:
    """k̂ per datapoint (left) and its histogram (right), with Yao et al.'s 0.5 and 0.7.

    Datapoints whose k̂ does not apply (NaN) are left out and counted in the title; for
    enumerated states (``khat.num_states``) the exact 1 + χ²(p ‖ q) is drawn instead.
    Returns ``path``, a PNG."""
    if khat.num_states:
        return _plot_chi2(khat, Path(path), title)
    return save_png(khat_figure(khat, title), Path(path))


def khat_figure(khat: PointwiseKhat, title: str = "") -> Figure:
    """:func:`plot_khat`'s figure of drawn ratios' k̂ (not of enumerated states)."""
    applicable = ~np.isnan(khat.khat)
    k = khat.khat[applicable]
    finite = k[np.isfinite(k)]
    floor = min(-0.5, float(finite.min())) if finite.size else -0.5
    shown = np.where(np.isfinite(k), k, floor)
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    size = 4 if k.size > 500 else 14 if k.size > 50 else 30  # (tester FC: s=4 for 1 point)
    left.scatter(np.flatnonzero(applicable), shown, s=size, alpha=0.6, linewidths=0)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))  # datapoints, not 2.5
    left.set_xlabel("datapoint")
    left.set_ylabel("k̂")
    right.hist(shown, bins=50, color="C0", alpha=0.8)
    right.set_xlabel("k̂")
    right.set_ylabel("datapoints")
    # the fixed 0.5 and 0.7, and below 0.7 the threshold of these S draws, which the
    # command prints (tester FC: the figure drew only 0.5 and 0.7 for S = 21, whose is 0.24)
    threshold = sample_size_threshold(khat.num_samples)
    cuts = [(0.5, "0.5", "--", ""), (0.7, "0.7", "-", "")]
    if threshold < 0.7:
        cuts.insert(0, (threshold, f"{threshold:.2f}", ":", ", the threshold for these S"))
    for value, text, style, why in cuts:
        left.axhline(value, color="C3", linestyle=style, linewidth=1)
        right.axvline(value, color="C3", linestyle=style, linewidth=1, label=f"k̂ = {text}{why}")
    right.legend(fontsize=8)
    above = [f"{100 * khat.share_above(t):.1f}% above {text}" for t, text, _, _ in cuts]
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
    return fig


def _plot_chi2(khat: PointwiseKhat, path: Path, title: str) -> Path:
    """The exact 1 + χ²(p(z | x_n) ‖ q(z | x_n)) = S / ESS of enumerated states."""
    ratio = 1.0 + khat.chi2
    finite = np.isfinite(ratio)
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
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
    return save_png(fig, path)


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


def _has_single_valued_draw(statistic) -> bool:
    """Whether a draw of the posterior predictive statistic, or the observed one, takes one
    value (or none finite) at every datapoint: ArviZ's KDE of it is of another length than
    the other draws', and ``plot_ppc`` failed ("inhomogeneous shape", tester CF: a VAE with
    no active units, its Bernoulli means over 5 test images alike in a draw), so ppc.png
    draws ECDFs then (``kind="cumulative"``), which take ties."""
    for group, lead in (("posterior_predictive", 2), ("observed_data", 0)):
        for var in statistic[group].data_vars.values():
            values = np.asarray(var.values, dtype=float)
            rows = values.reshape(int(np.prod(values.shape[:lead], dtype=int)), -1)
            for row in rows:
                finite = row[np.isfinite(row)]
                if finite.size == 0 or finite.min() == finite.max():
                    return True
    return False


def _panels(data) -> int:
    """How many panels ArviZ draws for ``data``: one per element of each variable outside
    ``chain`` and ``draw``, at most ArviZ's ``plot.max_subplots``."""
    count = sum(
        int(np.prod([var.sizes[d] for d in var.dims if d not in ("chain", "draw")]))
        for var in data.data_vars.values()
    )
    return min(count, az.rcParams["plot.max_subplots"])


def _axes_grid(count: int) -> tuple[Figure, np.ndarray]:
    """A figure laid out as ArviZ lays out ``count`` panels (its ``default_grid``, its
    default size), the cells past ``count`` switched off; the figure and the first
    ``count`` axes."""
    rows, cols = default_grid(count)
    width, height = matplotlib.rcParams["figure.figsize"]
    grow = 1.0 if rows == cols == 1 else 1.15
    fig = Figure(figsize=(width * cols * grow, height * rows * grow))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def write_summaries(idata, out_dir: str | os.PathLike, max_panels: int = 4) -> list[Path]:
    """summary.csv (``az.summary`` of the global latents, or of the local ones for the
    first datapoint when there are none), posterior.png and ppc.png; returns their paths."""
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
    shown = _first_elements(post[names], max_panels, plate)
    fig, axes = _axes_grid(_panels(shown))
    az.plot_posterior(shown, textsize=9, ax=axes)
    if not global_vars:
        fig.suptitle("q(z | x) of the first datapoint", fontsize=10)
    posterior_png = save_png(fig, out / "posterior.png")
    ppc_png = save_png(ppc_figure(_ppc_statistic(idata, plate)), out / "ppc.png")
    return [out / "summary.csv", posterior_png, ppc_png]


def ppc_figure(statistic) -> Figure:
    """ppc.png's figure of ``statistic`` (:func:`_ppc_statistic`: each observed variable's
    per-datapoint mean, in ``posterior_predictive`` [chain, draw, datapoint] and
    ``observed_data`` [datapoint]), one panel per variable: ``az.plot_ppc``'s KDEs of each
    draw over the datapoints beside the observed one; its ECDFs where a draw takes one
    value at every datapoint (:func:`_has_single_valued_draw`); and, for one datapoint
    (``diagnose --points 1``), where each draw is a single number, a histogram of the
    draws (``az.plot_dist``) with the observed value as a vertical line (ECDFs of single
    numbers drew only the mean's curve, the observed value nowhere)."""
    names = list(statistic.observed_data.data_vars)
    draws = statistic.posterior_predictive.sizes["draw"]
    fig, axes = _axes_grid(len(names))
    if all(statistic.observed_data[name].size == 1 for name in names):
        for ax, name in zip(axes, names, strict=True):
            drawn = np.asarray(statistic.posterior_predictive[name].values, dtype=float)
            observed = float(np.asarray(statistic.observed_data[name].values).reshape(-1)[0])
            az.plot_dist(drawn.reshape(-1), kind="hist", label="posterior predictive", ax=ax)
            ax.axvline(observed, color="black", label="observed")
            ax.xaxis.set_major_locator(MaxNLocator(6))  # ArviZ labels every bin's centre
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel(f"mean of {name}")
            ax.set_ylabel("density")
            ax.legend(fontsize=8)
        fig.suptitle(f"one datapoint: {draws} posterior predictive draws", fontsize=10)
        return fig
    kind = "cumulative" if _has_single_valued_draw(statistic) else "kde"
    with warnings.catch_warnings():  # ArviZ's note on the single-valued draw, drawn as ECDFs
        warnings.filterwarnings("ignore", message="Your data appears to have a single value")
        az.plot_ppc(statistic, num_pp_samples=min(100, draws), ax=axes, kind=kind)
    for ax in axes:
        ax.set_xlabel(f"per-datapoint mean of {ax.get_xlabel()}")
    if kind == "cumulative":
        fig.suptitle(
            "ECDFs: a draw with one value at every datapoint has no density to draw",
            fontsize=10,
        )
    return fig


def _write_khat_csv(khat: PointwiseKhat, path: Path) -> Path:
    """index, khat (and, for enumerated states, log_evidence, kl, chi2) per datapoint."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        exact = [] if not khat.num_states else [khat.log_evidence, khat.kl, khat.chi2]
        writer.writerow(["index", "khat"] + (["log_evidence", "kl", "chi2"] if exact else []))
        writer.writerows(
            (i, *(f"{v[i]:.6g}" for v in (khat.khat, *exact))) for i in range(khat.khat.size)
        )
    return path


def _plot_worst(
    model,
    guide,
    x: torch.Tensor,
    khat: PointwiseKhat,
    worst: np.ndarray,
    image_shape: tuple[int, ...],
    pixel_max: float,
    path: Path,
) -> tuple[Path | None, str]:
    """khat_worst.png: the inputs ``worst`` (the highest k̂, or χ² for enumerated states)
    above their reconstructions. ``(None, why)`` when the model has no mean image."""
    x_worst = x[torch.as_tensor(worst)]
    try:
        x_hat = reconstruct(model, guide, x_worst)
    except ValueError as err:
        return None, str(err)
    if khat.num_states:
        name, k, form = "χ²(p ‖ q)", khat.chi2[worst], ".3g"
    else:
        name, k, form = "k̂", khat.khat[worst], ".2f"
    shown = k[~np.isnan(k)]
    span = f"{shown.max():{form}} to {shown.min():{form}}" if shown.size else "not applicable"
    title = f"the {len(worst)} inputs with the highest {name} ({span}) and their reconstructions"
    return plot_reconstructions(x_worst, x_hat, image_shape, pixel_max, path, title), ""


#: Bytes diagnostics.nc's draws take per value of a row, counted generously: the model's
#: trace (distribution parameters and draws), the arrays ArviZ holds and their float64 copies.
_BYTES_PER_DRAWN_VALUE = 32


def check_idata_memory(draws: int, points: int, values: int, arg: str = "idata_samples") -> None:
    """Refuse diagnostics.nc's ``draws`` of ``points`` rows of ``values`` each where they
    would take more than half this machine's memory (tester CO: ``--idata-samples
    100000000`` grew to 20 GB of 23 and was killed, with nothing said).

    Raises:
        ValueError: naming the draws, the memory they need and the most that fit."""
    check_memory(arg, draws, points * values * _BYTES_PER_DRAWN_VALUE,
                 f"draws of {points} rows of {values} values")  # fmt: skip


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
    khat_points: int | None = None,
    standardization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Diagnose an amortized fit on inputs ``x``; write the files into ``out_dir``.

    khat.csv and khat.png (k̂ of every row of ``x``, or of its first ``khat_points``
    rows where given, from ``num_samples`` draws),
    khat_worst.png (for images: the ``num_worst`` highest-k̂ inputs above their
    reconstructions E[x | z = E_q z]; for a discrete q whose states were enumerated,
    :func:`pyro_vae.diagnostics.psis.psis_khat_per_datapoint`, khat.csv adds the exact
    log_evidence, kl and chi2 columns, khat.png draws 1 + χ², and khat_worst.png ranks by
    χ²), diagnostics.nc (:func:`pyro_vae.diagnostics.inference_data.to_inference_data` of
    the first ``idata_points`` rows, ``idata_samples`` draws), summary.csv, posterior.png
    and ppc.png (:func:`write_summaries`). ``image_shape`` (H, W) and ``pixel_max`` (the
    value drawn as white) say how to draw a row of ``x`` as an image. ``standardization``
    (a table's, ``{"columns", "mean", "std", "from"}``: ``x`` holds ``(value - mean) /
    std``) is written into diagnostics.nc's ``observed_data`` and ``posterior_predictive``
    attributes (:func:`standardized_attrs`), so the file says its ``x`` is not in the
    table's units and how to get them back.

    The files are written into a staging folder ``out_dir/.diagnose-*.tmp`` and moved into
    ``out_dir`` only once all of them are made, so a report that fails part way (an
    interrupt, a model that cannot draw its reconstructions) leaves the last report's files
    as they were, not a mix of two reports (tester BH); a file this report does not make
    (khat_worst.png with ``num_worst`` = 0) is removed with the last report's others.

    Returns:
        :meth:`PointwiseKhat.summary`, with ``files`` (the paths written) and, when
        khat_worst.png was not drawn, ``skipped`` {file name: why}.

    Raises:
        ValueError: ``idata_points`` < 1, ``khat_points`` < 1, ``num_worst`` < 0, and the
            errors of
            :func:`pyro_vae.diagnostics.psis.psis_khat_per_datapoint`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_count("idata_points", idata_points, 1, "; expected a positive number of datapoints")
    if khat_points is not None:
        check_count("khat_points", khat_points, 1, "; expected a positive number of rows")
    check_count("num_worst", num_worst, 0, "; expected a number of inputs to draw")
    check_count("idata_samples", idata_samples, 2, "; expected 2 or more draws")
    check_idata_memory(idata_samples, min(idata_points, int(x.shape[0])), math.prod(x.shape[1:]))
    scored = x if khat_points is None else x[:khat_points]  # k̂'s rows
    check_ratio_memory(num_samples, int(scored.shape[0]))  # before the staging folder is made
    # its own staging folder: a second report running at once must not remove or fill it
    # (tester BI); those of reports killed part way (SIGKILL) are removed here
    remove_stale_staging_folders(out, _STAGING)
    with staging_folder(out, _STAGING) as staging:
        result = _write_into(
            staging, model, guide, (scored, x[:idata_points]), num_samples, idata_samples,
            num_worst, image_shape, pixel_max, standardization,
        )  # fmt: skip
        for name in _REPORT_FILES:
            made = staging / name
            if made.exists():
                os.replace(made, out / name)
            else:
                (out / name).unlink(missing_ok=True)  # the last report's: not of this one
    result["files"] = [str(out / Path(f).name) for f in result["files"]]
    return result


def standardized_attrs(standardization: dict[str, Any]) -> dict[str, Any]:
    """netCDF attributes saying a table's ``x`` is standardized, and by what: ``x_units``
    (a sentence), ``x_columns`` (the column names, comma-separated), ``x_mean`` and
    ``x_std`` (float64 arrays, one value a column, of the split named in ``x_units``), so
    that ``x * x_std + x_mean`` is in the file's units."""
    return {
        "x_units": (
            "standardized: (value - x_mean) / x_std per column, x_mean and x_std of the "
            f"{standardization.get('from', 'train split')}"
        ),
        "x_columns": ", ".join(str(c) for c in standardization["columns"]),
        "x_mean": np.asarray(standardization["mean"], dtype=np.float64),
        "x_std": np.asarray(standardization["std"], dtype=np.float64),
    }


_STAGING = "diagnose"  # the staging folders' prefix: RUN/.diagnose-*.tmp

# every file a report may write: those this one does not make are the last one's
_REPORT_FILES = ("khat.csv", "khat.png", "khat_worst.png", "diagnostics.nc", "summary.csv",
                 "posterior.png", "ppc.png")  # fmt: skip


def _write_into(
    out: Path, model, guide, rows, num_samples, idata_samples, num_worst, image_shape,
    pixel_max, standardization=None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`write_report`'s files, written into ``out`` (its staging folder); ``rows``:
    the rows scored by k̂ and those in diagnostics.nc."""
    x, idata_x = rows
    khat = psis_khat_per_datapoint(model, guide, x, num_samples)
    files = [_write_khat_csv(khat, out / "khat.csv"), plot_khat(khat, out / "khat.png")]
    skipped: dict[str, str] = {}
    if image_shape is not None and num_worst == 0:
        skipped["khat_worst.png"] = "no inputs asked for (num_worst = 0)"
    elif image_shape is not None:
        worst = khat.worst(num_worst)
        png, why = _plot_worst(
            model, guide, x, khat, worst, image_shape, pixel_max, out / "khat_worst.png"
        )
        if png is None:
            skipped["khat_worst.png"] = why
        else:
            files.append(png)
    idata = to_inference_data(model, guide, idata_x, num_samples=idata_samples)
    if standardization is not None:  # (tester FC: standardized values, nothing said)
        for group in (idata.observed_data, idata.posterior_predictive):
            group.attrs.update(standardized_attrs(standardization))
    files.append(save_inference_data(idata, out / "diagnostics.nc"))
    files += write_summaries(idata, out)
    result = {**khat.summary(num_worst), "files": [str(f) for f in files]}
    if skipped:
        result["skipped"] = skipped
    return result
