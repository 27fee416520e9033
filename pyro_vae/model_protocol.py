"""What a model (or its guide) may offer beyond Pyro syntax, and what each offer enables.

Nothing here is required: any Pyro model — a function, a bound method, a ``PyroModule``
— trains, evaluates and is diagnosed as it is. A model that offers more gets more:

========================  =================================================================
``decode(z)``             reconstructions: E[x | z] at z = E_q z, ``[N, D]`` in data units
                          (without it: the mean of the model's own observation of x,
                          :func:`pyro_vae.predictive.reconstruct`)
``encode(x)``             latent means and the latent-space figure. On a guide: a
                          distribution over z with ``sample`` (and ``mean`` where the family
                          has one; otherwise a Monte Carlo mean is used). On a model without
                          latents (an autoencoder): the code, ``[N, latent_dim]``
``generate(num)``         prior samples: E[x | z] for ``num`` draws of z, ``[num, D]``
                          (without it: the model run with its observations released)
``make_guide()``          the guide used when none is named (``GuideConfig(spec=None)``)
``tied_guide``            an attribute: the guide the model's own prior is made of (a
                          VampPrior's encoder), which the run must use (``--guide`` may
                          only name its class); ``None`` or absent: any guide
``uses_labels``           a class attribute: ``"all"`` (every training label observed: a
                          conditional VAE) or ``"partial"`` (a labelled subset: M2); the
                          model and guide are then called on ``(x, y, observed)``
                          (:mod:`pyro_vae.labels`)
``generate_given(y)``     conditional samples E[x | z, y], z from the prior, for labels
                          ``y`` ``[M]``: ``[M, D]`` (a model that uses labels)
``label_metrics(guide,    test-set label metrics, e.g. ``{"test_accuracy": 0.9}``, added
x, y)``                   to metrics.json beside the ELBO (a model that uses labels)
``training_terms``        a class attribute: the names of the model's factors of the
                          training objective only (M2's classifier term): the fit's
                          objective names them, and its train estimate is called the
                          training objective, not the ELBO
``batch_terms``           a class attribute: the names of training-only factors whose
                          form under data-parallel training is not known to be a sum
                          over the data plate's rows (made from the batch's rows as a
                          whole): data-parallel training refuses them; they are training
                          terms too
``objective_revision``    a class attribute, an integer (1 where none): raised when the
                          model's training objective changes, so that a run trained with
                          the old one is not resumed with the new (M2's is 2: its
                          classifier term was reweighted, tester DY)
``recordable = True``     a class attribute: the model has no Python branching on tensor
                          values, so its trace structure is fixed by the batch shape and a
                          run may record its step (:mod:`pyro_vae.estimators.compiled`);
                          a subclass inherits no declaration (it may add such a branch)
========================  =================================================================

:func:`offered`, :func:`tied_guide`, :func:`uses_labels`, :func:`training_terms`,
:func:`batch_terms`, :func:`objective_revision` and :func:`declares_recordable` are the one
place the package asks; the protocol classes state the signatures for type checkers and
readers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

__all__ = [
    "OPTIONAL_METHODS",
    "ConvertsTiedGuide",
    "Decodes",
    "Encodes",
    "Generates",
    "MakesGuide",
    "ModelProtocol",
    "batch_terms",
    "declares_recordable",
    "objective_revision",
    "offered",
    "tied_guide",
    "training_terms",
    "uses_labels",
]

OPTIONAL_METHODS = {
    "decode": "reconstructions E[x | z] at z = E_q z",
    "encode": "latent means and the latent-space figure",
    "generate": "prior samples E[x | z], z from the prior",
    "make_guide": "the guide used when none is named",
    "generate_given": "conditional samples E[x | z, y] for labels y",
    "label_metrics": "test-set label metrics (e.g. accuracy) beside the ELBO",
}
USES_LABELS = ("all", "partial")


@runtime_checkable
class Decodes(Protocol):
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for codes ``z`` of shape ``[N, latent_dim]``: ``[N, D]``, data units."""


@runtime_checkable
class Encodes(Protocol):
    def encode(self, x: torch.Tensor) -> Any:
        """q(z | x) for a batch ``[N, ...]`` (a guide), or the code ``[N, latent_dim]``."""


@runtime_checkable
class Generates(Protocol):
    def generate(self, num: int) -> torch.Tensor:
        """E[x | z] for ``num`` draws of z from the prior: ``[num, D]``, data units."""


@runtime_checkable
class MakesGuide(Protocol):
    def make_guide(self) -> Callable:
        """A guide for this model (a callable taking the model's arguments)."""


class ModelProtocol(Decodes, Encodes, Generates, MakesGuide, Protocol):
    """Everything a model may offer (each part optional; see the module docstring)."""

    recordable: ClassVar[bool]


def offered(obj: Any, method: str) -> Callable | None:
    """``obj``'s optional ``method`` (one of :data:`OPTIONAL_METHODS`), or ``None``.

    Raises:
        ValueError: ``method`` is not one of the protocol's optional methods.
    """
    if method not in OPTIONAL_METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(OPTIONAL_METHODS)}")
    fn = getattr(obj, method, None)
    return fn if callable(fn) else None


def tied_guide(model: Any) -> Any:
    """The guide ``model``'s prior is made of (its ``tied_guide``; a bound method's object
    is asked), or ``None`` when any guide may be paired with it."""
    return getattr(getattr(model, "__self__", model), "tied_guide", None)


class ConvertsTiedGuide:
    """Mixin, listed before the ``torch.nn.Module`` base, for a model that holds its
    ``tied_guide`` without owning it (the guide's weights stay the guide's: in neither the
    model's ``parameters()`` nor its ``state_dict``): ``.to()``, ``.double()``,
    ``.float()``, ``.half()`` and ``.cuda()`` on the model convert that guide too, as they
    convert the model's own submodules, so a prior made of the guide runs in the model's
    dtype and on its device (``VAE(prior="vamp").double()`` left the guide in float32, and
    the model's first run raised "mat1 and mat2 must have the same dtype"). Converting the
    guide again on its own changes nothing. ``.train(mode)`` and ``.eval()`` likewise set
    the guide's mode with the model's (``model.eval()`` left a VampPrior's encoder, Dropout
    and BatchNorm included, in training mode while the model was scored)."""

    def _apply(self, fn, recurse: bool = True):  # the hook .to(), .double(), ... all go through
        super()._apply(fn, recurse)
        guide = tied_guide(self)
        if recurse and isinstance(guide, torch.nn.Module):
            guide._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):  # .eval() is .train(False)
        super().train(mode)
        guide = tied_guide(self)
        if isinstance(guide, torch.nn.Module):
            guide.train(mode)
        return self


def uses_labels(model: Any) -> str | None:
    """The model's ``uses_labels`` declaration (``"all"``, ``"partial"``), or ``None``;
    a bound method's object is asked (Pyro's ``model``/``guide`` pair).

    Raises:
        ValueError: a declaration other than ``"all"``, ``"partial"`` or ``None``.
    """
    owner = getattr(model, "__self__", model)
    value = getattr(owner, "uses_labels", None)
    if value is not None and value not in USES_LABELS:
        name = getattr(owner, "__name__", type(owner).__name__)
        raise ValueError(
            f"uses_labels: {value!r} declared by {name}; "
            "expected 'all' (every training label observed), 'partial' (a labelled subset) "
            "or None"
        )
    return value


def objective_revision(model: Any) -> int:
    """The model's ``objective_revision`` declaration, 1 where it has none; a bound
    method's object is asked."""
    return int(getattr(getattr(model, "__self__", model), "objective_revision", 1))


def batch_terms(model: Any) -> tuple[str, ...]:
    """The model's ``batch_terms`` declaration (names of factors made from the whole
    batch's rows), or ``()``; a bound method's object is asked."""
    return _names(getattr(getattr(model, "__self__", model), "batch_terms", ()))


def training_terms(model: Any) -> tuple[str, ...]:
    """The names of the model's factors of the training objective only: its
    ``training_terms``, then those of its ``batch_terms`` not among them, or ``()``; a
    bound method's object is asked."""
    declared = _names(getattr(getattr(model, "__self__", model), "training_terms", ()))
    return declared + tuple(t for t in batch_terms(model) if t not in declared)


def _names(declared: Any) -> tuple[str, ...]:
    """A declaration of factor names as a tuple; one name written as a string is one name
    (tester ED: ``training_terms = "penalty"`` was read letter by letter)."""
    if isinstance(declared, str):
        return (declared,)
    return tuple(declared or ())


def declares_recordable(fn: Any) -> bool:
    """Whether ``fn`` declares ``recordable = True`` in its own class (or on itself).

    ``fn`` may be a class, an instance, a bound method (its object is asked) or a function
    carrying the attribute. A subclass inherits no declaration.
    """
    owner = getattr(fn, "__self__", fn)
    if inspect.isfunction(owner):
        return getattr(owner, "recordable", False) is True
    cls = owner if inspect.isclass(owner) else type(owner)
    return vars(cls).get("recordable", False) is True
