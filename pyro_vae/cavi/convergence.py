"""The warnings the CAVI estimators give when they stop at ``max_iter``.

scikit-learn's ``BayesianGaussianMixture`` warns (``sklearn.exceptions.ConvergenceWarning``)
where the iterations ran out before the bound changed by less than ``tol``; so do the
hand-written classes (:func:`warn_unconverged`: they had set ``converged_ = False`` alone,
and a fit two iterations long read like any other, tester Z) and
:class:`~pyro_vae.cavi.AutoCAVI` (:func:`warn_sweeps_unconverged`, which also tells a crawl
from the rounding floor and advises over-relaxation). One warning class, scikit-learn's, so
that a user's filter for one filters all.
"""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi.caller_warnings import warn_at_caller


def warn_unconverged(name: str, bounds: list[float], max_iter: int, tol: float) -> None:
    """Warn that estimator ``name`` stopped at ``max_iter`` iterations without the bound
    (``bounds``, nats, one per iteration) changing by less than ``tol``: q is not known to
    be a fixed point, and its bound may be short of one."""
    change = (
        f"the last changed the bound by {bounds[-1] - bounds[-2]:.3g} nats"
        if len(bounds) > 1
        else "one iteration shows no change"
    )
    if tol == 0:  # no change is under it: nothing to say of a fixed point (tester AB)
        warn_at_caller(
            f"{name}: ran all max_iter={max_iter} iterations, as tol=0 asks (converged means "
            f"a change under tol, which no change is); {change}",
            ConvergenceWarning,
        )
        return
    warn_at_caller(
        f"{name}: stopped at max_iter={max_iter} iterations without converging ({change}; "
        f"converged means a change under tol={tol:g}): q is not known to be a fixed point, "
        "and its bound may be short of one. Raise max_iter (or tol)",
        ConvergenceWarning,
    )


def warn_sweeps_unconverged(bounds: list, max_iter: int, tol: float, overrelax: bool) -> None:
    """scikit-learn's ``ConvergenceWarning`` where the sweeps stopped at ``max_iter`` (as
    its ``BayesianGaussianMixture`` warns): q is not a fixed point, and its bound is short
    of the fixed point's (crossed intercepts sharing a common level: 2.3 nats after 1,000
    sweeps, q(a) 60 posterior sds away, tester 12)."""
    if len(bounds) == 1:  # no change to read (tester 38's P3: "raised the bound by nan")
        warn_at_caller(
            f"AutoCAVI: stopped at max_iter={max_iter} sweep, before convergence could be "
            f"seen (converged means a sweep changed the bound by less than tol={tol:g} "
            "nats, so it takes two sweeps at least): q is not known to be a fixed point, "
            "and its bound may be short of it. Raise max_iter",
            ConvergenceWarning,
        )
        return
    last = bounds[-1] - bounds[-2]
    if tol == 0:  # no change is under it: nothing to say about a fixed point (tester Z)
        warn_at_caller(
            f"AutoCAVI: ran all max_iter={max_iter} sweeps, as tol=0 asks (converged means a "
            f"sweep changed the bound by less than tol, which no change is); the last "
            f"changed it by {last:.3g} nats",
            ConvergenceWarning,
        )
        return
    changes = [b - a for a, b in zip(bounds[-11:], bounds[-10:], strict=False)]
    if any(change < 0 for change in changes):  # no exact CAVI sweep lowers the bound
        size = max(abs(change) for change in changes)
        warn_at_caller(
            f"AutoCAVI: stopped at max_iter={max_iter} sweeps without converging, the last "
            f"sweeps moving the bound up and down by up to {size:.3g} nats: no sweep lowers "
            "it but for float64 rounding, so the sweeps are at the floor rounding sets (the "
            "bound is large, or the data far from zero) and more will not help. Centre and "
            f"scale the data, or fit with tol above {size:.1g}",  # tester 15: counts near 10⁶
            ConvergenceWarning,
        )
        return
    warn_at_caller(
        f"AutoCAVI: stopped at max_iter={max_iter} sweeps without converging (the last sweep "
        f"raised the bound by {last:.3g} nats; converged means less than tol={tol:g} nats): "
        "q is not a fixed point and the bound is short of it. Raise max_iter"
        f"{'' if overrelax else ', or set overrelax=True (longer steps between sweeps)'}; "
        "mean field crawls where latents are strongly coupled (crossed effects sharing a "
        "common level, a + b nearly unidentified: tighten one prior or center one of them)",
        ConvergenceWarning,
    )
