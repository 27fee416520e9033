"""How each factor of a Pyro model's log joint depends on its latents, recovered by probing.

In a conditionally conjugate-exponential model every factor log f (one sample site's
``log_prob``, observed or latent, scaled and masked as the trace scores it) is multilinear in
the sufficient statistics of the latents it mentions (Winn & Bishop 2005; Hoffman & Johnson
2018, autoconj):

    log f = Σ_{a,b,…} C_{a b …} T_{1a}(x₁) T_{2b}(x₂) …      (T_{j0} = 1 for all but Categorical)

autoconj finds C by rewriting the traced log-joint symbolically. Here the model is re-run
with its latents conditioned (``poutine.condition``) at random probe points and C is solved
for in float64, then checked at fresh points: a factor that is not multilinear in some
latent's statistics is not conjugate for it, and is refused naming the site, its
distribution and the factor. Probing needs no access to how the model computed a parameter
(``(tau * lambda0).rsqrt()``, a sum, an indexing), only its values, so it covers any
parameterization a tracer would have to pattern-match; one set of runs probes every factor
at once, and it runs once per fit.

Plates: a latent inside a plate is one variable per element; a factor element depends on the
latent elements at its own plate indices (Pyro's broadcasting aligns batch dims by plate dim),
so the coefficients are solved per element and then summed over the factor's plate dims the
latents do not vary along (they multiply the same expectations there).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.cavi.exponential_families import Family, NotConjugateError, family_of

_EXTRA_RUNS = 6  # least-squares runs beyond the unknowns, for a well-posed solve
_CHECK_RUNS = 4  # fresh points at which each fitted factor is verified
_RTOL = 1e-7  # misfit allowed, relative to the factor's magnitude at the probe points


@dataclass
class Latent:
    """A latent site: its family, batch shape (one variable per element) and plates."""

    name: str
    family: Family
    batch_shape: torch.Size
    plates: frozenset
    prior: torch.distributions.Distribution  # its distribution in the first trace


@dataclass
class Factor:
    """One site's log-density as C contracted with its latents' statistics.

    ``coefficients`` has shape [*batch, B₁, …, B_m] (B_j = latents[j]'s family size), with
    ``batch`` of rank ``rank`` (the site's log_prob rank), summed over every dim along which
    none of its latents varies.
    """

    name: str
    distribution: str
    latents: tuple[str, ...]
    coefficients: torch.Tensor
    rank: int


def site_log_probs(model, args, kwargs, values: dict) -> tuple[dict, object]:
    """Every sample site's scaled, masked log_prob (float64) with ``values`` conditioned."""
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    out = {
        name: site["log_prob"].to(torch.float64)
        for name, site in trace.nodes.items()
        if _is_factor(site)
    }
    return out, trace


def find_latents(trace) -> dict[str, Latent]:
    """The unobserved sample sites of ``trace``, in the order the model samples them."""
    latents = {}
    for name, site in trace.nodes.items():
        if not _is_factor(site) or site["is_observed"]:
            continue
        plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
        batch = site["fn"].batch_shape
        for dim in range(-len(batch), 0):
            if batch[dim] > 1 and dim not in plates:
                raise NotConjugateError(
                    f"latent site {name!r}: batch dim {dim} (size {batch[dim]}) of its "
                    f"{type(site['fn']).__name__} is in no pyro.plate; declare independent "
                    "elements with pyro.plate, or a vector with .to_event(1)"
                )
        if site["scale"] is not None and not _is_one(site["scale"]):
            raise NotConjugateError(
                f"latent site {name!r}: scaled by {site['scale']} (a subsampled plate); "
                "AutoCAVI needs every latent element in the data it is given"
            )
        latents[name] = Latent(name, family_of(site), batch, frozenset(plates.values()), None)
        latents[name].prior = site["fn"]
    return latents


def _is_factor(site) -> bool:
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def _is_one(scale) -> bool:
    return bool(torch.as_tensor(scale).eq(1).all())


def _probe_values(latents: dict[str, Latent], generator) -> dict[str, torch.Tensor]:
    return {n: lat.family.probe(lat.batch_shape, generator) for n, lat in latents.items()}


def find_dependencies(model, args, kwargs, latents, generator) -> tuple[dict, object]:
    """For each site, the latents its log-density changes with (in sampling order)."""
    base_values = _probe_values(latents, generator)
    base, trace = site_log_probs(model, args, kwargs, base_values)
    depends = {name: [] for name in base}
    for name, latent in latents.items():
        moved = dict(base_values)
        moved[name] = latent.family.probe(latent.batch_shape, generator)
        log_probs, _ = site_log_probs(model, args, kwargs, moved)
        for site, value in log_probs.items():
            if not torch.equal(value, base[site]):
                depends[site].append(name)
    for site, names in depends.items():
        plates = _plates(trace.nodes[site])
        for name in names:
            outside = sorted(latents[name].plates - plates)
            if outside:
                raise NotConjugateError(
                    f"factor {site!r} depends on latent site {name!r} across its plate(s) "
                    f"{outside}, which {site!r} is not inside: each element of {site!r} "
                    f"then mentions every element of {name!r}; AutoCAVI handles only factors "
                    "that sit inside every plate of the latents they mention"
                )
    return depends, trace


def _plates(site) -> frozenset:
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)


def _design(latents: list[Latent], values: dict, rank: int) -> torch.Tensor:
    """The tensor-product basis ⊗_j T_j(x_j), shape [*batch (rank ``rank``), Π B_j]."""
    design = torch.ones((1,) * rank + (1,), dtype=torch.float64)
    for latent in latents:
        phi = latent.family.statistics(values[latent.name])
        phi = phi.reshape((1,) * (rank + 1 - phi.dim()) + phi.shape)
        design = (design.unsqueeze(-1) * phi.unsqueeze(-2)).flatten(-2)
    return design


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``tensor`` over the leading dims it has beyond ``shape`` and the dims where
    ``shape`` is 1 (the reverse of broadcasting)."""
    while tensor.dim() > len(shape):
        tensor = tensor.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and tensor.shape[dim] != 1:
            tensor = tensor.sum(dim, keepdim=True)
    return tensor


def _fit(designs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Least-squares C per element: designs [S, *batch, P], values [S, *fbatch] → [*fbatch, P]."""
    a = designs.movedim(0, -2)  # [*batch, S, P]
    b = values.movedim(0, -1).unsqueeze(-1)  # [*fbatch, S, 1]
    return (torch.linalg.pinv(a) @ b).squeeze(-1)


def _misfit(designs, values, coefficients, scale) -> torch.Tensor:
    """max |T·C − log f| at the check points, relative to 1 + the factor's magnitude."""
    predicted = (designs.movedim(0, -2) @ coefficients.unsqueeze(-1)).squeeze(-1)
    return ((predicted - values.movedim(0, -1)).abs() / (1 + scale.unsqueeze(-1))).amax()


def probe_factors(model, args, kwargs, latents, depends, trace, generator) -> list[Factor]:
    """Solve every factor's coefficients from one set of probe runs, and verify them."""
    sizes = [_product(latents[n].family.size for n in names) for names in depends.values()]
    n_fit = max(sizes) + _EXTRA_RUNS
    runs = []
    for _ in range(n_fit + _CHECK_RUNS):
        values = _probe_values(latents, generator)
        runs.append((values, site_log_probs(model, args, kwargs, values)[0]))
    factors = []
    for site, names in depends.items():
        members = [latents[n] for n in names]
        rank = trace.nodes[site]["log_prob"].dim()
        designs = torch.stack([_design(members, v, rank) for v, _ in runs])
        values = torch.stack([lp[site] for _, lp in runs])
        coefficients = _fit(designs[:n_fit], values[:n_fit])
        scale = values[:n_fit].abs().amax(0)
        if _misfit(designs[n_fit:], values[n_fit:], coefficients, scale) > _RTOL:
            _refuse(model, args, kwargs, latents, names, site, trace, generator)
        summed = _sum_to(coefficients, designs.shape[1:])
        shape = summed.shape[:-1] + tuple(m.family.size for m in members)
        factors.append(
            Factor(site, _dist_name(trace.nodes[site]), tuple(names), summed.reshape(shape), rank)
        )
    return factors


def _product(numbers) -> int:
    out = 1
    for n in numbers:
        out *= n
    return out


def _dist_name(site) -> str:
    fn = site["fn"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return type(fn).__name__


def _refuse(model, args, kwargs, latents, names, site, trace, generator):
    """Name the latent whose statistics ``site``'s log-density is not linear in."""
    base = _probe_values(latents, generator)
    rank = trace.nodes[site]["log_prob"].dim()
    culprit = names
    for name in names:
        latent = latents[name]
        n_fit = latent.family.size + _EXTRA_RUNS
        designs, values = [], []
        for _ in range(n_fit + _CHECK_RUNS):
            moved = dict(base)
            moved[name] = latent.family.probe(latent.batch_shape, generator)
            designs.append(_design([latent], moved, rank))
            values.append(site_log_probs(model, args, kwargs, moved)[0][site])
        designs, values = torch.stack(designs), torch.stack(values)
        coefficients = _fit(designs[:n_fit], values[:n_fit])
        scale = values[:n_fit].abs().amax(0)
        if _misfit(designs[n_fit:], values[n_fit:], coefficients, scale) > _RTOL:
            culprit = [name]
            break
    latent = latents[culprit[0]]
    stats = ", ".join(latent.family.statistic_names())
    raise NotConjugateError(
        f"latent site {culprit[0]!r} ({type(latent.prior).__name__}) is not conditionally "
        f"conjugate: the log-density of factor {site!r} ({_dist_name(trace.nodes[site])}) is "
        f"not {'multi' if len(names) > 1 else ''}linear in the sufficient statistics "
        f"({stats}) of {', '.join(repr(n) for n in culprit)}; AutoCAVI updates only "
        "conditionally conjugate-exponential models (fit this one by SVI)"
    )
