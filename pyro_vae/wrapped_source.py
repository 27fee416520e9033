"""A data source that wraps another and changes how its batches are handed out.

:class:`WrappedSource` forwards what a wrapper leaves alone (``per_datapoint``,
``num_train``, ``steps_per_epoch`` and any other attribute) to the source it wraps, so a
wrapper (:class:`pyro_vae.devices.DataOnDevice`, :class:`pyro_vae.labels.LabelledSource`)
writes only what it changes: its batches and its validation set. The interface is that of
:class:`pyro_vae.data_source.DataSource`.
"""

from __future__ import annotations

from typing import Any


class WrappedSource:
    """Forwards the wrapped source ``data``'s attributes; subclasses override batches."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.per_datapoint = data.per_datapoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["data"], name)

    @property
    def num_train(self) -> int:
        return self.data.num_train

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return self.data.steps_per_epoch(batch_size, drop_last)
