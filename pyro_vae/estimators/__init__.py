"""Gradient estimators by name: each is a ``pyro.infer.ELBO``.

``get(name, **options)`` returns a fresh estimator; ``options`` go to its constructor
(for example ``num_particles=8``).

- ``trace``: :class:`TraceELBO`, Pyro's ``Trace_ELBO``: pathwise (reparameterization)
  gradients where a site allows them (Kingma & Welling 2013), score-function gradients
  elsewhere; ``gradient="stl"`` keeps only the path term (Roeder et al. 2017).
- ``analytic-kl``: :class:`MeanFieldELBO`, Pyro's ``TraceMeanField_ELBO``, the same with
  KL(q ‖ p) in closed form where both are known (the lecture's −KL + E_q log p(x | θ), eq. 18.4).
- ``iwae``: :class:`IWAELBO`, the K-sample importance-weighted bound per datapoint
  (Burda et al. 2015); ``num_particles`` is K, 5 by default; ``gradient="dreg"`` doubly
  reparameterized (Tucker et al. 2018) or ``"stl"``.
- ``enum``: :class:`TraceEnumELBO`, Pyro's ``TraceEnum_ELBO``: model sites marked
  ``infer={"enumerate": "parallel"}`` that the guide does not sample are summed out exactly (mixture
  assignments, HMM states), the rest as ``trace``.
- ``tracegraph``: Pyro's ``TraceGraph_ELBO``, score-function gradients for
  non-reparameterizable sites with downstream-cost Rao-Blackwellization and the baselines
  a site requests in ``infer={"baseline": ...}`` (Schulman et al. 2015).
- ``score``: :class:`ScoreFunctionELBO`, REINFORCE for every guide site with a control
  variate: ``none``, ``ema``, ``leave-one-out`` or ``neural`` (NVIL).
- ``vimco``: :class:`VIMCO`, the K-sample bound of ``iwae`` with score-function gradients
  and per-sample leave-one-out baselines (Mnih & Rezende 2016), for discrete latents; K
  (``num_particles``) is 5 by default, at least 2.

``num_particles`` defaults to 1 for every estimator but ``iwae`` and ``vimco`` (5).

``free_bits=λ`` (nats per latent site; Kingma et al. 2016, :mod:`pyro_vae.objectives`) is
an option of ``trace``, ``analytic-kl``, ``score`` and ``enum`` (:data:`FREE_BITS`), with
``free_bits_groups`` (K groups of each site's dimensions, or ``"dims"``); ``iwae``,
``vimco`` and ``tracegraph`` refuse both. β (β-VAE) is not an estimator option: it scales the
latent sites of model and guide (:class:`pyro_vae.annealing.ScaleLatents`,
``TrainConfig(beta=...)``), so it works with every estimator.

Each estimator declares what it can do (:class:`Capabilities`: keeps state between steps,
needs reparameterized sites, per-datapoint bound, recordable); :func:`capabilities_of`
reads it. A new estimator is its module, its class's ``capabilities`` and one line below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae.checks import check_count
from pyro_vae.estimators.base import FLAGS, SurrogateELBO, check_flag
from pyro_vae.estimators.capabilities import Capabilities, capabilities_of, declare
from pyro_vae.estimators.enum_elbo import TraceEnumELBO
from pyro_vae.estimators.iwae import IWAELBO
from pyro_vae.estimators.mean_field import MeanFieldELBO
from pyro_vae.estimators.path_gradients import GRADIENTS
from pyro_vae.estimators.score_function import CONTROL_VARIATES, ScoreFunctionELBO
from pyro_vae.estimators.trace_elbo import TraceELBO
from pyro_vae.estimators.tracegraph_elbo import TraceGraphELBO
from pyro_vae.estimators.vimco import VIMCO
from pyro_vae.moved import hand_over

# Pyro's ELBOs cannot carry a declaration: their registry lines make it (Trace_ELBO's here,
# for a Trace_ELBO passed to fit directly; the registry's trace is TraceELBO). None is a
# per-datapoint K-sample bound (they average K single-sample ELBOs).
_PYRO_PATHWISE = Capabilities(  # Trace_ELBO: pathwise where a site allows, else REINFORCE
    keeps_state=False, needs_reparameterized=False, per_datapoint=False, recordable=True
)
declare(Trace_ELBO, _PYRO_PATHWISE)
# Pyro's own classes, passed to fit directly, declare what the registry's subclasses do.
declare(TraceMeanField_ELBO, MeanFieldELBO.capabilities)
declare(TraceEnum_ELBO, TraceEnumELBO.capabilities)
_PYRO_TRACEGRAPH = Capabilities(  # TraceGraph_ELBO: decaying-average baselines in the store
    keeps_state=True, needs_reparameterized=False, per_datapoint=False, recordable=False
)
declare(TraceGraph_ELBO, _PYRO_TRACEGRAPH)

_REGISTRY: dict[str, Callable[..., ELBO]] = {
    "trace": TraceELBO,
    "analytic-kl": MeanFieldELBO,
    "enum": TraceEnumELBO,
    "iwae": IWAELBO,
    "tracegraph": declare(TraceGraphELBO, _PYRO_TRACEGRAPH),
    "score": ScoreFunctionELBO,
    "vimco": VIMCO,
}


# Free bits need a KL term per latent group (pyro_vae.objectives).
FREE_BITS = ("trace", "analytic-kl", "score", "enum")
_NO_FREE_BITS = {
    "iwae": "the importance-weighted bound log (1/K) Σ_k p(x, z_k)/q(z_k | x) has no KL term "
    "per latent group to hold at λ",
    "vimco": "its K-sample bound has no KL term per latent group to hold at λ",
    "tracegraph": "Pyro's TraceGraph_ELBO builds its downstream costs internally; use score, "
    "an unbiased REINFORCE estimator of the same gradient that takes free_bits",
}


def names() -> list[str]:
    """The registered estimator names."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> ELBO:
    """A new estimator called ``name``, constructed with ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"estimator: {name!r} is not one of {', '.join(names())}")
    particles = options.get("num_particles", 1)
    check_count("num_particles", particles, 1)  # Pyro's own ELBOs fail later, in a step
    if "gradient" in options and name not in ("trace", "iwae"):
        raise ValueError(
            f"gradient: {options['gradient']!r} is not an option of {name!r}; expected it with "
            "trace (reparam, stl) or iwae (reparam, dreg, stl), the pathwise estimators"
        )
    for key in ("free_bits", "free_bits_groups"):
        if key in options and name in _NO_FREE_BITS:
            raise ValueError(
                f"{key}: {options[key]!r} is not an option of {name!r}: "
                f"{_NO_FREE_BITS[name]}; free bits are options of {', '.join(FREE_BITS)}"
            )
    for key in FLAGS.keys() & options.keys():
        auto = key == "vectorize_particles" and issubclass(_REGISTRY[name], SurrogateELBO)
        check_flag(key, options[key], "auto" if auto else FLAGS[key])
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:
        unknown = sorted(set(options) - set(accepted_options(name)))
        why = f"{unknown} not among its options ({', '.join(accepted_options(name))})"
        raise ValueError(
            f"estimator options {options} are not valid for {name!r}: {why if unknown else err}"
        ) from err


def accepted_options(name: str) -> list[str]:
    """The keyword options the estimator ``name`` takes: its constructor's, and where that
    passes ``**kwargs`` on, its base classes' up to Pyro's ``ELBO`` (tester FE: an unknown
    option was answered with Python's TypeError, no option named)."""
    taken: list[str] = []
    for cls in _REGISTRY[name].__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        taken += [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in taken]  # fmt: skip
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return taken


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` -> (name, options); values are read as JSON if they can be.

    For example ``"score:control_variate=leave-one-out:num_particles=8"``.

    Raises:
        ValueError: a part that is not key=value; a key given twice with other values.
    """
    import json

    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"estimator: {pair!r} in {spec!r} is not key=value")
        key = key.replace("-", "_")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in options and options[key] != value:  # tester CK: the last one had won
            raise ValueError(
                f"estimator: {key} is given twice in {spec!r}, as {options[key]!r} and "
                f"{value!r}; expected each option once"
            )
        options[key] = value
    return name, options


# Moved to pyro_vae.diagnostics.gradient_variance; resolved on first use, with a warning.
_MOVED = {"GradientStats", "gradient_variance"}
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    return hand_over(__name__, "pyro_vae.diagnostics.gradient_variance", _MOVED, name, _WARNED)


__all__ = [
    "CONTROL_VARIATES",
    "Capabilities",
    "FREE_BITS",
    "GRADIENTS",
    "IWAELBO",
    "MeanFieldELBO",
    "ScoreFunctionELBO",
    "TraceELBO",
    "TraceEnumELBO",
    "VIMCO",
    "capabilities_of",
    "get",
    "names",
    "parse",
]
