"""β-VAE and KL warm-up: scale the latent terms of the ELBO by β.

    ELBO_β = E_q[log p(x | z)] + β · E_q[log p(z) − log q(z | x)]

A fixed β ≠ 1 is the β-VAE (Higgins et al. 2017); with KL warm-up β grows linearly to
its value over the first epochs, so the decoder learns to use z before the KL term pulls
q onto the prior (Bowman et al. 2016; Sønderby et al. 2016). The two compose: the β of a
step is β · warm-up(step). The handler multiplies the log-density scale of every
*unobserved* sample site, so it works for any model/guide pair and any
``pyro.infer.ELBO`` without the model knowing about it. In the model, sites the model
marks for enumeration are left alone: they are summed out exactly (``TraceEnum_ELBO``),
part of the likelihood term, not of a KL, and ``TraceEnum_ELBO`` needs all of them to
share one scale. In the guide (``ScaleLatents(beta, guide=True)``, or
:meth:`ScaleLatents.for_guide`) every latent is scaled, enumerated ones included: a site
the guide enumerates is a latent with a factor q, summed exactly, and its
Σ_z q(z) (log p(z) − log q(z)) is a KL term like any other. (Skipping it there while the
model's copy of the site was scaled trained on log p(x | z) + β log p(z) − log q(z).)

For plain ``pyro.infer.SVI``: ``SVI(ScaleLatents(b)(model), ScaleLatents(b, guide=True)(guide),
...)``; :func:`pyro_vae.fit` takes ``TrainConfig(beta=b)`` (or such a wrapped pair, which it
unwraps, :func:`unwrap`, so that warm-up composes with β).

β weights a training objective; log p(x) and the ELBO belong to the model. Under
:func:`unscaled` every handler is a no-op wherever it sits (around the model, under other
wrappers, or entered inside the model's own code), which is how :mod:`pyro_vae.evaluate`
scores such a pair: by the handler's own state at run time, not by reading how the pair
was wrapped, which no reading of callables can do for a handler entered inside a model.
:func:`handlers_seen` lists the handlers that acted on a run, for a caller that must know
whether β is already applied (:func:`pyro_vae.fit` refuses β given twice).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar

from pyro.poutine.messenger import Messenger

# Context variables rather than module globals: each thread (and asyncio task) has its own,
# so one thread evaluating does not switch off β in another thread's training step.
_UNSCALED: ContextVar[bool] = ContextVar("pyro_vae_annealing_unscaled", default=False)
_SEEN: ContextVar[list | None] = ContextVar("pyro_vae_annealing_seen", default=None)


@contextlib.contextmanager
def unscaled() -> Iterator[None]:
    """Within it, every :class:`ScaleLatents` leaves the scales as they are (β = 1).

    Re-entrant (the outer block's state is restored on leaving an inner one) and
    per thread (a :class:`contextvars.ContextVar`: one thread's block leaves β on in
    another's); left on any exit, an exception's too. Pyro's own handler stack is shared by
    all threads, though, so evaluating in one thread while another trains fails in Pyro
    (``duplicate plate``, tester AH) whatever this context does.
    Also a decorator (``@unscaled()``)."""
    token = _UNSCALED.set(True)
    try:
        yield
    finally:
        _UNSCALED.reset(token)


@contextlib.contextmanager
def handlers_seen() -> Iterator[list]:
    """A list, filled while the block runs, of each :class:`ScaleLatents` that met a site
    it applies to (once each, in the order met), under :func:`unscaled` or not."""
    seen: list[ScaleLatents] = []
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


class ScaleLatents(Messenger):
    """Multiply the log-density of unobserved sample sites by ``beta`` (mutable); a no-op
    under :func:`unscaled`.

    Args:
        beta: β > 0 (1: the ELBO).
        guide: the handler wraps a guide: sites marked for enumeration are scaled too
            (see the module docstring); ``False`` (a model) leaves them to enumeration.
    """

    def __init__(self, beta: float = 1.0, guide: bool = False) -> None:
        super().__init__()
        self._beta = beta
        self.guide = guide
        self._source: ScaleLatents | None = None

    @property
    def beta(self) -> float:
        return self._source.beta if self._source is not None else self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        if self._source is not None:
            raise AttributeError("beta: set it on the model's handler, which this one follows")
        self._beta = value

    def for_guide(self) -> ScaleLatents:
        """A handler for the guide that follows this one's β."""
        handler = ScaleLatents(guide=True)
        handler._source = self
        return handler

    def _process_message(self, msg) -> None:
        if (
            msg["type"] != "sample"
            or msg["is_observed"]
            or not (self.guide or not msg["infer"].get("enumerate"))
        ):
            return
        seen = _SEEN.get()
        if seen is not None and not any(h is self for h in seen):
            seen.append(self)
        beta = self.beta
        if beta != 1.0 and not _UNSCALED.get():
            msg["scale"] = beta * msg["scale"]


def unwrap(fn) -> tuple[object, ScaleLatents | None]:
    """``(inner, handler)`` for ``fn = ScaleLatents(...)(inner)``; ``(fn, None)`` otherwise.

    A reading of how ``fn`` was made, so only the outermost handler: enough to move its β
    into a training config, never to score the pair (for that, :func:`unscaled`)."""
    inner = getattr(fn, "func", None)
    if (
        isinstance(inner, functools.partial)
        and len(inner.args) == 2
        and isinstance(inner.args[0], ScaleLatents)
    ):
        return inner.args[1], inner.args[0]
    return fn, None


def linear_warmup(step: int, warmup_steps: int) -> float:
    """β after ``step`` optimizer steps: (step + 1) / warmup_steps, capped at 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class KLWarmup:
    """β for each optimizer step of a fit: ``beta`` times a linear warm-up over ``epochs``
    epochs of ``steps_per_epoch`` steps (:func:`linear_warmup`), applied by one
    :class:`ScaleLatents` on the model and its :meth:`~ScaleLatents.for_guide` on the guide.

    Attributes:
        steps: round(epochs · steps_per_epoch), the steps β takes to reach ``target``
            (0: no warm-up).
        target: the fixed β (β-VAE; 1: the ELBO) that warm-up rises to.
        handler: the model's :class:`ScaleLatents`, or ``None`` without warm-up and with
            β = 1 (no handler runs as a no-op on every site).
        beta: the current β.
    """

    def __init__(self, epochs: float, steps_per_epoch: int, beta: float = 1.0) -> None:
        self.steps = round(epochs * steps_per_epoch)
        self.target = beta
        self._scale = ScaleLatents(beta)
        self.handler = self._scale if self.steps or beta != 1.0 else None

    @property
    def beta(self) -> float:
        return self._scale.beta

    def wrap(self, model, guide) -> tuple:
        """``model`` and ``guide`` under the handlers (as they are without one)."""
        if self.handler is None:
            return model, guide
        return self.handler(model), self.handler.for_guide()(guide)

    def at_step(self, step: int) -> float:
        """Set β for optimizer step ``step`` (counted from 0 over the whole fit); return it."""
        self._scale.beta = self.target * linear_warmup(step, self.steps)
        return self._scale.beta
