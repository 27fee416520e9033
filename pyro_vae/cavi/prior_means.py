"""A handler that runs a model at its latents' prior means, for ``AutoCAVI``'s first run
when a draw from the priors breaks the model.

A Wishart prior with ν just above D − 1 draws nearly singular precisions (its last
Bartlett variate is χ² with ν − D + 1 degrees of freedom, ~10⁻³⁰⁰ at ν − D + 1 = 0.01),
and a model that factors one (``MultivariateNormal(precision_matrix=Λ)``) then fails in its
Cholesky; the model is valid, and its prior mean νW is well conditioned. AutoCAVI's first
run only reads the model's structure (its sites, shapes and dependencies), so it reruns
there (:func:`pyro_vae.cavi.first_trace.first_run`).
"""

from __future__ import annotations

import torch
from pyro.infer.inspect import is_sample_site
from pyro.poutine.messenger import Messenger


class PriorMeans(Messenger):
    """Sets each unobserved sample site's value to its distribution's mean where that mean
    is finite and in the distribution's support (Gamma, Beta, Dirichlet, Normal, Wishart);
    a discrete site (a Categorical's or Bernoulli's mean is not a value it takes) is drawn
    as usual."""

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or not is_sample_site(msg):
            return  # observed, set by an outer handler, a plate's subsample or a Delta
        fn = msg["fn"]
        try:
            mean = fn.mean
        except NotImplementedError:  # no closed-form mean: drawn as usual
            return
        mean = mean.expand(fn.shape(msg["kwargs"].get("sample_shape", torch.Size())))
        if bool(torch.isfinite(mean).all()) and bool(fn.support.check(mean).all()):
            msg["value"] = mean
