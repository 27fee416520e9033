"""S draws z_s ~ q(z | x) from a guide, each replayed through the model.

The diagnostics of :mod:`pyro_vae.diagnostics` all start here: the guide is run once to
check it against the model (:func:`probe`), then S times, vectorized under a particle
plate at dim −R or in a loop when the model cannot broadcast (:func:`draw`, by
:func:`pyro_vae.traces.particle_traces`). A fitted :mod:`pyro_vae.cavi` estimator stands
in for a guide through :func:`~pyro_vae.guides.fixed.as_guide`.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.poutine import Trace

from pyro_vae.annealing import unscaled
from pyro_vae.checks import check_memory
from pyro_vae.devices import resolve_device, to_device
from pyro_vae.enumerated_sites import summed_sites
from pyro_vae.evaluate import eval_mode

# re-exported: pyro_vae.diagnostics.variational_guide has always been importable from here
from pyro_vae.guides.fixed import as_guide, variational_guide  # noqa: F401
from pyro_vae.plates import batch_rows, find_data_plate, frames_in, require_data_plate
from pyro_vae.traces import full_rank, particle_traces, plate_nesting, run_pair, sample_sites


def probe(
    model, guide, args: tuple, kwargs: dict, local: bool = False, num_samples: int | None = None
) -> tuple[int, Trace, str | None]:
    """Run the guide once and the model replayed on it; check the pair for diagnostics
    (and, with ``num_samples``, that many draws against the memory:
    :func:`check_draws_memory`, on this run's traces). A site the model sums out by
    enumeration (marked, not drawn by the guide) is not a latent the guide must draw: the
    diagnostics sum it out (:mod:`pyro_vae.enumerated_sites`).

    Returns:
        ``(nesting, guide_trace, plate)``: the batch dims the model and guide use, the
        guide's trace of this probe run, and (with ``local``) the data plate's name.

    Raises:
        ValueError: the guide misses a latent site of the model or samples an observed
            one; the model has no latent or no observed site; with ``local``, a latent
            site lies outside the per-datapoint plate (or there is none).
    """
    with torch.no_grad(), eval_mode(model, guide), unscaled():
        model_tr, guide_tr = run_pair(model, guide, args, kwargs)
    guide_sites, model_sites = sample_sites(guide_tr), sample_sites(model_tr)
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    name = getattr(guide, "__name__", type(guide).__name__)
    missing = [n for n in latent if n not in guide_sites]
    missing = [n for n in missing if not model_sites[n]["infer"].get("enumerate")]
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
    plate = _local_plate(model_tr, model_sites, latent, args, kwargs) if local else None
    if num_samples is not None:
        check_draws_memory(num_samples, guide_tr, model_tr)
    return plate_nesting(guide_tr, model_tr), guide_tr, plate


def _local_plate(model_tr: Trace, sites: dict, latent: list[str], args, kwargs) -> str:
    """The per-datapoint plate, which every latent site must lie in."""
    rows = batch_rows(args, kwargs)
    plate = require_data_plate(find_data_plate(model_tr, rows), rows, "k̂ per datapoint")
    for n in latent:
        if not frames_in(sites[n], plate):
            raise ValueError(
                f"site {n!r} is outside the per-datapoint plate {plate!r}, so it has no "
                "per-datapoint importance ratio; use psis_khat for the joint k̂ of a "
                "model with global latents"
            )
    return plate


@torch.no_grad()
def draw(model, guide, args: tuple, kwargs: dict, num_samples: int):
    """Guide and replayed model traces of S draws, the draws at dim −rank: vectorized by a
    plate, or drawn in a loop when the model cannot broadcast (:mod:`pyro_vae.traces`).
    Sites the model sums out by enumeration are drawn from their prior in the model trace
    (the caller sums them out, replaying the guide's draws under the particle plate).

    Returns:
        ``(guide_trace, model_trace, rank, probe_trace)``: ``probe_trace`` is the guide's
        trace of one probe run (one draw, no particle dim; :func:`probe`).

    Raises:
        ValueError: :func:`probe`'s refusals; draws beyond the memory
            (:func:`check_draws_memory`).
    """
    nesting, probe_tr, _ = probe(model, guide, args, kwargs, num_samples=num_samples)
    # the model's densities, not a β-objective (tester AH: lp was β · log p(z) + ...)
    with torch.no_grad(), eval_mode(model, guide), unscaled():
        model_tr, guide_tr, vectorized = particle_traces(
            model, guide, args, kwargs, num_samples, nesting
        )
    enumerated = summed_sites(model_tr, guide_tr)
    if enumerated and not vectorized:  # the sums replay the draws under the particle plate
        raise ValueError(
            f"model: the sites {list(enumerated)} are summed out by enumeration, in a run "
            "per value with the guide's draws replayed under the particle plate; this "
            "pair's draws were taken in a loop (a model that does not broadcast)"
        )
    return guide_tr, model_tr, nesting + 1, probe_tr


#: Bytes S draws hold per value of one draw's traces (every sample site's value or batch,
#: in the guide's and the replayed model's), counted generously: each site's value, its
#: distribution's parameters and log-density, in both traces, and the float64 copies the
#: diagnostics make of them.
BYTES_PER_DRAWN_VALUE = 64


def check_draws_memory(num_samples: int, guide_trace: Trace, model_trace: Trace) -> None:
    """Refuse ``num_samples`` draws of the pair whose traces would take more than half this
    machine's memory, measured on one draw (its ``guide_trace`` and ``model_trace``):
    tester CR's ``psis_khat`` and ``to_inference_data`` at 10⁸ draws ran until killed, in a
    loop of draws after the vectorized one could not be allocated.

    Raises:
        ValueError: naming ``num_samples``, the memory they need and the most that fit.
    """
    values = sum(
        max(site["value"].numel(), (site["fn"].batch_shape + site["fn"].event_shape).numel())
        for trace in (guide_trace, model_trace)
        for site in sample_sites(trace).values()
    )
    what = f"draws of {values:,} values each (the guide's and the model's sites)"
    check_memory("num_samples", num_samples, max(1, values) * BYTES_PER_DRAWN_VALUE, what)


def log_density_per_draw(trace: Trace, rank: int, num_samples: int) -> torch.Tensor:
    """Σ over sample sites of the (scaled, masked) log-density, for each draw: ``[S]``.

    Each site is summed in its own dtype and the sites' totals are added in float64 (unlike
    :func:`pyro_vae.pointwise.per_draw_log_density`, which adds them in the sites' dtype),
    so a large constant site does not swamp the others' differences between draws.
    """
    sites = sample_sites(trace).values()
    total = torch.zeros(num_samples, dtype=torch.float64, device=trace_device(trace))
    for site in sites:
        lp = full_rank(site["log_prob"], rank)
        total = total + lp.reshape(lp.shape[0], -1).sum(1).double()
    return total


def to_given_device(args: tuple, kwargs: dict, device: Any) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor in them on ``device`` (a name or a
    ``torch.device``: :func:`pyro_vae.devices.resolve_device`), or as they are for
    ``None``. The model's and guide's modules are not moved: as for the evaluators,
    ``device`` is where the pair already computes.

    Raises:
        ValueError: ``device`` is not a device name, or one this machine does not have.
    """
    if device is None:
        return args, kwargs
    device = resolve_device(device, "device")
    return to_device(args, device), to_device(kwargs, device)


def trace_device(trace: Trace) -> torch.device:
    """The device of a trace's values: its first sample site's (the CPU for none), where
    sums over its sites are accumulated."""
    for site in sample_sites(trace).values():
        return site["value"].device if torch.is_tensor(site["value"]) else torch.device("cpu")
    return torch.device("cpu")
