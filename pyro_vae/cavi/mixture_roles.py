"""The roles of the latents a factor mentions outside its own plates, and a mixture's factor.

A Categorical selector z that picks a component θ_z (``Vindex(theta)[..., z, :]``) makes the
factor a mixture, log f = Σ_k [z = k] g(θ_k) (:func:`mixture_roles`); latents in one plate
the factor is not inside are read through a data index instead
(:mod:`~pyro_vae.cavi.data_indexing`). A mixture's design is [z = k] ⊗ T(θ_z) and its
solved coefficients are laid out along the K categories (:func:`mixture_factor`). A
component in a plate the factor does not read at its own element is refused, saying which.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pyro_vae.cavi.data_indexing import (
    ReadAcrossPlate,
    indexable,
)
from pyro_vae.cavi.exponential_families import (
    DISCRETE_FAMILIES,
    NotConjugateError,
)
from pyro_vae.cavi.factor_form import Factor, trimmed
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.least_squares import summed_to
from pyro_vae.cavi.mixture_components import (
    k_dim_of,
)
from pyro_vae.cavi.refusals import distribution_name


def _plates(site) -> frozenset:
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)


def mixture_roles(site: str, names, latents, trace) -> tuple[str | None, list, list]:
    """(selector, components, indexed) of a factor that mentions latents outside its plates:
    a mixture's Categorical selector and components ({name: its K dim or None}, see
    :func:`_split_outside`: latents in a plate of its K categories, and maybe in plates the
    factor reads at its own elements), with the other latents outside read through a data index
    (:mod:`pyro_vae.cavi.data_indexing`: random intercepts beside latent classes,
    ``Vindex(mu)[..., z] + a[..., group]``; LDA's topic proportions of each word's document,
    ``Categorical(theta[..., doc, :])``); (None, [], those latents) where no Categorical
    picks them, each in one plate the factor is not inside; (None, [], []) where none is
    outside; else ``NotConjugateError``."""
    plates = _plates(trace.nodes[site])
    outside = [n for n in names if latents[n].plates - plates]
    if not outside:
        return None, [], []

    def placed(latent, k):  # a component's K dim, in more plates than the K categories'
        return k_dim_of(latent, k, site, trace)

    # a site's own value never picks its parameters: a transition's s_t is read by the row
    # s_{t−1} picks, LDA's z_n by its document's proportions, s_0 by A[..., 0, :]
    selectors = [
        n for n in names
        if latents[n].family.name == "Categorical" and n not in outside and n != site
    ]  # fmt: skip
    if len(selectors) > 1:
        raise NotConjugateError(
            f"factor {site!r} mentions {outside} across plate(s) it is not inside, and "
            f"{len(selectors)} Categorical latents {selectors}; AutoCAVI's mixtures pick a "
            "component by one Categorical latent (a transition's rows by the previous "
            "state: Categorical(Vindex(A)[..., s_prev, :]) with A's rows in a plate of the "
            "K states)"
        )
    if not selectors:
        grouped = _mixture_of_groups(outside, latents, plates, placed)
        if grouped is not None:
            return grouped
    if not selectors and all(
        indexable(latents[n]) and not latents[n].plates & plates for n in outside
    ):
        return None, [], outside
    k = latents[selectors[0]].family.k if selectors else None
    components, indexed = _split_outside(outside, latents, plates, k, placed=placed)
    for name in (n for n in outside if n not in components and n not in indexed):
        crossed = latents[name].plates - plates
        message = (
            f"factor {site!r} depends on latent site {name!r} across its plate(s) "
            f"{sorted(crossed)}, which {site!r} is not inside, and "
            f"not as a mixture component picked by one Categorical latent inside them "
            f"(Vindex(theta)[..., z, :]); AutoCAVI handles factors inside every plate "
            "of the latents they mention, mixtures, and latents in one plate read at one "
            f"element per datum by a data index (a[..., group])"
        )
        latent = latents[name]
        message += _two_plates_hint(latent, k) + _component_hint(latent, k)
        if len(latent.plates) > 1 and latent.family.name not in DISCRETE_FAMILIES:
            # random slopes b[group] in plates groups and features, a mixture's regression
            # weights in plates components and features: one vector per group or component
            # where the plate at dim -1 goes into the event (plate_events)
            raise ReadAcrossPlate(message, site, name, latent.sites or (name,), crossed)
        raise NotConjugateError(message)
    return selectors[0], components, indexed


def _split_outside(outside: list, latents: dict, plates, k: int | None,
                   selector_plates=frozenset(), placed=None) -> tuple[dict, list]:  # fmt: skip
    """(components, indexed) among the latents ``outside`` a factor's plates: a mixture's
    components, {name: the dim of its batch along the selector's ``k`` categories}, in one
    plate of them (not one of the selector's own ``selector_plates``: a latent there is read
    at the selector's element, by its data index) or, where ``placed`` (a latent → that dim
    or None, given the latent and ``k``: see
    :func:`~pyro_vae.cavi.mixture_components.k_dim_of`) places it, also in
    plates the factor reads at its own elements; and the latents read through a data index,
    in one plate the factor does not share (the rest are neither)."""
    components, indexed = {}, []
    for name in outside:
        latent = latents[name]
        own = latent.plates & selector_plates
        one_plate = latent.batch_shape == (k,) and len(latent.plates) == 1
        dim = None if k is None or own or one_plate or placed is None else placed(latent, k)
        if k is not None and one_plate and not own:
            components[name] = None
        elif dim is not None:
            components[name] = dim
        elif indexable(latent) and not latent.plates & plates:
            indexed.append(name)
    return components, indexed


def _mixture_of_groups(outside: list, latents: dict, plates, placed=None) -> tuple | None:
    """(selector, components, indexed) of a mixture of groups: one Categorical z in a plate
    of groups, read through a data index (with the other latents ``indexed``), picking a
    component of latents in a plate of its K categories (``Vindex(mu)[..., z[..., group]]``,
    each datum's group's component); None where ``outside`` is not that. The selector's
    index is found as any data index's (:func:`~pyro_vae.cavi.data_indexing.find_indices`)."""
    categorical = [n for n in outside if latents[n].family.name == "Categorical"]
    if len(categorical) != 1 or not indexable(latents[categorical[0]]):
        return None
    z = categorical[0]
    if latents[z].plates & plates:
        return None
    others = [n for n in outside if n != z]
    k, own = latents[z].family.k, latents[z].plates
    components, indexed = _split_outside(others, latents, plates, k, own, placed)
    if not components or len(components) + len(indexed) != len(others):
        return None
    return z, components, [z, *indexed]


def _two_plates_hint(latent: Latent, k: int | None) -> str:
    """The rewrite of a continuous latent in several plates read through a data index
    (random slopes b[group] of F features, b in plates groups and features): one vector site
    in the plate the index picks, which fits. '' for any other latent."""
    if k is not None or len(latent.plates) < 2:
        return ""
    if latent.family.name in DISCRETE_FAMILIES:
        return (
            f". Latent {latent.name!r} is a {latent.family.name} in {len(latent.plates)} "
            f"plates {sorted(latent.plates)}: a datum reads a latent through a data index "
            "where it is in one plate, the one the index picks, and a discrete latent's "
            "other elements cannot be one vector site here (no closed-form q for a vector "
            "of discrete latents): declare one site per element of the other plates, or "
            f"leave {latent.name!r} to SVI with pyro_vae.cavi.ConditionalCAVIGuide"
        )
    if len(latent.plates) > 2:
        return (
            f". Latent {latent.name!r} is in {len(latent.plates)} plates "
            f"{sorted(latent.plates)}: a datum reads a latent through a data index where it "
            "is in one plate, the one the index picks, with the elements of one other plate "
            "as a vector (random slopes b[..., group, :], its features plate at dim -1); "
            "with a third plate, declare one site per element of it (b_0, b_1, …, each in "
            "the groups plate, its features a vector), which fits"
        )
    return (
        f". Latent {latent.name!r} is in {len(latent.plates)} plates "
        f"{sorted(latent.plates)}: a datum can read it through a data index when it is in "
        "one plate, the one the index picks, with the others' elements as a vector: "
        "with pyro.plate('groups', G): b = pyro.sample('b', "
        "dist.Normal(0., s).expand([F]).to_event(1)), then b[..., group, :] is one "
        "element (an F-vector) per datum, which fits"
    )


def _component_hint(latent: Latent, k: int | None) -> str:
    """Where a Categorical of ``k`` categories picks: what a mixture's component must be (a
    latent whose plates other than the K categories' the factor reads at its own elements,
    see :mod:`~pyro_vae.cavi.mixture_components`), and the forms of a diagonal-covariance
    mixture that fit (tester 23 met three refusals, each sending to another form that was
    refused too). '' where no Categorical picks, or the latent is no would-be component."""
    if k is None or k not in latent.batch_shape:
        return ""
    return (
        f". A mixture's component is a latent in a plate of the selector's {k} categories; "
        "each other plate of it must be one of the factor's, or at the dim of one of the "
        f"factor's with as many elements, read at the factor's own element there; "
        f"{latent.name!r} has batch shape {tuple(latent.batch_shape)} in plates "
        f"{sorted(latent.plates)}. A diagonal-covariance mixture fits as mu and prec in "
        "plates components (dim=-2) and features (dim=-1), the data in plates data "
        "(dim=-2) and features (dim=-1), read as Vindex(mu)[..., z, torch.arange(D)]"
    )


def components_hint(components, runner) -> str:
    """Where a mixture's components lie in more than one plate: the likely cause of a misfit,
    a latent read through a data index whose plate happens to have as many elements as
    the selector has categories, which AutoCAVI takes for a component; else ''."""
    laid = sorted(getattr(components, "dims", {}))
    if laid:
        return (
            f". {laid} are in more plates than the selector's categories: each element of "
            "the factor must read their element at its own index along those other plates "
            "(Vindex(mu)[..., z, torch.arange(D)]); one that reads another (a permuted or "
            "shifted index) is not fitted"
        )
    plates = {frozenset(runner.latents[name].plates) for name in components}
    if len(plates) < 2:
        return ""
    return (
        f". AutoCAVI took {sorted(components)}, in plates "
        f"{sorted(sorted(p) for p in plates)}, for components the selector picks, since each "
        "plate has as many elements as it has categories; if one of them is read through a "
        "data index instead (a random intercept a[..., subject] beside the classes), "
        "AutoCAVI cannot tell it apart: leave it to SVI with "
        "pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[its name])"
    )


def mixture_design(latents, depends, site, selector, components, rank):
    """(members, rank, components) of a mixture factor log f = Σ_k [z = k] g(θ_k): its
    members are the selector z, then the other latents, each component probed as one
    element, read at the component its z picks. The design [z = k] ⊗ T(θ_z) ⊗ … holds the K
    components' coefficients side by side, and the check runs vary every θ_k', so a factor
    that mentions θ_k' for z = k ≠ k' is caught as not fitting."""
    members = [latents[selector]] + _mixture_members(latents, depends, site, selector)
    return members, rank, components


def mixture_factor(latents, site, design, coefficients, trace) -> Factor:
    """The Factor of a mixture solved on :func:`mixture_design`'s ``design`` (members, rank,
    components): ``coefficients`` [*fbatch, K·P] → [*batch, K, B₁, …] (batch summed as the
    components and z align)."""
    members, rank, components = design
    z, names = members[0], [m.name for m in members[1:]]
    coefficients = coefficients.reshape(coefficients.shape[:-1] + (z.family.k, -1))
    aligned = [m.batch_shape if m.index is not None else latents[m.name].batch_shape
               for m in members[1:] if m.name not in components]  # fmt: skip
    # a component's other plates than the K categories' (a diagonal mixture's features)
    aligned += [_without_k(latents[c].batch_shape, dim)
                for c, dim in getattr(components, "dims", {}).items()]  # fmt: skip
    batch = trimmed(torch.broadcast_shapes(z.batch_shape, *aligned))
    batch = (1,) * (rank - len(batch)) + tuple(batch)
    one = coefficients.narrow(-2, 0, 1)
    if bool((coefficients == one).all()):  # one block for every component (solve_factor's)
        summed = summed_to(one, torch.Size(batch + one.shape[-2:]))
        summed = summed.expand(summed.shape[:-2] + coefficients.shape[-2:])
    else:
        summed = summed_to(coefficients, torch.Size(batch + coefficients.shape[-2:]))
    shape = summed.shape[:-1] + tuple(m.family.size for m in members[1:])
    index = {m.name: m.index for m in members if m.index is not None}
    return Factor(site, distribution_name(trace.nodes[site]), tuple(names), summed.reshape(shape),
                  rank + 1, z.name, components, index=index)  # fmt: skip


def _without_k(batch, dim: int) -> torch.Size:
    """A component's ``batch`` with its dim ``dim`` along the K categories made 1."""
    batch = list(batch)
    batch[dim] = 1
    return torch.Size(batch)


def _mixture_members(latents, depends, site, selector) -> list[Latent]:
    """The latents of a mixture factor but its selector, each probed as one element."""
    names = [n for n in depends[site] if n != selector]
    return [replace(latents[n], batch_shape=torch.Size()) for n in names]
