"""A latent declared in a plate and read whole, fitted as one vector over the plate.

Fixed effects are often written with their coefficients in a plate::

    with pyro.plate("features", D):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal(X @ w, s), obs=y)

Every element of ``y`` reads every element of ``w``. AutoCAVI probes a plated latent as one
variable per element, which a factor outside the plate reads at one element per datum
(picked by a data index or by a mixture's assignment); here each y_n is a function of all
of w at once, and its factor couples the elements (w_d w_e terms), which no per-element
probe can hold. The plate changes nothing in the joint density: Σ_d log N(w_d | 0, 1) is
``Normal(0, 1).expand([D]).to_event(1)``'s log-density. :class:`PlatesAsEvents` makes that
reinterpretation while the model runs (Pyro's ``Distribution.to_event``; Pyro's own
``AutoMultivariateNormal`` likewise treats plated sites as parts of one vector), and
``AutoCAVI`` fits ``w`` as the vector site it then is: a Normal one with a
full-covariance MultivariateNormal q (Bishop 2006, §10.3: variational linear regression's
q(w)), a Gamma one with independent Gammas (ARD's α). The bound is on the same log
evidence, in nats; its family of q contains every product over the plate's elements, so
the bound is no lower than such a product's best.

:func:`convertible_plate` says where the reinterpretation is the same model and AutoCAVI
fits it: the plate vectorized, its dim the site's rightmost batch dim (``to_event(1)``
takes that one), the site neither masked nor scaled by a handler (a mask over the plate's
elements would be summed away), and its prior a scalar Normal or Gamma (a Beta, Bernoulli,
Categorical or Dirichlet read whole has no closed-form vector q here). The site may be in
other plates: random slopes ``b`` in plates groups (dim -2) and features (dim -1), read
``b[..., group, :]``, become one F-vector per group, their groups plate then at dim -1
(the batch dim it names once features is the event), which a data index reads as it reads
any latent in one plate.
"""

from __future__ import annotations

import functools

import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger

from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.pyro_compat import frame_at_dim

#: scalar priors whose sites AutoCAVI fits as vectors: a Normal, and a Gamma (Chi2 is one
#: in torch; an Exponential is a Gamma of shape 1, which torch does not subclass)
_VECTOR_FAMILIES = (
    torch.distributions.Normal,
    torch.distributions.Gamma,
    torch.distributions.Exponential,
)


class PlatesAsEvents(Messenger):
    """Run a model with the named latent sites' named plate taken into their event: the
    site's distribution (already broadcast over its plates, which are entered inside the
    model and so handled first) is ``fn.to_event(1)`` and the plate's frame leaves its
    ``cond_indep_stack``; the plate was at dim −1, so the site's other plates move one dim
    right (a groups plate at -2 names the Independent's batch dim -1). ``sites``: {site
    name: plate name, or None for the site's trailing batch dim of size 1, in no plate};
    each pair must have passed :func:`convertible_plate` (a latent read whole) or come from
    :func:`plate_companions` on a run of the same model."""

    def __init__(self, sites: dict[str, str | None]):
        super().__init__()
        self.sites = dict(sites)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] not in self.sites:
            return
        plate, stack = self.sites[msg["name"]], msg["cond_indep_stack"]
        if plate is None:  # its trailing batch dim of size 1, in no plate
            if any(f.dim == -1 for f in stack) or msg["fn"].batch_shape[-1:] != (1,):
                return
        elif not any(frame.name == plate for frame in stack):
            return
        msg["fn"] = msg["fn"].to_event(1)
        # the plate was the site's batch dim -1: its other plates' dims move one right
        msg["cond_indep_stack"] = tuple(
            frame_at_dim(frame, frame.dim + 1) if frame.vectorized else frame
            for frame in stack
            if frame.name != plate
        )


def with_plates_as_events(model, sites: dict[str, str | None]):
    """``model`` run under :class:`PlatesAsEvents` (``sites``: as it takes them);
    ``__wrapped__`` is ``model`` (``functools.wraps``), where the probe runs look for the
    state a model keeps between runs."""

    @functools.wraps(model)
    def rewritten(*args, **kwargs):
        with PlatesAsEvents(sites):
            return model(*args, **kwargs)

    return rewritten


def convertible_plate(node: dict, plates: frozenset) -> str | None:
    """The plate name under which the latent sample site ``node`` (a trace node of the model
    as the user declared it) can be fitted as one vector, where one of ``plates`` (the
    plates a factor reads it across) qualifies (:func:`declined_because` says nothing);
    else None (the caller keeps its refusal)."""
    if declined_because(node, plates) is not None:
        return None
    return next(f.name for f in node["cond_indep_stack"] if f.vectorized and f.dim == -1)


def declined_because(node: dict, plates: frozenset) -> str | None:
    """Why the latent sample site ``node`` cannot be fitted as one vector over one of
    ``plates`` (the plates a factor reads it across), in words for a refusal, or None where
    it can: one of them at dim −1 with the site's last batch dim its size (its other
    plates then move one dim right, :class:`PlatesAsEvents`); no handler mask or scale at
    the site (summed over the plate's elements, a mask would be lost); its distribution a
    scalar Normal or Gamma (``.expand`` of one)."""
    if node["type"] != "sample" or node["is_observed"]:
        return "it is not a latent sample site"
    vectorized = [f for f in node["cond_indep_stack"] if f.vectorized]
    crossed = [f for f in vectorized if f.name in plates]
    last = [f for f in crossed if f.dim == -1]
    if not last and crossed and len(vectorized) > 1:
        # read through a data index across its other plate, inside this one (y[n, f]
        # reading b[group_n, f] with the features plate reused): as one vector over the
        # plate at dim -1, b is in one plate, which a data index reads
        last = [f for f in vectorized if f.dim == -1]
    if not last:
        names = ", ".join(repr(f.name) for f in crossed)
        return f"of the plates it is read across ({names}), none is at dim -1"
    fn = node["fn"]
    if node.get("mask") is not None:
        return (
            "a handler masks it (poutine.mask): declared as one vector, keep the mask in "
            "its prior, dist.Normal(0, s).expand([D]).mask(m).to_event(1)"
        )
    if _scaled(node):
        return "a handler scales it (poutine.scale, or a subsampled plate)"
    base = _expanded_base(fn)
    if isinstance(base, MaskedDistribution):
        return (
            "its prior carries a .mask: declared as one vector, keep it there, "
            "dist.Normal(0, s).expand([D]).mask(m).to_event(1)"
        )
    if not isinstance(base, _VECTOR_FAMILIES) or fn.event_shape != torch.Size():
        return f"its prior ({type(base).__name__}) is not a scalar Normal or Gamma"
    if len(fn.batch_shape) < 1 or fn.batch_shape[-1] != last[0].size:
        return "its last batch dim is not its plate's"
    return None


def event_over_plate(factor: dict, latent: dict, plates: frozenset) -> str:
    """Advice where the observed or latent site ``factor`` (a trace node) reads the latent
    site ``latent`` across one of ``plates`` only because its own event covers that plate
    (PPCA's ``x_n ~ Normal(W @ z_n, s).to_event(1)`` over D features, W's rows in a
    features plate): declared inside that plate, each element reads its own element; ''
    where its event shape has no dim of such a plate's size."""
    event = tuple(getattr(factor["fn"], "event_shape", ()))
    for frame in latent["cond_indep_stack"]:
        if frame.vectorized and frame.name in plates and frame.size in event:
            return (
                f"; {factor['name']!r} has event shape {event}, which spans plate "
                f"{frame.name!r} of {frame.size} elements: declare {factor['name']!r} inside "
                f"pyro.plate({frame.name!r}, {frame.size}, dim=...) instead of .to_event, "
                f"each element reading its own element of {latent['name']!r}, which fits"
            )
    return ""


def plate_companions(
    nodes, read: dict, converted: dict[str, str], earlier=()
) -> dict[str, str | None]:
    """The sites to take into their event beside the latent sites ``converted`` ({site:
    plate}, each about to be taken into its event over that plate; ``nodes``: the trace's,
    before; ``read``: {factor site: the sample sites its log-density read}; ``earlier``:
    the sites taken into their events before, already moved in ``nodes``), so that every
    factor inside a plate that moves keeps all its sites at one dim: {site: the plate, or
    None for a trailing batch dim of size 1 in no plate}.

    Taken as a vector over its dim -1 plate, a site's other plates move one dim right
    (:class:`PlatesAsEvents`); a factor inside such a plate that also reads a site left
    where it was would see the plate at two dims. So the factor's other sites there follow,
    unmasked and unscaled by a handler, an observed site of any family and a latent scalar
    Normal or Gamma:
    - a site with a plate at dim -1 (the same plate or another), into its event over that
      plate (a prior measurement of random slopes, ``z ~ N(b, 1)`` in groups and features;
      ARD's α in groups and features, read by the slopes' prior; a latent followed this
      way is fitted as a vector over that plate too, q joint over it);
    - a site with no plate at dim -1 and its last batch dim of size 1 (a group mean μ_g in
      groups at dim -2, read by ``b ~ N(μ_g, 1)``): that dim into its event, a vector of
      one element.
    The joint density is the same, and their plates move with the latent's. Followers'
    factors are checked likewise, to a fixed point.

    Raises:
        NotConjugateError: naming the site that cannot follow, the factor and the plates.
    """
    moved = dict(converted)
    extra: dict[str, str | None] = {}
    changed = True
    while changed:
        changed = False
        for factor, sites in read.items():
            if factor not in nodes:
                continue
            members = (set(sites) | {factor}) & set(nodes)
            for site, plate in list(moved.items()):
                if site not in members:
                    continue
                moving = _plates_of(nodes[site]) - {plate}
                if not moving & _plates_of(nodes[factor]):
                    continue  # the factor is outside the plates that move (a datum's)
                for other in sorted(members - set(moved) - set(earlier)):
                    node = nodes[other]
                    if not moving & _plates_of(node):
                        continue
                    follows, reason = _following(node)
                    if reason is not None:
                        raise NotConjugateError(
                            f"factor {factor!r} reads {site!r} and {other!r} inside plate(s) "
                            f"{sorted(moving & _plates_of(node))}; {site!r}, taken "
                            f"into its event over {_over(plate)}, would be one vector there, "
                            f"its other plates moving one dim right, but {other!r} {reason}, "
                            "so that factor would see those plates at two dims. Declare "
                            f"{site!r} by hand as one vector site, pyro.sample({site!r}, "
                            "dist.Normal(m, s).expand([F]).to_event(1)), in its other "
                            f"plates, with {other!r} at the same dims there"
                        )
                    moved[other] = extra[other] = follows
                    changed = True
    return extra


def _over(plate: str | None) -> str:
    return "its last batch dim" if plate is None else f"plate {plate!r}"


def _plates_of(node) -> set:
    return {f.name for f in node["cond_indep_stack"] if f.vectorized}


def _following(node) -> tuple[str | None, str | None]:
    """(the plate the sample site ``node`` follows a latent into its event over, None for
    its trailing batch dim of size 1; why it cannot, or None), as :func:`plate_companions`
    lists."""
    frames = {f.dim: f for f in node["cond_indep_stack"] if f.vectorized}
    if node.get("mask") is not None:
        return None, "is masked by a handler (poutine.mask), which an event would sum away"
    if _scaled(node):
        return None, "is scaled by a handler (poutine.scale, or a subsampled plate)"
    if not node["is_observed"] and _scalar_normal_or_gamma(node["fn"]) is None:
        return None, f"is a latent {type(node['fn']).__name__}, not a scalar Normal or Gamma"
    if -1 in frames:
        return frames[-1].name, None
    batch = node["fn"].batch_shape
    if not batch or batch[-1] != 1:
        return None, f"has batch shape {tuple(batch)}, not one of size 1 at dim -1"
    return None, None


def _scaled(node) -> bool:
    """Whether a handler scales the sample site ``node`` (its scale other than 1)."""
    scale = node.get("scale", 1.0)
    return not (isinstance(scale, (int, float)) and scale == 1.0)


def _expanded_base(fn):
    """``fn`` under its ``.expand``s (a plate's broadcast of a scalar prior)."""
    while isinstance(fn, ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _scalar_normal_or_gamma(fn):
    """The Normal or Gamma under ``fn``'s ``.expand``s, if it is a scalar one; else None."""
    base = _expanded_base(fn)
    if isinstance(base, _VECTOR_FAMILIES) and fn.event_shape == torch.Size():
        return base
    return None


def vector_init(init: dict | None, latents: dict, converted) -> dict | None:
    """``init`` with each start given for a site in ``converted`` (taken into its event)
    as the user declared the site, a scalar distribution per element (``Normal(m, s)`` of
    batch shape (D,) or ()), made the vector it now is: ``q.expand(batch + (D,))
    .to_event(1)``, the same start. A start already a vector (a MultivariateNormal over the
    D elements) is kept, and so is anything else (``initial_statistics`` says what a start
    must be).

    Raises:
        ValueError: naming ``init[site]``, where its batch shape does not broadcast to the
            site's shape as declared.
    """
    if not init:
        return init
    out = dict(init)
    for site in set(init) & set(converted) & set(latents):
        q, latent = init[site], latents[site]
        if not isinstance(q, torch.distributions.Distribution) or q.event_shape != ():
            continue
        wanted = "Normal" if isinstance(q, torch.distributions.Normal) else "Gamma"
        if not isinstance(q, _VECTOR_FAMILIES) or not latent.family.name.startswith(wanted):
            continue  # another family: initial_statistics names it as given
        declared = latent.batch_shape + latent.family.event_shape
        try:
            out[site] = q.expand(declared).to_event(1)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"init[{site!r}]: its batch shape {tuple(q.batch_shape)} does not broadcast "
                f"to the site's shape as declared, {tuple(declared)}: give one q for the "
                f"whole site (batch shape ()), one per element ({tuple(declared)}), or, as "
                f"AutoCAVI fits it, the vector's (event shape {tuple(declared[-1:])})"
            ) from None
    return out


def may_take_as_vectors(trace) -> bool:
    """Whether some latent sample site of ``trace`` is in a vectorized plate at dim -1, and
    so might be taken as one vector over it (an explicit block refused on the sites as
    declared is then probed without the blocks first: ``AutoCAVI._probe``)."""
    return any(
        node["type"] == "sample" and not node["is_observed"]
        and any(f.vectorized and f.dim == -1 for f in node["cond_indep_stack"])
        for node in trace.nodes.values()
    )  # fmt: skip
