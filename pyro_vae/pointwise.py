"""Per-datapoint log-densities of a trace, for estimators and evaluators that need them.

A trace of a model or guide run under K vectorized particles (an outer plate at dim
−rank) holds, for each sample site, a log-density whose batch dimensions are plates. This
module sums each site within datapoints of the ``"data"`` plate, giving ``[K, N]``.
"""

from __future__ import annotations

import torch
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.plates import DATA_PLATE


def data_plate_scale(trace: Trace) -> float:
    """N / |batch| of the trace's data plate (1.0 when it is not subsampled)."""
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.name == DATA_PLATE and frame.full_size:
                return float(frame.full_size) / float(frame.size)
    return 1.0


def per_datapoint_log_density(
    trace: Trace, num_particles: int, batch: int, rank: int, relative_scale: bool = False
) -> torch.Tensor:
    """Σ over sample sites of log-density, summed within each datapoint: ``[K, N]``.

    Masks apply. With ``relative_scale``, each site keeps its scale relative to the data
    plate's subsampling scale (so ``poutine.scale`` and KL warm-up still act while the
    subsampling factor is left for the caller to apply once, outside any log-sum-exp).
    """
    total = torch.zeros(num_particles, batch)
    plate_scale = data_plate_scale(trace) if relative_scale else 1.0
    for name, site in prune_subsample_sites(trace).nodes.items():
        if site["type"] != "sample":
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        if not frames:
            raise ValueError(
                f"site {name!r} is outside the {DATA_PLATE!r} plate, so it has no per-datapoint "
                "log-density; per-datapoint estimates need every sample site inside "
                "pyro_vae.plates.data_plate(x)"
            )
        log_p = site.get("unscaled_log_prob")
        if log_p is None:
            log_p = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            log_p = log_p * site["mask"]
        if relative_scale:
            log_p = log_p * (site["scale"] / plate_scale)
        log_p = log_p.reshape((1,) * (rank - log_p.dim()) + tuple(log_p.shape))
        keep = {0, rank + frames[0].dim}
        summed = [d for d in range(1, rank) if d not in keep]
        if summed:
            log_p = log_p.sum(summed, keepdim=True)
        total = total + log_p.reshape(log_p.shape[0], -1)
    return total


def particle_rank(max_plate_nesting: int, num_particles: int) -> int:
    """Batch rank of a vectorized ELBO's traces, counting the particle dim at ``-rank``.

    Pyro's ELBOs add the ``num_particles_vectorized`` plate (and count it in
    ``max_plate_nesting``) only when ``num_particles > 1``; with one particle the rank
    still gets a leading slot of size 1, so shapes are the same either way.
    """
    return max_plate_nesting if num_particles > 1 else max_plate_nesting + 1
