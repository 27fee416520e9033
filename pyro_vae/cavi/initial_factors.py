"""Where ``AutoCAVI`` starts: each unit's expected statistics before the first sweep.

A unit ``init`` sets starts at the factor given: a distribution of the site's family (a
Categorical site also takes a tensor of probabilities, e.g. responsibilities), and a
block a fitted joint factor (``fitted_blocks_``'s NormalGamma or NormalWishart) or a tuple
of one value per site (a point). A unit ``init`` does not set starts, seeded by
``random_state``: a discrete latent (Categorical, Bernoulli) at a random hard assignment,
balanced over the categories along its first plate (prior expectations would give every
mixture component the same responsibilities, a fixed point CAVI cannot leave; this is
scikit-learn's ``init_params="random"`` idea). Balanced, not drawn from the model: a
model's own draw follows its sampled weights, and a Dirichlet draw can put every point in
one component, where CAVI settles with every component's mean at the data's. A block
starts at its values in the seeded forward run; any other latent at its prior's
expectations, its parents at their means where it has latent parents
(:mod:`pyro_vae.cavi.plug_in_start`); except that Normal latents a factor multiplies by
each other (W z_n in factor analysis, u·v in matrix factorization) start at a seeded draw
from that prior (:func:`products`, :func:`drawn_starts`): at their prior means, 0, the
product is a saddle of the bound that CAVI cannot leave (every update of W sees E[z] = 0
and stays at 0), as a mixture's components at equal responsibilities are.
"""

from __future__ import annotations

import numbers

import torch
from pyro.ops.provenance import detach_provenance
from torch.distributions.utils import lazy_property

from pyro_vae.cavi.exponential_families import (
    DISCRETE_FAMILIES,
    NormalGamma,
    NormalWishart,
    NotConjugateError,
    family_of,
)
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.seeding import cpu_rng

#: added to a start's seed for the stream of the balanced draws' shifts (any constant that
#: keeps it apart from the seeds of the n_init starts, random_state + offset)
_SHIFT_STREAM = 1 << 32
_BLOCK_FACTORS = {"Normal-Gamma": NormalGamma, "Normal-Wishart": NormalWishart}


def initial_statistics(latents: dict[str, Latent], init, first, seed: int, priors=None):
    """{unit: E[T] [*batch, B]} at the start; ``first`` the seeded forward run's trace,
    ``seed`` that of the discrete latents' random assignments; ``priors``: {site: prior}
    to start a continuous latent at instead of its prior in ``first`` (its prior given its
    parents at their means, :func:`~pyro_vae.cavi.plug_in_start.plug_in_priors`).

    Raises:
        ValueError: naming ``init[unit]``, what was given and what the unit takes.
    """
    init = dict(init or {})
    unknown = sorted(set(init) - set(latents))
    if unknown:
        # a site updated jointly with another (blocks): name the block and what it takes
        # (tester 24: "'mu' is not a latent site" where the block 'mu+lam' holds it)
        blocks = {site: name for name, lt in latents.items() if len(lt.sites) > 1
                  for site in lt.sites}  # fmt: skip
        held = [
            f"{site!r} is updated jointly in the block {blocks[site]!r}: start the block, "
            f"init={{{blocks[site]!r}: a fitted_blocks_ entry, or a tuple of values "
            f"{latents[blocks[site]].sites}}}"
            for site in unknown if site in blocks
        ]  # fmt: skip
        what = "is not a latent site" if len(unknown) == 1 else "are not latent sites"
        raise ValueError(
            f"init: {unknown} {what} of the model; its latent sites are {list(latents)}"
            + "".join(f". {line}" for line in held)
        )
    stats = {}
    generator = torch.Generator().manual_seed(seed)
    # a stream of its own (see _surplus_at_random), apart from the draws' for the same seed
    shifts = torch.Generator().manual_seed(seed + _SHIFT_STREAM)
    for name, latent in latents.items():
        if name in init:
            stats[name] = _given(name, latent, init[name])
        elif len(latent.sites) > 1:
            stats[name] = latent.family.expected_statistics(latent.prior)  # sampled values
        elif latent.family.name in DISCRETE_FAMILIES:
            # balanced along the first plate: each category ⌊N/K⌋ or ⌈N/K⌉ times there
            value = latent.family.probe(latent.batch_shape, generator)
            value = _surplus_at_random(value, latent, shifts)
            stats[name] = latent.family.statistics(value)
        else:
            value = latent.family.expected_statistics(_start_prior(latent, priors))
            stats[name] = value.expand(latent.batch_shape + value.shape[-1:])
    # a prior's parameters carry provenance from the first run (first_trace.first_run)
    return {name: detach_provenance(value) for name, value in stats.items()}


def _surplus_at_random(value: torch.Tensor, latent: Latent, shifts) -> torch.Tensor:
    """A balanced draw ``value`` [*batch] of a Categorical latent, its categories shifted
    cyclically by an offset drawn from ``shifts`` (a seeded torch.Generator) where its first
    plate's size N is not a multiple of K; other latents' draws are returned as given.

    The balanced draw gives the ⌈N/K⌉ counts always to the lowest categories: with N < K the
    highest are never drawn, and with N = 1 (one sequence of a factorial HMM in its plate)
    every seed draws the same all-zero start, so ``n_init`` restarts repeat one start and
    its local optimum (4.0 nats below the structured fit). The shift keeps the balance
    and puts the surplus at random, each latent's apart. The offsets come from their own
    stream, so where N % K = 0 the draws are as before and the other latents' draws are
    unchanged."""
    k = getattr(latent.family, "k", None)
    if k is None or not latent.batch_shape or latent.batch_shape[0] % k == 0:
        return value
    offset = torch.randint(0, k, (), generator=shifts)
    return (value + offset) % k


def _given(name: str, latent: Latent, q) -> torch.Tensor:
    if len(latent.sites) > 1:
        return _block_start(name, latent, q)
    family = latent.family
    if isinstance(q, torch.Tensor) and family.name == "Categorical":
        q = _probabilities(name, latent, q)
    if not isinstance(q, torch.distributions.Distribution):
        raise ValueError(
            f"init[{name!r}]: {type(q).__name__} is not a distribution of the {family.name} family"
        )
    try:
        given_family = family_of({"fn": q, "name": name}).name
    except NotConjugateError:
        given_family = type(q).__name__
    if given_family != family.name:
        raise ValueError(
            f"init[{name!r}]: {type(q).__name__} is not a distribution of the {family.name} "
            f"family, which q({name}) is"
        )
    _check_parameters(name, q)
    if tuple(q.event_shape) != tuple(family.event_shape):
        each = (
            f"a {family.name} over {family.event_shape.numel()} coordinates"
            if family.event_dim
            else f"a scalar {family.name} per element: give one of batch shape "
            f"{tuple(latent.batch_shape)} or ()"
        )
        raise ValueError(
            f"init[{name!r}]: its event shape {tuple(q.event_shape)} is not the site's "
            f"{tuple(family.event_shape)} ({each})"
        )
    _check_batch_shape(name, latent, q)
    try:
        value = family.expected_statistics(q)
        return value.expand(latent.batch_shape + (family.size,))
    except (AttributeError, RuntimeError) as error:
        raise ValueError(
            f"init[{name!r}]: {q} is not a {family.name} with batch shape "
            f"{tuple(latent.batch_shape)} ({error})"
        ) from error


def _check_batch_shape(name: str, latent: Latent, q) -> None:
    """ValueError where ``init[name]``'s batch shape does not broadcast to the site's (its
    plates' sizes): one q for the whole site, or one per element."""
    wanted = tuple(latent.batch_shape)
    try:
        fits = torch.broadcast_shapes(q.batch_shape, latent.batch_shape) == latent.batch_shape
    except RuntimeError:
        fits = False
    if not fits:
        give = (
            "the site is in no plate: give one q, of batch shape ()"
            if not wanted
            else f"give one q for the whole site (batch shape ()) or one per element ({wanted})"
        )
        raise ValueError(
            f"init[{name!r}]: its batch shape {tuple(q.batch_shape)} does not broadcast to "
            f"the site's batch shape {wanted} (the sizes of its plates); {give}"
        )


def _check_parameters(name: str, q) -> None:
    """ValueError naming the parameter of ``init[name]`` outside its constraint (by the
    distribution's own ``arg_constraints``) or not finite: a start built with
    ``validate_args=False`` would otherwise surface as an improper update of the model."""
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    for param, constraint in q.arg_constraints.items():
        lazy = isinstance(getattr(type(q), param, None), lazy_property)
        if lazy and param not in q.__dict__:  # a parameterization not given (probs/logits)
            continue
        # a property (a Beta's concentrations, read from its Dirichlet) is checked too: an
        # invalid Beta start crashed deep in torch (tester AM's F6)
        value = getattr(q, param)
        if not bool(torch.isfinite(value).all() & constraint.check(value).all()):
            raise ValueError(
                f"init[{name!r}]: {type(q).__name__}'s {param} {value.tolist()} is not "
                f"finite or not in {constraint}"
            )


def _probabilities(name: str, latent: Latent, probs: torch.Tensor):
    want = tuple(latent.batch_shape) + (latent.family.k,)
    probs = probs.to(torch.float64)
    if tuple(probs.shape) != want:
        raise ValueError(
            f"init[{name!r}]: probabilities of shape {tuple(probs.shape)}; expected {want} "
            f"(the site's plates, then its {latent.family.k} categories)"
        )
    if not bool(torch.isfinite(probs).all() & (probs >= 0).all()) or not bool(
        torch.allclose(probs.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-6)
    ):
        raise ValueError(
            f"init[{name!r}]: probabilities must be finite, non-negative and sum to 1 over "
            f"the last dim (sums from {float(probs.sum(-1).min()):.4g} to "
            f"{float(probs.sum(-1).max()):.4g})"
        )
    return torch.distributions.Categorical(probs=probs)


def _block_start(name: str, latent: Latent, q) -> torch.Tensor:
    family = latent.family
    factor_class = _BLOCK_FACTORS[family.name]
    if isinstance(q, factor_class):
        try:
            return family.expected_statistics(q).expand(latent.batch_shape + (family.size,))
        except (AttributeError, RuntimeError) as error:
            raise ValueError(
                f"init[{name!r}]: {factor_class.__name__} whose parameters do not fit the "
                f"block {latent.sites} of batch shape {tuple(latent.batch_shape)} ({error})"
            ) from error
    expected = tuple(latent.prior[i].shape for i in range(len(latent.sites)))
    if isinstance(q, tuple):  # plain numbers are values of shape () (tester 40's P4)
        q = tuple(
            torch.tensor(float(v), dtype=torch.float64) if isinstance(v, numbers.Real) else v
            for v in q
        )
    if (
        isinstance(q, tuple)
        and len(q) == len(latent.sites)
        and all(isinstance(v, torch.Tensor) for v in q)
        and tuple(v.shape for v in q) == expected
    ):
        values = tuple(v.to(torch.float64) for v in q)
        _check_block_values(name, latent, *values)
        return family.expected_statistics(values)
    raise ValueError(
        f"init[{name!r}]: {type(q).__name__} is not a start for the {family.name} block "
        f"{latent.sites}; expected a {factor_class.__name__} (a fitted_blocks_ entry) or a "
        f"tuple of values of shapes {[tuple(s) for s in expected]}"
    )


def _check_block_values(name: str, latent: Latent, mean, precision) -> None:
    """ValueError naming ``init[name]``'s value outside the block's support: a mean not
    finite, a Gamma precision not positive, a Wishart one not symmetric positive definite
    (such a start was blamed on the model's factors as an improper update, tester 39's F2).
    """
    mean_site, precision_site = latent.sites
    if not bool(torch.isfinite(mean).all()):
        raise ValueError(f"init[{name!r}]: the value of the mean {mean_site!r} is not finite")
    if latent.family.name == "Normal-Wishart":
        finite = bool(torch.isfinite(precision).all())
        symmetric = finite and bool(torch.allclose(precision, precision.mT))
        proper = symmetric and not bool(torch.linalg.cholesky_ex(precision).info.any())
        what = "symmetric positive definite"
    else:
        proper = bool((torch.isfinite(precision) & (precision > 0)).all())
        what = "finite and positive"
    if not proper:
        raise ValueError(
            f"init[{name!r}]: the value of the precision {precision_site!r}, "
            f"{precision.tolist()}, is not {what}"
        )


#: A coefficient on x_a²·x_b² above this fraction of a factor's largest is a product term
#: (least squares leaves ~1e-15 of it on a term the factor lacks).
_PRODUCT = 1e-8


def products(latents: dict[str, Latent], factors) -> set[str]:
    """The Normal latents some factor multiplies by another Normal latent: a nonzero
    coefficient on the product of their second-order statistics, x_a²·x_b² (the square of
    a product's mean, (W z)²); a sum a + b, crossed effects, has none."""
    out = set()
    for factor in factors:
        normal = [
            (axis, name)
            for axis, name in enumerate(factor.latents)
            if latents[name].family.name == "Normal"
        ]
        if len(normal) < 2 or not factor.coefficients.numel():
            continue
        c = factor.coefficients.abs()
        for i, (axis_a, a) in enumerate(normal):
            for axis_b, b in normal[i + 1 :]:
                block = _second_order(c, factor.rank + axis_a, latents[a].family)
                block = _second_order(block, factor.rank + axis_b, latents[b].family)
                if float(block.amax()) > _PRODUCT * float(c.amax()):
                    out.update((a, b))
    return out


def _second_order(c: torch.Tensor, axis: int, family) -> torch.Tensor:
    """``c`` along ``axis`` at a Normal family's statistics x_i x_j (after 1 and x)."""
    start = 1 + family.d
    return c.narrow(axis, start, c.shape[axis] - start)


def drawn_starts(latents: dict[str, Latent], stats: dict, names, priors, seed: int) -> dict:
    """``stats`` with each latent of ``names`` at a point drawn from its prior (``priors``'
    where given, else its prior in the forward run), torch seeded by ``seed`` (the global
    RNG restored after): E[T] = T(draw)."""
    out = dict(stats)
    with cpu_rng(seed), torch.no_grad():
        for name in sorted(names):
            latent = latents[name]
            value = detach_provenance(_start_prior(latent, priors).sample())
            shape = latent.batch_shape + (latent.family.size,)
            out[name] = latent.family.statistics(value.to(torch.float64)).expand(shape)
    return out


def _start_prior(latent: Latent, priors):
    """The prior a latent starts from: ``priors``' (its prior given its parents at their
    means) where given, else its prior in the forward run."""
    return (priors or {}).get(latent.name, latent.prior)
