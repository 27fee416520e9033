"""Which (mean, precision) latent pairs ``AutoCAVI(blocks="auto")`` updates as one factor.

A Normal mean μ whose own prior is scaled by a latent precision — μ | τ ~ N(m, (κτ)⁻¹) with
τ ~ Gamma, or μ | Λ ~ N(m, (βΛ)⁻¹) with Λ ~ Wishart — has a Normal-Gamma (Normal-Wishart)
conditional posterior when every factor that mentions μ also mentions its precision (the
conjugate prior of Bishop 2006, §2.3.6 and §10.2; Murphy 2007). Mean field q(μ) q(τ)
then drops the posterior's coupling of the two, which a joint factor keeps: its family holds
every product q(μ) q(τ), so its best bound is at least mean field's, and it is the exact
evidence when the pair is the model's only latent (tested). A pair qualifies when:

- μ's family is Normal (scalar, ``.to_event(1)`` or MultivariateNormal), its precision's is
  Gamma (scalar, or a vector of one element: a group's τ of shape (G, 1) taken as an event
  beside slopes in a features plate) or Wishart (D×D for a D-vector μ), and both have the
  same batch shape;
- μ's own log-density mentions the precision, and that precision is the only latent
  precision of a recognized family it mentions;
- every factor whose log-density mentions μ also mentions the precision (a child
  y ~ N(μ, σ²) with σ known would add statistics μ, μ² that the block does not span);
- each site is in at most one pair (the first, in sampling order).
"""

from __future__ import annotations

from pyro_vae.cavi.latent_units import Latent

_PRECISIONS = ("Gamma", "Gamma vector", "Wishart")


def find_blocks(latents: dict[str, Latent], depends: dict[str, list[str]]) -> list[tuple]:
    """The (mean site, precision site) pairs to update jointly, in sampling order.

    Args:
        latents: {site: Latent}, one unit per site (no blocks yet), in sampling order.
        depends: {factor site: [latent units its log-density mentions]}.
    """
    pairs, taken = [], set()
    for mean, latent in latents.items():
        if latent.family.name != "Normal" or mean in taken:
            continue
        candidates = [
            name
            for name in depends.get(mean, [])
            if name != mean
            and latents[name].family.name in _PRECISIONS
            and latents[name].batch_shape == latent.batch_shape
            and _sizes_match(latent, latents[name])
        ]
        if len(candidates) != 1 or candidates[0] in taken:
            continue
        precision = candidates[0]
        mentioning = [site for site, names in depends.items() if mean in names]
        if all(precision in depends[site] for site in mentioning):
            pairs.append((mean, precision))
            taken.update((mean, precision))
    return pairs


def _sizes_match(mean: Latent, precision: Latent) -> bool:
    """A Gamma precision (or a Gamma vector of one element) goes with any Normal mean; a
    Wishart one with a D-vector mean."""
    if precision.family.name == "Gamma":
        return True
    if precision.family.name == "Gamma vector":
        return tuple(precision.family.event_shape) == (1,)
    d = mean.family.event_shape[-1] if len(mean.family.event_shape) == 1 else 0
    return tuple(precision.family.event_shape) == (d, d)


def regroup(depends: dict[str, list[str]], latents: dict[str, Latent]) -> dict[str, list]:
    """``depends`` with each site-unit replaced by the unit of ``latents`` that holds it."""
    unit_of = {site: name for name, latent in latents.items() for site in latent.sites}
    out = {}
    for factor, names in depends.items():
        units = {unit_of[n] for n in names}
        out[factor] = [name for name in latents if name in units]
    return out


def block_advice(latents: dict[str, Latent], depends: dict[str, list[str]], missed) -> str:
    """A sentence for a mean-field refusal: the (mean, precision) pairs among the units
    ``missed`` (those the refused factor reads) that ``blocks="auto"`` would update as one
    factor, or "" if there are none (or they are blocks already). Mean field fits such a
    mean apart from its precision; with broad priors (Wishart(ν, s I), s from 10³ to 10⁷,
    one datum or collinear data) q(μ) moved thousands of the check's frame-sds between
    probes, and 36 of 144 valid fits were refused, none of them a kink; as blocks, 1 of
    the 144 was (the README's changelog, "mean-field refusals advise blocks")."""
    pairs = [pair for pair in find_blocks(latents, depends) if set(pair) & set(missed)]
    if not pairs:
        return ""
    kinds = {"Gamma": "Normal-Gamma", "Wishart": "Normal-Wishart"}
    named = ", ".join(
        f"{mean!r} with {precision!r} ({kinds[latents[precision].family.name]})"
        for mean, precision in pairs
    )
    return (
        f" AutoCAVI fitted {named} apart (mean field); a mean whose prior its precision "
        "scales, fitted apart from it under broad priors, can move far between the probes "
        "the check relies on, and valid fits of that kind are refused. With "
        f'blocks="auto" (or blocks={pairs!r}) each pair is one factor, solved jointly, '
        "whose bound is at least mean field's: fit again that way first."
    )
