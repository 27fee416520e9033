"""Pyro's validation for ``AutoCAVI``'s model runs: off while probing, on to explain a failure.

Pyro validates every distribution's parameters and values as they are built and scored
(``pyro.enable_validation``); in ``AutoCAVI``'s two model runs (the seeded first run under
provenance tracking, and the batched run at every probe point) that was a fifth of a
mixture fit's time. Those runs therefore go unvalidated, with two guards:

- observations are checked against their distribution's support once, up front
  (:func:`check_observations`): an observation outside it (a Bernoulli 2) can score as a
  finite, even linear, log-density, which probing would fit silently;
- any failure while probing (an error raised, or a factor refused as not conjugate) re-runs
  the seeded first run once with validation on (:func:`validated_on_failure`): an invalid
  parameter or observation is then reported by Pyro's own message, naming the site, with
  the probing error chained under it.
"""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import pyro.poutine as poutine
import torch

from pyro_vae.cavi.probe_runs import is_factor
from pyro_vae.cavi.seeding import cpu_rng


def check_observations(trace) -> None:
    """Raise ValueError unless every observed site's value is finite and in its
    distribution's support (``site["fn"].support``), read on the first run's trace. An
    infinite value is inside a real support, and its −inf log-density at every probe point
    read as a factor leaving its domain (a NotConjugateError blaming the model)."""
    for name, site in trace.nodes.items():
        if not (is_factor(site) and site["is_observed"]):
            continue
        fn, value = site["fn"], site["value"]
        if torch.is_tensor(value) and value.is_floating_point():
            infinite = int(value.isinf().sum())
            if infinite:
                raise ValueError(
                    f"observed site {name!r}: {infinite} of {value.numel()} values are "
                    "infinite; expected finite data"
                )
        try:
            inside = fn.support.check(site["value"])
        except NotImplementedError:  # a support with no check (pyro.factor's Unit has one)
            continue
        if not bool(torch.as_tensor(inside).all()):
            raise ValueError(
                f"observed site {name!r}: values outside the support {fn.support} of "
                f"{type(fn).__name__}"
            )


@contextmanager
def validated_on_failure(model, args, kwargs, seed: int):
    """Run the block with Pyro's validation off. If it raises, run ``model`` once more,
    validated, as the seeded first run did (torch seeded by ``seed``, the global RNG
    restored after); if that raises (Pyro names the site and the constraint it broke),
    raise that error from the block's (a ValueError: Pyro's validation), else re-raise the
    block's."""
    try:
        with pyro.validation_enabled(False):
            yield
    except Exception as error:
        with cpu_rng(seed), torch.no_grad(), pyro.validation_enabled(True):
            try:
                trace = poutine.trace(model).get_trace(*args, **kwargs)
                trace.compute_log_prob(site_filter=lambda name, site: is_factor(site))
            except ValueError as invalid:
                raise invalid from error
            except Exception:  # it fails validated as plainly: the block's error says more
                pass
        raise error
