"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2015) as a training objective.

For each datapoint x_n and K samples z_{n,k} ~ q(z | x_n),

    L_K(x_n) = log (1/K) Σ_k p(x_n, z_{n,k}) / q(z_{n,k} | x_n)  ≤ log p(x_n),

with L_1 the ELBO and L_K increasing in K. The log-sum-exp is taken per datapoint of the
per-datapoint plate (:func:`pyro_vae.plates.find_data_plate`) when every site lies in it;
a minibatch's bounds are summed and scaled by N/|batch|. A scale c common to every site
of model and guide (``poutine.scale(c)`` around both, how a user rescales a minibatch they
subsample themselves; per datapoint where the weights factor) multiplies the objective the
same way, outside the log-sum-exp: c · log (1/K) Σ_k exp(log w_k / c)
(:func:`pyro_vae.pointwise.common_scale`). Scales that differ between sites (β or KL
warm-up on the latents, ``poutine.scale`` on the observations alone) are folded into each
site's term of log w_k. A model with global latents, or
with no per-datapoint plate, is one datapoint: the bound is on log p(X) jointly, which a
minibatch cannot estimate, so that case is refused when the plate is subsampled. (Pyro's
``RenyiELBO(alpha=0)`` sums the weight over the plates it finds dependent, those that a
site outside reads (its ``get_dependent_plate_dims``), and takes a log-sum-exp per element
of the others; the sum over a batch of one plate's elements that a global latent reads is
one log-sum-exp, a much looser bound on log p(X) once the batch is larger than one. Its
value is then not comparable with this estimator's per-datapoint bound: tester AW.)
Gradients are pathwise, so every guide site must be reparameterizable.

With log w_k = log p(x, z_k) − log q(z_k | x), normalized weights w̃_k = w_k / Σ_j w_j and
z_k = g(ε_k; φ), ``gradient`` chooses the estimate (model parameters θ always get
Σ_k w̃_k ∇_θ log w_k, the IWAE gradient):

- ``"reparam"``: autograd of L_K itself, Σ_k w̃_k ∇ log w_k (Burda et al. 2015). Its
  encoder signal-to-noise ratio falls like K^(-1/2) (Rainforth et al. 2018).
- ``"dreg"``: doubly reparameterized (Tucker, Lawson, Gu & Maddison 2018, eq. 8): the guide
  gets Σ_k w̃_k² ∂log w_k/∂z_k · dz_k/dφ with log q's parameters detached. Unbiased for the
  same gradient, and zero at q = p(z | x). Where a guide site's log q enters log w with a
  weight c ≠ 1 (β or KL warm-up, :mod:`pyro_vae.annealing`; a ``poutine.scale`` not
  common to every site; a mask),
  its weight is w̃_k − c w̃_k (1 − w̃_k), the same identity applied to −c ∇_φ log q (w̃_k²
  at β = 3 made the gradient −187 where the β-bound's is −17).
- ``"stl"``: sticking the landing (Roeder, Wu & Duvenaud 2017) with the weights w̃_k: the
  guide gets Σ_k w̃_k ∂log w_k/∂z_k · dz_k/dφ. Zero at q = p(z | x), but for K > 1 biased
  for the IWAE gradient (Tucker et al. 2018, section 3); unbiased at K = 1.

Both "dreg" and "stl" hold log q's parameters still as
:mod:`pyro_vae.estimators.path_gradients` does, for any guide whose sites do not depend on
each other's draws. "dreg" routes the extra weight through the draws, so the gradient
reaching a parameter through z_k gets w̃_k² and one reaching it directly (a model
parameter) w̃_k; it needs vectorized particles.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.enum import get_importance_trace
from pyro.poutine import Trace

from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.path_gradients import (
    base_name,
    check_gradient,
    refuse_dependent_sites,
    refuse_unreparameterized_factor,
    stopped_guide_trace,
)
from pyro_vae.pointwise import (
    data_plate_scale,
    importance_log_densities,
    per_datapoint_log_density,
    per_draw_log_density,
    weights_factor,
)
from pyro_vae.site_masks import counted_elements, site_masks
from pyro_vae.traces import is_point_mass, sample_sites


class IWAELBO(SurrogateELBO):
    """−Σ_n L_K(x_n), the negative importance-weighted bound with K = ``num_particles``.

    Args:
        num_particles: K, 5 by default (``get("iwae")`` too; the registry's other
            estimators default to 1 particle).
        max_plate_nesting, strict_enumeration_warning: as in Pyro's ELBOs.
        vectorize_particles: ``True``, ``False`` (a loop over particles) or ``None`` (auto);
            see :class:`~pyro_vae.estimators.base.SurrogateELBO`.
        data_plate: the per-datapoint plate's name (found by
            :func:`pyro_vae.plates.find_data_plate` when ``None``).
        gradient: ``"reparam"`` (the default), ``"dreg"`` or ``"stl"`` (module docstring).

    Raises:
        ValueError: a guide site is not reparameterizable; ``gradient`` is not one of the
            three; ``"dreg"`` with ``vectorize_particles=False`` or particles that had to be
            drawn in a loop; ``"dreg"``/``"stl"`` with a guide site drawn from a
            distribution that depends on another guide site's draw.
        pyro_vae.plates.DataPlateError: global latents in a subsampled model, where the
            K-sample bound has no unbiased minibatch estimate.
    """

    capabilities = Capabilities(
        keeps_state=False, needs_reparameterized=True, per_datapoint=True, recordable=True
    )
    importance_weighted = True  # a guide-only latent is refused (SurrogateELBO)

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
        vectorize_particles: bool | None = None,
        data_plate: str | None = None,
        gradient: str = "reparam",
    ) -> None:
        super().__init__(
            num_particles,
            max_plate_nesting,
            strict_enumeration_warning,
            vectorize_particles=vectorize_particles,
            data_plate=data_plate,
        )
        self.gradient = check_gradient(gradient, ("reparam", "dreg", "stl"), "iwae")
        if gradient == "dreg" and vectorize_particles is False:
            raise ValueError(
                "vectorize_particles: False with gradient='dreg'; DReG differentiates each "
                "particle's weight with respect to its own draw, which needs the particles "
                "drawn under one plate (True or None)"
            )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace, rank = self.particle_traces(model, guide, args, kwargs)
        for name, site in sample_sites(guide_trace).items():
            refuse_unreparameterized_factor(name, site, "the iwae estimator")
            if not site["fn"].has_rsample and not site["is_observed"]:  # obs=y: no draw
                raise ValueError(
                    f"guide site {name!r} ({base_name(site['fn'])}) is not reparameterizable; "
                    "the iwae estimator needs pathwise gradients. For discrete latents use "
                    "enum (they are summed out exactly) or score (REINFORCE), or vimco for a "
                    "multi-sample bound."
                )
        plate = self.bound_plate(model_trace, args, kwargs)
        log_p, log_q, scale = importance_log_densities(
            model_trace, guide_trace, self.num_particles, rank, plate
        )
        bound = torch.logsumexp(log_p - log_q, dim=0) - math.log(self.num_particles)
        # scale: N/|batch| times any scale common to every site, a multiplier of the whole
        # objective, so it stays outside the log-sum-exp (pyro_vae.pointwise.common_scale)
        value = (scale * bound).sum()
        if self.gradient == "reparam" or not torch.is_grad_enabled():
            return -value
        surrogate = self._path_surrogate(model_trace, guide_trace, log_p, rank, plate, scale)
        return -(value.detach() + (surrogate - surrogate.detach()))

    def _path_surrogate(self, model_trace, guide_trace, log_p, rank, plate, scale):
        """Σ_n c_n Σ_k w̃_k log w_k with log q's parameters detached (STL's surrogate), plus
        for DReG the term that makes the weight on the path through z_k w̃_k²; c_n is
        ``scale``, the objective's multiplier (a float or ``[1, B]``)."""
        refuse_dependent_sites(guide_trace, "iwae", self.gradient)
        stopped = stopped_guide_trace(guide_trace)
        _, log_q_stopped, _ = importance_log_densities(
            model_trace, stopped, self.num_particles, rank, plate
        )
        log_w = log_p - log_q_stopped  # the values of log w, φ held still inside log q
        weights = torch.softmax(log_w.detach(), dim=0)
        surrogate = (scale * weights * log_w).sum()
        if self.gradient == "stl":
            return surrogate
        if not self.vectorize_particles:
            raise ValueError(
                "gradient: 'dreg' needs vectorized particles, but the particles of this "
                "model and guide are drawn one at a time (vectorize_particles=False, given "
                "or fallen back to, with a VectorizationWarning naming what failed under "
                "vectorized particles); use gradient='reparam', make model and guide "
                "broadcast over a particle plate, or, where what failed decides nothing (an "
                "assert on a draw), pass vectorize_particles=True (on the command line, "
                "--estimator-opt vectorize_particles=true)"
            )
        per_datapoint = plate if weights_factor(model_trace, guide_trace, plate) else None
        common = scale / data_plate_scale(model_trace, per_datapoint)
        paths = _reweighted_paths(log_w, weights, stopped, rank, per_datapoint, common)
        return surrogate + (scale * paths).sum()


def _masked_path(site: dict, products: torch.Tensor) -> torch.Tensor:
    """``products`` (∂log w/∂z · z elementwise, the value's shape) summed over the site's
    event dims, with the elements its masks leave out of log q (:func:`~pyro_vae.site_masks.
    counted_elements`, at the grain each mask was put on) set to 0: [*batch]."""
    event_dim = site["fn"].event_dim
    if not site_masks(site)[0]:  # told without a tensor: the products as they were
        return products.sum(list(range(-event_dim, 0))) if event_dim else products
    counted, whole = counted_elements(site)
    if whole:
        products = products.sum(list(range(-whole, 0)))
    products = torch.where(counted, products, products.new_zeros(()))
    rest = event_dim - whole  # event dims a .mask under .to_event covered
    return products.sum(list(range(-rest, 0))) if rest else products


def _reweighted_paths(log_w, weights, stopped, rank, plate, common=1.0) -> torch.Tensor:
    """Per datapoint (``[1, B]``, or ``[1, 1]`` jointly when ``plate`` is None), a term of
    value 0 whose gradient through the draws is Σ_k c w̃_k (w̃_k − 1) ∂log w_k/∂z_k ·
    dz_k/dφ, turning the w̃_k of STL's surrogate into DReG's w̃_k − c w̃_k (1 − w̃_k) on the
    path through z_k (w̃_k² where c = 1) and leaving the gradient that reaches a parameter
    directly (the model's) as it was. c is the weight of the site's log q in log w (its
    scale relative to the plate's subsampling and to ``common``, the scale every site
    shares that :func:`~pyro_vae.pointwise.importance_log_densities` divided out of log w,
    times its mask): the score term −c ∇_φ log q that the identity of Tucker et al. (2018,
    eq. 5) rewrites carries it.

    ∂log w_k/∂z_k is taken elementwise from ∂(Σ_k log w_k)/∂z: in a vectorized trace each
    particle's and datapoint's weight depends on its own draw only. The products
    ∂log w/∂z · z are then summed as ``log_w`` was (per datapoint of ``plate``, or per
    particle when ``plate`` is ``None``). Draws that carry no gradient are left out.
    """
    # a point mass (Delta: an autoguide's constrained value, a MAP point) is no draw: its
    # slope is already in that of the draw it is computed from (counted twice, it moved
    # AutoNormal's DReG gradient off 0 at q = p(z | x)), and a parameter's gets w̃_k
    sites = {
        n: s
        for n, s in sample_sites(stopped).items()
        if s["value"].requires_grad and not is_point_mass(s["fn"])
    }
    if not sites:  # every draw a point mass (tester CU: MAP guides failed in autograd)
        return log_w.new_zeros(())
    slopes = torch.autograd.grad(
        log_w.sum(), [s["value"] for s in sites.values()], retain_graph=True, allow_unused=True
    )
    plate_scale = data_plate_scale(stopped, plate)
    paths = Trace()
    for (name, site), slope in zip(sites.items(), slopes, strict=True):
        if slope is not None:
            # c_s, the weight log q_s carries in log w relative to the plate's subsampling
            # (β, KL warm-up, poutine.scale), and its mask multiply the score term the
            # identity turns into this path term: every mask, poutine.mask's and each
            # .mask(...) of the distribution (tester DS: a .mask left out, a masked
            # element's path took w̃² where w̃ is unbiased, 14 to 50 standard errors off)
            inner = _masked_path(site, slope.detach() * site["value"])
            inner = inner * (site["scale"] / plate_scale)
            paths.add_node(name, **dict(site, unscaled_log_prob=inner, log_prob=inner))
    if not paths.nodes:
        return log_w.new_zeros(())
    k, b = log_w.shape
    if plate is None:
        path_sum = per_draw_log_density(paths, k, rank)
    else:
        path_sum = per_datapoint_log_density(paths, k, b, rank, plate)
    # every site of a datapoint carries its common scale, so dividing the datapoint's sum
    # by it divides each site's c by it
    term = (weights * (weights - 1) * path_sum / common).sum(0, keepdim=True)
    return term - term.detach()
