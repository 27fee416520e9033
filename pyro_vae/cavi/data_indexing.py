"""Latents read by data indices: a random intercept ``a[..., group]`` in a likelihood.

A factor in a data plate of N elements that reads a latent in another plate of G elements
(``with plate("groups", G): a = sample(...)``, then ``Normal(a[..., group], s)`` in
``plate("data", N)``) mentions ``a`` across a plate it is not inside. It is still a local
factor when each of its elements reads ONE element of ``a``, picked by data: element n is
multilinear in the statistics of ``a[index[n]]``. Read through ``index``, ``a`` is one more
latent inside the factor's plates, and the factor is probed and contracted as any other;
its messages to ``a`` are summed back over the elements that read each group
(``index_add``), as a hand-written random-intercept model sums over each group's data.

The index is not read from the model's code but found by probing, in one model run at
2 + ⌈log₂ G⌉ points per such latent: a base point, a point where every element of ``a``
moves to another value, and one point per bit b of the group number where only the groups
whose bit b is set move. Element n's log-density at point b equals the moved point's where
its group's bit b is set and the base point's where it is not, which spells its group in
binary. An element that equals neither reads several elements of ``a`` (``a[g1] + a[g2]``)
and is refused; a wrong index cannot survive either way, as the check points, which move
every group apart, then miss the factor's solved form.

The latent may be discrete (a group's Bernoulli flag, a Categorical level): its moved point
takes another category at every element. Where the model has discrete latents, an element
may ignore the latent at the base point (``w * a[..., group]`` with w = 0), so the groups are
spelled from several base points, each element's from the first at which it moves; an
element whose group differs between two bases reads an element picked by a latent, which
is refused, naming the mixture forms that fit.
"""

from __future__ import annotations

import itertools
import math

import torch

from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES, NotConjugateError

_AGREE = 1e-9  # relative to 1 + |log f|, as the probe runs' batched-vs-plain check


class ReadAcrossPlate(NotConjugateError):
    """A factor element reads several elements of a latent across a plate the factor is not
    inside (fixed effects ``(X * w).sum(-1)`` with ``w`` in a features plate). Carries
    ``factor`` (the factor site), ``latent`` (the latent unit's name), ``sites`` (its
    sample sites) and ``plates`` (the plate names crossed), from which ``AutoCAVI`` may fit
    the latent as one vector over the plate instead (:mod:`pyro_vae.cavi.plate_events`)."""

    def __init__(self, message: str, factor: str, latent: str, sites: tuple, plates):
        super().__init__(message)
        self.factor, self.latent, self.sites = factor, latent, tuple(sites)
        self.plates = frozenset(plates)

    def with_note(self, note: str) -> ReadAcrossPlate:
        """The same refusal, ``note`` appended in parentheses (why it was not converted)."""
        return ReadAcrossPlate(f"{self} ({note})", self.factor, self.latent, self.sites,
                               self.plates)  # fmt: skip


def indexable(latent) -> bool:
    """Whether a factor can read ``latent`` through a data index: a latent in one plate, at
    any dim (its batch G along that dim, 1 elsewhere: (G,), or (G, 1) for a plate at dim
    -2). Continuous or discrete: a group's Bernoulli outlier flag ``o[..., group]`` or
    Categorical level read in arithmetic (``mu[..., z[..., group]]`` with ``mu`` one vector
    site) is multilinear in its statistics (1, o) or [z = k] as any function of it is. A
    Categorical that picks a component of a plated latent through a data index is the
    selector of a mixture of groups (``mixture_roles._mixture_of_groups``)."""
    batch = latent.batch_shape
    return len(latent.plates) == 1 and len(batch) > 0 and batch.numel() == max(batch)


def find_indices(runner, reads: dict, gates=(), candidates=None) -> dict:
    """For each factor in ``reads`` ({factor site: the latents it reads across a plate}),
    {latent: index}: LongTensor ``index`` of the factor's log-density shape (size 1 along
    dims where it is constant) such that element e reads element ``index[e]`` of the
    latent's one plate. One batched model run (see the module docstring).

    Where these factors read discrete latents (``gates``: their names), an element can
    ignore a latent at one point and read it at another (``w * b[..., group]`` with a
    Bernoulli ``w`` at 0 ignores ``b``; so does ``s[..., group] * b[..., group]`` where
    ``s`` is 0): the groups are then spelled from several base points (:func:`_bases`),
    each element from the first at which it moves with the latent. An element that moves at
    none does not read it (the bases hold every element of the gates at every combination
    of their values, up to :data:`_MAX_BASES`); its index is 0, harmless, as its
    coefficients on the latent are 0.

    ``candidates`` ({factor site: latents}): latents a factor may read either through a data
    index or as a mixture's components picked by a latent (a plate of as many elements as
    the selector has categories); for those, an element whose group moves with the
    discrete latents gives None (a component) rather than a refusal.

    Raises:
        NotConjugateError: naming the factor and latent, where an element's log-density
            moves with more than one element of the latent, or reads one picked by a latent.
    """
    candidates = candidates or {}
    names = sorted({name for latents in reads.values() for name in latents})
    points, layout = [], {}
    for base in _bases(runner, gates):
        device = next(iter(base.values())).device
        moved = _moved_everywhere(runner.latents, base, runner.draw(1), runner.generator)
        for name in names:
            latent = runner.latents[name]
            groups = latent.batch_shape.numel()
            bits = max(1, (groups - 1).bit_length())
            layout.setdefault(name, []).append((len(points), bits, groups))
            codes = torch.arange(groups, device=device)
            points.append(base)
            for b in range(-1, bits):
                moving = codes >= 0 if b < 0 else (codes >> b) & 1 == 1
                point = dict(base)
                for site in latent.sites:
                    event = base[site].dim() - 1 - len(latent.batch_shape)
                    mask = moving.reshape((1,) + latent.batch_shape + (1,) * event)
                    point[site] = torch.where(mask, moved[site], base[site])
                points.append(point)
    values = {site: torch.cat([p[site] for p in points]) for site in points[0]}
    log_probs = runner.log_probs(values, len(points))
    return {
        site: {
            name: _index(
                site,
                name,
                log_probs[site],
                layout[name],
                runner.latents[name],
                name in candidates.get(site, ()),
            )  # fmt: skip
            for name in latents
        }
        for site, latents in reads.items()
    }


#: base points for :func:`find_indices` at most (each costs 2 + ⌈log₂ G⌉ points a latent)
_MAX_BASES = 64
#: random base points beyond the shifted ones where their product exceeds :data:`_MAX_BASES`
_EXTRA_BASES = 2


def _bases(runner, gates=()) -> list[dict]:
    """Base points for :func:`find_indices`: one random draw where no discrete latent
    gates the factors (an element ignores a continuous latent at no point, almost surely);
    else that draw with each gate's value shifted by 0, 1, …, K − 1 categories
    independently, every combination: each element of each gate then takes every value
    jointly with every other gate's (``s1[g] * s2[h] * b[g]`` reads b only where both are
    1). Where those combinations exceed :data:`_MAX_BASES`, the gates are shifted together
    instead (each element takes every value of each gate, not every combination) and
    :data:`_EXTRA_BASES` random draws are added: an element that moves at none of them
    then gets a wrong index, which its factor's check refuses (never a wrong fit)."""
    base = runner.draw(1)
    gated = [runner.latents[name] for name in gates]
    if not gated:
        return [base]
    sizes = [getattr(latent.family, "k", 2) for latent in gated]
    if math.prod(sizes) <= _MAX_BASES:
        shifts = list(itertools.product(*(range(k) for k in sizes)))
    else:
        shifts = [(shift,) * len(sizes) for shift in range(min(max(sizes), _MAX_BASES))]
    bases = []
    for shift in shifts:
        point = dict(base)
        for latent, k, by in zip(gated, sizes, shift, strict=True):
            value = base[latent.name]
            point[latent.name] = ((value.long() + by) % k).to(value.dtype)
        bases.append(point)
    extra = _EXTRA_BASES if math.prod(sizes) > _MAX_BASES else 0
    return bases + [runner.draw(1) for _ in range(extra)]


def _moved_everywhere(latents: dict, base: dict, drawn: dict, generator) -> dict:
    """``drawn``, with each discrete latent's value moved to another category than
    ``base``'s at every element: two independent draws of a Bernoulli agree at half the
    elements, and an element whose group did not move would spell group 0 in
    :func:`_index` (a continuous draw differs from another everywhere, almost surely)."""
    moved = dict(drawn)
    for latent in latents.values():
        if latent.family.name not in DISCRETE_FAMILIES:
            continue
        value = base[latent.name]
        k = getattr(latent.family, "k", 2)
        step = torch.randint(1, k, value.shape, generator=generator, device=value.device)
        moved[latent.name] = ((value.long() + step) % k).to(value.dtype)
    return moved


def _index(site: str, name: str, log_prob: torch.Tensor, layouts: list, latent,
           may_be_picked: bool = False) -> torch.Tensor | None:  # fmt: skip
    """The group each element of ``site`` reads of ``latent`` (named ``name``), from the
    rows of ``log_prob``
    [points, *shape] that :func:`find_indices` laid out, ``layouts`` one (start, bits,
    groups) per base point: each element's from the first base at which it moves. Where
    an element's group differs between bases (picked by a latent): None if
    ``may_be_picked``, else NotConjugateError."""
    index, found, groups, plates = None, None, layouts[0][2], latent.plates
    for start, bits, _ in layouts:
        at_base, moves = _index_at(site, latent, log_prob, start, bits)
        if index is None:
            index, found = at_base, moves
            continue
        if bool((found & moves & (index != at_base)).any()):
            if may_be_picked:
                return None
            raise NotConjugateError(_picked_by_latent(site, name, plates))
        index = torch.where(found, index, at_base)
        found = found | moves
    if bool((index >= groups).any()):  # only an inconsistent pattern spells a group past G
        raise NotConjugateError(
            f"factor {site!r}: which element of latent site {name!r} each of its elements "
            "reads could not be found by probing"
        )
    for dim in range(index.dim()):
        if index.shape[dim] > 1 and bool((index == index.narrow(dim, 0, 1)).all()):
            index = index.narrow(dim, 0, 1)
    return index


def _picked_by_latent(site: str, name: str, plates) -> str:
    return (
        f"factor {site!r} depends on latent site {name!r} across its plate(s) "
        f"{sorted(plates)}, which {site!r} is not inside, and which element of {name!r} an "
        "element reads changes with the model's discrete latents: it is picked by a latent. "
        "AutoCAVI fits that as a mixture where ONE Categorical latent z picks a component "
        "of latents in a plate of z's K categories: Vindex(mu)[..., z] with the data inside "
        "z's plate, or Vindex(mu)[..., z[..., group]] with z in a plate of groups read "
        "through a data index (a mixture of groups). A Bernoulli picking one of two "
        "components: sample a Categorical of 2 categories instead. Or declare mu as one "
        "vector site outside any plate, dist.Normal(0., s).expand([K]).to_event(1), whose "
        "element the latent then picks in arithmetic (its q is one Gaussian over all K)"
    )


def _index_at(site: str, latent, log_prob: torch.Tensor, start: int, bits: int):
    """(the group each element reads, spelled at the base point in row ``start``; whether
    the element moves there when every group of ``latent`` moves)."""
    still, moved = log_prob[start], log_prob[start + 1]
    moves = (moved - still).abs() > _AGREE * (1 + still.abs())
    index = torch.zeros(still.shape, dtype=torch.long, device=still.device)
    for b in range(bits):
        row = log_prob[start + 2 + b]
        to_moved, to_still = (row - moved).abs(), (row - still).abs()
        if not bool((to_moved.minimum(to_still) <= _AGREE * (1 + row.abs())).all()):
            raise reads_several(
                site, latent, "moving some of them changes it to a value that moving all of "
                "them does not give"
            )  # fmt: skip
        index |= (to_moved < to_still).long() << b
    return index, moves


def reads_several(site: str, latent, how: str) -> ReadAcrossPlate:
    """The refusal of factor ``site`` whose elements read several elements of ``latent``
    across a plate ``site`` is not inside; ``how``: how the probe saw it."""
    name, plates = latent.name, latent.plates
    return ReadAcrossPlate(
        f"factor {site!r} depends on latent site {name!r} across its plate(s) "
        f"{sorted(plates)}, which {site!r} is not inside, and some element of {site!r} reads "
        f"several elements of {name!r} (a sum, a[g1] + a[g2]: {how}); AutoCAVI reads a "
        "latent across a plate only as one element per datum, picked by data (a[..., group]) "
        "or by a Categorical latent (a mixture). " + _reads_all(site, latent),
        site,
        name,
        latent.sites or (name,),
        plates,
    )


def _reads_all(site: str, latent) -> str:
    """What to do where every element of ``site`` reads all of ``latent``: declare a Normal
    one vector site, and a Gamma one vector of independent Gammas (ARD precisions over a
    weight vector's coordinates); a plated Beta, Bernoulli, Dirichlet or Categorical read
    whole has no closed form here: one scalar site per element, or SVI (tester 23: the
    Normal's advice was given about ARD's Gamma, and led to a second refusal; testers N and
    N2: a spike-and-slab's switches were sent to SVI, while one site per switch fits)."""
    name = latent.name
    if latent.family.name in ("Normal", "MultivariateNormal"):
        return (
            f"Where every element of {site!r} reads all of {name!r} (fixed effects "
            "(X * w).sum(-1) with w in a features plate), declare it as one vector site "
            "outside the plate instead: dist.Normal(0, s).expand([D]).to_event(1), or a "
            "MultivariateNormal"
        )
    if latent.family.name == "Gamma":
        return (
            f"Where every element of {site!r} reads all of {name!r} (ARD: precisions α_d over "
            f"a weight vector's coordinates), declare {name!r} as one vector site outside "
            "the plate instead, its coordinates independent Gammas: "
            "dist.Gamma(a, b).expand([D]).to_event(1), which fits"
        )
    family = latent.family.name
    return (
        f"Where every element of {site!r} reads all of {name!r} (a spike-and-slab's "
        f"switches over a weight vector's coordinates), a plated {family} has no "
        f"closed-form update (nor a vector one): declare one scalar {family} site per "
        f"element instead ({name}_0, {name}_1, …, each outside the plate), which fits where "
        f"{site!r} is multilinear in them, or leave {name!r} to SVI with "
        f"pyro_vae.cavi.ConditionalCAVIGuide(model, svi_sites=[{name!r}]), which fits the "
        "rest in closed form given each draw of it"
    )


def read_by_index(tensor: torch.Tensor, index: torch.Tensor, leading: int, trailing: int = 1):
    """``tensor`` [*lead, *batch, *trail] (``leading`` and ``trailing`` dims around a
    latent's batch of G elements, (G,) or (G, 1)) read at ``index``:
    [*lead, *index.shape, *trail]."""
    tensor = tensor.flatten(leading, tensor.dim() - trailing - 1)
    taken = tensor.index_select(leading, index.reshape(-1))
    return taken.reshape(tensor.shape[:leading] + index.shape + tensor.shape[leading + 1 :])


def scatter_by_index(message: torch.Tensor, index: torch.Tensor, shape) -> torch.Tensor:
    """The reverse of :func:`read_by_index` for a message [*batch, B] (batch broadcastable
    with ``index``): summed into ``shape`` [G, B] at the groups the elements read."""
    common = torch.broadcast_shapes(message.shape[:-1], index.shape)
    flat = message.expand(common + message.shape[-1:]).reshape(-1, message.shape[-1])
    out = message.new_zeros((math.prod(shape[:-1]), shape[-1]))
    return out.index_add_(0, index.expand(common).reshape(-1), flat).reshape(shape)


#: rows (groups) up to which :func:`apply_by_group` loops over rows rather than gathering
_LOOPED_GROUPS = 4096
#: elements of a [chunk, S, P] gather of per-group designs per step of
#: :func:`apply_by_group` (2²² float64, 32 MiB)
_APPLY_BUDGET = 1 << 22


def index_axes(reads: list) -> tuple[list, list]:
    """The distinct indices among ``reads`` [(index, G)], one per indexed member, as the
    axes of a layout by group [(index, G)], and each member's axis: a random intercept
    and slope of the same groups (``a[..., g] + b[..., g] * x``) share one axis of G rows,
    not G x G."""
    axes, member_axis = [], []
    for index, groups in reads:
        found = [
            i for i, (other, size) in enumerate(axes)
            if size == groups and other.shape == index.shape and bool((other == index).all())
        ]  # fmt: skip
        if not found:
            axes.append((index, groups))
        member_axis.append(found[0] if found else len(axes) - 1)
    return axes, member_axis


def group_keys(shared: torch.Size, indices: list, shape: torch.Size) -> torch.Tensor:
    """Each factor element's row in a layout by group, [*``shape``]: batch [G₁, …, G_k,
    *``shared``] flattened row-major (G_i: the i-th indexed latent's plate; ``shared``: the
    factor's batch dims, size 1 where an index varies), element e at ``indices[i][e]``
    along G_i and at its own coordinates along ``shared``'s dims of size > 1.
    ``indices``: [(LongTensor index, G)], each index broadcastable to ``shape``."""
    device = indices[0][0].device
    key, stride = torch.zeros(shape, dtype=torch.long, device=device), 1
    for dim in reversed(range(len(shared))):
        if shared[dim] > 1:
            view = [1] * len(shape)
            view[dim] = shared[dim]
            key = key + torch.arange(shared[dim], device=device).reshape(view) * stride
            stride *= shared[dim]
    for index, groups in reversed(indices):
        key = key + index * stride
        stride *= groups
    return key


def collapse_by_group(coefficients: torch.Tensor, shared: torch.Size, reads: list):
    """A factor's per-element coefficients [*shape, B₁, …] summed over the elements that
    read the same groups (and sit alike along ``shared``, the factor's batch with 1 where an
    index varies): [G₁, …, G_k, *shared, B₁, …] (one axis per distinct index, see
    :func:`index_axes`), with each indexed member's new index (an arange along its axis)
    and each element's row in that layout (for the check at q). The factor's expectation
    and messages are unchanged (they are linear in C), but cost O(G) a sweep instead of
    O(N), as a hand-written model's sums of each group's data. ``reads`` [(index, G)] per
    indexed member. None where the layout has no fewer rows than the factor has elements
    (crossed indices of many levels)."""
    rank = len(shared)
    shape = coefficients.shape[:rank]
    axes, member_axis = index_axes(reads)
    groups = [g for _, g in axes]
    rows = math.prod(groups) * math.prod(shared)
    if rows >= math.prod(shape):
        return None
    keys = group_keys(shared, axes, shape)
    event = coefficients.shape[rank:]
    flat = coefficients.reshape((-1,) + event)
    summed = coefficients.new_zeros((rows,) + event)
    summed.index_add_(0, keys.expand(shape).reshape(-1), flat)
    summed = summed.reshape(tuple(groups) + tuple(shared) + event)
    k = len(groups)
    new = [
        torch.arange(g, device=keys.device).reshape((1,) * i + (g,) + (1,) * (k - 1 - i + rank))
        for i, g in enumerate(groups)
    ]
    return summed, [new[i] for i in member_axis], keys


def apply_by_group(designs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, solve):
    """Least-squares coefficients [*shape, P] of every factor element, from the designs
    laid out by group ``designs`` [R, S, P] and each element's S log-densities ``values``
    [S, *shape], the element at row ``keys`` [*shape] (:func:`group_keys`): one solve per
    row (group), its elements the right-hand sides, not one per datum, with the same
    solution. ``solve(a, b)``: least squares of a [..., S, P] and b [..., S, M]. Up to
    :data:`_LOOPED_GROUPS` rows, one solve per row holding elements (sorted by row); past
    that, each element's design is gathered, in chunks of :data:`_APPLY_BUDGET` elements."""
    count, size = values.shape[0], designs.shape[-1]
    rhs = values.reshape(count, -1).T  # [E, S]
    rows = keys.expand(values.shape[1:]).reshape(-1)
    if designs.shape[0] <= _LOOPED_GROUPS:
        order = rows.argsort()
        sizes = torch.bincount(rows, minlength=designs.shape[0]).tolist()
        parts = [
            solve(designs[row], part.T).T
            for row, part in enumerate(rhs[order].split(sizes))
            if sizes[row]
        ]
        dtype = torch.result_type(designs, rhs)
        out = torch.empty((rows.numel(), size), dtype=dtype, device=rhs.device)
        out[order] = torch.cat(parts)
    else:
        step = max(1, _APPLY_BUDGET // (size * count))
        out = torch.cat([
            solve(designs[rows[i : i + step]], rhs[i : i + step].unsqueeze(-1)).squeeze(-1)
            for i in range(0, rows.numel(), step)
        ])  # fmt: skip
    return out.reshape(values.shape[1:] + (size,))


def sum_by_rows(tensor: torch.Tensor, rows: torch.Tensor, shape) -> torch.Tensor:
    """Per-point log-densities [S, *site shape] summed as :func:`collapse_by_group` summed
    the coefficients: over the dims ``rows`` [*batch] is 1 along, then into each element's
    row; [S, *``shape``] (the collapsed factor's batch)."""
    count = tensor.shape[0]
    while tensor.dim() > rows.dim() + 1:
        tensor = tensor.sum(1)
    for dim, size in enumerate(rows.shape):
        if size == 1 and tensor.shape[dim + 1] != 1:
            tensor = tensor.sum(dim + 1, keepdim=True)
    flat = tensor.expand((count,) + rows.shape).reshape(count, -1)
    out = tensor.new_zeros((count, math.prod(shape)))
    return out.index_add_(1, rows.reshape(-1), flat).reshape((count,) + tuple(shape))
