"""Per-datapoint and per-draw log-densities of particle traces.

A trace of a model or guide run under K particles (the dim −R of
:mod:`pyro_vae.traces`) holds, for each sample site, a log-density whose batch dims are
plates. Estimators and evaluators need it summed in two ways:

- within each datapoint of the per-datapoint plate (:func:`per_datapoint_log_density`,
  ``[K, B]``): the importance weights of an amortized or local guide factor over datapoints,
  log w_k(x_n) = log p(x_n, z_{n,k}) − log q(z_{n,k} | x_n);
- over everything (:func:`per_draw_log_density`, ``[K, 1]``): the joint weight of a model
  with global latents.

:func:`importance_log_densities` picks between the two by what the model is, not by a
name: the weights factor over the plate only when every sample site lies inside it.
"""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from pyro_vae.plates import DataPlateError, frames_in
from pyro_vae.traces import full_rank, sample_sites


def data_plate_scale(trace: Trace, plate: str | None) -> float:
    """N / |batch| of ``plate`` in the trace (1.0 when it is not subsampled or absent)."""
    if plate is None:
        return 1.0
    for site in sample_sites(trace).values():
        for frame in frames_in(site, plate):
            if frame.full_size:
                return float(frame.full_size) / float(frame.size)
    return 1.0


def outside_plate(trace: Trace, plate: str) -> list[str]:
    """The sample sites of ``trace`` that lie outside ``plate`` (global ones)."""
    return [n for n, s in sample_sites(trace).items() if not frames_in(s, plate)]


def per_datapoint_log_density(
    trace: Trace,
    num_particles: int,
    batch: int,
    rank: int,
    plate: str,
    relative_scale: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Σ over sample sites of log-density, summed within each datapoint of ``plate``: ``[K, B]``.

    Masks apply. With ``relative_scale``, each site keeps its scale relative to the plate's
    subsampling scale (so ``poutine.scale`` and KL warm-up still act while the subsampling
    factor is left for the caller to apply once, outside any log-sum-exp).

    Raises:
        DataPlateError: a sample site lies outside ``plate``.
    """
    outside = outside_plate(trace, plate)
    if outside:
        raise DataPlateError(
            f"site {outside[0]!r} is outside the per-datapoint plate {plate!r}, so it has no "
            "per-datapoint log-density; per-datapoint estimates need every sample site "
            f"inside {plate!r} (a model with global latents has only a joint bound)"
        )
    total = None
    plate_scale = data_plate_scale(trace, plate) if relative_scale else 1.0
    for site in sample_sites(trace).values():
        log_p = _unscaled(site)
        if relative_scale:
            log_p = log_p * (site["scale"] / plate_scale)
        log_p = full_rank(log_p, rank)
        keep = {0, rank + frames_in(site, plate)[0].dim}
        summed = [d for d in range(1, rank) if d not in keep]
        if summed:
            log_p = log_p.sum(summed, keepdim=True)
        log_p = log_p.reshape(log_p.shape[0], -1).expand(num_particles, batch)
        total = log_p if total is None else total + log_p
    if total is None:
        return torch.zeros(num_particles, batch, device=device)
    return total


def per_draw_log_density(
    trace: Trace, num_particles: int, rank: int, device: torch.device | None = None
) -> torch.Tensor:
    """Σ of every sample site's (scaled, masked) log-density for each particle: ``[K, 1]``;
    zeros on ``device`` for a trace without sample sites."""
    total = None
    for site in sample_sites(trace).values():
        log_p = full_rank(site["log_prob"], rank)
        log_p = log_p.reshape(log_p.shape[0], -1).sum(-1, keepdim=True)
        log_p = log_p.expand(num_particles, 1)
        total = log_p if total is None else total + log_p
    if total is None:
        return torch.zeros(num_particles, 1, device=device)
    return total


def importance_log_densities(
    model_trace: Trace,
    guide_trace: Trace,
    num_particles: int,
    rank: int,
    plate: str | None,
    batch: int | None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """log p and log q of each particle, per datapoint when the weights factor, else jointly.

    With a per-datapoint ``plate`` that encloses every sample site of both traces, the
    importance weights factor over it: ``[K, B]`` each, scaled relative to the plate's
    subsampling, with the subsampling factor N/B returned for the caller to apply outside
    its log-sum-exp. Otherwise (no plate, or global latents) the joint densities ``[K, 1]``
    and factor 1. log w = log p − log q.

    Raises:
        DataPlateError: global latents in a subsampled model: the joint bound of a
            minibatch, scaled up, bounds nothing, so there is no unbiased estimate.
    """
    scale = data_plate_scale(model_trace, plate)
    outside = (
        []
        if plate is None
        else outside_plate(model_trace, plate) + outside_plate(guide_trace, plate)
    )
    if plate is not None and not outside:
        log_p = per_datapoint_log_density(
            model_trace, num_particles, batch, rank, plate, relative_scale=True
        )
        log_q = per_datapoint_log_density(
            guide_trace, num_particles, batch, rank, plate, True, log_p.device
        )
        return log_p, log_q, scale
    if scale != 1.0:
        raise DataPlateError(
            f"sites {sorted(set(outside))} lie outside the subsampled per-datapoint plate "
            f"{plate!r} (scale {scale:g}); a multi-sample bound with sites outside it "
            "(global latents, or factors such as pyro.factor terms over the whole batch) does "
            "not factor over datapoints, so a minibatch cannot estimate it. Use the whole data "
            "in each step, or a single-sample ELBO (trace, score, or enum for a discrete site)"
        )
    log_p = per_draw_log_density(model_trace, num_particles, rank)
    return log_p, per_draw_log_density(guide_trace, num_particles, rank, log_p.device), 1.0


def _unscaled(site: dict) -> torch.Tensor:
    log_p = site.get("unscaled_log_prob")
    if log_p is None:
        log_p = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_p = log_p * site["mask"]
    return log_p


def particle_rank(max_plate_nesting: int, num_particles: int) -> int:
    """Batch rank of a vectorized ELBO's traces, counting the particle dim at ``-rank``.

    Pyro's ELBOs add the ``num_particles_vectorized`` plate (and count it in
    ``max_plate_nesting``) only when ``num_particles > 1``; with one particle the rank
    still gets a leading slot of size 1, so shapes are the same either way.
    """
    return max_plate_nesting if num_particles > 1 else max_plate_nesting + 1
