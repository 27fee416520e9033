"""The model's first run and which latent units each factor reads.

:func:`first_run` runs the model once, its latents drawn from their priors under a seeded
generator, with Pyro's provenance tracking (``pyro.ops.provenance``): the trace gives the
latents, their priors and the probe runs' reference point; the provenance gives, for each
factor, the sample sites its log-density read (:func:`dependencies`). Where that draw is
not finite, :func:`find_dependencies` runs the model at probe values instead.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import detach_provenance, get_provenance

from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.prior_means import PriorMeans
from pyro_vae.cavi.probe_runs import (
    is_factor,
    score_factors,
)
from pyro_vae.cavi.provenance import TrackFastProvenance
from pyro_vae.cavi.seeding import cpu_rng


def _probe(latent: Latent, generator) -> dict[str, torch.Tensor]:
    value = latent.family.probe(latent.batch_shape, generator)
    return dict(zip(latent.sites, value if len(latent.sites) > 1 else (value,), strict=True))


def _probe_values(latents: dict[str, Latent], generator) -> dict[str, torch.Tensor]:
    values = {}
    for latent in latents.values():
        values.update(_probe(latent, generator))
    return values


def first_run(model, args, kwargs, seed: int) -> tuple[object, dict]:
    """One forward run of the model, its latents drawn from their priors with torch seeded
    by ``seed`` (the global RNG restored after), under Pyro's provenance tracking: (its
    trace, plain tensors throughout, with every factor's log-density computed; {factor
    site: the sample sites its log-density read}). The one run gives the latents, where
    ``AutoCAVI`` starts, the factors' dependencies (see :func:`find_dependencies`) and the
    probe runs' reference point (:func:`reference_is_finite`).

    The prior parameters of the trace's distributions (``site["fn"]``) carry provenance:
    read their shapes and classes, and pass what is computed from them through
    :func:`pyro.ops.provenance.detach_provenance`.

    Pyro's validation is off in this run (a third of its time on the benchmark mixture);
    :mod:`pyro_vae.cavi.validation` says what stands in for it. Where the run fails (a
    Wishart draw with ν near D − 1 is nearly singular, and the model's Cholesky of it
    fails), it is run again at the priors' means (:class:`~pyro_vae.cavi.prior_means.
    PriorMeans`); if that fails too, the first run's error is raised."""
    try:
        trace = _traced_run(model, args, kwargs, seed, at_means=False)
    except (RuntimeError, ValueError) as error:  # torch's LinAlgError is a RuntimeError
        try:
            trace = _traced_run(model, args, kwargs, seed, at_means=True)
        except Exception:
            raise error from None
    return trace, _strip_provenance(trace)


def _traced_run(model, args, kwargs, seed: int, at_means: bool):
    with cpu_rng(seed), torch.no_grad(), warnings.catch_warnings(), \
            pyro.validation_enabled(False):  # fmt: skip
        # torch's Wishart sampler warns of near-singular draws it then redraws
        warnings.filterwarnings("ignore", message="Singular sample detected")
        with TrackFastProvenance(), PriorMeans() if at_means else nullcontext():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
            score_factors(trace)
    return trace


def _strip_provenance(trace) -> dict:
    """{factor site: the sample sites its log-density read}, leaving plain tensors in the
    trace's values and log-densities."""
    read = {}
    for name, node in trace.nodes.items():
        if node["type"] != "sample":
            continue
        if is_factor(node):
            read[name] = get_provenance(node["log_prob"])
            node["log_prob"] = detach_provenance(node["log_prob"])
        node["value"] = detach_provenance(node["value"])
    return read


def reference_is_finite(trace) -> bool:
    """Whether every factor's log-density is finite in ``trace``: the probe runs' reference
    point must be (a prior draw can underflow, a Dirichlet's with small concentrations)."""
    return all(
        bool(node["log_prob"].isfinite().all()) for node in trace.nodes.values() if is_factor(node)
    )


def precision_only_factors(read: dict, latents) -> frozenset:
    """The factor sites whose log-density reads one latent unit, a Normal-Gamma or
    Normal-Wishart block, and of it the precision site alone (its prior), from the sample
    sites each read (:func:`first_run`)."""
    out = set()
    for site, sites in read.items():
        units = [latent for latent in latents.values() if set(latent.sites) & set(sites)]
        if len(units) == 1 and hasattr(units[0].family, "precision_columns"):
            if set(units[0].sites) & set(sites) == {units[0].sites[1]}:
                out.add(site)
    return frozenset(out)


def dependencies(read: dict, latents) -> dict[str, list[str]]:
    """{factor site: the latent units its log-density mentions, in sampling order} from the
    sample sites each read (:func:`first_run`)."""
    unit_of = {site: name for name, latent in latents.items() for site in latent.sites}
    out = {}
    for site, sites in read.items():
        mentioned = {unit_of[p] for p in sites if p in unit_of}
        out[site] = [name for name in latents if name in mentioned]
    return out


def find_dependencies(model, args, kwargs, latents, generator) -> tuple[dict, object]:
    """For each site, the latent units its log-density mentions (in sampling order), and a
    trace of the model at probe values (its log-densities computed).

    Dependence is read by Pyro's provenance tracking (``TrackProvenance``, as
    :func:`pyro.infer.inspect.get_dependencies` reads it, with the one-pass argument scan of
    :mod:`pyro_vae.cavi.provenance`): each log-density carries the set
    of sample sites its computation read, so a dependence that a probe value happens to hide
    (a transition matrix with equal off-diagonal entries) is still found. One model run gives
    both: provenance only wraps the tensors, the values are those of a plain run."""
    values = _probe_values(latents, generator)
    with cpu_rng(), torch.no_grad(), TrackFastProvenance():
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        score_factors(trace)
    read = _strip_provenance(trace)
    for name in values:
        trace.nodes[name]["value"] = values[name]
    return dependencies(read, latents), trace
