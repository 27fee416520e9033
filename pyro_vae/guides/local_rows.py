"""Which of its N datapoints a local (per-datapoint) guide is asked for.

A local guide (``LocalNormal``, ``LocalLowRankNormal``, ``LocalFlow``) holds a q for each
of the N rows of one fixed batch. A plain call must give it those N rows, in order
(:func:`check_rows`). The evaluators and ``fit`` call a guide under
:class:`pyro_vae.minibatch.DataPlateSubsample`, which gives the data plate its full size N
and the batch's rows among the N: the guide then reads the q of those rows
(:func:`given_rows`), so it can be scored in chunks, or on some of its rows (``rows=``).
"""

from __future__ import annotations

import torch

from pyro_vae.plate_declaration import active_num_data


class HeldRows:
    """Mixin of a local guide whose ``loc`` ``[N, latent_dim]`` holds its N rows' q."""

    @property
    def num_datapoints(self) -> int:
        """N, the rows it holds a q for (read by :func:`pyro_vae.minibatch.fitted_rows`)."""
        return int(self.loc.shape[0])


#: The smallest initial standard deviation a local guide starts from: an encoder's scale
#: that underflowed to 0 (float32 exp of a very negative log-scale) starts here, so that
#: its log is finite.
SCALE_FLOOR = 1e-6


def check_initial_values(**values: torch.Tensor) -> None:
    """Refuse a local guide's initial ``values`` ({argument: value}) that are not tensors
    or hold a NaN or infinite element (tester CR: a NaN ``loc`` or ``cov_factor`` was taken
    without a word, and a float ``scale`` raised an AttributeError).

    Raises:
        TypeError: naming the argument and its type.
        ValueError: naming the argument and the first element that is not finite."""
    for arg, value in values.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{arg}: a {type(value).__name__}; expected a torch.Tensor")
        _refuse_elements(arg, value, ~torch.isfinite(value), "finite")


def _refuse_elements(arg: str, value: torch.Tensor, bad: torch.Tensor, expected: str) -> None:
    """Refuse ``value`` where ``bad`` (its shape) marks an element, naming the first."""
    if bool(bad.any()):
        at = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"{arg}: {float(value[tuple(at)])} at index {at}; expected {expected}")


def initial_log_scale(scale: torch.Tensor) -> torch.Tensor:
    """log of ``scale`` (``[N, latent_dim]`` initial standard deviations), each floored at
    :data:`SCALE_FLOOR`, detached, as a local guide's free parameter starts.

    Raises:
        TypeError: ``scale`` is not a tensor.
        ValueError: some element is negative or not finite (naming the first, its row and
            column), where a floor would have hidden the caller's mistake (it was clamped
            to 1e-6 silently).
    """
    check_initial_values(scale=scale)
    floor = f"{SCALE_FLOOR:g}"
    expected = f"finite non-negative standard deviations (those below {floor} start at {floor})"
    _refuse_elements("scale", scale, scale < 0, expected)
    return scale.detach().clamp(min=SCALE_FLOOR).log().clone()


def check_rows(x: torch.Tensor, held: int) -> None:
    """Refuse ``x`` unless it has the ``held`` rows a per-datapoint guide was made for.

    Raises:
        ValueError: naming ``x``'s rows and ``held``.
    """
    if x.shape[0] != held:
        raise ValueError(
            f"x: {x.shape[0]} rows, but this local guide holds {held} datapoints; it only "
            "fits the batch it was made for, or the rows of it the evaluators and fit give it"
        )


def given_rows(rows: torch.Tensor, held: int) -> torch.Tensor | None:
    """``rows`` (the data plate's subsample, inside its ``with``) where a handler gives
    the plate its rows among the guide's ``held`` datapoints, else None (a plain call).

    Raises:
        ValueError: the plate's full size is not ``held``."""
    given = active_num_data()
    if given is None:
        return None
    if given != held:
        raise ValueError(
            f"num_data: the data plate holds {given} rows, but this local guide holds "
            f"{held} datapoints; expected the rows it was made for"
        )
    return rows


def rows_or_all(x: torch.Tensor, rows: torch.Tensor | None, held: int):
    """The index of the q's a local guide's ``encode`` reads: ``rows`` (from
    :func:`given_rows`), or, in a plain call, every one of its ``held`` rows (``x`` must
    have them all, :func:`check_rows`)."""
    if rows is None:
        check_rows(x, held)
        return slice(None)
    return rows
