"""The latent units of a Pyro model's log joint, found in its first trace, and the checks
that trace passes before any probe run.

A unit (:class:`Latent`) is one latent site, or a block of sites updated jointly (a mean and
its precision); :func:`find_latents` lists them in sampling order, with each element the
model masks off (``present``) and ``obs_mask``'s imputed entries (:func:`imputed_by_obs_mask`)
marked. :func:`check_float64` and :func:`check_whole_data` refuse, before any work, a model
that scores in lower precision or subsamples a plate.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch

from pyro_vae.cavi.exponential_families import (
    Family,
    NotConjugateError,
    block_family,
    family_of,
)
from pyro_vae.cavi.probe_runs import (
    is_factor,
    is_latent,
    score_factors,
    site_is_subsample,
)
from pyro_vae.pyro_compat import distribution_mask


@dataclass
class Latent:
    """A unit of q: one latent site, or a block of sites updated jointly; its family, batch
    shape (one variable per element) and plates."""

    name: str
    family: Family
    batch_shape: torch.Size
    plates: frozenset
    prior: object  # its distribution in the first trace (a block: its sampled values)
    sites: tuple[str, ...] = ()
    #: [*batch] bool, False at the elements whose own log-density the model masks off
    #: (``poutine.mask``, ``.mask``, ``obs_mask``'s ``<site>_unobserved`` where data are
    #: observed); None: none is. Such an element that no other factor mentions is absent
    #: from the model; one that a child mentions has a flat prior.
    present: torch.Tensor | None = None
    #: whether the site is ``obs_mask``'s ``<site>_unobserved`` (Pyro's pair of sites and
    #: the deterministic ``torch.where`` of them): where it is masked off, the data are
    #: observed and every child reads them, not it, so those elements are absent whatever
    #: their messages (:func:`imputed_by_obs_mask`)
    imputed: bool = False
    #: a latent as one factor reads it through a data index (see
    #: :mod:`pyro_vae.cavi.data_indexing`): LongTensor of the factor's rank, the element of
    #: the latent's one plate each factor element reads; its ``batch_shape`` is then the
    #: index's. None: read at the factor's own plate indices.
    index: torch.Tensor | None = None


def imputed_by_obs_mask(trace, name: str) -> bool:
    """Whether latent site ``name`` is the ``<site>_unobserved`` that ``pyro.sample(...,
    obs_mask=...)`` adds: beside it an observed ``<site>_observed`` and the deterministic
    ``<site>``, ``torch.where(obs_mask, observed, unobserved)``, which the model reads."""
    base = name.removesuffix("_unobserved")
    observed, combined = trace.nodes.get(f"{base}_observed"), trace.nodes.get(base)
    return (
        base != name
        and observed is not None
        and observed["type"] == "sample"
        and observed["is_observed"]
        and combined is not None
        and combined["type"] == "sample"
        and combined.get("infer", {}).get("_deterministic", False)
    )


def _present(sites) -> torch.Tensor | None:
    """Where the sites' own log-densities are not masked off (``poutine.mask``, or a
    distribution's ``.mask`` outside its ``.to_event``), or None (everywhere)."""
    present = None
    for site in sites:
        masks, fn = [site["mask"]], site["fn"]
        while isinstance(fn, dist.MaskedDistribution):
            masks.append(distribution_mask(fn))
            fn = fn.base_dist
        for mask in masks:
            if mask is None or (isinstance(mask, bool) and mask):
                continue
            mask = torch.as_tensor(mask, dtype=torch.bool).expand(site["fn"].batch_shape)
            present = mask if present is None else present & mask
    return None if present is None or bool(present.all()) else present


def _unmasked(fn):
    """A latent's prior without the ``.mask`` wrappers outside it, which :func:`_present`
    reads apart: a masked Gamma, Beta or Dirichlet prior has no ``concentration`` of its
    own, and its start crashed with an AttributeError (tester AM's F4)."""
    while isinstance(fn, dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


_FLOAT64_ADVICE = (
    "AutoCAVI needs float64 throughout; the constants a model makes as it runs are float64 "
    "during the fit, so this one was made before it (call model.double() on a PyroModule, "
    "or build the tensors it closes over in float64; model.double() converts a module's "
    "parameters, not the tensors a PyroSample prior was built from: build those from "
    "float64 tensors, or after torch.set_default_dtype(torch.float64))"
)


def check_float64(trace) -> None:
    """Refuse a model that scores in lower precision, or builds a distribution from lower
    precision parameters that float64 data then promote (``Normal(2.0 * s, 0.7)`` with an
    integer ``s`` is float32, its 0.7 too, off by 1e-7 nats): the probes' solve needs
    float64.

    Raises:
        ValueError: naming the site, and the parameter where one is the cause."""
    score_factors(trace)
    for name, site in trace.nodes.items():
        if not is_factor(site):
            continue
        if site["log_prob"].dtype != torch.float64:
            raise ValueError(
                f"model: site {name!r} scores in {site['log_prob'].dtype}; {_FLOAT64_ADVICE}"
            )
        for parameter, dtype in _low_precision_parameters(site["fn"]):
            raise ValueError(
                f"model: site {name!r} has its parameter {parameter!r} in {dtype} (its "
                f"log-density is float64 only because the data promote it); {_FLOAT64_ADVICE}"
            )


def _low_precision_parameters(fn):
    """(name, dtype) of each floating parameter of ``fn`` (through its wrappers) held in a
    dtype other than float64; only parameters already computed are read (a lazily derived
    one, a MultivariateNormal's precision from its scale_tril, follows them)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    for parameter in getattr(fn, "arg_constraints", {}):
        value = fn.__dict__.get(parameter)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if value.dtype != torch.float64:
                yield parameter, value.dtype


def check_whole_data(trace) -> None:
    """Refuse a plate that subsamples: coordinate ascent updates each factor from all of its
    data; a minibatch's factors, scaled up, would be a different, random model.

    Raises:
        ValueError: naming the plate, its size and its subsample size.
    """
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):
            size, taken = int(site["fn"].size), int(site["value"].numel())
            if taken < size:
                raise ValueError(
                    f"model: plate {name!r} subsamples {taken} of its {size} rows; AutoCAVI "
                    "fits the whole data in each update (closed-form CAVI has no minibatch "
                    "version here): give the plate neither subsample_size nor a subsample of "
                    "indices (pass the rows to fit as the data instead), or use SVI"
                )


def _check_latent_site(name: str, site) -> dict:
    """The site's vectorized plates {dim: name}, after checking its batch dims and scale."""
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    batch = site["fn"].batch_shape
    for dim in range(-len(batch), 0):
        if batch[dim] > 1 and dim not in plates:
            raise NotConjugateError(
                f"latent site {name!r}: batch dim {dim} (size {batch[dim]}) of its "
                f"{type(site['fn']).__name__} is in no pyro.plate; declare independent "
                "elements with pyro.plate, or a vector with .to_event(1)"
            )
    subsampled = [f for f in site["cond_indep_stack"] if f.full_size and f.size < f.full_size]
    if subsampled:
        f = subsampled[0]
        raise NotConjugateError(
            f"latent site {name!r}: in plate {f.name!r}, which subsamples {f.size} of its "
            f"{f.full_size} elements (its log-density scaled by {site['scale']}); AutoCAVI "
            "needs every latent element in the data it is given"
        )
    return plates


def find_latents(trace, blocks=()) -> dict[str, Latent]:
    """The units of q in the order the model samples them: each unobserved sample site,
    except that the sites of a block (mean, precision) form one unit."""
    sites = {n: s for n, s in trace.nodes.items() if is_latent(s)}
    in_block = {}
    for block in blocks:
        if not isinstance(block, (tuple, list)) or len(block) != 2:
            raise ValueError(
                f"blocks: {block!r} is not a (mean site, precision site) pair of latent sites; "
                f"latent sites: {list(sites)}"
            )
        missing = [b for b in block if b not in sites]
        if missing:
            raise ValueError(
                f"blocks: {block!r}: {missing[0]!r} is not a latent site of the model (an "
                f"observed or unknown site); latent sites: {list(sites)}"
            )
        if in_block.get(block[0]) == tuple(block):
            raise ValueError(f"blocks: {tuple(block)!r} is given twice")
        for b in block:
            if in_block.get(b, tuple(block)) != tuple(block):
                raise ValueError(
                    f"blocks: {b!r} is in {in_block[b]!r} and {tuple(block)!r}; a site can be "
                    "in one block only (a precision shared by several means: leave those means "
                    "out of blocks, or make them one .to_event(1) site)"
                )
            in_block[b] = tuple(block)
    latents = {}
    for name, site in sites.items():
        plates = frozenset(_check_latent_site(name, site).values())
        batch = site["fn"].batch_shape
        if name not in in_block:
            family = family_of(site)
            present = _present([site])
            imputed = present is not None and imputed_by_obs_mask(trace, name)
            latents[name] = Latent(
                name, family, batch, plates, _unmasked(site["fn"]), (name,), present, imputed
            )
            continue
        block = in_block[name]
        family = block_family(sites[block[0]], sites[block[1]])
        if family.site in latents:
            continue
        if sites[block[0]]["fn"].batch_shape != sites[block[1]]["fn"].batch_shape:
            raise ValueError(
                f"blocks: {block!r} have different batch shapes (plates) "
                f"{tuple(sites[block[0]]['fn'].batch_shape)} and "
                f"{tuple(sites[block[1]]['fn'].batch_shape)}; a block pairs one mean and its "
                "precision in the same plates (means sharing one precision: make them one "
                "site with .to_event(1))"
            )
        values = tuple(sites[b]["value"].to(torch.float64) for b in block)
        present = _present([sites[b] for b in block])
        latents[family.site] = Latent(family.site, family, batch, plates, values, block, present)
    return latents
