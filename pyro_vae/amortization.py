"""The amortization gap of an encoder (Cremer, Li & Duvenaud 2018).

For data x and a fixed decoder,

    log p(x) − ELBO(q_amortized) =  [log p(x) − ELBO(q*)]     approximation gap
                                 +  [ELBO(q*) − ELBO(q_amortized)]   amortization gap

where q* is the best guide of a family fitted to each datapoint separately, started from
the encoder's output and optimized by Adam, its step size annealed to zero, on the
pathwise ELBO with the model's (and the encoder's) weights frozen. log p(x) is estimated
by the importance-weighted bound with q* as proposal, the tighter of the two where the
local family holds the encoder's q. Where it does not (``"normal"`` for a low-rank or flow
encoder: the local guides start from the moments of the encoder's draws), the encoder may
be the better proposal, and both are tried: the one whose estimate is the higher on
average over the data gives log p(x) (tester DV: a low-rank encoder scored with diagonal
local guides reported log p(x) 1.08 nats low, and a negative amortization gap blamed on
the optimizer).

The local family (``family=``) is the encoder's own, so that the approximation gap is that
family's and the amortization gap what the encoder loses by sharing its weights:

- ``"normal"`` (the default): one diagonal Normal per datapoint
  (:class:`~pyro_vae.guides.LocalNormal`), started from the encoder's ``loc`` and ``scale``
  or, for a guide without them, from the moments of its draws;
- ``"lowrank"``: one low-rank multivariate Normal per datapoint, of the encoder's rank
  (:class:`~pyro_vae.guides.LocalLowRankNormal`), for an encoder whose ``encode(x)`` is a
  ``LowRankMultivariateNormal`` (:class:`~pyro_vae.guides.AmortizedLowRankNormal`);
- ``"flow"``: the encoder's own flow steps, their weights frozen, with a free base mean,
  scale and context per datapoint (:class:`~pyro_vae.guides.LocalFlow`), for an
  :class:`~pyro_vae.guides.AmortizedFlow` encoder (:class:`~pyro_vae.guides.AmortizedIAF`,
  :class:`~pyro_vae.guides.AmortizedSplineFlow`). This is the family the encoder itself
  chooses from, (μ, σ, h) = (μ(x), σ(x), h(x)).
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled

from pyro_vae.checks import check_count, check_learning_rate
from pyro_vae.devices import forked_streams
from pyro_vae.evaluate import (
    bare_pair,
    check_rows,
    elbo_per_datapoint,
    eval_mode,
    iwae_log_likelihood,
    max_plate_nesting,
)
from pyro_vae.guides.amortized_flow import AmortizedFlow
from pyro_vae.guides.local_flow import LocalFlow
from pyro_vae.guides.local_low_rank import LocalLowRankNormal
from pyro_vae.guides.local_normal import LocalNormal
from pyro_vae.latent_summaries import latent_draws
from pyro_vae.model_protocol import offered
from pyro_vae.progress import bar as progress_bar
from pyro_vae.weights import pair_modules

FAMILIES = ("normal", "lowrank", "flow")


def amortization_gap(
    model,
    guide,
    x: torch.Tensor,
    steps: int = 500,
    lr: float = 1e-2,
    num_particles: int = 8,
    elbo_samples: int = 100,
    iwae_samples: int = 1000,
    progress: bool = False,
    family: str = "normal",
) -> dict[str, float]:
    """Fit per-datapoint guides of ``family`` to ``x`` with ``model`` frozen and compare
    with ``guide`` (the families: this module's docstring).

    Returns per-datapoint means (nats): ``elbo_amortized``, ``elbo_local``,
    ``log_likelihood`` (IWAE, K = ``iwae_samples``, with the local guide, or the encoder
    where it is the better proposal: ``log_likelihood_proposal``, ``"local"`` or
    ``"encoder"``; ``local_start``: ``"encoder"`` where the local guides start at the
    encoder's q, ``"moments"`` where ``family`` does not hold it),
    ``amortization_gap`` and ``approximation_gap``, each with its standard error over the
    images (``*_se``; ``None`` for one image); ``log_likelihood_rise`` (``_se``): the
    IWAE estimate's rise from ⌊K/2⌋ draws to 2⌊K/2⌋ (the same draws), a lower estimate of
    what it still lies below log p(x) (Nowozin 2018's jackknife; :func:`iwae_bias_note`);
    the settings used (``family`` among them); a ``note`` where the amortization gap is
    negative (:func:`negative_gap_note`), the local guides had not converged
    (:func:`unconverged_note`), the IWAE estimate was still rising (:func:`iwae_bias_note`)
    or the approximation gap is negative (:func:`negative_approximation_note`).

    Raises:
        ValueError: a count is not a positive integer (``iwae_samples``: below 2);
            ``family`` is not one of :data:`FAMILIES`, or not the family of ``guide``; the
            local guides' optimization diverged (``lr`` too large).
    """
    _check_counts(steps, num_particles, elbo_samples, iwae_samples)
    if family not in FAMILIES:
        raise ValueError(f"family: {family!r} is not one of {', '.join(map(repr, FAMILIES))}")
    lr = check_learning_rate("lr", lr)  # tester CO: lr=0 returned numbers, the CLI refuses it
    check_rows(x, bare_pair(model, guide)[0])  # and x[0] was "loc, scale: shapes (2,)"
    local, from_moments = _local_guide(model, guide, x, family)
    owners = [m for m in pair_modules(model, guide, (x,), {}) if m is not None]
    frozen = [p for m in owners for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    # pyro.module says, for every frozen weight, that it is not registered as a param: that
    # is the point here, so the notice is kept out of the user's output.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was not registered in the param store")
        try:
            elbo = _fit_local(model, local, x, steps, lr, num_particles, progress)
            with forked_streams():  # the estimates below draw as before
                stationarity = _stationarity(elbo, model, local, x)
            amortized = elbo_per_datapoint(model, guide, x, elbo_samples)
            # the local guide only scores the batch it was fitted to: one batch of x
            fitted = elbo_per_datapoint(model, local, x, elbo_samples, batch_size=x.shape[0])
            log_p, rise, proposal = _log_likelihood(
                model, (local, guide), x, iwae_samples, from_moments
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)
    result = {
        "elbo_amortized": amortized.mean().item(),
        "elbo_local": fitted.mean().item(),
        "log_likelihood": log_p.mean().item(),
        "log_likelihood_proposal": proposal,
        "local_start": "moments" if from_moments else "encoder",
        "amortization_gap": (fitted - amortized).mean().item(),
        "approximation_gap": (log_p - fitted).mean().item(),
        "amortization_gap_se": _standard_error(fitted - amortized),
        "approximation_gap_se": _standard_error(log_p - fitted),
        "log_likelihood_rise": rise.mean().item(),
        "log_likelihood_rise_se": _standard_error(rise),
        "num_points": int(x.shape[0]),
        **{"steps": steps, "iwae_samples": iwae_samples, "family": family},
    }
    return _with_notes(result, stationarity)


def _check_counts(steps, num_particles, elbo_samples, iwae_samples) -> None:
    for arg, value in (
        ("steps", steps),
        ("num_particles", num_particles),
        ("elbo_samples", elbo_samples),
    ):
        check_count(arg, value, 1)
    # at K = 1 the IWAE bound is an ELBO (tester FC: an approximation gap, a KL, of -0.008)
    check_count("iwae_samples", iwae_samples, 2, " (at K = 1 it is an ELBO, not log p(x))")


def _with_notes(result: dict, stationarity: tuple[float, int]) -> dict:
    """``result`` with its ``note``, where any of the notes applies."""
    notes = [
        negative_gap_note(result),
        unconverged_note(*stationarity),
        iwae_bias_note(result),
        negative_approximation_note(result),
    ]
    if any(notes):
        result["note"] = "; ".join(n for n in notes if n)
    return result


def _log_likelihood(model, guides, x, iwae_samples: int, from_moments: bool):
    """log p(x) per row by IWAE with the local guide of ``guides`` (local, encoder) as
    proposal, or with the encoder where the local family does not hold its q
    (``from_moments``) and it estimates log p(x) higher on average; its rise from K/2 draws
    to K (:func:`~pyro_vae.evaluate.iwae_log_likelihood`'s ``rise``); and which proposal
    it was."""
    local, encoder = guides  # the local guide only scores the batch it was fitted to
    log_p = iwae_log_likelihood(model, local, x, iwae_samples, batch_size=x.shape[0], rise=True)
    if from_moments:
        encoded = iwae_log_likelihood(model, encoder, x, iwae_samples, rise=True)
        if encoded[0].mean() > log_p[0].mean():
            return *encoded, "encoder"
    return *log_p, "local"


#: Draws of the local guides' ELBO gradient in the convergence check.
CHECK_DRAWS = 32


def _stationarity(elbo, model, local, x) -> tuple[float, int]:
    """(Σ_j t_j², P): the squared t-statistics of the local guides' P parameters' ELBO
    gradient over :data:`CHECK_DRAWS` draws of ``elbo``, the fit's (:func:`_fit_local`). At an
    optimum the gradient's mean is 0 and the sum is near P (each t² has mean ν/(ν − 2) and
    variance about 2.4, ν = 31); local guides stopped short of it have a nonzero mean, which
    the sum grows with."""
    params = [q for q in local.parameters() if q.requires_grad]
    draws = []
    with eval_mode(model):
        for _ in range(CHECK_DRAWS):
            grads = torch.autograd.grad(elbo.differentiable_loss(model, local, x), params)
            draws.append(torch.cat([g.flatten() for g in grads]).double())
    grads = torch.stack(draws)
    se = grads.std(0) / CHECK_DRAWS**0.5
    t2 = torch.where(se > 0, (grads.mean(0) / se) ** 2, torch.zeros_like(se))
    return float(t2.sum()), int(t2.numel())


def unconverged_note(t2_sum: float, count: int) -> str | None:
    """A note where the local guides' ELBO gradient is nonzero beyond Monte Carlo error
    (:func:`_stationarity`: Σ t² above 1.1 P + 6 √(2.5 P), about six standard deviations
    above its mean at an optimum); else ``None``. Stopped short, the local ELBO is too low:
    the approximation gap comes out too large and the amortization gap too small (tester
    C: 0.34 nats of approximation gap where the linear-Gaussian model's is 0, at the
    default 500 steps and lr 0.01)."""
    if not count or t2_sum <= 1.1 * count + 6 * (2.5 * count) ** 0.5:
        return None
    return (
        f"the local guides had not converged: their ELBO gradient is nonzero beyond Monte "
        f"Carlo error (sum of squared t-statistics {t2_sum:,.0f} over {count} parameters, "
        f"about {1.07 * count:,.0f} at an optimum), so the approximation gap is overstated "
        "and the amortization gap understated; raise --steps (or --lr)"
    )


def _standard_error(differences: torch.Tensor) -> float | None:
    """The standard error of the mean of per-image differences (paired: the same images),
    which holds both the images' spread and each estimate's Monte Carlo error; ``None``
    for one image."""
    n = differences.numel()
    return None if n < 2 else (differences.double().std() / n**0.5).item()


def iwae_bias_note(result: dict) -> str | None:
    """A note where the IWAE estimate of log p(x) was still rising with K beyond Monte
    Carlo error (its rise from K/2 to K above 2 standard errors) by at least half the
    approximation gap's standard error, so that its bias matters beside the error the
    standard errors report; else ``None`` (tester FC: at K = 10 an approximation gap of
    0.085 ± 0.034 where K = 10,000 gives 0.155). Where the weights' variance is finite the
    bias falls as 1/K and the rise is about it; where it is not (q narrower than the
    posterior by more than √2) the bias falls more slowly and the rise is a fraction of it
    (tester FD: 0.097 against 0.608 at K = 1000 on a shrunk encoder), so the note says "at
    least"."""
    rise, se = result["log_likelihood_rise"], result.get("log_likelihood_rise_se")
    spread = result.get("approximation_gap_se") or 0.0
    if se is None or not (rise > 2 * se and rise >= 0.5 * spread):
        return None
    h = result["iwae_samples"] // 2
    return (
        f"log p(x)'s IWAE estimate was still rising with K: {rise:.3f} ± {se:.3f} nats from "
        f"K={h} to K={2 * h}, so log p(x) and the approximation gap are understated by at "
        "least about as much (as much where the importance weights' variance is finite and "
        "the bias falls as 1/K; several times more where q is narrower than the posterior, "
        "k̂ > 0.5 in diagnose), the amortization gap not; raise --iwae-samples"
    )


def negative_approximation_note(result: dict) -> str | None:
    """What a negative approximation gap means (a KL divergence, it is ≥ 0): Monte Carlo
    error within 2 standard errors, else log p(x)'s IWAE estimate biased low (too few
    draws, or a poor proposal); ``None`` when it is not negative."""
    gap, se = result["approximation_gap"], result.get("approximation_gap_se")
    if not gap < 0:
        return None
    if se is not None and gap > -2 * se:
        return (
            f"the approximation gap is negative ({gap:.3f} nats) but within Monte Carlo "
            f"error (2 standard errors: {2 * se:.3f}): indistinguishable from 0"
        )
    return (
        f"the approximation gap is negative ({gap:.3f} nats), "
        "which a KL divergence cannot be: log p(x)'s IWAE estimate lies below the local "
        "guides' ELBO, so it is biased low (raise --iwae-samples)"
        + ("" if se is not None else ", or it is Monte Carlo error on one image")
    )


def negative_gap_note(result: dict) -> str | None:
    """What a negative estimated amortization gap means, or ``None`` when it is not.

    The local guides start from the encoder's output and only improve the ELBO in
    expectation, so a gap below 0 is either Monte Carlo error (within 2 standard errors
    of 0) or local optimization that made things worse (too few steps, or too large a
    step size), which also spoils the approximation gap and log p(x) measured with them.
    Where the local family does not hold the encoder's q (``result["local_start"]`` is
    ``"moments"``), the guides started elsewhere, and a gap below 0 may be the families'
    difference: the note says so instead.
    """
    gap, se = result["amortization_gap"], result.get("amortization_gap_se")
    if not gap < 0:
        return None
    if result.get("local_start") == "moments" and (se is None or gap <= -2 * se):
        return (
            f"the amortization gap is negative ({gap:.3f} nats): the per-datapoint guides "
            f"(family {result.get('family')!r}) cannot hold the encoder's q, so they "
            "started from the moments of its draws, and the encoder's family may fit the "
            "posterior better than theirs: the gap compares two families, not amortization "
            "alone (more --steps will not change that); score the encoder with its own "
            "family (--family lowrank or flow)"
        )
    if se is None:
        return (
            f"the amortization gap is negative ({gap:.3f} nats) on one image, whose standard "
            "error is not known: use more --points to tell Monte Carlo error from local "
            "guides that ended worse than the encoder (then raise --steps)"
        )
    if gap > -2 * se:
        return (
            f"the amortization gap is negative ({gap:.3f} nats) but within Monte Carlo "
            f"error (2 standard errors: {2 * se:.3f}): the local guides did no better than "
            "the encoder here, and the gap is indistinguishable from 0"
        )
    return (
        f"the amortization gap is negative ({gap:.3f} nats), beyond Monte Carlo error "
        f"(2 standard errors: {2 * se:.3f}): the per-image guides, started from the "
        "encoder, ended worse than it, so their optimization did not converge (too few "
        "--steps, or too large an --lr); the approximation gap and log p(x), measured with "
        "those guides, are not to be trusted either"
    )


def local_guide(model, guide, x: torch.Tensor, family: str = "normal"):
    """The per-datapoint guide of ``family`` for the rows of ``x``, started from the
    amortized ``guide``'s q(z | x) (the families: this module's docstring).

    Raises:
        ValueError: ``guide`` is not of ``family`` (``"lowrank"``, ``"flow"``).
    """
    return _local_guide(model, guide, x, family)[0]


def _local_guide(model, guide, x: torch.Tensor, family: str):
    """:func:`local_guide`, and whether it starts from the moments of the encoder's draws
    (``family`` does not hold the encoder's q) rather than at that q."""
    with eval_mode(model, guide), torch.no_grad():
        encode = offered(guide, "encode")
        q = encode(x) if encode is not None else None
        if family == "lowrank":
            if not isinstance(q, dist.LowRankMultivariateNormal):
                raise ValueError(
                    f"family: 'lowrank' needs an encoder whose encode(x) is a "
                    f"LowRankMultivariateNormal (AmortizedLowRankNormal); "
                    f"{type(guide).__name__} gives {type(q).__name__}"
                )
            local = LocalLowRankNormal(q.loc, q.cov_diag.sqrt(), q.cov_factor, guide.site)
            return local, False
        if family == "flow":
            if not isinstance(guide, AmortizedFlow):
                raise ValueError(
                    f"family: 'flow' needs an AmortizedFlow encoder (AmortizedIAF, "
                    f"AmortizedSplineFlow); got {type(guide).__name__}"
                )
            h = guide.trunk(x)
            loc, scale = guide.loc_head(h), torch.exp(guide.log_scale_head(h))
            return LocalFlow(loc, scale, h, guide.flows, guide.site), False
        independent = isinstance(q, torch.distributions.Independent)
        base = q.base_dist if independent else q
        # a Laplace's or a Student-t's loc and scale are no Normal's (tester DY)
        if isinstance(base, torch.distributions.Normal):
            loc, scale = base.loc, base.scale
            # the site the encoder draws (tester O: "h" was fitted as "z", then refused)
            site = getattr(guide, "site", None)
            if not isinstance(site, str):
                with forked_streams():
                    site, _ = latent_draws(model, guide, x, 1)
            return LocalNormal(loc, scale, site), False
        # start from the moments of the guide's draws
        site, draws = latent_draws(model, guide, x, 100)
        return LocalNormal(draws.mean(0), draws.std(0), site), True


def _fit_local(model, local, x, steps: int, lr: float, num_particles: int, progress: bool):
    """Adam on the pathwise ELBO of ``local`` with the model frozen, step size annealed;
    returns that ELBO (its plate nesting found), for the convergence check."""
    with forked_streams():
        nesting = max_plate_nesting(model, local, x)  # Pyro would guess it, and log that
    elbo = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting
    )
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    # The pathwise gradient stays noisy at the optimum (the score term of log q), so a
    # constant step size would leave q* jittering around it: anneal the step to zero.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    with eval_mode(model):
        for step in progress_bar(range(steps), progress, desc="local guides", leave=False):
            optimizer.zero_grad()
            # The first step checks the pair as the encoder left the guide; later steps
            # change only the local guide's parameters, so a NaN or infinite value after
            # them (a parameter, a draw, a likelihood's logits) is the steps' divergence:
            # distribution checks off there, it reaches the loss and is refused by name
            # (torch's check raised its own error, told apart only by its words)
            with (
                pyro.validation_enabled(is_validation_enabled() and not step),
                warnings.catch_warnings(),
            ):  # Pyro's NaN note: refused by name below
                warnings.filterwarnings("ignore", message="Encountered NaN")
                loss = elbo.differentiable_loss(model, local, x)
            if not loss.isfinite():
                raise _diverged(step, steps, lr)
            loss.backward()
            optimizer.step()
            schedule.step()
    return elbo


def _diverged(step: int, steps: int, lr: float) -> ValueError:
    """The refusal of local guides whose Adam steps diverged (tester CK: ``--lr 100``
    printed Pyro's constraint error with a tensor of NaNs)."""
    return ValueError(
        f"lr: {lr} is too large: the local guides' optimization diverged by step {step + 1} "
        f"of {steps} (the ELBO or a distribution's parameter became NaN or infinite); "
        "expected a smaller lr (the default is 0.01)"
    )
