"""Mean images from any Pyro model: reconstructions E[x | z = E_q z] and prior samples.

Figures and the reconstruction metric need E[x | z]. A model may offer it as
``decode(z)`` (and prior draws as ``generate(num)``), but nothing requires either: the
model's own observation site already holds p(x | z), so

- :func:`reconstruct` conditions the model on z = E_q[z | x] (``poutine.condition``) and
  reads the mean of the site that observes x;
- :func:`prior_mean_images` runs the model with its observations released
  (``poutine.uncondition``: z drawn from the prior, the prior predictive; Pyro's
  ``Predictive`` would hand back an ``obs=x`` observation unchanged) and reads the same
  mean.

"The site that observes x" is the observed sample site whose value is the data (the
same numbers, any shape). A likelihood without a closed-form ``mean`` gives none.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from pyro_vae.evaluate import bare_pair, check_rows, data_arguments, eval_mode
from pyro_vae.latent_summaries import latent_draws_of, latent_means
from pyro_vae.model_protocol import offered
from pyro_vae.traces import sample_sites


class NoMeanImageError(ValueError):
    """The model has no observation of x with a mean to draw."""


def observation_site(trace, x: torch.Tensor, held=()) -> str:
    """The name of the observed site whose value is ``x`` (the same numbers, any shape);
    ``held``: latent sites the caller conditioned (observed in ``trace``, but not data).

    Raises:
        NoMeanImageError: no observed site holds ``x``.
    """
    for name, site in sample_sites(trace).items():
        value = site["value"]
        if (
            site["is_observed"]
            and torch.is_tensor(value)
            and value.numel() == x.numel()
            and torch.equal(value.reshape(x.shape).to(x.dtype), x)
        ):
            return name
    observed = [n for n, s in sample_sites(trace).items() if s["is_observed"] and n not in held]
    raise NoMeanImageError(
        f"model: none of its observed sites {observed} holds the data x itself, so there is "
        "no E[x | z] to draw; give the model decode(z)"
    )


def _site_mean(site: dict, rows: int) -> torch.Tensor:
    try:
        mean = site["fn"].mean
    except NotImplementedError as err:
        raise NoMeanImageError(
            f"model: the distribution of its observation {site['name']!r} "
            f"({type(site['fn']).__name__}) has no closed-form mean; give the model decode(z)"
        ) from err
    return mean.reshape(rows, -1)


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor) -> torch.Tensor:
    """E[x | z = E_q z] for each row of ``x``, flattened to ``[N, D]`` (data units).

    E_q z is the mean of the guide's ``encode(x)`` when it offers one
    (:func:`pyro_vae.latent_summaries.latent_means`), otherwise the mean of 100 draws of the guide's
    one latent site per datapoint.

    Raises:
        NoMeanImageError: no ``decode`` and no observation of x with a mean.
        ValueError: no ``encode`` and not one latent site per datapoint to centre on.
    """
    with eval_mode(model, guide):
        decode = offered(model, "decode")
        if decode is not None:
            return decode(latent_means(model, guide, x)).reshape(x.shape[0], -1)
        pair, site, draws = latent_draws_of(model, guide, data_arguments(x), 100)
        subsample = pair.subsample(0, x.shape[0]).to(x.device)
        with poutine.block():
            guide_tr = poutine.trace(pair.guide).get_trace(x, subsample=subsample)
        shape = guide_tr.nodes[site]["value"].shape
        # E_q z: the guide's own mean when it offers encode(x), else a Monte Carlo mean
        exact = offered(guide, "encode") is not None
        centre = (latent_means(model, guide, x) if exact else draws.mean(0)).reshape(shape)
        with poutine.block():
            trace = poutine.trace(poutine.condition(pair.model, {site: centre})).get_trace(
                x, subsample=subsample
            )
        return _site_mean(trace.nodes[observation_site(trace, x, (site,))], x.shape[0])


@torch.no_grad()
def prior_mean_images(model, x_like: torch.Tensor, num: int) -> torch.Tensor:
    """E[x | z] for ``num`` codes z drawn from the model's prior, ``[num, D]`` (data units).

    ``generate(num)`` when the model has it; otherwise the model is run on ``num`` rows
    shaped like ``x_like`` (its rows repeated as needed, only for their shape) with its
    observations released, and the mean of its observation of x is read.

    Raises:
        NoMeanImageError: no ``generate`` and no observation of x with a mean.
    """
    generate = offered(model, "generate")
    if generate is not None:
        with eval_mode(model):
            return generate(num).reshape(num, -1)
    rows = x_like[torch.arange(num, device=x_like.device) % x_like.shape[0]]
    with eval_mode(model), poutine.block():
        conditioned = poutine.trace(model).get_trace(rows)
        name = observation_site(conditioned, rows)
        trace = poutine.trace(poutine.uncondition(model)).get_trace(rows)
    return _site_mean(trace.nodes[name], num)


def _decoder(model):
    decode = offered(model, "decode")
    if decode is None:
        raise NoMeanImageError(
            f"model: {type(model).__name__} offers no decode(z), so images at chosen codes "
            "z cannot be drawn; give the model decode(z)"
        )
    return decode


@torch.no_grad()
def latent_traversal(
    model, guide, x: torch.Tensor, num_dims: int = 8, steps: int = 9, row: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images E[x | z] as one latent coordinate at a time moves and the others stay.

    The codes are the latent means E_q[z | x_n] of the rows of ``x``
    (:func:`pyro_vae.latent_summaries.latent_means`). The ``num_dims`` coordinates whose means
    vary most across ``x`` (the most active units, Burda et al. 2015, §5.2) are each swept
    over ``steps`` evenly spaced values between their 5th and 95th percentile across ``x``,
    starting from row ``row``'s code, through the model's ``decode(z)``. Centre and range
    come from the data's codes, not from the prior, so the traversal means the same under
    any prior (a mixture has no single centre to sweep around).

    Returns:
        ``(images [num_dims, steps, D], dims [num_dims], values [num_dims, steps])``,
        images in data units, on ``x``'s device; ``dims`` most varied first.

    Raises:
        NoMeanImageError: the model offers no ``decode``.
        ValueError: fewer than two rows in ``x``, or a latent code that is not one vector
            per row (:func:`pyro_vae.latent_summaries.latent_means`).
    """
    decode = _decoder(model)
    if x.shape[0] < 2:
        raise ValueError(f"x: {x.shape[0]} rows; a traversal's range needs at least 2")
    with eval_mode(model, guide):
        codes = latent_means(model, guide, x)
        spread = codes.var(0)
        dims = spread.argsort(descending=True)[: min(num_dims, codes.shape[1])]
        low, high = codes.quantile(torch.tensor([0.05, 0.95], device=codes.device), dim=0)
        fractions = torch.linspace(0, 1, steps, device=codes.device)
        values = low[dims, None] + fractions * (high - low)[dims, None]
        z = codes[row].expand(len(dims), steps, -1).clone()
        z[torch.arange(len(dims), device=z.device), :, dims] = values
        images = decode(z.reshape(-1, codes.shape[1])).reshape(len(dims), steps, -1)
    return images, dims, values


@torch.no_grad()
def latent_interpolation(
    model, guide, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 9
) -> torch.Tensor:
    """Images E[x | z] along the straight line from E_q[z | x_start] to E_q[z | x_end].

    One line per pair of rows of ``x_start`` and ``x_end`` (``[P, ...]`` each); z_t =
    (1 − t) z_start + t z_end at ``steps`` evenly spaced t in [0, 1], through the model's
    ``decode(z)``. (A straight line, not the great circle some use for a Gaussian prior in
    many dimensions, White 2016: the endpoints are the two reconstructions either way.)

    Returns:
        ``[P, steps, D]``, data units, on the inputs' device.

    Raises:
        NoMeanImageError: the model offers no ``decode``.
        ValueError: ``x_start`` and ``x_end`` hold different numbers of rows, or either
            holds rows the model does not take (:func:`pyro_vae.evaluate.check_rows`,
            naming which).
    """
    decode = _decoder(model)
    bare_model = bare_pair(model, guide)[0]  # as latent_means checks its rows
    check_rows(x_start, bare_model, "x_start")  # by name (tester FJ: NaN in x_end was "x")
    check_rows(x_end, bare_model, "x_end")
    if x_start.shape[0] != x_end.shape[0]:
        raise ValueError(
            f"x_end: {x_end.shape[0]} rows; expected as many as x_start's {x_start.shape[0]}"
        )
    with eval_mode(model, guide):
        start, end = latent_means(model, guide, x_start), latent_means(model, guide, x_end)
        t = torch.linspace(0, 1, steps, device=start.device)[None, :, None]
        z = (1 - t) * start[:, None] + t * end[:, None]
        return decode(z.reshape(-1, start.shape[1])).reshape(start.shape[0], steps, -1)
