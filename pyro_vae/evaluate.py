"""Evaluate a fitted model/guide pair per datapoint.

All estimates rest on the importance weights of the guide for the model,

    log w_k(x_n) = log p(x_n, z_k) − log q(z_k | x_n),    z_k ~ q(· | x_n),

computed for K particles at once (a vectorized ``pyro.plate`` outside the model's own
plates) and summed within each datapoint of the ``"data"`` plate:

- the ELBO, E_q[log w] ≤ log p(x_n) (Jordan et al. 1999; the lecture's eq. 18.3);
- the importance-weighted bound log (1/K) Σ_k w_k (Burda, Grosse & Salakhutdinov 2015),
  which is ≥ the ELBO in expectation, increases with K, and tends to log p(x_n); it is
  computed in chunks of particles with a running log-sum-exp, so memory is bounded by
  ``max_elements`` whatever K is;
- reconstruction error of E[x | z = E_q z] and the active latent units
  (Burda et al. 2015, §5.2: Cov_x(E_q[z_u | x]) > 0.01).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from pyro_vae.pointwise import per_datapoint_log_density

_PARTICLES = "_eval_particles"


@contextlib.contextmanager
def eval_mode(*modules: object) -> Iterator[None]:
    """Put torch modules in eval mode (no corruption noise, no dropout), then restore them."""
    saved = [(m, m.training) for m in modules if isinstance(m, torch.nn.Module)]
    for m, _ in saved:
        m.train(False)
    try:
        yield
    finally:
        for m, mode in saved:
            m.train(mode)


def _check_num(arg: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{arg}: {value} is not a positive integer")


def max_plate_nesting(model, guide, *args, **kwargs) -> int:
    """How many batch dimensions the model and guide use, read from one trace of each."""
    with poutine.block(), torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    nesting = 0
    for tr in (prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                nesting = max([nesting, *dims])
    return nesting


def log_importance_weights(
    model, guide, x: torch.Tensor, num_samples: int, nesting: int | None = None
) -> torch.Tensor:
    """log p(x_n, z_k) − log q(z_k | x_n) for K = ``num_samples`` draws: ``[K, N]``."""
    _check_num("num_samples", num_samples)
    if nesting is None:
        nesting = max_plate_nesting(model, guide, x)
    rank = nesting + 1
    with poutine.block(), pyro.plate(_PARTICLES, num_samples, dim=-rank):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    batch = x.shape[0]
    return per_datapoint_log_density(
        model_tr, num_samples, batch, rank
    ) - per_datapoint_log_density(guide_tr, num_samples, batch, rank)


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    _check_num("batch_size", batch_size)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@torch.no_grad()
def elbo_per_datapoint(
    model, guide, x: torch.Tensor, num_samples: int = 1, batch_size: int = 1000
) -> torch.Tensor:
    """Monte Carlo ELBO of each row of ``x`` (nats), averaged over ``num_samples`` draws."""
    with eval_mode(model, guide):
        nesting = max_plate_nesting(model, guide, x[:batch_size])
        return torch.cat(
            [
                log_importance_weights(model, guide, xb, num_samples, nesting).mean(0)
                for xb in _batches(x, batch_size)
            ]
        )


@torch.no_grad()
def iwae_log_likelihood(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 2**23,
    progress: bool = False,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x_n) for each row of ``x`` (nats).

    log p(x_n) ≈ log (1/K) Σ_k exp(log w_k(x_n)), K = ``num_samples`` (Burda et al. 2015
    use K = 5000). Particles are drawn in chunks of at most ``max_elements / (batch · D)``
    and merged by log-sum-exp, so peak memory does not grow with K. ``progress`` shows a
    progress bar over datapoints.
    """
    _check_num("num_samples", num_samples)
    _check_num("max_elements", max_elements)
    out = []
    with eval_mode(model, guide):
        nesting = max_plate_nesting(model, guide, x[:batch_size])
        bar = tqdm(
            total=x.shape[0],
            desc=f"log p(x), K={num_samples}",
            unit="image",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for xb in _batches(x, batch_size):
            bar.update(xb.shape[0])
            chunk = max(1, min(num_samples, max_elements // max(1, xb.numel())))
            acc = torch.full((xb.shape[0],), -math.inf)
            for start in range(0, num_samples, chunk):
                k = min(chunk, num_samples - start)
                # Every chunk scores the same xb; Pyro's argument and support checks have
                # seen it in the first, and repeating them costs ~10% of the evaluation.
                checked = contextlib.nullcontext() if start == 0 else pyro.validation_enabled(False)
                with checked:
                    lw = log_importance_weights(model, guide, xb, k, nesting)
                acc = torch.logaddexp(acc, torch.logsumexp(lw, dim=0))
            out.append(acc - math.log(num_samples))
        bar.close()
    return torch.cat(out)


@torch.no_grad()
def latent_means(model, guide, x: torch.Tensor) -> torch.Tensor:
    """E_q[z | x] from an amortized guide's ``encode``, or the code of a model's ``encode``."""
    with eval_mode(model, guide):
        if hasattr(guide, "encode"):
            return guide.encode(x).mean
        if hasattr(model, "encode"):
            return model.encode(x)
    raise TypeError(
        f"guide: {type(guide).__name__} has no encode(x), and neither has model "
        f"{type(model).__name__}; latent codes need an amortized guide or an autoencoder"
    )


@torch.no_grad()
def reconstruction_error(model, guide, x: torch.Tensor, pixel_max: float = 1.0) -> torch.Tensor:
    """Mean squared error per pixel between x and E[x | z = E_q z], in [0, 1] intensity units."""
    with eval_mode(model, guide):
        x_hat = model.decode(latent_means(model, guide, x))
    return ((x_hat - x) / pixel_max).pow(2).mean(dim=1)


@torch.no_grad()
def active_units(
    model, guide, x: torch.Tensor, threshold: float = 0.01
) -> tuple[int, torch.Tensor]:
    """Number of latent units u with Cov_x(E_q[z_u | x]) > ``threshold``, and those variances."""
    if x.shape[0] < 2:
        raise ValueError(f"x: {x.shape[0]} datapoint(s); active units need at least 2")
    variances = latent_means(model, guide, x).var(dim=0)
    return int((variances > threshold).sum()), variances


@torch.no_grad()
def elbo_estimate(
    model, guide, *args, num_samples: int = 100, num_chunks: int = 10, **kwargs
) -> tuple[float, float]:
    """The whole-data ELBO of a model with global latents, and its Monte Carlo error (nats).

        ELBO = E_q[log p(X, θ) − log q(θ)] ≤ log p(X)       (Blei et al. 2017, eq. 13)

    estimated from ``num_samples`` draws of the guide. Discrete latents the guide does not
    sample and the model marks for enumeration (``infer={"enumerate": "parallel"}``) are
    summed out exactly, as :class:`pyro.infer.TraceEnum_ELBO` does; that is the ELBO of
    the guide's family with those latents at their exact conditional. Draws are taken in
    ``num_chunks`` vectorized chunks; the standard error is the batch-means one,
    sd(chunk means) / √chunks (nan with a single chunk).

    Returns:
        ``(elbo, standard_error)``.
    """
    _check_num("num_samples", num_samples)
    _check_num("num_chunks", num_chunks)
    chunks = min(num_samples, num_chunks)
    sizes = [num_samples // chunks + (i < num_samples % chunks) for i in range(chunks)]
    means = []
    with eval_mode(model, guide), poutine.block():
        with torch.random.fork_rng(devices=[]):
            nesting = max_plate_nesting(model, guide, *args, **kwargs)
        for size in sizes:
            estimator = TraceEnum_ELBO(
                num_particles=size,
                vectorize_particles=size > 1,
                max_plate_nesting=nesting,
                strict_enumeration_warning=False,
            )
            means.append(-estimator.loss(model, guide, *args, **kwargs))
    means_t = torch.tensor(means, dtype=torch.float64)
    weights = torch.tensor(sizes, dtype=torch.float64) / num_samples
    elbo = float((weights * means_t).sum())
    stderr = float(means_t.std() / math.sqrt(chunks)) if chunks > 1 else math.nan
    return elbo, stderr
