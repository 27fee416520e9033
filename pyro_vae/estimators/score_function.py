"""REINFORCE: score-function gradients for every guide site, with control variates.

For q_λ(z) and f(z) = log p(x, z) − log q_λ(z), the lecture's identity
∇_λ q_λ = q_λ ∇_λ log q_λ (eqs. 18.5-18.7; Williams 1992) gives

    ∇_λ E_q[f(z)] = E_q[(f(z) − b) ∇_λ log q_λ(z)]        for any b independent of z,

because E_q[∇_λ log q_λ(z)] = 0. Every guide site is treated this way, reparameterizable
or not (samples are detached, so no pathwise gradient reaches λ); model parameters get
ordinary pathwise gradients. A point mass (a ``Delta`` guide site: a MAP point estimate,
``pyro.deterministic``) draws nothing and has no score: its value keeps its path, through
which the model's log p(x, z) gives its parameter the exact gradient. The estimate is the surrogate

    Σ_s Σ_i log q(z_{s,i}) · (ℓ_{s,i} − b_{s,i})  +  log p(x, z)        (detached ℓ, b)

where ℓ_{s,i}, the learning signal of element i of site s, is Rao-Blackwellized along
plates: for a plate that encloses both site s and a term, only the term's elements of
the same plate element count (a datapoint's z is scored by that datapoint's own
log p − log q); a term in any other plate is summed over it, also when Pyro placed that
plate at the same dim (plates are compared by identity, as Pyro's ``TraceGraph_ELBO``
compares them, never by dim). Terms that do not depend on z_{s,i} only add variance,
never bias; the terms left out are those of other elements of a plate that encloses
z_{s,i}, which is unbiased where nothing outside the plate depends on its elements' draws.
A guide site outside the plate drawn given them (q(g | Σ_n z_n)) breaks that: its
log q and everything downstream of it would be scored against each z_n's own terms only,
a bias that Pyro's ``Trace_ELBO`` and ``TraceGraph_ELBO`` share, as they Rao-Blackwellize
by plates alike (tester A: [0.048, 0.646, −0.123] against the exact [0.103, 0.501,
0.029]; tester DA: 8 to 18 standard errors off). Such reads are found once per guide by
replaying it (:mod:`pyro_vae.estimators.plate_escapes`), and z is then scored by every element's
terms along that plate (unbiased; Pyro's ELBOs refuse the guide instead).

Control variates b (``control_variate=``):

- ``"none"``: plain REINFORCE.
- ``"ema"``: an exponential moving average of each site's mean signal over past steps.
- ``"leave-one-out"``: with K = ``num_particles`` ≥ 2 samples, particle k's baseline is
  the mean signal of the other K − 1 (Kool et al. 2019; Mnih & Rezende 2016 use the same
  idea in VIMCO). Unbiased, with no parameters.
- ``"neural"``: NVIL (Mnih & Gregor 2014). For sites in the per-datapoint plate
  (:func:`pyro_vae.plates.find_data_plate`), an MLP b_ψ(x_n) of one row x_n of a model
  argument per element n of that plate, trained to minimize (ℓ − b_ψ(x) − c)², plus running
  estimates c and v of the centred signal's mean and variance, which normalize it:
  (ℓ − b_ψ(x) − c) / max(1, √v). x is the first tensor argument (positional ones in
  order, then keyword ones) whose first dim has as many rows as the plate has elements in
  this step; for a plate that subsamples itself (``subsample_size``), failing that, the
  first with the plate's full size, at the rows of the subsample's indices (the x[i] of
  ``with pyro.plate(..., subsample_size=b) as i``). It is not necessarily the observed
  data: for ``model(w, x)`` with w of as many rows it is w. The baseline never reads a
  draw, so any such x leaves the gradient unbiased; only the variance depends on it.
  ``normalize_variance=True`` adds NVIL's division of the centred signal by max(1, √v),
  v a running estimate of its variance per site: a per-site step size, which leaves the
  estimate a rescaled one, not the ELBO's gradient (off by default: tester AW measured the
  guide's gradients at 0.46 to 0.52 of the exact ones, 27 to 41 standard errors off,
  while the model's stayed exact). Sites outside that plate (global latents) use the
  moving average; a model with no per-datapoint plate at all is refused, and one with no
  argument of those rows too.

``free_bits=λ`` (Kingma et al. 2016; :mod:`pyro_vae.objectives`): a guide site whose
Monte Carlo KL term, averaged over the minibatch, is below λ (per particle) has its
log p − log q terms replaced by the constant −λ (per element, times its scale) in every
learning signal and in the model's pathwise terms; its draw keeps its score, which
carries the likelihood's, the other sites' and that floor's signals. Whether a draw is
frozen depends on the draw, so the kept sites' direct term −∇_φ log q(z), whose mean is
zero without free bits, is kept in the surrogate too (tester BG: with the floor and it
left out, the gradient was 38 standard errors from the exact one).

Subsampling scales and ``poutine.scale``/``mask`` act as in Pyro's ELBOs: costs are
scaled and masked, the score log q is neither (as in ``TraceGraph_ELBO``): a masked guide
draw that the model reads still carries that signal (masking its score dropped it: a
gradient of −7.3 where the ELBO's is −74.6, tester A's F3). Particles are vectorized (an
outer ``pyro.plate``) unless ``vectorize_particles=False``, which draws them in a loop for
models that cannot broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import torch
from pyro.infer.enum import get_importance_trace
from pyro.poutine.messenger import Messenger
from torch import nn

from pyro_vae.checks import as_real, check_widths
from pyro_vae.devices import forked_streams
from pyro_vae.estimators.base import SurrogateELBO, argument_shapes, check_flag
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.plate_escapes import CheckedGuides, possible_plate_escapes
from pyro_vae.objectives import (
    check_free_bits,
    check_free_bits_groups,
    free_bits_traces,
    latent_groups,
    whole_group_cost,
)
from pyro_vae.plates import batch_rows, frames_in, require_data_plate
from pyro_vae.site_masks import sampling_log_prob
from pyro_vae.traces import full_rank, is_point_mass, observed_without_score

CONTROL_VARIATES = ("none", "ema", "leave-one-out", "neural")
_STATEFUL_CONTROL_VARIATES = ("ema", "neural")  # a moving average; NVIL's network and moments


class _DetachSamples(Messenger):
    """Draw every latent sample site without a pathwise gradient, but a point mass
    (``Delta``: a MAP point, ``pyro.deterministic``), whose value is its parameter and
    which has no score: detached, it got no gradient at all (tester M: 0 for every draw
    where the exact gradient is 0.867)."""

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and msg["value"] is None:
            value = msg["fn"](*msg["args"], **msg["kwargs"])
            msg["value"] = value if is_point_mass(msg["fn"]) else value.detach()


def _rao_blackwellized_signal(
    site: dict, costs: list, rank: int, escaped: frozenset = frozenset()
) -> torch.Tensor:
    """Σ of the costs that can depend on each element of ``site``, on ``site``'s batch grid.

    A cost keeps the dims of the plates it shares with ``site`` (element i of a plate is
    scored by the terms of element i only) and is summed over the dims of every other plate,
    even one that Pyro placed at the same dim: plates are compared as Pyro's frames, by
    name, dim, size and counter, never by dim alone (two sibling plates at dim −1 are
    independent of each other, not aligned element by element). The plates named in
    ``escaped``, whose elements' draws of ``site`` a guide site outside them reads
    (:mod:`pyro_vae.estimators.plate_escapes`), count as other plates: each element is scored by
    all their elements' terms.
    """
    own = {f for f in site["cond_indep_stack"] if f.vectorized and f.name not in escaped}
    total = None
    for cost_site, cost in costs:
        cost = full_rank(cost, rank)
        foreign = {f.dim for f in cost_site["cond_indep_stack"] if f.vectorized and f not in own}
        dims = sorted(d for d in foreign if cost.shape[d] != 1)
        if dims:
            cost = cost.sum(dims, keepdim=True)
        total = cost if total is None else total + cost
    return total if total is not None else torch.zeros((1,) * rank, device=site["value"].device)


def _tensor(value, device: torch.device | str = "cpu") -> torch.Tensor:
    """``value`` as it is when it is a tensor (``torch.as_tensor`` would move it to the
    default device); a number (the sum over no sites) as a tensor on ``device``."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value, device=device)


class ScoreFunctionELBO(SurrogateELBO):
    """The ELBO with REINFORCE gradients for all guide sites and a choice of control variate.

    The ``neural`` baselines' weights enter Pyro's param store under names starting with
    ``param_store_prefix`` (so ``SVI`` trains them); :meth:`state_dict` holds them, and a
    run folder restores them through :meth:`load_state_dict`, not the param store.

    Args:
        num_particles: samples K per step (vectorized).
        control_variate: ``"none"``, ``"ema"``, ``"leave-one-out"`` or ``"neural"``.
        decay: moving-average decay of the ``ema`` baseline and NVIL's running moments.
        baseline_hidden: hidden widths of the ``neural`` baseline network.
        normalize_variance: NVIL's division of the centred signal by max(1, √v) (Mnih
            & Gregor 2014, §3.3). Each site in the per-datapoint plate has its own v (from
            earlier steps) and global sites none, so it rescales each site's score term by
            its own positive constant: a per-site step size, not the ELBO's gradient
            (tester A measured local-site gradients 15-28 standard errors from the exact
            ones, tester AW 27-41 at half their size, and the combined direction changes
            with them). ``False`` (the default since run config schema 4; a run folder of
            an earlier schema that used ``neural`` keeps ``True``) keeps the estimate
            unbiased, and is what the conformance suite holds ``neural`` to.
        max_plate_nesting: as in Pyro's ELBOs; guessed from one run when left infinite.
        strict_enumeration_warning: as in Pyro's ELBOs.
        vectorize_particles: ``True`` (one run under a particle plate), ``False`` (K runs,
            for models that cannot broadcast) or ``None`` (vectorized unless that fails);
            see :class:`~pyro_vae.estimators.base.SurrogateELBO` (default ``None``).
        data_plate: the per-datapoint plate's name, along whose elements the ``neural``
            baseline reads rows of a model argument (module docstring); found by
            :func:`pyro_vae.plates.find_data_plate` when ``None``.
        free_bits: λ nats per latent site (module docstring), or ``None`` (the ELBO).
        free_bits_groups: groups of each site's dimensions for ``free_bits``
            (:mod:`pyro_vae.objectives`), or ``None`` (each site one group).

    Raises:
        ValueError: a bad option (named in the message).
        pyro_vae.plates.DataPlateError: ``neural`` on a model without a per-datapoint plate.
        ValueError: ``neural`` on a model none of whose tensor arguments has the plate's
            rows (at the first loss).
    """

    def __init__(
        self,
        num_particles: int = 1,
        control_variate: str = "none",
        decay: float = 0.9,
        baseline_hidden: Sequence[int] = (100,),
        normalize_variance: bool = False,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
        vectorize_particles: bool | None = None,
        data_plate: str | None = None,
        free_bits: float | None = None,
        free_bits_groups: int | str | None = None,
    ) -> None:
        self.free_bits = check_free_bits(free_bits)
        self.free_bits_groups = check_free_bits_groups(free_bits_groups, self.free_bits)
        if control_variate not in CONTROL_VARIATES:
            raise ValueError(
                f"control_variate: {control_variate!r} is not one of {', '.join(CONTROL_VARIATES)}"
            )
        leave_one_out = control_variate == "leave-one-out"
        super().__init__(
            num_particles,
            max_plate_nesting,
            strict_enumeration_warning,
            min_particles=2 if leave_one_out else 1,
            too_few="is too few for the leave-one-out control variate, which needs at least "
            "2 samples per step"
            if leave_one_out
            else "is not a positive integer",
            vectorize_particles=vectorize_particles,
            data_plate=data_plate,
        )
        number = as_real(decay)
        if number is None or not 0.0 <= number < 1.0:
            raise ValueError(f"decay: {decay!r} is not a number in [0, 1)")
        self.control_variate = control_variate
        self.decay = number
        check_widths("baseline_hidden", baseline_hidden)
        check_flag("normalize_variance", normalize_variance)
        self.baseline_hidden = tuple(baseline_hidden)
        self.normalize_variance = normalize_variance
        self._averages: dict[str, float] = {}
        self._moments: dict[str, tuple[float, float]] = {}
        self._networks: dict[str, nn.Module] = {}
        self._pending_networks: dict[str, dict[str, torch.Tensor]] = {}

    param_store_prefix = "score_function_baseline$"
    #: each draw is scored detached (its score-function term), which runs a flow guide's
    #: inverse: not recorded by ``--compile auto`` (compiled.path_gradient_reason)
    scores_detached_draws = True

    @property
    def capabilities(self) -> Capabilities:
        """Its :class:`~pyro_vae.estimators.capabilities.Capabilities`: the ``ema`` and
        ``neural`` control variates keep state between steps (so they are not recordable);
        ``none`` and ``leave-one-out`` keep none."""
        stateful = self.control_variate in _STATEFUL_CONTROL_VARIATES
        return Capabilities(
            keeps_state=stateful,
            needs_reparameterized=False,
            per_datapoint=False,
            recordable=not stateful,
            state=f"its {self.control_variate!r} control variate updates a baseline between steps"
            if stateful
            else "",
        )

    def state_dict(self) -> dict:
        """The control variates' running state (baselines, moments, baseline networks), as
        tensors and plain values, so a checkpointed run resumes with them."""
        return {
            "averages": dict(self._averages),
            "moments": {k: list(v) for k, v in self._moments.items()},
            "networks": {k: net.state_dict() for k, net in self._networks.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`; networks are rebuilt at their first use."""
        self._averages = dict(state["averages"])
        self._moments = {k: (float(v[0]), float(v[1])) for k, v in state["moments"].items()}
        self._networks = {}
        self._pending_networks = dict(state["networks"])

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace(
            "flat", self.max_plate_nesting, model, _DetachSamples()(guide), args, kwargs
        )

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, estimated with ``num_particles`` samples."""
        with torch.no_grad():
            model_trace, guide_trace, _ = self._scored_traces(model, guide, args, kwargs)
            elbo = _tensor(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        return -elbo.item() / self.num_particles

    def _scored_traces(self, model, guide, args, kwargs):
        """The particles' traces, with free bits' frozen sites' terms replaced by the floor."""
        model_trace, guide_trace, rank = self.particle_traces(model, guide, args, kwargs)
        if self.free_bits is None:
            return model_trace, guide_trace, rank
        model_trace, guide_trace, _, _ = free_bits_traces(  # the floor in the guide's terms
            model_trace, guide_trace, self.free_bits, groups=self.free_bits_groups, in_terms=True
        )
        return model_trace, guide_trace, rank

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A surrogate whose value is −ELBO and whose gradient is the score-function estimate.

        The neural baseline's own regression loss is included in the gradient (its value
        is subtracted back out, so the returned number is still −ELBO).
        """
        model_trace, guide_trace, rank = self._scored_traces(model, guide, args, kwargs)
        escaped = self._escaped_plates(guide, args, kwargs)  # after that first run
        costs = [(s, s["log_prob"]) for s in model_trace.nodes.values() if s["type"] == "sample"]
        costs += [(s, -s["log_prob"]) for s in guide_trace.nodes.values() if s["type"] == "sample"]
        elbo = _tensor(sum(c.sum() for _, c in costs))
        if self.free_bits is not None:  # a group's freeze is decided by all its elements
            groups = set(latent_groups(model_trace, guide_trace))
            costs = [
                whole_group_cost(s, c, rank) if s["name"] in groups else (s, c) for s, c in costs
            ]
        surrogate = _tensor(model_trace.log_prob_sum(), elbo.device)
        if self.free_bits is None:
            # a guide's observed sites (obs=, pyro.factor(..., has_rsample=True)) have no
            # score; their terms' gradient is pathwise (tester FE: scored, d(-ELBO)/da read
            # 1.35 where it is 7.3; FH: an observed Categorical's read 0). A factor with
            # has_rsample=False is scored, as Pyro scores it
            pathwise = [s["log_prob"].sum() for s in guide_trace.nodes.values()
                        if s["type"] == "sample" and observed_without_score(s)]  # fmt: skip
            surrogate = surrogate - _tensor(sum(pathwise), elbo.device)
        else:
            # the kept groups' direct term −∇_φ log q(z): its mean is zero only where no
            # draw-decided weight multiplies it (module docstring; tester BG)
            surrogate = surrogate - _tensor(guide_trace.log_prob_sum(), elbo.device)
        baseline_loss = torch.zeros((), dtype=elbo.dtype, device=elbo.device)
        # NVIL's plate: the per-datapoint one, or one that subsamples the batch's rows itself;
        # the other control variates read none, and refuse no model for its plates (tester
        # CU: two nested plates of the batch's size were refused as ambiguous by
        # loss_and_grads, which loss ran)
        neural = self.control_variate == "neural"
        plate = self.bound_plate(model_trace, args, kwargs) if neural else None
        data = (self.subsamples, args, kwargs)  # what the neural baseline reads its rows from
        for name, site in guide_trace.nodes.items():
            if (
                site["type"] != "sample"
                or is_point_mass(site["fn"])
                or observed_without_score(site)
            ):
                continue  # a point mass or an observed site (not a drawn factor): no score
            signal = _rao_blackwellized_signal(site, costs, rank, escaped.get(name, frozenset()))
            signal = signal.detach()
            advantage, extra_loss = self._centre(name, site, signal, rank, plate, data)
            baseline_loss = baseline_loss + extra_loss
            # Pyro's score_parts zero the score of reparameterizable sites; here every site
            # is scored: log q at the detached sample, neither scaled nor masked (as
            # ScoreParts.scale_and_mask keeps it): a masked draw still reaches the model
            # (a .mask of the distribution too: its elements' scores were 0, tester DS)
            score = full_rank(sampling_log_prob(site), rank)
            surrogate = surrogate + (score * advantage.detach()).sum()
        surrogate = surrogate / self.num_particles
        loss = -surrogate - baseline_loss.detach() + baseline_loss
        return loss + (-elbo / self.num_particles - loss).detach()

    def _escaped_plates(self, guide, args, kwargs) -> dict[str, frozenset]:
        """{guide site: the plates along which its score may not be Rao-Blackwellized, a
        guide site outside them reading its draws there} (:mod:`pyro_vae.estimators.plate_escapes`;
        tester DA: q(z) q(g | Σ_n z_n), 8 to 18 standard errors off), found once per
        guide and shape of the arguments."""

        def check() -> dict[str, frozenset]:
            by_site: dict[str, set] = {}
            for e in possible_plate_escapes(guide, args, kwargs, lambda site: True):
                by_site.setdefault(e.site, set()).add(e.plate)
            return {site: frozenset(names) for site, names in by_site.items()}

        found = self.__dict__.setdefault("_escaped", CheckedGuides())
        return found.get(guide, argument_shapes((args, kwargs)), check)

    def _centre(self, name, site, signal, rank, plate, data):
        """Signal minus this site's baseline, and the baseline's own training loss.
        ``data`` is ``(subsamples, args, kwargs)``, where NVIL reads its rows x_n."""
        subsamples, args, kwargs = data
        zero = torch.zeros((), dtype=signal.dtype, device=signal.device)
        if self.control_variate == "none":
            return signal, zero
        if self.control_variate == "leave-one-out":
            particles = -rank
            total = signal.sum(particles, keepdim=True)
            return signal - (total - signal) / (self.num_particles - 1), zero
        if self.control_variate == "neural":
            plate = require_data_plate(
                plate, batch_rows(args, kwargs), "the neural control variate (a baseline b(x_n))"
            )
            frames = frames_in(site, plate)
            if frames:
                x = _baseline_rows(frames[0], subsamples, args, kwargs)
                return self._nvil(name, signal, x, frames[0].dim, rank)
        previous = self._averages.get(name, 0.0)
        self._averages[name] = self.decay * previous + (1 - self.decay) * signal.mean().item()
        return signal - previous, zero

    def _nvil(self, name, signal, x, data_dim, rank):
        """Mnih & Gregor (2014): input-dependent baseline plus variance normalization."""
        # The baseline follows the signal's dtype and device (float64 under Pyro's own test
        # settings, a GPU when the model is on one).
        features = x.detach().reshape(x.shape[0], -1).to(signal.dtype)
        network = self._networks.get(name)
        if network is None:
            # Built at first use from a fixed seed of its own, outside the sampling stream,
            # so creating it (or re-creating it on resume) does not shift later draws: drawn
            # on the CPU (the same weights on every device; no GPU stream is touched), then
            # moved to the features' device.
            with forked_streams():
                torch.random.default_generator.manual_seed(0)
                layers: list[nn.Module] = []
                width = features.shape[1]
                for h in self.baseline_hidden:
                    layers += [nn.Linear(width, h, device="cpu"), nn.Tanh()]
                    width = h
                layers.append(nn.Linear(width, 1, device="cpu"))
                network = self._networks[name] = nn.Sequential(*layers).to(
                    dtype=features.dtype, device=features.device
                )
            if name in self._pending_networks:
                network.load_state_dict(self._pending_networks.pop(name))
        elif network[0].weight.dtype != features.dtype:
            network.to(dtype=features.dtype)
        network = pyro.module(f"{self.param_store_prefix}{name}", network)
        shape = [1] * rank
        shape[data_dim] = features.shape[0]
        baseline = network(features).reshape(shape)
        mean, var = self._moments.get(name, (0.0, 1.0))
        residual = signal - baseline.detach()
        batch_mean, batch_var = (
            residual.mean().item(),
            residual.var().item() if (residual.numel() > 1) else 0.0,
        )
        self._moments[name] = (
            self.decay * mean + (1 - self.decay) * batch_mean,
            self.decay * var + (1 - self.decay) * batch_var,
        )
        advantage = residual - mean
        if self.normalize_variance:
            advantage = advantage / max(1.0, math.sqrt(var))
        baseline_loss = (signal - mean - baseline).pow(2).sum() / self.num_particles
        return advantage, baseline_loss


def _baseline_rows(frame, subsamples: dict, args, kwargs) -> torch.Tensor:
    """x, one row per element of the plate of ``frame`` in this step (module docstring):
    the first tensor argument with the plate's rows, or, for a plate that subsamples
    itself, the first with its full size at the subsample's indices (``subsamples``, by
    plate name).

    Raises:
        ValueError: no tensor argument has either number of rows.
    """
    tensors = [v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim() >= 1]
    for value in tensors:
        if value.shape[0] == frame.size:
            return value
    indices = subsamples.get(frame.name)
    if frame.full_size is not None and frame.full_size != frame.size and torch.is_tensor(indices):
        for value in tensors:
            if value.shape[0] == frame.full_size:
                return value[indices.to(value.device)]
    raise ValueError(
        f"control_variate: 'neural' reads its baseline's input x_n from a model argument with "
        f"one row per element of plate {frame.name!r}: {frame.size} rows (or its full size "
        f"{frame.full_size}, indexed by the plate's subsample); the tensor arguments have "
        f"shapes {[tuple(v.shape) for v in tensors]}; pass the data the plate runs over, or "
        "use another control_variate (leave-one-out needs no input)"
    )
