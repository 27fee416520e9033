"""The warning the hand-written CAVI classes give when they stop at ``max_iter``.

scikit-learn's ``BayesianGaussianMixture`` and :class:`~pyro_vae.cavi.AutoCAVI` warn
(``sklearn.exceptions.ConvergenceWarning``) where the iterations ran out before the bound
changed by less than ``tol``; the hand-written classes set ``converged_ = False`` alone,
and a fit two iterations long read like any other (tester Z). This is their one warning,
scikit-learn's class, so that a user's filter for one filters all.
"""

from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning


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
        warnings.warn(
            f"{name}: ran all max_iter={max_iter} iterations, as tol=0 asks (converged means "
            f"a change under tol, which no change is); {change}",
            ConvergenceWarning,
            stacklevel=3,
        )
        return
    warnings.warn(
        f"{name}: stopped at max_iter={max_iter} iterations without converging ({change}; "
        f"converged means a change under tol={tol:g}): q is not known to be a fixed point, "
        "and its bound may be short of one. Raise max_iter (or tol)",
        ConvergenceWarning,
        stacklevel=3,
    )
