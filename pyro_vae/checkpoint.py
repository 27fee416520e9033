"""Run folders: save and load everything a run needs, atomically and without pickle.

A run folder holds

    config.json       how to rebuild the data, model, guide, estimator and training loop
    metrics.json      per-epoch train/validation ELBO, test metrics, data description
    checkpoint.pt     weights (current and best), optimizer state, RNG state, history
    *.png             figures

Every file is written to a temporary name in the same folder and renamed over the old one
(``os.replace`` is atomic on POSIX), so a run killed at any moment leaves the previous
complete version of each file. ``checkpoint.pt`` is read with ``torch.load(...,
weights_only=True)``: only tensors and plain containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "pyro_vae.run/1"
CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.json", "checkpoint.pt"


class RunFolderError(ValueError):
    """A run folder is missing, incomplete, corrupt, or from another version."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def capture_rng_state() -> dict[str, Any]:
    """The torch, numpy and Python RNG states, as tensors and plain values only."""
    # Pyro and user code draw from numpy's global RNG, so that is the state to keep.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "numpy": (
            kind,
            torch.as_tensor(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RunFolder:
    """A training run's folder on disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    def _require(self, name: str) -> Path:
        if not self.path.is_dir():
            raise RunFolderError(
                f"run: {self.path} is not a directory; expected a run folder "
                "written by `pyro-vae fit --out RUN`"
            )
        path = self.file(name)
        if not path.is_file():
            raise RunFolderError(
                f"run: {self.path} has no {name}; it is not a complete run "
                "folder (was training interrupted before its first epoch ended?)"
            )
        return path

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self._require(name)
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunFolderError(f"run: {path} is not valid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise RunFolderError(f"run: {path} holds a {type(obj).__name__}; expected an object")
        return obj

    def read_config(self) -> dict[str, Any]:
        config = self._read_json(CONFIG)
        if config.get("format") != FORMAT:
            raise RunFolderError(
                f"run: {self.file(CONFIG)} has format {config.get('format')!r}; this version of "
                f"pyro_vae reads {FORMAT!r}. Re-run `pyro-vae fit` with this version."
            )
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.file(CONFIG), {"format": FORMAT, **config})

    def read_metrics(self) -> dict[str, Any]:
        return self._read_json(METRICS) if self.file(METRICS).is_file() else {}

    def update_metrics(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into metrics.json (atomically) and return the whole."""
        metrics = self.read_metrics()
        metrics.update(fields)
        write_json(self.file(METRICS), metrics)
        return metrics

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        _atomic_write(self.file(CHECKPOINT), lambda f: torch.save({"format": FORMAT, **state}, f))

    def load_checkpoint(self) -> dict[str, Any]:
        path = self._require(CHECKPOINT)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RunFolderError(
                f"run: {path} could not be read as a pickle-free checkpoint ({err})"
            ) from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RunFolderError(
                f"run: {path} has format {found!r}; this version of pyro_vae reads {FORMAT!r}"
            )
        return state
