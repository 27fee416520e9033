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

from pyro_vae.evaluate import data_arguments, eval_mode, latent_draws_of, latent_means
from pyro_vae.model_protocol import offered
from pyro_vae.traces import sample_sites


class NoMeanImageError(ValueError):
    """The model has no observation of x with a mean to draw."""


def observation_site(trace, x: torch.Tensor) -> str:
    """The name of the observed site whose value is ``x`` (the same numbers, any shape).

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
    observed = [n for n, s in sample_sites(trace).items() if s["is_observed"]]
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
    (:func:`pyro_vae.evaluate.latent_means`), otherwise the mean of 100 draws of the guide's
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
        return _site_mean(trace.nodes[observation_site(trace, x)], x.shape[0])


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
