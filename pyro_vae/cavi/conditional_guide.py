"""A guide that leaves the sites CAVI cannot update to SVI and fits the rest in closed form.

Many models are conjugate only in part: a hierarchical model with a half-Cauchy or
log-normal scale, a logistic regression under a Gamma precision hyperprior. Given the
non-conjugate sites u, the other latents c are often conditionally conjugate, and
``AutoCAVI`` fits them in closed form. :class:`ConditionalCAVIGuide` is the Pyro guide

    q(u, c) = q_φ(u) · q*(c | u),

q_φ any Pyro guide over u (by default ``AutoNormal``), and q*(· | u) ``AutoCAVI``'s fit
of the model conditioned on each draw of u: the local variables' optimum given a draw of
the global ones, as structured stochastic VI takes them (Hoffman & Blei 2015). It is a
structured q, not mean field: q*(c | u) moves with u. Its ELBO,
E_q(u)[L(u) − log q_φ(u)] with L(u) AutoCAVI's bound on log p(x, u), is a true lower bound
on log p(x), and below each draw's log p(x, u) − log q_φ(u) only by KL(q*(c | u) ‖ p(c | x,
u)) (zero where q* is the exact conditional).

Gradients. ``Trace_ELBO`` differentiates log p(x, c, u) − log q_φ(u) through u's draw,
with c drawn from q*(c | u) held fixed: the gradient of L(u) by the envelope theorem (q* is
a stationary point of L over its family, so q*'s own change with u adds nothing), an
unbiased estimate of ∇_φ ELBO (tested against quadrature). No gradient flows through
q*'s parameters, and none is needed.

That holds where L(u) is continuous in u. Where the inner problem has several local
optima (a mixture's, a spike-and-slab's), L(u) is the best optimum the fit's starts reach:
continuous (a kink where two optima cross) while the starts reach the best one at every u,
a jump where they stop reaching it, and a reparameterized gradient never sees a jump
(tester 39: a two-component mixture under a logit u, fitted from one start, dropped 2.27
nats at u = −2.03, and d/dloc came out +2.77 ± 0.02 where the ELBO's is −1.70). So the
inner fits take :data:`INNER_STARTS` starts unless ``n_init`` is given (the best of four
had no jump on that model's u from −4 to 4, as sixteen), and the guide counts the fits
whose starts disagree (``multimodal_fits_``). Four starts are no guarantee: where every
start misses the best optimum at some u and not at others, L(u) still jumps, and where
all miss it everywhere the ELBO is looser (tester 40: a spike-and-slab whose fifth start
found an optimum 5.6 nats above the first four's, at every u), so raise ``n_init`` for
inner problems with many optima. Starts cost only where the inner model has discrete
latents (or products of Normal latents) to start from.

Cost: one ``AutoCAVI`` fit per particle per step (milliseconds on small models: its probe
runs the model about three times), so a step costs a few plain SVI steps. Particles are
drawn one at a time (``Trace_ELBO(num_particles=k)``, not ``vectorize_particles``: each draw
of u has its own q*).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample
from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi.auto import AutoCAVI
from pyro_vae.cavi.caller_warnings import warn_at_caller
from pyro_vae.cavi.exponential_families import NotConjugateError

#: Starts of each inner fit unless ``n_init`` is given (see the module docstring).
INNER_STARTS = 4


class ConditionalCAVIGuide:
    """The Pyro guide q_φ(u) · q*(c | u): ``guide`` draws the sites ``svi_sites`` (u), and
    ``AutoCAVI`` fits every other latent (c) to the model conditioned on that draw, from
    which c is then drawn (see the module docstring for the bound and its gradient).

    Use it as any guide: ``SVI(model, ConditionalCAVIGuide(model, ["sigma"]), Adam(...),
    Trace_ELBO())``; and in the diagnostics (``to_inference_data``, ``psis_khat``), whose
    draws are then (u, c) from this q.

    Args:
        model: a Pyro model scoring in float64 (``AutoCAVI``'s requirement; pass float64
            data), whose latents other than ``svi_sites`` are conditionally conjugate given
            them.
        svi_sites: the latent sites left to SVI: those ``AutoCAVI`` refuses
            (``NotConjugateError`` names them).
        guide: a Pyro guide over exactly ``svi_sites`` (it may sample auxiliary sites of
            its own, as ``AutoNormal`` does); default ``AutoNormal(poutine.block(model,
            expose=svi_sites))``.
        **autocavi_options: passed to each ``AutoCAVI`` fit (``tol``, ``max_iter``,
            ``blocks``, ``init``, ``markov_chains``, ``n_init``, ``random_state``);
            ``n_init`` defaults to :data:`INNER_STARTS` here (see the module docstring).

    Attributes:
        guide: q_φ(u).
        last_fit_: the ``AutoCAVI`` fit q*(c | u) of the latest call (its
            ``lower_bound_`` is L(u), nats, on log p(x, u)).
        vectorizable: False: the diagnostics draw its particles one run each.
        inner_fits_, unconverged_: the AutoCAVI fits made, and those that stopped at
            ``max_iter`` without converging (each warned about: there q* is not
            stationary, the ELBO lower and the gradient biased).
        multimodal_fits_: the fits whose starts reached different local optima.

    Raises (on the first call with arguments of given shapes, before any fit):
        ValueError: ``svi_sites`` empty, naming a site that is not a latent of the model,
            or covering every latent; a floating argument not float64; ``guide`` not
            sampling a site of ``svi_sites``, sampling another latent, or drawing u in a
            shape other than the model's (vectorized particles).
        NotConjugateError: a latent is not conditionally conjugate given u, naming it (add
            it to ``svi_sites``).

    Warns:
        RuntimeWarning when an inner fit stops at ``max_iter`` without converging.
    """

    vectorizable = False

    def __init__(self, model, svi_sites: Sequence[str], guide: Callable | None = None,
                 **autocavi_options) -> None:  # fmt: skip
        if isinstance(svi_sites, str) or not list(svi_sites):
            raise ValueError(
                f"svi_sites: {svi_sites!r}; expected a non-empty list of latent site names"
            )
        self.model, self.svi_sites = model, list(svi_sites)
        autocavi_options = {"n_init": INNER_STARTS, **autocavi_options}
        AutoCAVI(model, **autocavi_options)  # an unknown option is a TypeError here
        self.autocavi_options = autocavi_options
        self.guide = guide if guide is not None else AutoNormal(
            poutine.block(model, expose=self.svi_sites)
        )  # fmt: skip
        self._checked: dict[tuple, tuple[dict[str, torch.Size], list[str]]] = {}
        self.inner_fits_, self.unconverged_, self.multimodal_fits_ = 0, 0, 0
        self.last_fit_: AutoCAVI | None = None

    def __call__(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draw u from ``guide``, fit q*(c | u), draw c from it; returns {site: u}."""
        key = _shapes_of(args, kwargs)  # checked again for data of another shape
        if key not in self._checked:
            self._checked[key] = self._check(args, kwargs)
        shapes, others = self._checked[key]
        drawn = self._draw_u(args, kwargs, shapes, others)
        conditioned = poutine.condition(self.model, data={n: v.detach() for n, v in drawn.items()})
        try:
            # its model runs are not this guide's sample sites; an unconverged fit is
            # counted and warned of below, with the guide's advice
            with poutine.block(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fit = AutoCAVI(conditioned, **self.autocavi_options).fit(*args, **kwargs)
        except NotConjugateError as error:
            raise NotConjugateError(
                f"{error} (given svi_sites {self.svi_sites}, conditioned at the guide's draw: "
                "leave that latent to SVI too, adding it to svi_sites)"
            ) from error
        self.last_fit_ = fit
        self.inner_fits_ += 1
        if not fit.converged_:
            self.unconverged_ += 1
            warn_at_caller(
                f"ConditionalCAVIGuide: an inner AutoCAVI fit stopped at max_iter="
                f"{fit.max_iter} sweeps without converging ({self.unconverged_} of "
                f"{self.inner_fits_} so far): q*(c | u) is not stationary there, so its ELBO "
                "is lower and the gradient biased; raise max_iter, or leave strongly coupled "
                "latents to SVI (svi_sites)",
                RuntimeWarning,
            )
        self._count_optima(fit)
        # its plates' own sites hidden: the guide over u may have made a plate of that name
        with poutine.block(hide_fn=site_is_subsample):
            fit.variational_guide()(*args, **kwargs)
        return drawn

    def _count_optima(self, fit: AutoCAVI) -> None:
        """Count ``fit`` in ``multimodal_fits_`` where its starts' final bounds differ by
        more than convergence leaves (10³ ``tol``, at least 10⁻⁶ of the bound): an inner
        problem with several local optima, where L(u) is the best the starts reach. No
        warning: that one start alone reached the best at some u says nothing of whether
        L(u) jumps (tester 40: it held at 357 of 951 points of a three-component mixture
        whose L(u) had no jump, equal to the best of 16 starts everywhere)."""
        bounds = fit.start_bounds_
        best = max(bounds)
        if best - min(bounds) > max(1e3 * fit.tol, 1e-6 * (1 + abs(best))):
            self.multimodal_fits_ += 1

    def _draw_u(self, args, kwargs, shapes: dict, others: list) -> dict[str, torch.Tensor]:
        """u drawn by ``guide`` (its sites stay in the enclosing trace, with gradients),
        each in its ``shapes`` entry, the model's; ``others``: the latents q* draws."""
        trace = poutine.trace(self.guide).get_trace(*args, **kwargs)
        taken = [n for n in others if n in trace.nodes and trace.nodes[n]["type"] == "sample"]
        if taken:
            raise ValueError(
                f"guide: it samples {taken}, which are not in svi_sites {self.svi_sites} "
                "(q*(c | u) draws those); give a guide over svi_sites alone, e.g. "
                "AutoNormal(poutine.block(model, expose=svi_sites)), the default"
            )
        drawn = {}
        for name in self.svi_sites:
            if name not in trace.nodes or trace.nodes[name]["type"] != "sample":
                raise ValueError(f"guide: it does not sample svi site {name!r}")
            value = trace.nodes[name]["value"]
            if value.shape != shapes[name]:
                extra = value.dim() > len(shapes[name])
                why = (
                    "each draw of u has its own q*(c | u), so draw particles one at a time "
                    "(Trace_ELBO(num_particles=k) without vectorize_particles; "
                    "Predictive(..., parallel=False))"
                    if extra
                    else "a guide built for data of another size (an autoguide keeps the "
                    "shapes of its first call): give each dataset its own guide"
                )
                raise ValueError(
                    f"guide: it drew svi site {name!r} in shape {tuple(value.shape)} where "
                    f"the model's is {tuple(shapes[name])}; {why}"
                )
            drawn[name] = value
        return drawn

    def _check(self, args, kwargs) -> tuple[dict[str, torch.Size], list[str]]:
        """(the svi sites' shapes in a prior run of the model, its other latents), after
        checking the arguments and ``svi_sites`` against it (ValueError naming what is
        wrong)."""
        for where, value in [*enumerate(args), *kwargs.items()]:
            floating = torch.is_tensor(value) and value.is_floating_point()
            if floating and value.dtype != torch.float64:
                raise ValueError(
                    f"argument {where!r}: {value.dtype}; expected float64 (AutoCAVI fits q*(c | u) "
                    "in float64, and SVI must score the model in the same numbers)"
                )
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        latents = [
            name for name, node in trace.nodes.items()
            if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)
        ]  # fmt: skip
        unknown = [name for name in self.svi_sites if name not in latents]
        if unknown:
            what = (
                "is not a latent sample site"
                if len(unknown) == 1
                else "are not latent sample sites"
            )
            raise ValueError(f"svi_sites: {unknown} {what} of the model; its latents are {latents}")
        if set(latents) <= set(self.svi_sites):
            raise ValueError(
                f"svi_sites: {self.svi_sites} covers every latent of the model, leaving "
                "nothing for CAVI; use the guide alone"
            )
        shapes = {name: trace.nodes[name]["value"].shape for name in self.svi_sites}
        return shapes, [name for name in latents if name not in self.svi_sites]


def _shapes_of(args, kwargs) -> tuple:
    """The arguments' tensor shapes and dtypes, numbers and strings by value (a size may be
    one), other values by type: a call with data of other shapes is checked again."""

    def key(value):
        if torch.is_tensor(value):
            return (tuple(value.shape), value.dtype)
        if isinstance(value, (int, float, str, bool)):
            return value
        return type(value).__name__

    return tuple(key(v) for v in args) + tuple((k, key(v)) for k, v in sorted(kwargs.items()))
