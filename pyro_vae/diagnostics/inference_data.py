"""ArviZ ``InferenceData`` of a variational fit, from any guide, and its netCDF file.

S draws z_s ~ q(z | x) from the guide, each replayed through the model
(:mod:`pyro_vae.diagnostics.draws`), give the ``posterior`` group (one chain, ``draw`` = s;
the draws are from q, not from the exact posterior), ``posterior_predictive``
x̃_s ~ p(x | z_s), the pointwise ``log_likelihood`` log p(x_n | z_s) that ``az.loo`` reads,
``observed_data``, and in ``sample_stats`` the log joint ``lp`` = log p(x, z_s) (ArviZ's
name) and ``log_q`` = log q(z_s | x). Dimensions are named after the model's plates
(``data`` for :func:`pyro_vae.plates.data_plate`) and ``{site}_dim_{i}`` for event
dimensions.

A site the model sums out by enumeration (a mixture's assignment under ``TraceEnum_ELBO``,
not drawn by the guide) is drawn from p(z_n | x_n, u_s) for each draw u_s of the guide, as
Pyro's ``infer_discrete`` draws it; ``log_likelihood`` then holds each observed site's
marginal log p(x_n | u_s) per datapoint, and ``lp`` the marginal log p(x, u_s)
(:mod:`pyro_vae.enumerated_sites`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae.annealing import unscaled
from pyro_vae.checkpoint import atomic_path
from pyro_vae.checks import check_count
from pyro_vae.diagnostics.arviz_compat import az
from pyro_vae.diagnostics.draws import draw, log_density_per_draw, to_given_device
from pyro_vae.enumerated_sites import (
    marginal_log_likelihoods,
    posterior_values,
    runs_per_value,
    summed_log_joint,
    summed_sites,
)
from pyro_vae.evaluate import bare_pair, check_finite, check_rows
from pyro_vae.guides.fixed import as_guide
from pyro_vae.plates import (
    DataPlateError,
    batch_rows,
    find_data_plate,
    refuse_self_subsampling,
)
from pyro_vae.pointwise import common_scale, masked_log_prob, outside_plate
from pyro_vae.site_masks import counted_elements, site_masks
from pyro_vae.traces import PARTICLES, full_rank, sample_sites, stack_values

FORMAT = "pyro_vae.diagnostics/1"
_DRAWS = PARTICLES  # a particle plate, so no rule mistakes it for the data's plate


def _predictive(site: dict, rank: int) -> torch.Tensor:
    """x̃_s ~ p(x | z_s) for each draw s of an observed site (each draw's own likelihood
    when the draws were taken in a loop)."""
    fns = site.get("fns")
    if fns is None:
        return site["fn"].sample()
    return stack_values([fn.sample() for fn in fns], rank - 1, site["fn"].event_dim)


def _named(
    name: str, site: dict, value: torch.Tensor, event_dim: int, rank: int, draws: int | None
) -> tuple[np.ndarray, list[str]]:
    """``value`` as a numpy array with plate-named dims; ``[chain=1, draw, ...]`` for draws."""
    batch_rank = rank if draws else rank - 1
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != _DRAWS}
    v = full_rank(value.detach(), batch_rank + event_dim)
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


def _dataset(
    variables: dict[str, tuple[np.ndarray, list[str]]], attrs: dict, draws: bool, coords=None
):
    return az.dict_to_dataset(
        {k: a for k, (a, _) in variables.items()},
        dims={k: d for k, (_, d) in variables.items()},
        coords=coords,
        default_dims=None if draws else [],
        attrs=attrs,
        library=pyro,
    )


def _groups(model_tr, rank: int, num_samples: int, summed: dict | None = None):
    """The posterior, posterior_predictive, log_likelihood and observed_data variables;
    ``summed`` (:func:`_summed_out`): the values, predictive draws and per-datapoint
    log-likelihoods that replace the model trace's for a pair with sites summed out."""
    kinds = ("posterior", "predictive", "loglik", "observed", "coords")
    groups: dict[str, dict] = {k: {} for k in kinds}
    summed = summed or {"values": {}, "predictive": {}, "loglik": {}}
    for name, site in sample_sites(model_tr).items():
        fn = site["fn"]
        # a pyro.deterministic site is a function of the latents: posterior, as ArviZ's
        # from_pyro has it (taken as observed, it was data with a log-likelihood of 0)
        deterministic = site["infer"].get("_deterministic", False)
        if site["is_observed"] and site["infer"].get("is_auxiliary"):
            continue  # a pyro.factor: in lp, but no data and no likelihood (tester BH)
        if not site["is_observed"] or deterministic:
            # a deterministic site's Delta takes every dim as an event dim, the draws' too
            event_dim = max(site["value"].dim() - rank, 0) if deterministic else fn.event_dim
            value = summed["values"].get(name, site["value"])
            groups["posterior"][name] = _named(name, site, value, event_dim, rank, num_samples)
            continue
        groups["observed"][name] = _named(name, site, site["value"], fn.event_dim, rank, None)
        predictive = summed["predictive"].get(name)
        predictive = _predictive(site, rank) if predictive is None else predictive
        groups["predictive"][name] = _named(name, site, predictive, fn.event_dim, rank, num_samples)
        if name in summed["loglik"]:  # per datapoint: [chain, draw, data]
            log_p, plate = summed["loglik"][name]
            groups["loglik"][name] = (log_p.cpu().numpy()[None], [plate])
        else:
            loglik = _named(name, site, masked_log_prob(site), 0, rank, num_samples)
            observed = _observed_entries(name, site, rank, num_samples)
            if observed is None:
                groups["loglik"][name] = loglik
            elif observed.size:  # masked out entries are no datapoints of az.loo's
                array = loglik[0].reshape(1, num_samples, -1)[..., observed]
                groups["loglik"][name] = (array, [f"{name}_observed"])
                groups["coords"][f"{name}_observed"] = observed
    return groups


def _observed_entries(name: str, site: dict, rank: int, num_samples: int) -> np.ndarray | None:
    """For an observed site with a mask that leaves some entries out, the flat indices
    (into its pointwise log-likelihood's dims, C order) of those it observes; None where
    it observes every entry, or where its mask differs between draws (a mask computed from
    a latent: then its zeros stay, warned of, as no one set of datapoints is left)."""
    if not site_masks(site)[0]:  # no mask: nothing to read (no tensor made, on any device)
        return None
    on, event = counted_elements(site)  # every mask of the site, .mask(m) and poutine's
    if on.all():
        return None
    if not on.any():
        return np.zeros(0, dtype=np.int64)
    log_p = full_rank(masked_log_prob(site), rank)
    value = site["value"] if torch.is_tensor(site["value"]) else log_p.new_tensor(site["value"])
    inside = site["fn"].event_dim - event  # masked within the site's events: any counts
    within = value.shape[value.dim() - site["fn"].event_dim : value.dim() - event]
    mask = torch.broadcast_to(on, (*log_p.shape, *within))
    if inside > 0:
        mask = mask.flatten(-inside).any(-1)
    if not (mask == mask[:1]).all():
        warnings.warn(
            f"to_inference_data: the mask of observed site {name!r} differs between draws, "
            "so log_likelihood holds 0 at its masked out entries, which az.loo counts as "
            "datapoints",
            stacklevel=4,
        )
        return None
    observed = _named(name, site, mask[:1], 0, rank, num_samples)[0]
    return np.flatnonzero(observed[0, 0].ravel())


def _summed_out(model, traces, arguments, sites, rank: int, num_samples: int):
    """For a model that sums ``sites`` out by enumeration, one run per value with the
    guide's draws replayed (:mod:`pyro_vae.enumerated_sites`): (lp = log p(x, u_s) with
    them summed out ``[S]``, and for :func:`_groups` their draws from p(z | x, u_s), each
    observed site's draws x̃ ~ p(x | z, u_s) at those z, and its marginal pointwise
    log-likelihood log p(x_n | u_s), whose plate names the dim)."""
    what = "to_inference_data with sites summed out by enumeration"
    runs, plate = runs_per_value(model, traces, arguments, sites, num_samples, rank, what)
    lp = summed_log_joint(runs, sites, num_samples, rank, plate)
    index, values = posterior_values(runs, sites, num_samples, rank, plate)
    loglik = marginal_log_likelihoods(runs, sites, num_samples, rank, plate)
    predictive = {name: _chosen_draws(runs, name, index, rank, plate) for name in loglik}
    loglik = {name: (log_p, plate) for name, log_p in loglik.items()}
    return lp, {"values": values, "predictive": predictive, "loglik": loglik}


def _chosen_draws(runs, name: str, index: torch.Tensor, rank: int, plate: str):
    """x̃ ~ p(x | z = c, u_s) of observed site ``name``, each datapoint and draw from the
    run of the combination c drawn for it (``index`` ``[S, B]``)."""
    fn = runs[0].nodes[name]["fn"]
    draws = torch.stack([full_rank(run.nodes[name]["fn"].sample(), rank + fn.event_dim)
                         for run in runs])  # fmt: skip
    dim = next(f.dim for f in runs[0].nodes[name]["cond_indep_stack"] if f.name == plate)
    shape = [index.shape[0]] + [1] * (rank - 1 + fn.event_dim)
    shape[rank + dim] = index.shape[1]
    chosen = index.reshape(shape).expand(draws.shape[1:])
    return torch.gather(draws, 0, chosen[None]).squeeze(0)


@torch.no_grad()
@unscaled()  # the model's densities, not a β-objective (tester AH)
def to_inference_data(
    model, guide, *args: Any, num_samples: int = 1000, device: Any = None, **kwargs: Any
):
    """ArviZ ``InferenceData`` of ``num_samples`` draws z_s ~ q(z | x) replayed in the model.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` are a Pyro pair (any
    autoguide, an amortized guide, or a fitted :mod:`pyro_vae.cavi` estimator, whose
    ``variational_distributions()`` become the guide). The model must broadcast under an
    outer plate, as ``pyro.infer.Predictive(parallel=True)`` requires. Groups:
    ``posterior`` (latent sites and ``pyro.deterministic`` ones), ``posterior_predictive``
    and ``log_likelihood`` (pointwise log p(x | z_s), unscaled: a ``poutine.scale`` on an
    observed site is left out of what ``az.loo`` reads) of each observed site,
    ``observed_data``, and ``sample_stats`` with ``lp`` = log p(x, z_s) (every site at its
    scale, as Pyro's ELBOs count it) and ``log_q`` = log q(z_s | x), and as their attribute
    ``common_scale`` the scale c every site of model and guide shares (1.0 where none; a
    ``poutine.scale(c)`` around both), by which lp − log_q is c times the log-ratio
    log p(x, z_s) / q(z_s | x) that :func:`~pyro_vae.diagnostics.loo.loo_approximate_posterior`
    divides it back to. A site masked in part
    (``.mask(m)``, ``poutine.mask``) has in ``log_likelihood`` its observed entries only, along
    one dim ``{site}_observed`` whose coordinate is each entry's flat index into the site's
    batch shape (masked out entries are no datapoints: az.loo counted them, tester BH); a
    ``pyro.factor`` is in ``lp`` only. The attribute
    ``data_plate`` names the plate over the data's rows, or is empty where no plate or
    several (two plates of one size) match them.
    ``device`` (``None``: where the tensors in ``args`` are): the tensors in ``args`` and
    ``kwargs`` are put there, where the pair's modules must be; the arrays are copied to
    the CPU (NumPy) at the end. A model keyword argument named ``device`` is therefore
    taken by this function, not passed on.

    Raises:
        ValueError: ``num_samples`` < 2; non-finite data; a ``device`` this machine does
            not have; a guide that does not cover the
            model's latent sites (:func:`pyro_vae.diagnostics.draws.probe`).
        pyro_vae.plates.DataPlateError: a model that draws its own subsample of the rows
            (:func:`pyro_vae.plates.refuse_self_subsampling`).
    """
    check_count("num_samples", num_samples, 2, "; expected at least 2 draws from the guide")
    # x, the first argument, against the model's x_dim where it declares one (tester FC)
    check_rows(args[0] if args else None, bare_pair(model, guide)[0])
    check_finite((*args, *kwargs.values()), "args")
    args, kwargs = to_given_device(args, kwargs, device)
    guide = as_guide(guide, model, args, kwargs)
    guide_tr, model_tr, rank, _ = draw(model, guide, args, kwargs, num_samples)
    refuse_self_subsampling(model_tr, batch_rows(args, kwargs), "to_inference_data")
    try:
        plate = find_data_plate(model_tr, batch_rows(args, kwargs)) or ""
    except DataPlateError:  # several plates run over the data's rows (N = G): unnamed
        plate = ""
    attrs = {"pyro_vae_format": FORMAT, "num_samples": num_samples, "data_plate": plate}
    sites, summed = summed_sites(model_tr, guide_tr), None
    if sites:
        lp, summed = _summed_out(
            model, (model_tr, guide_tr), (args, kwargs), sites, rank, num_samples
        )
    else:
        lp = log_density_per_draw(model_tr, rank, num_samples)
    groups = _groups(model_tr, rank, num_samples, summed)
    stats = {
        "lp": lp.cpu().numpy()[None],
        "log_q": log_density_per_draw(guide_tr, rank, num_samples).cpu().numpy()[None],
    }
    shared = _shared_scale((model_tr, guide_tr), rank, plate)
    return az.InferenceData(
        attrs=attrs,
        posterior=_dataset(groups["posterior"], attrs, True),
        posterior_predictive=_dataset(groups["predictive"], attrs, True),
        log_likelihood=_dataset(groups["loglik"], attrs, True, groups["coords"]),
        observed_data=_dataset(groups["observed"], attrs, False),
        sample_stats=az.dict_to_dataset(
            stats, attrs={**attrs, "common_scale": shared}, library=pyro
        ),
    )


def _shared_scale(traces, rank: int, plate: str) -> float:
    """The scale c every site of model and guide carries (1.0 where they carry none, or
    differ between sites: a tempered likelihood stays in the ratios), by which lp − log_q
    is c times the log-ratio PSIS-LOO's weights take (tester DX: elpd 3.1 nats off at
    c = 1/N); NaN where each datapoint's sites share a scale of their own, not the same
    for all (a weight per datapoint around model and guide: tester DY), which no one
    number divides out of the joint lp − log_q."""
    shared = float(common_scale(traces, rank, None, 1.0))
    model_tr, guide_tr = traces
    globals_ = outside_plate(model_tr, plate) + outside_plate(guide_tr, plate) if plate else []
    if shared != 1.0 or not plate or globals_:
        return shared
    per_datapoint = common_scale(traces, rank, plate, 1.0)
    if torch.is_tensor(per_datapoint) and per_datapoint.amin() != per_datapoint.amax():
        return math.nan
    return shared


def save_inference_data(idata, path: str | os.PathLike) -> Path:
    """Write ``idata`` as ArviZ netCDF (h5netcdf), atomically: a temporary file, renamed."""
    path = Path(path)
    with atomic_path(path, lock=False) as tmp:  # HDF5 locks the file itself
        idata.to_netcdf(tmp)
    return path


def load_inference_data(path: str | os.PathLike):
    """Read a file written by :func:`save_inference_data`, refusing other versions' files.

    Raises:
        ValueError: ``path`` is not a file, not ArviZ netCDF, or of another format version.
    """
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
