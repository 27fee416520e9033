"""Pyro's ``TraceGraph_ELBO`` (score-function gradients for non-reparameterizable sites,
with Pyro's decaying-average baselines), refusing a latent masked on one side only.

The estimator is Pyro's, unchanged: only the traces it draws are checked first
(:class:`~pyro_vae.estimators.base.RefusesMaskMismatches`), as every estimator here checks
them.
"""

from __future__ import annotations

from pyro.infer import TraceGraph_ELBO

from pyro_vae.estimators.base import RefusesMaskMismatches


class TraceGraphELBO(RefusesMaskMismatches, TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO`` (the same arguments).

    Raises:
        ValueError: (at a loss) a latent whose elements one side masks off and the other
            scores (:func:`~pyro_vae.traces.refuse_mask_mismatches`)."""
