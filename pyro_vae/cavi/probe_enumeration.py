"""Fit probes with a mixture's assignments enumerated in parallel (as Pyro's
``TraceEnum_ELBO`` enumerates them), for :mod:`pyro_vae.cavi.conjugate_forms`.

A mixture factor log p(x_n | z_n, θ) has K·P unknowns per datum (P statistics of each
component's θ), and each probe point, holding z at one value, gives one equation per datum:
K·P + 3 points, each a whole model run over the data. Enumerated instead, z takes the values
``arange(K)`` along a new dim left of the probe plate, and one run at S continuous points
scores all K·S combinations, reading each component once per point rather than once per
point and datum (``Vindex(means)[..., z, :]`` at z ``[K, 1, 1]`` is ``[K, S, 1, D]``, not
``[S, N, D]``). On a Gaussian mixture of K = 10, D = 5 that run is 8x faster than the
drawn points' (N = 10⁴), and probing 2.4x faster at N = 10⁵ (22.3 to 9.3 s, the same
bound; an adversarial tester's separate-process runs). Only the one discrete latent in a
plate is enumerated (:func:`enumerable`); the functions here take several.

The rows keep the layout of shared fit probes (:mod:`pyro_vae.cavi.probe_runs`): row
c·S + s holds point s with the enumerated latents at their c-th combination, each expanded
(stride 0) across its plate. The run is trusted only when every factor's log-density comes
back with the probe and plate dims of a plain run, and the C rows of the first point agree
with the same points run as plain shared probes (``ProbeRunner.prefetch_enumerated`` runs
them with the check points); otherwise the fit points are drawn one value per point.
"""

from __future__ import annotations

import torch

from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES

_AGREE = 1e-9  # enumerated vs plain log-density, relative to 1 + its magnitude


def enumerable(latents: dict) -> tuple[str, ...]:
    """The discrete latent to enumerate in the fit runs (a mixture's assignments): the one
    discrete latent in a plate, as a 1-tuple; () when there is none or more than one.
    Several are drawn: enumerated together, every factor would get rows for every
    combination, even one that reads a single latent (six Bernoulli indicators per datum,
    N = 10⁵: 2⁶ rows a point, 8.8 GB against 1.3 GB drawn)."""
    names = tuple(
        name
        for name, latent in latents.items()
        if latent.family.name in DISCRETE_FAMILIES and latent.batch_shape
    )
    return names if len(names) == 1 else ()


def categories(latent) -> int:
    """K of a Categorical latent, 2 of a Bernoulli."""
    return getattr(latent.family, "k", 2)


def grid(latents: list) -> list[torch.Tensor]:
    """Each enumerated latent's value at every combination, [C] each; the last latent varies
    slowest (its enumeration dim is leftmost, see :func:`conditioned`)."""
    axes = [torch.arange(categories(latent)) for latent in reversed(latents)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return [axis.reshape(-1) for axis in reversed(mesh)]


def fit_rows(points: dict, latents: list, values: list, count: int) -> dict:
    """The fit rows {site: [C·count, *batch, *event]}: row c·count + s is point s of
    ``points`` ({site: [count, …]}) with each enumerated latent at ``values[j][c]``, expanded
    across its plate (stride 0, as a shared probe)."""
    combinations = len(values[0])
    rows = {}
    for latent, value in zip(latents, values, strict=True):
        shape = (combinations * count,) + tuple(latent.batch_shape)
        value = value.repeat_interleave(count).to(_dtype(latent))
        rows[latent.name] = value.reshape(shape[:1] + (1,) * (len(shape) - 1)).expand(shape)
    for site, value in points.items():
        if site not in rows:
            repeated = value.unsqueeze(0).expand((combinations,) + value.shape)
            rows[site] = repeated.reshape((combinations * count,) + value.shape[1:])
    return rows


def conditioned(latents: list, nesting: int) -> dict:
    """The enumerated latents' values for the run: ``arange(K_j)`` along dim
    −(nesting + 2 + j), left of the probe plate's dim −(nesting + 1) and of latent j − 1's."""
    out = {}
    for j, latent in enumerate(latents):
        k = categories(latent)
        out[latent.name] = (
            torch.arange(k).to(_dtype(latent)).reshape((k,) + (1,) * (nesting + 1 + j))
        )
    return out


def to_rows(log_probs: dict, latents: list, shapes: dict, count: int, nesting: int) -> dict | None:
    """The enumerated run's log-densities as fit rows {factor: [C·count, *shape]}, or None
    where one lacks the plain run's probe and plate dims or has another dim left of them."""
    left = tuple(categories(latent) for latent in reversed(latents))
    out = {}
    for site, shape in shapes.items():
        lp = log_probs.get(site)
        plain = (count,) + (1,) * (nesting - len(shape)) + tuple(shape)
        if lp is None or lp.dim() > len(left) + len(plain):
            return None
        lp = lp.reshape((1,) * (len(left) + len(plain) - lp.dim()) + tuple(lp.shape))
        head, tail = tuple(lp.shape[: len(left)]), tuple(lp.shape[len(left) :])
        if tail != plain or any(h not in (1, k) for h, k in zip(head, left, strict=True)):
            return None
        out[site] = lp.expand(left + plain).reshape((_product(left) * count,) + tuple(shape))
    return out


def agrees(rows: dict, plain: dict, count: int) -> bool:
    """Whether the rows of point 0 (every ``count``-th) equal ``plain``, the same points run
    as plain shared probes."""
    for site, lp in rows.items():
        mine, theirs = lp[::count], plain[site]
        if not bool(((mine - theirs).abs() <= _AGREE * (1 + theirs.abs())).all()):
            return False
    return True


def _dtype(latent) -> torch.dtype:
    return torch.float64 if latent.family.name == "Bernoulli" else torch.long


def _product(numbers) -> int:
    out = 1
    for n in numbers:
        out *= n
    return out
