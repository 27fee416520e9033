"""PSIS-LOO of a model from draws of a variational q, not of its posterior.

``az.loo(idata)`` on draws z_s ~ q treats them as posterior draws: it estimates the
leave-one-out predictive of q, and its Pareto k̂ looks only at the ratios 1 / p(x_i | z_s),
so a q too narrow passes unflagged (tester BH: a Normal mean with q half the posterior's
sd, elpd 1.08 nats above the exact −37.40, every k̂ at most 0.07). Magnusson, Andersen,
Jonasson & Vehtari (2019, "Bayesian leave-one-out cross-validation for large data", ICML)
correct for q: the importance ratio of draw s for leaving out datapoint i is

    r_{s,i} ∝ p(x, z_s) / (q(z_s) p(x_i | z_s)),

smoothed per datapoint by PSIS (``az.psislw``), so that

    elpd_loo,i = log Σ_s w̃_{s,i} p(x_i | z_s),     w̃ the normalized smoothed weights,

with the k̂ of each datapoint's ratios saying whether it can be trusted (q's own misfit
included). The in-sample lpd_i = log Σ_s w̃_s p(x_i | z_s), with w̃_s the smoothed weights
of p(x, z_s) / q(z_s), gives p_loo = Σ_i (lpd_i − elpd_loo,i).

Why not a library's: ArviZ 0.23, which this package pins, has no approximate-posterior
LOO; arviz-stats' ``loo_approximate_posterior`` (the same method) belongs to the ArviZ 1.0
stack, whose ``ELPDData`` ``az.compare`` of 0.23 does not take. The smoothing is ArviZ's
``psislw``; the result is ArviZ 0.23's ``ELPDData``, which ``az.compare`` takes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from pyro_vae.diagnostics.arviz_compat import az
from pyro_vae.diagnostics.psis import sample_size_threshold

__all__ = ["loo_approximate_posterior"]


def loo_approximate_posterior(idata, var_name: str | None = None, pointwise: bool = False):
    """PSIS-LOO for draws from a variational q (Magnusson et al. 2019; module docstring).

    ``idata``: :func:`pyro_vae.diagnostics.to_inference_data`'s, whose ``sample_stats``
    hold ``lp`` = log p(x, z_s) and ``log_q`` = log q(z_s | x) beside the pointwise
    ``log_likelihood`` (every dim but ``chain`` and ``draw`` is a datapoint); lp − log_q is
    divided by ``sample_stats``' attribute ``common_scale`` (a scale c around model and
    guide alike weighs the objective, not the ratios; 1.0 where it is absent). ``var_name``:
    the observed site to score, needed where there are several. ``pointwise``: add
    ``loo_i`` and ``pareto_k`` (``az.compare`` needs them).

    Returns:
        ArviZ's ``ELPDData``, as ``az.loo`` returns it: ``elpd_loo`` and ``se`` (nats,
        total over datapoints), ``p_loo``, ``n_samples``, ``n_data_points``, ``warning``
        (some datapoint's k̂ above ``good_k`` = min(1 − 1/log₁₀ S, 0.7)), ``scale``
        ("log"), and with ``pointwise`` ``loo_i`` and ``pareto_k`` per datapoint.

    Raises:
        ValueError: ``idata`` without ``log_likelihood`` or without ``lp`` and ``log_q``
            in ``sample_stats``, or whose ``common_scale`` is NaN (a scale per
            datapoint); a ``var_name`` it does not hold, or none where it holds several;
            fewer than 2 draws.
    """
    log_lik = _log_likelihood(idata, var_name)  # [S, N]
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "lp" not in stats or "log_q" not in stats:
        raise ValueError(
            "idata: sample_stats needs lp = log p(x, z_s) and log_q = log q(z_s | x), as "
            "pyro_vae.to_inference_data writes them; got "
            f"{sorted(stats.data_vars) if stats is not None else 'no sample_stats group'}"
        )
    # a poutine.scale(c) around model and guide: lp − log_q is c log r (tester DX)
    shared = float(stats.attrs.get("common_scale", 1.0))
    if math.isnan(shared):
        raise ValueError(
            "idata: sample_stats' common_scale is NaN: model and guide carry a scale per "
            "datapoint (a poutine.scale of a tensor around both), so lp − log_q is no one "
            "multiple of log p(x, z_s) / q(z_s | x); run to_inference_data on the pair "
            "without the weights"
        )
    log_ratio = (stats["lp"].values - stats["log_q"].values).reshape(-1) / shared  # [S]
    samples, points = log_lik.shape
    if samples < 2:
        raise ValueError(f"idata: {samples} draw; expected at least 2 draws from q")
    loo_weights, pareto_k = az.psislw((log_ratio[:, None] - log_lik).T, reff=1.0)  # [N, S]
    loo_i = logsumexp(loo_weights + log_lik.T, axis=1)
    posterior_weights, _ = az.psislw(log_ratio, reff=1.0)  # [S], normalized
    lpd_i = logsumexp(posterior_weights[:, None] + log_lik, axis=0)
    good_k = sample_size_threshold(samples)
    pareto_k = np.asarray(pareto_k)
    values = {
        "elpd_loo": float(loo_i.sum()),
        "se": float(np.sqrt(points * np.var(loo_i))),
        "p_loo": float((lpd_i - loo_i).sum()),
        "n_samples": samples,
        "n_data_points": points,
        "warning": bool(np.any(pareto_k > good_k)),
    }
    if pointwise:
        values["loo_i"] = _named_array(loo_i, "loo_i")
        values["pareto_k"] = _named_array(pareto_k, "pareto_shape")
    values |= {"scale": "log", "good_k": good_k}
    return az.ELPDData(data=list(values.values()), index=list(values))


def _log_likelihood(idata, var_name: str | None) -> np.ndarray:
    """The pointwise log-likelihood of ``var_name`` as ``[S, N]`` (draws, datapoints)."""
    group = getattr(idata, "log_likelihood", None)
    if group is None:
        raise ValueError("idata: no log_likelihood group; make it with to_inference_data")
    names = list(group.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise ValueError(
                f"var_name: None, but log_likelihood holds {names}; expected one of them"
            )
        var_name = names[0]
    elif var_name not in names:
        raise ValueError(
            f"var_name: {var_name!r} is not in log_likelihood; expected one of {names}"
        )
    array = group[var_name].values  # [chain, draw, ...]
    return array.reshape(array.shape[0] * array.shape[1], -1)


def _named_array(values: np.ndarray, name: str):
    import xarray as xr

    return xr.DataArray(values, dims=["observation"], name=name)
