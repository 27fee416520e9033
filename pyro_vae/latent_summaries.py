"""What a fitted guide says of each row's latent variables: E_q[z | x] (:func:`latent_means`),
draws of q(z | x) (:func:`latent_draws`), the active units (Burda, Grosse & Salakhutdinov
2015, §5.2: Cov_x(E_q[z_u | x]) > 0.01), the reconstruction error at E_q[z | x], and a
model's own label metrics (M2's test accuracy).

Each runs the pair as :mod:`pyro_vae.evaluate` does: without the ``ScaleLatents`` wrappers
around it (:func:`~pyro_vae.evaluate.bare_pair`), its torch modules in eval mode
(:func:`~pyro_vae.evaluate.eval_mode`), every row in the per-datapoint plate
(:func:`~pyro_vae.evaluate.prepare`); draws come from a generator of their own, so the
same weights give the same numbers and the global random stream is left as it was.
"""

from __future__ import annotations

import torch

from pyro_vae.annealing import unscaled
from pyro_vae.devices import forked_streams
from pyro_vae.evaluate import (
    PerDatapoint,
    bare_pair,
    check_num,
    check_rows,
    data_arguments,
    eval_mode,
    prepare,
)
from pyro_vae.minibatch import accepts_keyword
from pyro_vae.model_protocol import offered
from pyro_vae.plates import frames_in
from pyro_vae.traces import particle_traces, sample_sites


@torch.no_grad()
def latent_means(model, guide, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
    """E_q[z | x] for each row of ``x``, ``[N, latent size]``.

    From the guide's ``encode(x)`` when it has one (its ``mean``, or the mean of
    ``num_samples`` draws for a family without a closed-form mean, such as a flow, drawn
    from a generator of their own, seed 0, as :func:`latent_draws` draws them: the same
    weights give the same means, and the global random stream is left as it was), from the
    code of a model's ``encode(x)`` (a deterministic autoencoder), and otherwise a Monte Carlo mean
    of ``num_samples`` draws of the guide's one latent site in the per-datapoint plate.

    Raises:
        ValueError: no ``encode`` and not exactly one latent site per datapoint; rows
            the model does not take (:func:`pyro_vae.evaluate.check_rows`).
    """
    model, guide = bare_pair(model, guide)
    check_rows(x, model)
    with eval_mode(model, guide):
        encode = offered(guide, "encode")
        if encode is not None:
            q = encode(x)
            try:
                mean = q.mean
            except NotImplementedError:
                with forked_streams():
                    torch.manual_seed(0)
                    mean = q.sample((num_samples,)).mean(0)
            return mean.reshape(x.shape[0], -1)
        code = offered(model, "encode")
        if code is not None:
            return code(x)
        site, draws = latent_draws(model, guide, x, num_samples)
        return draws.mean(0).reshape(x.shape[0], -1)


def latent_draws(
    model, guide, x, num_samples: int, rows: torch.Tensor | None = None
) -> tuple[str, torch.Tensor]:
    """The guide's one per-datapoint latent site, and ``num_samples`` draws of it per row
    (``[S, N, ...]``): what a figure or metric needs of a guide without ``encode``.

    The draws come from a generator of their own (seed 0), so the same weights give the
    same draws, and the global random stream is left as it was."""
    _, site, draws = latent_draws_of(model, guide, data_arguments(x), num_samples, rows)
    return site, draws


def latent_draws_of(
    model, guide, data: tuple, num_samples: int, rows: torch.Tensor | None = None
) -> tuple[PerDatapoint, str, torch.Tensor]:
    """:func:`latent_draws`, with the :class:`PerDatapoint` pair it prepared, for callers
    that go on to run that pair."""
    check_num("num_samples", num_samples)
    model, guide = bare_pair(model, guide)
    with forked_streams():
        torch.manual_seed(0)
        # every row in one run: probed so (a plate that declares subsample_size covers them)
        count = len(data[0])
        pair = prepare(model, guide, data, "latent codes per datapoint", None, None, count, rows)
        subsample = pair.subsample(0, len(data[0])).to(data[0].device)
        with torch.no_grad():
            model_tr, guide_tr, _ = particle_traces(
                pair.model, pair.guide, data, {"subsample": subsample}, num_samples, pair.nesting
            )
    latent = [
        n
        for n, s in sample_sites(guide_tr).items()
        if frames_in(s, pair.plate) and not s["is_observed"] and not s["infer"].get("is_auxiliary")
    ]
    if len(latent) != 1:
        raise ValueError(
            f"guide: {type(guide).__name__} has no encode(x) and draws {len(latent)} latent "
            f"sites per datapoint ({latent}); latent codes need encode(x) or exactly one such site"
        )
    site = guide_tr.nodes[latent[0]]
    value = site["value"]
    rank = pair.nesting + 1
    batch = value.dim() - site["fn"].event_dim
    value = value.reshape((1,) * (rank - batch) + tuple(value.shape))
    data_dim = frames_in(site, pair.plate)[0].dim
    value = value.movedim(data_dim - site["fn"].event_dim, 1)
    value = value.expand(num_samples, *value.shape[1:])
    return pair, latent[0], value.reshape(num_samples, len(data[0]), -1)


@torch.no_grad()
def label_metrics(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor,
    iwae_samples: int | None = None,
    iwae_rows: int | None = None,
) -> dict[str, float]:
    """The model's own metrics of labels (its ``label_metrics(guide, x, y)``, e.g. M2's
    ``{"test_accuracy": ...}``; :mod:`pyro_vae.model_protocol`) on rows ``x`` ``[N, D]``
    with labels ``y`` ``[N]``, in eval mode without gradients; ``{}`` for a model without
    the method. ``iwae_samples`` (the evaluation's log p(x) draws, ``--ll-samples``) is
    passed on where the method takes it (tester U: M2's unlabelled log p(x) kept its own
    100 draws whatever ``--ll-samples`` said; 0: the evaluation's log p(x) is off), and
    ``iwae_rows`` (its rows, ``--ll-points``) likewise (tester BP: M2 kept its own 1,000
    rows, and computed log p(x) under ``--ll-samples 0``).

    Raises:
        ValueError: the method returned something other than a mapping of names to numbers.
    """
    model, guide = bare_pair(model, guide)
    hook = offered(getattr(model, "__self__", model), "label_metrics")  # or its object's
    if hook is None:
        return {}
    options = {}
    for name, value in (("iwae_samples", iwae_samples), ("iwae_rows", iwae_rows)):
        if value is not None and accepts_keyword(hook, name):
            options[name] = value
    with torch.no_grad(), eval_mode(model, guide), unscaled():
        values = hook(guide, x, y, **options)
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float | torch.Tensor) for k, v in values.items()
    ):
        raise ValueError(
            f"label_metrics: {type(values).__name__} returned by the model; expected a dict "
            "of metric names to numbers"
        )
    return {k: v if isinstance(v, int) else float(v) for k, v in values.items()}  # counts stay


def reconstruction_error(model, guide, x: torch.Tensor, pixel_max: float = 1.0) -> torch.Tensor:
    """Mean squared error per pixel between x and E[x | z = E_q z], in [0, 1] intensity units.

    E[x | z] comes from the model's ``decode(z)`` when it has one, and otherwise from the
    mean of the model's observation at z (:func:`pyro_vae.predictive.reconstruct`).
    """
    from pyro_vae.predictive import reconstruct

    check_rows(x, bare_pair(model, guide)[0])  # tester CO: x[0] failed in a reshape
    x_hat = reconstruct(model, guide, x)
    return ((x_hat - x) / pixel_max).pow(2).reshape(x.shape[0], -1).mean(dim=1)


@torch.no_grad()
def active_units(
    model, guide, x: torch.Tensor, threshold: float = 0.01, num_samples: int = 1000
) -> tuple[int, torch.Tensor]:
    """Number of latent units u with Cov_x(E_q[z_u | x]) > ``threshold``, and those variances.

    Where E_q[z | x] is a Monte Carlo mean of ``num_samples`` draws (:func:`latent_means`),
    its error adds about Var_q(z_u | x) / ``num_samples`` to each variance: 1000 draws keep
    that a tenth of the threshold for a unit that stays at the prior's N(0, 1) (100 would
    put it at the threshold, and count such units at random).
    """
    if x.shape[0] < 2:
        raise ValueError(f"x: {x.shape[0]} datapoint(s); active units need at least 2")
    variances = latent_means(model, guide, x, num_samples).var(dim=0)
    return int((variances > threshold).sum()), variances
