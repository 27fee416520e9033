"""``AutoCAVI``'s fitted q as a Pyro guide, joint where q is joint, for the diagnostics.

``variational_distributions()`` gives each site's marginal under q. A guide drawing every
site from its marginal (:func:`pyro_vae.diagnostics.variational_guide`) is q only under
mean field; ``AutoCAVI``'s q is joint in two places, and has elements the bound leaves out:

- a block q(μ, τ) = q(τ) q(μ | τ) (Normal-Gamma: τ ~ Gamma(a, b), μ | τ ~ N(m, (τP)⁻¹);
  Normal-Wishart: Λ ~ Wishart(ν, W), μ | Λ ~ N(m, (βΛ)⁻¹); Bishop 2006, eqs. 2.154 and
  10.59). Drawn apart, from the Student-t and Gamma marginals, a Normal-Gamma block whose
  q is the exact posterior scored an ELBO 0.023 nats (13 standard errors) below its bound,
  and PSIS's k̂ was 0.39 where an exact q has −inf;
- a Markov chain kept whole, q(s₁, …, s_T) = q(s₁) Π_t q(s_t | s_{t−1}), each conditional
  its pairwise marginal's row over the marginal (forward filtering, backward sampling's
  forward half: Scott 2002); the chain's sites are drawn in order;
- an element whose prior the model masks off but whose data read it has a flat prior, as
  AutoCAVI fitted it; its site is marked ``infer={"flat_prior": True}``, so the
  evaluators' refusal of a guide scoring elements the model masks off (there, padding
  that nothing reads) lets it through (tester DB: every diagnostic refused such a fit);
- an element absent from the model (masked off and mentioned by no factor: ``obs_mask``'s
  ``y_unobserved`` where y is observed) keeps a standard placeholder q, masked out of log q
  here as it is out of the bound (counted, the placeholders took an ELBO estimate of −21.6
  nats to −1.7). Its draws stay in the trace (the model ignores them) and in
  ``to_inference_data``'s posterior group, where they are not posterior draws.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.ops.indexing import Vindex

from pyro_vae.cavi.exponential_families import NormalGamma, NormalWishart
from pyro_vae.plate_frames import inside_plates


def fitted_guide(latents: dict, q: dict, chains: dict, absent: dict,
                 plates: dict | None = None, events: dict | None = None,
                 flattened: dict | None = None) -> Callable[..., None]:  # fmt: skip
    """The guide drawing every latent site from q (the model's arguments are ignored).

    Args:
        latents: {unit: Latent}, in the model's sampling order.
        q: {unit: fitted q} (a chain's sites: their marginals).
        chains: {chain of sites: (marginals [T, *batch, K], pairwise marginals
            [T−1, *batch, K, K])}; batch: a plated chain's plates, else empty.
        absent: {unit: bool mask [*batch] of the elements absent from the model, or None}.
        plates: {site: the model's vectorized plate frames around it}; each site is drawn
            inside the same plates (name, size, dim), so its batch dims are plate dims as
            Pyro's shape checks in ``Trace_ELBO`` ask (drawn outside, a plated site failed
            them with "invalid log_prob shape").
        events: {site: (the model's plate frames around it, its shape as fitted, batch
            and event dims: (G, D) for random slopes)} of the sites AutoCAVI fitted
            as one vector over a plate they were declared in
            (:mod:`pyro_vae.cavi.plate_events`): each is drawn whole from its joint q as
            an auxiliary site ``_<site>_vector`` outside that plate and given to the
            model's site as a point mass inside it (Pyro's ``AutoMultivariateNormal``
            does the same with its joint latent), so the site's shape and plates are the
            model's and log q is counted once, at the auxiliary site.
        flattened: {site: its event shape} of the Normal sites AutoCAVI fitted as one
            vector of their elements (:mod:`pyro_vae.cavi.event_flattening`): drawn as a
            d-vector at an auxiliary site ``_<site>_vector`` inside the site's plates and
            given to the site, reshaped to its event shape, as a point mass.
    """
    in_chain = {site: chain for chain in chains for site in chain}
    plates, events, flattened = plates or {}, events or {}, flattened or {}

    def guide(*args, **kwargs) -> None:
        made = {}  # each plate made once per run (a plate records a site under its name)

        def within(site):
            return inside_plates(plates.get(site, ()), made)

        def draw(site, fn):
            if site in flattened:
                return _draw_flattened(site, fn, flattened[site], within)
            if site not in events:
                with within(site):
                    return pyro.sample(site, fn, infer={"flat_prior": True})
            # one draw outside every plate, its event the site's own shape (a site in
            # plates groups and features: q's batch (G,) of D-vectors; drawn inside
            # groups, the model's plate of that name at another dim would be a second
            # plate of one name). Only the site's own dims: q(w | τ) of a block has τ's
            # particle dims in its batch too, which stay batch dims (folded into the
            # event, a draw under P particles held P² values: tester AU)
            frames, shape = events[site]
            whole = fn.to_event(len(shape) - len(fn.event_shape))
            drawn = pyro.sample(f"_{site}_vector", whole, infer={"is_auxiliary": True})
            value = drawn
            if value.dim() > len(shape):  # under outer plates (particles): batch (P, 1, …)
                outer = value.shape[: -len(shape)]  # at dims left of the model's plates
                value = value.reshape(outer[: len(outer) - len(shape)] + shape)
            with inside_plates(frames, made):
                pyro.sample(site, dist.Delta(value))
            # as q lays it out, the particle dims left of its batch: a block's mean is
            # drawn given it (given the model's value, a group's τ (P, G, 1) put the
            # particles beside the groups, and q(μ | τ) drew P² values)
            return drawn

        for name, latent in latents.items():
            if name in in_chain:
                if in_chain[name][0] == name:
                    chain = in_chain[name]
                    with within(name):
                        sample_chain(chain, *chains[chain], [absent.get(s) for s in chain])
                continue
            q_unit, mask = q[name], absent.get(name)
            if isinstance(q_unit, (NormalGamma, NormalWishart)):
                _sample_block(latent.sites, q_unit, mask, draw)
                continue
            draw(name, _masked(_pyro(q_unit), mask))

    guide.__name__ = f"AutoCAVI.variational_guide({', '.join(latents)})"
    return guide


def _draw_flattened(site: str, fn, shape: torch.Size, within) -> torch.Tensor:
    """A flattened site (``fn`` its q over d elements) drawn as ``_<site>_vector`` and
    given to ``site`` reshaped to its event ``shape``, a point mass of that many event
    dims; both inside the site's plates (``within``)."""
    with within(site):
        drawn = pyro.sample(f"_{site}_vector", fn, infer={"is_auxiliary": True})
        value = drawn.reshape(drawn.shape[:-1] + shape)
        pyro.sample(site, dist.Delta(value, event_dim=len(shape)))
    return drawn


def _pyro(q) -> dist.TorchDistribution:
    """``q`` as a Pyro distribution (the sweeps keep a chain's marginals as torch's)."""
    if isinstance(q, TorchDistributionMixin):
        return q
    if isinstance(q, torch.distributions.Categorical):
        return dist.Categorical(probs=q.probs)
    raise TypeError(f"q: {type(q).__name__} is not a Pyro distribution")


def _masked(fn, mask):
    """``fn`` with the elements absent from the model (``mask`` True) out of log q."""
    return fn if mask is None else fn.mask(~mask)


def _sample_block(sites: tuple[str, str], q, mask, draw) -> None:
    """τ (or Λ) from its marginal, then μ from its Normal given that draw; ``mask``: the
    block's elements absent from the model, out of log q at both sites; ``draw(site,
    fn)``: the site drawn from ``fn`` inside its plates, its value returned as q lays it
    out."""
    mean_site, precision_site = sites
    precision = draw(precision_site, _masked(q.precision_distribution(), mask))
    draw(mean_site, _masked(q.mean_given(precision), mask))


def sample_chain(chain: tuple[str, ...], marginals: torch.Tensor, pairwise: torch.Tensor,
                 absent=None):  # fmt: skip
    """Pyro sample sites ``chain`` (s₁, …, s_T) drawn from a chain's q: s₁ from its
    marginal γ₁ (``marginals`` [T, *batch, K]), then each s_t from q(s_t | s_{t−1}), the
    pairwise marginal's row ξ_t(s_{t−1}, ·) (``pairwise`` [T−1, *batch, K, K]) normalized
    (it sums to γ_{t−1}(s_{t−1})); ``batch``: a plated chain's plates (one chain per
    element), else empty. ``absent``: each site's mask of the elements absent from the
    model ([*batch] bool, or None), left out of log q. Used by AutoCAVI's guide and
    ``StructuredMeanField``'s."""
    masks = absent or [None] * len(chain)
    previous = pyro.sample(chain[0], _masked(dist.Categorical(probs=marginals[0]), masks[0]))
    for t in range(1, len(chain)):
        rows = Vindex(pairwise[t - 1])[..., previous, :]  # [*draws, *batch, K]
        probs = rows / rows.sum(-1, keepdim=True)
        previous = pyro.sample(chain[t], _masked(dist.Categorical(probs=probs), masks[t]))
