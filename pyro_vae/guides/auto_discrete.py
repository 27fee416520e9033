"""A mean-field guide over a model's discrete latents, built automatically like Pyro's autoguides.

For every discrete latent site s of the model with values in {0, 1} (Bernoulli) or
{0, …, C−1} (Categorical), the guide holds free logits λ_s and draws

    q_λ(z) = Π_s Π_i q(z_{s,i}; λ_{s,i}),   Bernoulli(sigmoid λ) or Categorical(softmax λ),

one independent factor per element: naive mean field (Blei, Kucukelbir & McAuliffe 2017,
§2.3; the lecture's q(z) = Π_i q_i(z_i)). There is no pathwise gradient through a discrete
draw, so fit it with the score-function estimator (``pyro_vae.estimators.get("score",
control_variate="leave-one-out", num_particles=K)``), whose Rao-Blackwellized learning
signal scores each site by the terms it touches. Sites the model marks for enumeration
(``infer={"enumerate": ...}``) are left out, for :class:`pyro.infer.TraceEnum_ELBO` to sum.
Continuous sites are an error; combine with Pyro's ``AutoNormal`` through
``pyro.infer.autoguide.AutoGuideList`` for models that have both.

Elements the model masks off (``poutine.mask``, a distribution's ``.mask(...)``: padded
steps of sequences of different lengths) are masked off in q too: they are absent from
the model, and a factor scoring them put their entropy, log 2 nats a padded step, into the
ELBO, above log p(x) on a padded HMM (tester AK).
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule, PyroParam

from pyro_vae.pyro_compat import autoguide_plates
from pyro_vae.site_masks import counted_elements


def _base_support(fn) -> constraints.Constraint:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _float_dtype(fn) -> torch.dtype:
    """The float dtype of a discrete distribution's parameters (under its wrappers), or
    torch's default where none shows."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    for name in ("logits", "probs"):
        value = fn.__dict__.get(name)  # as given: reading the other would compute it
        if torch.is_tensor(value) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


class AutoDiscreteMeanField(AutoGuide):
    """Independent Bernoulli / Categorical factors with free logits for the model's discrete sites.

    Args:
        model: a Pyro model whose latent sites are discrete.
        init_scale: logits start as N(0, init_scale²) draws (0: uniform q), which breaks the
            symmetry of models such as the ferromagnetic Ising model, where uniform q is a
            stationary point of the ELBO.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, model, init_scale: float = 0.1) -> None:
        if not 0 <= init_scale < math.inf:  # tester CN: inf made q a point mass, unsaid
            raise ValueError(f"init_scale: {init_scale!r} is not a finite non-negative number")
        self.init_scale = float(init_scale)
        super().__init__(model)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.logits = PyroModule()
        self._sites: dict[str, tuple[str, int]] = {}
        self._counted: dict[str, torch.Tensor] = {}  # the model's masks, where it has some
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site["infer"].get("enumerate"):
                continue
            for frame in site["cond_indep_stack"]:
                if frame.full_size is not None and frame.full_size != frame.size:
                    raise ValueError(
                        f"model: site {name!r} is in the subsampled plate {frame.name!r}; "
                        "AutoDiscreteMeanField keeps one factor per element and needs the "
                        "whole plate (use an amortized guide for minibatched local latents)"
                    )
            support = _base_support(site["fn"])
            value = site["value"]
            if support is constraints.boolean:
                kind, shape = "bernoulli", value.shape
            elif isinstance(support, constraints.integer_interval) and support.lower_bound == 0:
                kind, shape = "categorical", (*value.shape, int(support.upper_bound) + 1)
            else:
                raise ValueError(
                    f"model: site {name!r} has support {support}; AutoDiscreteMeanField "
                    "covers Bernoulli {0, 1} and Categorical {0..C-1} sites (put continuous "
                    "ones in an AutoNormal within an AutoGuideList)"
                )
            # Drawn on the CPU (the same start on every device), put on the site's device,
            # in its distribution's float dtype (a float64 model's log-densities are float64,
            # and logits of the default float32 beside them failed: "both inputs should
            # have same dtype")
            cpu = torch.device("cpu")
            init = (
                self.init_scale * torch.randn(shape, device=cpu)
                if self.init_scale
                else torch.zeros(shape, device=cpu)
            ).to(value.device, _float_dtype(site["fn"]))
            setattr(self.logits, name, PyroParam(init))
            self._sites[name] = (kind, site["fn"].event_dim)
            on, _ = counted_elements(site)  # over the value's shape: the factor's batch
            if not bool(on.all()):
                self._counted[name] = on

    def factors(self) -> dict[str, dist.TorchDistribution]:
        """q's factor for each site, with the site's shape (batch = the site's plates),
        masked off where the model masks the site off."""
        out = {}
        for name, (kind, event_dim) in self._sites.items():
            logits = getattr(self.logits, name)
            base = (
                dist.Bernoulli(logits=logits)
                if kind == "bernoulli"
                else dist.Categorical(logits=logits)
            )
            if name in self._counted:
                base = base.mask(self._counted[name])
            out[name] = base.to_event(event_dim)
        return out

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draw every discrete latent site from its factor; returns ``{site: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = autoguide_plates(self, *args, **kwargs)
        result = {}
        for name, fn in self.factors().items():
            frames = self.prototype_trace.nodes[name]["cond_indep_stack"]
            with ExitStack() as stack:
                for frame in frames:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, fn)
        return result

    @torch.no_grad()
    def probabilities(self) -> dict[str, torch.Tensor]:
        """q(z_{s,i} = 1) for Bernoulli sites, the probability vectors for Categorical ones."""
        out = {}
        for name, fn in self.factors().items():
            while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
                fn = fn.base_dist
            out[name] = fn.probs
        return out
