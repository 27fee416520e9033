"""A run's model, ready to draw from its prior, rebuilt without its data.

Drawing E[x | z] for z ~ p(z) needs the model and its weights, and of the data only the
facts that shape the model and its pictures: the row width D (``x_dim``), the image shape,
the value drawn as white (``pixel_max``), the categorical likelihood's levels and, for a
model that uses labels, the class names. ``pyro-vae fit`` records them in metrics.json
(``images``, :func:`image_record`) when it ends; :func:`load_for_prior` rebuilds the model
from config.json and that record, and puts in the kept weights from the checkpoint
(``torch.load(weights_only=True)``), so ``pyro-vae sample`` runs after the data file has
moved or gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.checkpoint import RunFolder, RunFolderError
from pyro_vae.devices import move_modules, resolve_device
from pyro_vae.experiment import Experiment, build, num_classes
from pyro_vae.model_protocol import tied_guide, uses_labels
from pyro_vae.run_config import RunConfig, settings_as_read
from pyro_vae.weights import PairWeights, WeightsMismatchError

#: metrics.json's key for :func:`image_record`.
RECORD = "images"


def image_record(exp: Experiment) -> dict[str, Any]:
    """What drawing from ``exp``'s prior needs of its data (module docstring), as plain JSON:
    ``x_dim``, ``image_shape`` (None for a table), ``pixel_max``, ``levels`` and, for a
    model that uses labels, ``classes`` (their names, in label order)."""
    data = exp.data
    shape = getattr(data, "image_shape", None)
    record = {
        "x_dim": int(data.x_dim),
        "image_shape": None if shape is None else [int(s) for s in shape],
        "pixel_max": float(data.pixel_max),
        "levels": data.info.get("levels"),
    }
    if uses_labels(exp.model) is not None:
        names = data.info.get("classes") or range(num_classes(data))
        record["classes"] = [str(name) for name in names]
    return record


@dataclass(frozen=True)
class RecordedImages:
    """What stands in for a run's data in :func:`load_for_prior`: the facts of
    :func:`image_record`, read where the data would be (``x_dim``, ``image_shape``,
    ``pixel_max``, ``info`` with ``levels`` and ``classes``; ``test_x`` one blank row, for
    the shape of the rows a model without ``generate`` is run on)."""

    x_dim: int
    image_shape: tuple[int, ...] | None
    pixel_max: float
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RecordedImages:
        shape = record.get("image_shape")
        info = {"levels": record.get("levels")}
        if record.get("classes") is not None:
            info["classes"] = list(record["classes"])
        return cls(
            int(record["x_dim"]),
            None if shape is None else tuple(shape),
            float(record["pixel_max"]),
            info,
        )

    @property
    def test_x(self) -> torch.Tensor:
        return torch.zeros(1, self.x_dim)


def load_for_prior(
    run: RunFolder | str | Path, device: str = "auto", allow_changed_code: bool = False
) -> Experiment | None:
    """The run's model with its kept (best-validation) weights, on ``device``, and its
    data's :class:`RecordedImages` as ``data``: built from config.json, metrics.json's
    ``images`` record and the checkpoint, the data not loaded. The guide is built too; only
    a guide the prior is made of (a ``tied_guide``: the VampPrior's encoder) gets its
    weights. None when metrics.json has no record (a run that stopped before fit's end, or
    one written before fit recorded it): then only the data can say.

    Raises:
        RunFolderError: the folder is incomplete, or its weights do not fit the model.
        ValueError: ``device`` is not a device this machine has.
        pyro_vae.provenance.CodeChangedError: a model or guide file, or a module of the
            user's own they import, changed since, and not ``allow_changed_code``.
    """
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    resolved = resolve_device(device, "device")
    written = run.read_config()
    record = run.read_metrics().get(RECORD)
    if record is None:
        return None
    state = run.load_checkpoint(map_location=resolved)
    run.refuse_edited_config(written, state, settings_as_read)
    config = RunConfig.from_json(written)
    config = replace(config, training=replace(config.training, device=str(resolved)))
    exp = build(
        config, allow_changed_code=allow_changed_code, data=RecordedImages.from_record(record)
    )
    move_modules(resolved, exp.model, exp.guide)
    weights = state["best"] or state
    _restore_prior(exp, weights, run)
    exp.weights_epoch = weights.get("epoch")
    return exp


def _restore_prior(exp: Experiment, weights: dict, run: RunFolder) -> None:
    """Put in the weights the prior reads: the model's module, the guide's where the prior
    is made of it, and the param-store entries the model reads (found by running it once,
    from its prior, on blank rows)."""
    tied = tied_guide(exp.model)
    x = exp.data.test_x.to(exp.device)
    args = (x,)
    if uses_labels(exp.model) is not None:
        y = torch.zeros(x.shape[0], dtype=torch.long, device=exp.device)
        args = (x, y, torch.ones(x.shape[0], dtype=torch.bool, device=exp.device))
    pyro.clear_param_store()
    pair = PairWeights(exp.model, tied if tied is not None else _no_guide, args, {})
    try:
        pair.restore(weights)
    except WeightsMismatchError as err:
        raise RunFolderError(f"run: {run.path}: {err}") from err
    if not pair.finite():
        raise RunFolderError(
            f"run: {run.path} holds weights with NaN or infinite entries; there is nothing "
            "sensible to sample (was the checkpoint written by a diverged run?)"
        )


def _no_guide(*args, **kwargs) -> None:
    """No guide: the model runs from its prior."""
