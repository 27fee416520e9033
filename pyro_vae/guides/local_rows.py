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
