"""Variational simulation-based calibration, VSBC (Yao, Vehtari, Simpson & Gelman 2018, §4).

For replications m = 1..M: draw θ⁽ᵐ⁾ ~ p(θ) and data y⁽ᵐ⁾ ~ p(y | θ⁽ᵐ⁾) from the model,
fit the guide q(θ | y⁽ᵐ⁾) by SVI, and record for every scalar component j of the tested
sites the posterior quantile of the truth,

    p_mj = Pr_q(θ_j < θ⁽ᵐ⁾_j | y⁽ᵐ⁾)        (from S draws of q; ties count one half).

(θ⁽ᵐ⁾, y⁽ᵐ⁾) is a draw from the joint, so θ⁽ᵐ⁾ | y⁽ᵐ⁾ follows the exact posterior, and an
exact q gives p_·j ~ Uniform(0, 1) (Cook, Gelman & Rubin 2006). VI is rarely calibrated in
that sense, so Yao et al. ask only for symmetry: if q's marginal of θ_j is centred where
the posterior is, the distribution of p_·j is symmetric about 0.5, while a q that is
biased to one side of the posterior, on average over data sets, skews it. They test it
with the two-sample Kolmogorov-Smirnov statistic between p_·j and 1 − p_·j; its p-value
here is exact under symmetry (:func:`symmetry_test`). Underdispersion alone, with the
centre right, makes p_·j U-shaped but keeps it symmetric.

All M fits run at once: the model and guide are run under an outer ``pyro.plate`` of size
M, and since Adam updates each parameter element separately, the summed ELBO optimizes
each replication's parameters exactly as M separate fits would. The guide must give each
replication its own parameters; autoguides built from the replicated model do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_vae.checks import check_count
from pyro_vae.diagnostics.draws import to_given_device
from pyro_vae.guides.fixed import as_guide
from pyro_vae.plates import batch_rows, find_data_plate, frames_in
from pyro_vae.traces import full_rank, plate_nesting, sample_sites

_REPLICATIONS = "_vsbc_replications"
_DRAWS = "_vsbc_draws"


@dataclass(frozen=True)
class VSBCResult:
    """Quantiles p of the true values under q, per scalar parameter, and their tests.

    ``quantiles[name]`` is ``[M]``; a site with event or plate dims gives one entry per
    element, named ``site[i]`` or ``site[i,j]``. ``final_loss`` is the summed negative
    ELBO of the M fits at the last SVI step (nan for :func:`vsbc_with`).
    """

    quantiles: dict[str, np.ndarray]
    final_loss: float = math.nan

    def ks_test(self, name: str) -> tuple[float, float]:
        """Yao et al.'s KS statistic between p and 1 − p, with its exact p-value under
        symmetry (see :func:`symmetry_test`)."""
        return symmetry_test(self.quantiles[name])

    def table(self) -> list[dict[str, float | str]]:
        """One row per parameter: mean p (0.5 under symmetry), its standard error, the
        share of p above 0.5, and the KS test."""
        rows = []
        for name, p in self.quantiles.items():
            ks, pvalue = self.ks_test(name)
            rows.append(
                {
                    "parameter": name,
                    "mean_p": float(p.mean()),
                    "se_mean_p": float(p.std(ddof=1) / np.sqrt(p.size)),
                    "share_above_half": float((p > 0.5).mean()),
                    "ks_statistic": ks,
                    "ks_pvalue": pvalue,
                }
            )
        return rows


def symmetry_test(p: np.ndarray) -> tuple[float, float]:
    """D = sup_t |F_p(t) − F_{1−p}(t)| (Yao et al.'s two-sample KS statistic between p and
    1 − p) and P(D' ≥ D) when p's distribution is symmetric about 0.5.

    The two samples are not independent, so the usual KS p-value is anti-conservative
    (at t = 0.5 the null variance of the difference is twice the independent one). Exact
    instead: writing d_i = |p_i − 0.5| and s_i = sign(0.5 − p_i), M·D is the largest
    |Σ s_i| over the points with d_i ≥ c, for thresholds c (whole tie blocks at once).
    Under symmetry the signs are fair coins independent of the d_i, so P(M·D' ≥ M·D) is
    a random walk's exit probability, computed by dynamic programming over tie blocks.
    """
    p = np.asarray(p, dtype=np.float64)
    # Rounded so that p and 1 − p tie although 1 − 0.8 != 0.2 in floating point.
    distance, sign = np.round(np.abs(p - 0.5), 12), np.sign(0.5 - p)
    order = np.argsort(-distance[sign != 0], kind="stable")
    distance, sign = distance[sign != 0][order], sign[sign != 0][order]
    if distance.size == 0:
        return 0.0, 1.0
    ends = np.r_[np.nonzero(np.diff(distance))[0], distance.size - 1]
    h = int(round(np.abs(np.cumsum(sign)[ends]).max()))
    if h == 0:
        return 0.0, 1.0
    inside = np.zeros(2 * h - 1)  # P(walk at −(h−1)..h−1 and never at ±h so far)
    inside[h - 1] = 1.0
    for n in np.diff(np.r_[-1, ends]):
        step = np.zeros(2 * n + 1)  # the sum of n fair ±1 signs
        step[::2] = [math.comb(n, i) / 2.0**n for i in range(n + 1)]
        inside = np.convolve(inside, step)[n : n + 2 * h - 1]
    return h / p.size, float(max(0.0, 1.0 - inside.sum()))


def _replicated(fn: Callable, num: int, dim: int) -> Callable:
    def replicated(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_REPLICATIONS, num, dim=dim):
            return fn(*args, **kwargs)

    return replicated


@dataclass
class _Simulation:
    """M draws (θ⁽ᵐ⁾, y⁽ᵐ⁾) from the joint, replications at batch dim −rank."""

    rank: int
    event_dims: dict[str, int]
    truth: dict[str, torch.Tensor]
    data: dict[str, torch.Tensor]


def _simulate(
    model: Callable, args: tuple, kwargs: dict, num_replications: int, sites: Sequence[str] | None
) -> _Simulation:
    check_count("num_replications", num_replications, 2)
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    sample = sample_sites(trace)
    observed = [n for n, s in sample.items() if s["is_observed"]]
    latent = [n for n, s in sample.items() if not s["is_observed"]]
    if sites is None:
        plate = find_data_plate(trace, batch_rows(args, kwargs))
        sites = [n for n in latent if plate is None or not frames_in(sample[n], plate)]
    unknown = [s for s in sites if s not in latent]
    if not sites or unknown or not observed:
        raise ValueError(
            f"sites: {list(sites)} (unknown {unknown}); the model has latent sites {latent} "
            f"and observed sites {observed}; expected at least one of each, and sites "
            "among the latent ones"
        )
    rank = plate_nesting(trace) + 1
    with poutine.block(), torch.no_grad():
        prior = poutine.trace(
            _replicated(poutine.uncondition(model), num_replications, -rank)
        ).get_trace(*args, **kwargs)
    event_dims = {n: sample[n]["fn"].event_dim for n in (*sites, *observed)}
    values = {}
    for n in (*sites, *observed):
        values[n] = full_rank(prior.nodes[n]["value"], rank + event_dims[n])
    return _Simulation(
        rank, event_dims, {n: values[n] for n in sites}, {n: values[n] for n in observed}
    )


def _component_names(name: str, shape: Sequence[int]) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]


def _quantiles(sim: _Simulation, below: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``below[site]``: Pr_q(θ < θ⁽ᵐ⁾), ``[M, plate dims, event dims]`` -> one array per
    scalar component, dropping the size-1 dims of plates the site is not in."""
    quantiles = {}
    for name, b in below.items():
        shape = [d for d in b.shape[1 : sim.rank] if d != 1] + list(b.shape[sim.rank :])
        per_rep = b.reshape(b.shape[0], -1).cpu().numpy()
        for j, label in enumerate(_component_names(name, shape)):
            quantiles[label] = per_rep[:, j]
    return quantiles


def _share_below(draws: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pr_q(θ < θ₀) from draws along dim 0; ties count one half."""
    return (draws < truth).double().mean(0) + 0.5 * (draws == truth).double().mean(0)


def vsbc(
    model: Callable,
    make_guide: Callable[[Callable], Callable],
    *args: Any,
    num_replications: int = 200,
    num_steps: int = 1000,
    lr: float = 0.05,
    final_lr: float | None = None,
    num_particles: int = 1,
    num_draws: int = 1000,
    sites: Sequence[str] | None = None,
    device: Any = None,
    **kwargs: Any,
) -> VSBCResult:
    """VSBC for ``model(*args, **kwargs)`` with guides ``make_guide(model)`` fitted by SVI.

    The data of each replication are simulated at the model's observed sites (their
    values in ``args`` only give the shapes). ``make_guide`` receives the replicated,
    conditioned model, e.g. ``make_guide=AutoNormal``. Each fit is ``num_steps`` of Adam
    with ``num_particles`` ELBO particles and a learning rate decaying geometrically from
    ``lr`` to ``final_lr`` (default ``lr/10``); q is then represented by ``num_draws``
    draws. ``sites`` defaults to the model's latent sites outside its per-datapoint plate
    (the global parameters). VSBC judges the whole procedure: an optimization stopped
    short of the optimum skews p as a biased family does. ``device`` (``None``: where the
    tensors in ``args`` are): the tensors in ``args`` and ``kwargs`` are put there, where
    the model's modules must be; the quantiles come back as NumPy arrays.

    Raises:
        ValueError: a count below its minimum; unknown ``sites``; a non-finite final loss;
            a ``device`` this machine does not have.
    """
    for arg, value, minimum in (
        ("num_steps", num_steps, 1),
        ("num_particles", num_particles, 1),
        ("num_draws", num_draws, 2),
    ):
        check_count(arg, value, minimum)
    args, kwargs = to_given_device(args, kwargs, device)
    sim = _simulate(model, args, kwargs, num_replications, sites)
    rank = sim.rank  # replications at dim −rank, posterior draws at −(rank + 1)
    conditioned = _replicated(poutine.condition(model, data=sim.data), num_replications, -rank)
    with pyro.get_param_store().scope():
        guide = make_guide(conditioned)
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=rank + (num_particles > 1),
        )
        final = lr / 10 if final_lr is None else final_lr
        optim = ClippedAdam({"lr": lr, "lrd": (final / lr) ** (1.0 / num_steps)})
        svi = SVI(conditioned, guide, optim, elbo)
        for _ in range(num_steps):
            loss = svi.step(*args, **kwargs)
        if not np.isfinite(loss):
            raise ValueError(
                f"num_steps: after {num_steps} steps at lr={lr} the loss is {loss}; expected "
                "a finite ELBO (try a smaller lr)"
            )
        with poutine.block(), torch.no_grad(), pyro.plate(_DRAWS, num_draws, dim=-rank - 1):
            draws = poutine.trace(guide).get_trace(*args, **kwargs)
    below = {n: _share_below(draws.nodes[n]["value"], t) for n, t in sim.truth.items()}
    return VSBCResult(_quantiles(sim, below), float(loss))


def vsbc_with(
    model: Callable,
    fit: Callable[[dict[str, torch.Tensor]], Callable],
    *args: Any,
    num_replications: int = 200,
    num_draws: int = 1000,
    sites: Sequence[str] | None = None,
    device: Any = None,
    **kwargs: Any,
) -> VSBCResult:
    """VSBC with any fitting procedure, one replication at a time.

    ``fit(data)`` gets one replication's simulated observations, ``{site: value}``, and
    returns a guide, or a fitted :mod:`pyro_vae.cavi` estimator, taken as
    :func:`~pyro_vae.diagnostics.to_inference_data` takes one (its
    ``variational_distributions()``, in the model's plates), which is drawn from as
    ``guide(*args, **kwargs)``. Otherwise (``device`` too) as :func:`vsbc`.
    """
    check_count("num_draws", num_draws, 2)
    args, kwargs = to_given_device(args, kwargs, device)
    sim = _simulate(model, args, kwargs, num_replications, sites)
    below: dict[str, list[torch.Tensor]] = {n: [] for n in sim.truth}
    for m in range(num_replications):
        # a fitted estimator as the other diagnostics take one (tester DX: Pyro's "not
        # callable", from the first draw)
        guide = as_guide(fit({n: v[m] for n, v in sim.data.items()}), model, args, kwargs)
        with poutine.block(), torch.no_grad(), pyro.plate(_DRAWS, num_draws, dim=-sim.rank):
            draws = poutine.trace(guide).get_trace(*args, **kwargs)
        for n, t in sim.truth.items():
            below[n].append(_share_below(draws.nodes[n]["value"], t[m]))
    return VSBCResult(_quantiles(sim, {n: torch.stack(b) for n, b in below.items()}))
