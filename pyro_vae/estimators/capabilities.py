"""What an estimator can do, declared once, read by compilation, training and the CLI.

An estimator class declares a :class:`Capabilities` as its class attribute
``capabilities`` (a property where it depends on the options, as ``score``'s control
variate decides whether it keeps state). Pyro's own ELBOs cannot carry the attribute, so
the registry line that names one declares it with :func:`declare`. Whoever needs to know
asks :func:`capabilities_of`, never a list of classes.

A declaration belongs to the class that makes it: a subclass inherits none, because it may
add what its parent lacked (a moving average, a branch on a value), and an estimator that
declares nothing is assumed to keep state between steps, so it is never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

_DECLARED: dict[type, Capabilities] = {}


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """The capabilities of one estimator.

    Attributes:
        keeps_state: Python state carried from one step to the next (NVIL's baseline
            network and running moments, a moving-average baseline; Mnih & Gregor 2014). A
            recording would freeze it at its recorded value.
        needs_reparameterized: every guide site must be reparameterizable (pathwise
            gradients only, Kingma & Welling 2013); a guide with a site that is not is
            refused with an error, not given a biased gradient.
        per_datapoint: the objective is −Σ_n L_K(x_n), a K-sample bound
            log (1/K) Σ_k p(x_n, z_k) / q(z_k | x_n) taken per datapoint of the
            per-datapoint plate (Burda et al. 2015), with K = ``num_particles``; at K = 1 it
            is the ELBO. Estimators without it average K single-sample ELBOs.
        recordable: :class:`pyro_vae.estimators.compiled.CompiledELBO` may record one step
            and replay it: the loss and its gradient are functions of the arguments'
            tensors and the parameters alone. Never together with ``keeps_state``.
        state: what the state is, in words, for messages (``"its 'ema' control variate
            updates a baseline between steps"``); empty when there is none to name.

    Raises:
        ValueError: a flag that is not a bool, or ``recordable`` with ``keeps_state``.
    """

    keeps_state: bool
    needs_reparameterized: bool
    per_datapoint: bool
    recordable: bool
    state: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            expected = str if field.name == "state" else bool
            if not isinstance(value, expected):
                raise ValueError(
                    f"{field.name}: {value!r} is not a {expected.__name__}; expected a "
                    f"{expected.__name__}"
                )
        if self.recordable and self.keeps_state:
            raise ValueError(
                "recordable: True with keeps_state=True; a recording would freeze the state "
                "between steps, so an estimator that keeps state is not recordable"
            )


def declare(cls: type, capabilities: Capabilities) -> type:
    """Declare ``capabilities`` for ``cls``, a class that cannot carry the attribute itself
    (Pyro's own ELBOs), and return ``cls``, so a registry line reads
    ``"trace": declare(Trace_ELBO, Capabilities(...))``.

    Raises:
        ValueError: ``capabilities`` is not a :class:`Capabilities`, or ``cls`` already has
            other capabilities.
    """
    if not isinstance(capabilities, Capabilities):
        raise ValueError(f"capabilities: {capabilities!r} is not a Capabilities")
    known = _DECLARED.get(cls)
    if known is not None and known != capabilities:
        raise ValueError(f"cls: {cls.__name__} already declares {known}; got {capabilities}")
    _DECLARED[cls] = capabilities
    return cls


def capabilities_of(elbo: object) -> Capabilities | None:
    """The capabilities ``elbo``'s own class declares (its ``capabilities`` attribute, or a
    :func:`declare` for it), or ``None`` when it declares none, which callers read as "may
    keep state between steps". Inherited declarations do not count (see the module
    docstring).

    Raises:
        TypeError: the class's ``capabilities`` attribute is not a :class:`Capabilities`.
    """
    cls = type(elbo)
    if "capabilities" in vars(cls):
        declared = elbo.capabilities
        if not isinstance(declared, Capabilities):
            raise TypeError(
                f"{cls.__name__}.capabilities: {declared!r} is not a "
                "pyro_vae.estimators.Capabilities"
            )
        return declared
    return _DECLARED.get(cls)
