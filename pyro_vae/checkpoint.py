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

import contextlib
import errno
import fcntl
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from shlex import quote
from typing import Any

import numpy as np
import torch

FORMAT = "pyro_vae.run/1"
CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.json", "checkpoint.pt"
# What a fit writes before its first checkpoint (RunFolder.clear_unfinished removes it).
UNFINISHED = (CONFIG, METRICS, "*.png", "*.csv", "*.nc", "tensorboard")


#: metrics.json's test block ``evaluated_on`` for a guide with free per-datapoint
#: parameters, scored on its training images (``"test set"`` otherwise): written by
#: :mod:`pyro_vae.experiment`, read by the command line and :mod:`pyro_vae.compare`.
EVALUATED_ON_TRAINING_SET = "training set"

#: What ``fit --resume`` may change in config.json before its next checkpoint records it.
#: (patience decides only when training stops: a resume may raise it to train on past an
#: early stop, and one stopped before its first epoch ended leaves it beside the old one's
#: checkpoint)
RESUMABLE_SETTINGS = (
    "train.epochs",
    "train.progress",
    "train.device",
    "train.tensorboard",
    "train.patience",
    # how the steps run, not what they compute (a resume may change them; tester EH: a
    # resume that changed them and stopped before its first checkpoint left config.json
    # refused beside the checkpoint, by every resume)
    "train.compile",
    "train.compile_backend",
)


def flat_settings(obj, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested dict (config.json's), to compare setting by setting; a
    key with a dot of its own (a file name, ``dig.labels.npy``) as ``a['dig.labels.npy']``
    (tester U read ``data.provenance.files.dig.labels.npy``, a file name split as keys)."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        key = str(key)
        path = f"{prefix}[{key!r}]" if "." in key else f"{prefix}.{key}" if prefix else key
        out.update(flat_settings(value, path))
    return out


def differing_settings(a: dict, b: dict, may_differ=lambda key: False) -> list[str]:
    """The settings (``flat_settings`` keys) where the nested dicts ``a`` and ``b`` differ,
    sorted, less those ``may_differ(key)`` lets differ."""
    a, b = flat_settings(a), flat_settings(b)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not may_differ(k))


def processes_by_epoch(
    stretches: list[dict[str, int]], start: int, world: int
) -> list[dict[str, int]]:
    """The record of how many processes trained which epochs, ``{"from_epoch": e,
    "processes": n}`` per stretch of epochs trained on n processes, once a fit that trains
    from epoch ``start`` (counted from 1) on ``world`` processes has begun: ``stretches``
    (the record so far) as it is where its last stretch has as many, else with the
    stretches from ``start`` on (epochs not kept) dropped and this fit's appended.
    metrics.json and the checkpoint hold the same record (tester: a metrics.json rebuilt
    from the checkpoint had lost it)."""
    stretches = [dict(s) for s in stretches]
    if stretches and stretches[-1]["processes"] == world:
        return stretches
    kept = [s for s in stretches if s["from_epoch"] < start]
    return [*kept, {"from_epoch": start, "processes": world}]


def listed(names: list[str], most: int = 4) -> str:
    """The first ``most`` of ``names``, joined, with "…" where more were left out."""
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


class RunFolderError(ValueError):
    """A run folder is missing, incomplete, corrupt, or from another version."""


class RunInUseError(RunFolderError):
    """Another live process holds the run folder."""


class DiskFullError(RunFolderError):
    """A write ran out of disk space; the file's previous version is intact."""


class FolderNotWritableError(RunFolderError):
    """The system refused a write into a folder (permissions, a read-only file system, a
    quota, a path through a file); the file's previous version is intact."""


class WriteFailedError(FolderNotWritableError):
    """Any other error the system gave writing a file (a file-size limit, ``EFBIG``; an I/O
    error); the file's previous version is intact. A :class:`FolderNotWritableError`, so
    whatever reports a refused write (``fit``: and which checkpoint the folder keeps)
    reports it alike."""


#: The errors that say a folder cannot be written, whatever is written to it.
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOTDIR)


def not_writable(folder: Path, err: OSError) -> FolderNotWritableError:
    """The one-line error for ``err`` (one of :data:`NOT_WRITABLE`) raised writing into
    ``folder``: as ``fit --resume`` refuses a folder it cannot claim."""
    return FolderNotWritableError(f"run: cannot create or write to {folder} ({err.strerror})")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a folder this process cannot write: a command that
    computes for minutes and then writes its results there (``evaluate``, ``diagnose``)
    failed only at its first write (tester U). Creates and removes a temporary file,
    named as :func:`atomic_path`'s are (so a killed check's is cleared as stale), and
    opens ``.metrics.lock``, which :meth:`RunFolder.update_metrics` holds.

    Raises:
        FolderNotWritableError: naming the folder and the system's reason.
        DiskFullError: the disk has no room for one byte.
    """
    folder = Path(folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".writable.", suffix=".tmp", dir=folder)
        try:  # a byte, not only a name: a full disk still makes empty files (tester BW)
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.close(os.open(folder / ".metrics.lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_umask()))
    except OSError as err:
        if err.errno in NOT_WRITABLE:
            raise not_writable(folder, err) from err
        if err.errno == errno.ENOSPC:
            raise DiskFullError(
                f"run: {folder}: the disk is full (no space left on device); nothing was "
                "written. Free some space and run again"
            ) from err
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, lock: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary file is ``.{name}.{random}.tmp`` and holds an ``flock`` while it is
    written, so :meth:`RunFolder.remove_stale_temporaries` can tell a live writer's file
    from one a killed process left (``lock=False`` for writers that lock the file
    themselves, as HDF5 does). On any failure it is removed and ``path`` keeps its
    previous version; running out of space raises :class:`DiskFullError` saying so, and
    a folder the system will not let this process write (:data:`NOT_WRITABLE`: no
    permission, a read-only file system, a quota, a parent that is a file)
    :class:`FolderNotWritableError`, in one line, not as an ``OSError`` from deep in a
    write (tester U: a fit whose folder became unwritable ended in a 40-line traceback).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        mapped = _write_error(path, err)
        if mapped is None:
            raise
        raise mapped from err
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        Path(tmp).unlink(missing_ok=True)
        mapped = _write_error(path, _os_error_of(err))
        if mapped is None:
            raise
        raise mapped from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/.{prefix}-{random}.tmp`` to write several files into before
    they are moved out together; removed, with whatever is left in it, at the end.

    While in use it holds an ``flock`` on its ``.held`` file, so
    :func:`remove_stale_staging_folders` (and :meth:`RunFolder.remove_stale_temporaries`)
    can tell a live writer's folder from one a killed process left (tester BH's note: a
    ``diagnose`` killed with SIGKILL left its folder in the run for good). Each use has a
    folder of its own, so two writers at once neither fill nor remove each other's."""
    path = Path(tempfile.mkdtemp(prefix=f".{prefix}-", suffix=".tmp", dir=parent))
    try:
        fd = os.open(path / _HELD, os.O_RDWR | os.O_CREAT, 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


_HELD = ".held"  # the file a staging folder's user holds an flock on


def remove_stale_staging_folders(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the :func:`staging_folder` folders ``parent/.{prefix}-*.tmp`` whose writer
    is gone (no ``flock`` on their ``.held``); a live writer's stays. Returns what was
    removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return [p for p in parent.glob(f".{prefix}-*.tmp") if p.is_dir() and _remove_if_stale(p)]


def _remove_if_stale(tmp: Path) -> bool:
    """Remove ``tmp`` (an :func:`atomic_path` file, or a :func:`staging_folder` folder)
    if no process holds its lock; whether it was removed. A folder without a ``.held``
    file is left: it is not one of ours, or its writer is making it this moment."""
    folder = tmp.is_dir()
    try:
        fd = os.open(tmp / _HELD if folder else tmp, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    if folder:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    return True


def _os_error_of(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: ``err`` itself, or the one a RuntimeError was raised
    while handling. ``torch.save`` turns a failed write of its stream (``OSError: [Errno
    27] File too large``) into ``RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos``, the OSError only its ``__context__`` (tester: a full disk or a
    file-size limit during the checkpoint write gave that raw traceback)."""
    for _ in range(8):
        if err is None or isinstance(err, OSError):
            return err
        if not isinstance(err, RuntimeError):
            return None
        err = err.__cause__ or err.__context__
    return None


def _write_error(path: Path, err: OSError | None) -> RunFolderError | None:
    """What a failed write of ``path`` raises instead of ``err``: :class:`DiskFullError`
    for a full disk, :class:`FolderNotWritableError` for :data:`NOT_WRITABLE`,
    :class:`WriteFailedError` for any other system error (a file-size limit, an I/O
    error); ``None`` for no OSError or one without an errno (raised as it is)."""
    if err is None:
        return None
    if err.errno == errno.ENOSPC:
        return DiskFullError(
            f"writing {path}: the disk is full (no space left on device); the previous "
            f"{path.name}, if there was one, is intact. Free some space and run again"
        )
    if err.errno in NOT_WRITABLE:
        return FolderNotWritableError(
            f"writing {path}: {path.parent} cannot be written ({err.strerror}); the previous "
            f"{path.name}, if there was one, is intact. Make the folder writable (its "
            "permissions, a read-only file system, a disk quota) and run again"
        )
    if err.errno is None:
        return None  # not the system's refusal (a writer's own OSError): raised as it is
    fix = (
        "Raise the file-size limit (ulimit -f), or write to a file system that takes files "
        "this large,"
        if err.errno == errno.EFBIG
        else "Check the disk"
    )
    return WriteFailedError(
        f"writing {path}: the system refused the write ({err.strerror or err}, "
        f"{errno.errorcode.get(err.errno, err.errno)}); the previous {path.name}, if there "
        f"was one, is intact. {fix} and run again"
    )


def atomic_write(path: str | os.PathLike, write) -> None:
    """``write(f)`` into a binary file object, then put it in place of ``path`` atomically
    (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def _in_use(path: Path, fd: int) -> RunInUseError:
    """The refusal of ``path``, held by the process whose pid its lock file ``fd`` holds."""
    return _in_use_by(path, _pid_in(fd))


def _in_use_by(path: Path, holder: str) -> RunInUseError:
    return RunInUseError(
        f"run: {path} is in use by another pyro-vae process (pid {holder}); wait for it "
        "to finish or stop it, or choose another folder (nothing was written)"
    )


def _pid_in(fd: int) -> str:
    """The pid a lock file ``fd`` names (its holder writes it), or ``"unknown"``."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def _lock_holder(path: Path) -> str | None:
    """The pid of the live process holding ``path``'s lock (through another open file than
    the one tried here: this process's own claim counts), or ``None`` where none holds it
    or there is no lock file it may read."""
    try:
        fd = os.open(path / ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU, and every CUDA device's when CUDA is available), numpy and Python
    RNG states, as tensors and plain values only."""
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
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`. The CUDA states are put back on the devices
    this machine has (those of a checkpoint written with more GPUs are left unused, and a
    machine without CUDA ignores them: its random streams differ anyway)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[:count]])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _history_of(state: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json holds of a checkpoint's ``state``: the per-epoch history, the
    best epoch, the processes that trained each stretch of epochs, and what the fit
    recorded of how it trained (``fit_info``)."""
    best = state.get("best")
    stretches = list(state.get("processes_by_epoch") or [])
    return {
        **(state.get("fit_info") or {}),
        "epochs": list(state.get("history") or []),
        "best_epoch": best.get("epoch") if isinstance(best, dict) else None,
        **({"processes": stretches[-1]["processes"]} if stretches else {}),
        **({"processes_by_epoch": stretches} if stretches else {}),
    }


class RunFolder:
    """A training run's folder on disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._config: dict[str, Any] | None = None
        self._claimed = False  # held by this process's RunLock (a fit)
        self._command = False  # held so by `pyro-vae fit`, whose config.json it is

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def held_by_its_command(self) -> bool:
        """Whether a command holds the folder through this object, its config.json its
        own (``pyro-vae fit`` claims the folder, then writes or reads it, then trains), not
        one a fit from Python found there."""
        return self._command or self._config is not None

    @property
    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    def _require(self, name: str) -> Path:
        if not self.path.is_dir():
            raise RunFolderError(
                f"run: {self.path} is not a directory; expected a run folder "
                "(config.json, metrics.json and weights, as fit writes one)"
            )
        path = self.file(name)
        if not path.is_file():
            raise RunFolderError(f"run: {self.path} has no {name}; {self._why_missing(name)}")
        return path

    def _why_missing(self, name: str) -> str:
        """Why ``name`` is missing, as the folder tells (tester BM: a finished run of
        :func:`pyro_vae.fit` from Python, and one that diverged in its first epoch, were
        both called "interrupted before its first epoch ended")."""
        if name == CONFIG and self._checkpoint_config() is not None:
            # a run of the command line (tester BW: its deleted config.json was blamed on a
            # fit from Python, and the user sent there)
            code = (
                "from pyro_vae.checkpoint import RunFolder; "
                f"RunFolder({str(self.path)!r}).restore_config()"
            )
            return (
                f"its {CHECKPOINT} holds the settings the run was trained with (as the "
                "command line writes one), so config.json was deleted or moved: put it "
                f"back, or write it again from the checkpoint: python -c {quote(code)}"
            )
        if name == CONFIG and (self.has_checkpoint or self.file(METRICS).is_file()):
            return (
                "it was written by pyro_vae.fit from Python, which writes no config.json "
                "(how to rebuild the model, the guide and the data), so the command line "
                "cannot rebuild its model: `pyro-vae compare` reads the folder; evaluate it "
                "in Python with the model and guide it was fit with (pyro_vae.fit(..., "
                "run=RUN, resume=True) with the settings of its fit loads its weights and, "
                "where it finished, trains no more), or train with `pyro-vae fit`"
            )
        if name == CHECKPOINT and self.file(CONFIG).is_file():
            try:
                stop = json.loads(self.file(METRICS).read_text()).get("stop_reason")
            except (OSError, ValueError, AttributeError):
                stop = None
            if stop == "diverged":
                return (
                    "its training diverged in its first epoch, before a checkpoint was "
                    "written: train it again, "
                    f"`pyro-vae fit --out {quote(str(self.path))} --restart` with a smaller "
                    "--lr (or --kl-warmup EPOCHS)"
                )
        if not self.holds_run_files:
            return self._why_no_run_files()
        return (
            "it is not a complete run folder (was training interrupted before its first "
            "epoch ended?)"
        )

    @property
    def holds_run_files(self) -> bool:
        """Whether the folder holds any of the files a fit writes (config.json, metrics.json,
        checkpoint.pt)."""
        return any(self.file(n).is_file() for n in (CONFIG, METRICS, CHECKPOINT))

    def _why_no_run_files(self) -> str:
        """Why a folder without a run's files has none (tester EC: one that was never a
        run was asked whether its training had been interrupted; tester ED: so was one a
        live fit was training into, and one this process had just locked to resume)."""
        holder = None if self._claimed else _lock_holder(self.path)
        if holder not in (None, str(os.getpid())):  # another process's, not this one's
            return (
                f"a fit (pid {holder}) is training into it now and has not finished its "
                "first epoch; try again once it has"
            )
        return (
            f"it holds none of a run's files ({CONFIG}, {METRICS}, {CHECKPOINT}), so it is "
            "not a run folder (a fit from Python stopped before its first epoch ended leaves "
            "none either); expected the --out folder of a fit that finished an epoch"
        )

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self._require(name)
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # another file's bytes
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

    def _checkpoint_config(self) -> dict[str, Any] | None:
        """checkpoint.pt's copy of config.json (the command line's runs save one in every
        checkpoint), or None: no checkpoint, one that does not read, or one without (a fit
        from Python keeps its :class:`~pyro_vae.training_config.TrainConfig` under the same
        key, which names no model: tester CJ, written as config.json, it made the folder
        unreadable)."""
        if not self.has_checkpoint:
            return None
        try:
            config = self.load_checkpoint().get("config")
        except RunFolderError:
            return None
        return config if isinstance(config, dict) and "model" in config else None

    def restore_config(self) -> Path:
        """Write config.json again from checkpoint.pt's copy of it (a run of the command
        line whose config.json was deleted); returns its path.

        Raises:
            RunFolderError: config.json is there already; there is no checkpoint, or it
                holds no copy (a run of :func:`pyro_vae.fit` from Python); the folder is in
                use by another process."""
        if self.file(CONFIG).is_file():
            raise RunFolderError(f"run: {self.file(CONFIG)} is there; nothing to restore")
        config = self._checkpoint_config()
        if config is None:
            raise RunFolderError(
                f"run: {self.path} has no {CHECKPOINT} holding a copy of config.json (a run "
                "of pyro_vae.fit from Python keeps none); nothing to restore it from"
            )
        with self.claim():
            self.write_config(config)
        return self.file(CONFIG)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write config.json (``config`` is ``RunConfig.to_json()``); the checkpoints this
        object saves from then on record the same dict."""
        write_json(self.file(CONFIG), {"format": FORMAT, **config})
        self._config = dict(config)

    def read_metrics(self, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """metrics.json, or ``{}`` where there is none.

        One that is damaged is rebuilt from checkpoint.pt by the process that holds the
        folder (a fit, :meth:`claim`): see :meth:`_rebuild_metrics`. Any other reader is
        refused, told how to rebuild it. Damaged: not JSON, not an object, or, given the
        ``checkpoint`` state (:meth:`load_checkpoint`) it is read beside, a record of other
        epochs than the checkpoint's (no ``epochs`` list, or one of another length: a
        ``{}`` parsed and a resumed run recorded 0 epochs, tester).

        Raises:
            RunFolderError: metrics.json is damaged, and this process may not rebuild it,
                or the folder has no checkpoint to rebuild it from.
        """
        if not self.file(METRICS).is_file():
            if checkpoint is not None and self._claimed and checkpoint.get("history"):
                # a resume: the history is the checkpoint's (tester CI: a deleted
                # metrics.json came back from fit --resume without its epochs)
                gone = RunFolderError(f"run: {self.file(METRICS)} is missing")
                return self._rebuild_metrics(gone, checkpoint)
            return {}
        try:
            metrics = self._read_json(METRICS)
            _refuse_malformed(self.file(METRICS), metrics)
            if checkpoint is not None:
                behind = _caught_up(metrics, checkpoint)
                if behind is not None:
                    return self._catch_up(metrics, behind)
                _refuse_other_epochs(self.file(METRICS), metrics, checkpoint)
            return metrics
        except RunFolderError as err:
            if self._claimed and self.has_checkpoint:
                return self._rebuild_metrics(err, checkpoint)
            # tester: a damaged metrics.json blocked fit --resume, evaluate, sample and
            # compare with no next step, though the checkpoint holds the history
            fix = (
                f"`pyro-vae fit --resume {quote(str(self.path))}` rebuilds its training "
                f"history from {CHECKPOINT} (keeping the damaged file as {METRICS}.damaged); "
                "nothing was changed"
                if self.has_checkpoint
                else f"there is no {CHECKPOINT} to rebuild it from; start the run again"
            )
            raise RunFolderError(f"{err}; {fix}") from err

    def _catch_up(self, lagging: dict, metrics: dict) -> dict[str, Any]:
        """``metrics`` (:func:`_caught_up`: ``lagging`` with the checkpoint's history),
        written back by the process that holds the folder (a fit), with a line saying so;
        as it is for any other reader."""
        if self._claimed:
            write_json(self.file(METRICS), metrics)
            print(
                f"note: {self.file(METRICS)} held {len(lagging['epochs'])} of the "
                f"{len(metrics['epochs'])} epochs {self.file(CHECKPOINT)} records (a stop "
                "came between the two files' writes); it took the checkpoint's, and kept "
                "everything else it held"
            )
        return metrics

    def _rebuild_metrics(
        self, err: RunFolderError, state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """metrics.json made again from checkpoint.pt (``state``, read here when not
        given): the per-epoch history, the best epoch, the processes that trained each
        stretch of epochs and what the fit recorded of how it trained (its plate,
        validation, objective), which the checkpoint holds too (the data's and
        estimator's records, the test block and the image facts are written again by the
        fit that holds the folder). The damaged file is kept beside it, as
        metrics.json.damaged (``.damaged.1``, ... where one is there already); one line
        says so."""
        state = self.load_checkpoint() if state is None else state
        metrics = _history_of(state)
        kept = None
        if self.file(METRICS).is_file():  # damaged, not gone: kept beside the new one
            kept = self.file(f"{METRICS}.damaged")
            tries = 0
            while kept.exists():
                tries += 1
                kept = self.file(f"{METRICS}.damaged.{tries}")
            os.replace(self.file(METRICS), kept)
        write_json(self.file(METRICS), metrics)
        why, done = _one_line(err).removeprefix("run: "), len(metrics["epochs"])
        print(
            f"note: {why}; rebuilt its {done} epochs from {self.file(CHECKPOINT)} (epoch "
            f"{state.get('epoch')})" + (f", the damaged file kept as {kept}" if kept else "")
        )
        return metrics

    def update_metrics(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into metrics.json and return the whole. Where metrics.json is
        gone beside a checkpoint, it starts from the checkpoint's history (tester P, tester
        CI: evaluate, then diagnose, wrote a file of their own block alone, and compare
        showed the run as unfinished, of 0 epochs).

        The read-merge-write holds ``.metrics.lock``, so an ``evaluate`` or ``diagnose``
        while a ``fit`` writes its epochs loses neither's fields; the write is atomic.
        """
        with _flocked(self.file(".metrics.lock")):
            if self.file(METRICS).is_file() or not self.has_checkpoint:
                metrics = self.read_metrics()
            elif "epochs" in fields:  # a fit's own write of its history: nothing is lost
                # (tester CJ: every fit(run=...) from Python, which writes no metrics.json
                # before its first checkpoint, said the file "was missing")
                metrics = {}
            else:  # gone: the checkpoint's history first, not a file of ``fields`` alone
                metrics = _history_of(self.load_checkpoint())
                print(
                    f"note: {self.file(METRICS)} was missing; its epochs came back from the "
                    "checkpoint"
                )
            metrics.update(fields)
            write_json(self.file(METRICS), metrics)
        return metrics

    def clear_unfinished(self) -> None:
        """Remove what a fit that never finished an epoch left (config, metrics, figures), so
        it can start over; refuses a folder with a checkpoint, which is never cleared.

        Raises:
            RunFolderError: the folder holds a checkpoint.
        """
        if self.has_checkpoint:
            raise RunFolderError(f"run: {self.path} holds a checkpoint; it is never cleared")
        for path in self.unfinished_outputs():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def unfinished_outputs(self) -> list[Path]:
        """What a fit writes before its first checkpoint, and :meth:`clear_unfinished`
        removes: config.json, metrics.json, figures, tables, netCDF files and the
        TensorBoard folder, none of them older than the run's config.json (which a fit
        writes first: a figure or table the user put there before is theirs). Nothing
        when config.json is not a run's (:meth:`holds_run_config`): a folder of the user's
        own with a config.json of theirs was cleared of its images and tables by
        ``--restart`` (tester L)."""
        if not self.holds_run_config():
            return []
        started = self.file(CONFIG).stat().st_mtime
        found = [p for pattern in UNFINISHED for p in self.path.glob(pattern)]
        kept = [p for p in found if p.name in (CONFIG, METRICS) or p.stat().st_mtime >= started]
        return sorted(set(kept))

    def holds_run_config(self) -> bool:
        """Whether config.json is a run's: a JSON object of this format (``FORMAT``)."""
        try:
            config = json.loads(self.file(CONFIG).read_text())
        except (OSError, ValueError):  # absent, unreadable, not JSON or not UTF-8
            return False
        return isinstance(config, dict) and config.get("format") == FORMAT

    def claim(self, command: bool = True) -> RunLock:
        """Hold the folder for this process (see :class:`RunLock`); ``command``: for a
        command of the command line (its config.json is the one in the folder), not a
        :func:`pyro_vae.fit` from Python."""
        return RunLock(self, command).acquire()

    @property
    def claimed(self) -> bool:
        """Whether this process holds the folder (:meth:`claim`)."""
        return self._claimed

    def refuse_if_in_use(self) -> None:
        """Refuse the folder where another process holds it, as :meth:`claim` would, without
        taking it or writing anything (``fit --nproc`` asks before its ranks start).

        Raises:
            RunInUseError: naming the holder's pid."""
        holder = _lock_holder(self.path)  # no lock file, or none it may read: claim tells
        if holder is not None:
            raise _in_use_by(self.path, holder)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the ``.*.tmp`` files and :func:`staging_folder` folders that killed
        writers left (a live writer's is locked and stays); returns what was removed."""
        if not self.path.is_dir():
            return []
        return [tmp for tmp in self.path.glob(".*.tmp") if _remove_if_stale(tmp)]

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write checkpoint.pt atomically. Once :meth:`write_config` has written the run's
        config, the checkpoint's ``"config"`` is that same dict (config.json's, less its
        ``format``), whatever ``state`` held there."""
        if self._config is not None:
            state = {**state, "config": self._config}
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save({"format": FORMAT, **state}, f))

    def refuse_edited_config(
        self, config: dict[str, Any], state: dict[str, Any], as_read: Callable | None = None
    ) -> None:
        """Refuse config.json (``config``, as read) where it differs from the config the
        checkpoint's weights were trained with (``state["config"]``), but for what a
        resume may change (:data:`RESUMABLE_SETTINGS`): an edited or swapped config.json
        was used silently, an evaluation scoring the weights on other data (tester L:
        ``threshold`` 0.5 → 0.3, a test ELBO 1.8 nats lower, no note). Either file may be
        the one that changed (tester BW: another run's checkpoint copied in was blamed on
        config.json alone). ``as_read`` (:func:`pyro_vae.run_config.settings_as_read`,
        which this module cannot import) brings both to the current schema first, every
        key a file leaves out at its default, so a checkpoint written under an older one is
        checked too (tester EQ: a schema-3 checkpoint beside a schema-4 config.json, as a
        resume that stops before its first checkpoint leaves one, let an edited threshold
        through); without it, configs of different schemas are let through. A checkpoint
        without a config, with one of version 1 (another layout), or with either config
        unreadable (refused where config.json is read), is let through.

        Raises:
            RunFolderError: naming the first differing setting and both values.
        """
        recorded = state.get("config")
        if not isinstance(recorded, dict) or "schema_version" not in recorded:
            return  # a version-1 run's checkpoint: none, or its settings in another layout
        if as_read is not None:
            try:
                recorded, config = as_read(recorded), as_read(config)
            except (RunFolderError, ValueError):
                return
        elif recorded.get("schema_version") != config.get("schema_version"):
            return  # written before a schema change
        now = {k: v for k, v in config.items() if k != "format"}
        then = {k: v for k, v in recorded.items() if k != "format"}
        differ = differing_settings(now, then, RESUMABLE_SETTINGS.__contains__)
        if differ:
            key = differ[0]
            raise RunFolderError(
                f"run: {self.file(CONFIG)} has {key} = {flat_settings(now).get(key)!r}, but "
                f"the weights in {self.file(CHECKPOINT)} were trained with "
                f"{flat_settings(then).get(key)!r} "
                f"({len(differ)} setting(s) differ: {listed(differ)}); config.json was "
                f"edited or replaced since, or {CHECKPOINT} was replaced by another run's. "
                "Put back the file that changed, or start a new run with `pyro-vae fit "
                "--out` (nothing was changed)"
            )

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        """checkpoint.pt's state, its tensors put on ``map_location`` (``torch.load``'s:
        a device, or a function), whatever device wrote them; the RNG states stay usable
        from any device (:func:`restore_rng_state` takes them back to the CPU).

        Raises:
            RunFolderError: no checkpoint, one that does not read, or of another format.
        """
        path = self._require(CHECKPOINT)
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            raise RunFolderError(
                f"run: {path} could not be read as a pickle-free checkpoint "
                f"({_why_unreadable(err)})"
            ) from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RunFolderError(
                f"run: {path} has format {found!r}; this version of pyro_vae reads {FORMAT!r}"
            )
        return state


#: The fields of metrics.json its readers take as numbers (formatted, compared, summed):
#: at its top, in each epoch's record and in each test block. A number or null each.
_NUMBERS = {
    "top": ("best_epoch", "processes"),
    "epochs": ("epoch", "train_elbo", "val_elbo", "seconds", "beta"),
    "processes_by_epoch": ("from_epoch", "processes"),
    "test": ("elbo", "log_likelihood", "kl", "reconstruction_mse", "num_test",
             "log_likelihood_samples", "log_likelihood_points", "active_units", "latent_dim",
             "seconds", "scored_weights_of_epoch"),
}  # fmt: skip


def _refuse_malformed(path: Path, metrics: dict[str, Any]) -> None:
    """Refuse metrics.json (``metrics``, read from ``path``) whose parts are not of the
    types its readers take: ``epochs`` and ``processes_by_epoch`` lists of objects,
    ``test`` an object and ``test_previous`` a list of them (or one), and each field of
    :data:`_NUMBERS` (and a stretch's counts) a number or null, an integer within float's
    exact range, 2⁵³ (tester BW: valid JSON of other types, ``"epochs": 5`` or
    ``"test": "x"``, crashed ``compare`` in a traceback, and ``"elbo": "NaN"`` failed
    ``evaluate`` after its whole evaluation, naming neither the file nor the field).

    Raises:
        RunFolderError: naming the file, the field, its value and what was expected.
    """

    def refuse(field: str, value: Any, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 60:  # 10**400 in full is 401 digits
            shown = f"{shown[:40]}... ({len(shown)} characters)"
        raise RunFolderError(
            f"run: {path} has {field} = {shown} (of type {type(value).__name__}); expected "
            f"{expected}: it is damaged"
        )

    def numbers(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
        for key in keys:
            value = record.get(key)
            # an integer beyond float's exact range too (tester BY: 10**400 crashed
            # compare converting it to a float, 10**30 pandas converting it to a C long)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or isinstance(value, int)
                and abs(value) > 2**53
            ):
                refuse(f"{where}{key}", value, "a number or null")

    numbers(metrics, _NUMBERS["top"], "")
    for name, each in (("processes_by_epoch", "stretch of epochs"), ("epochs", "epoch's record")):
        records = metrics.get(name, [])
        if not isinstance(records, list):
            refuse(name, records, f"a list of each {each}")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                refuse(f"{name}[{i}]", record, "an object")
            numbers(record, _NUMBERS[name], f"{name}[{i}].")
    previous = metrics.get("test_previous") or []
    blocks = {"test": metrics.get("test") or {}}
    for i, block in enumerate([previous] if isinstance(previous, dict) else previous):
        blocks[f"test_previous[{i}]"] = block
    if not isinstance(previous, (list, dict)):
        refuse("test_previous", previous, "a list of earlier test blocks")
    for where, block in blocks.items():
        if not isinstance(block, dict):
            refuse(where, block, "an object of test metrics")
        numbers(block, _NUMBERS["test"], f"{where}.")


def _caught_up(metrics: dict[str, Any], state: dict[str, Any]) -> dict[str, Any] | None:
    """``metrics`` brought up to the checkpoint ``state`` where it lags it: its ``epochs``
    the first epochs of the checkpoint's history, record for record. The checkpoint is
    written before metrics.json, so a stop between the two writes (a Ctrl-C, a kill -9)
    leaves a whole metrics.json one epoch behind; rebuilt as damaged, it lost the test,
    diagnostics and earlier test blocks that only it holds (tester DT). The history's
    fields (:func:`_history_of`) are the checkpoint's, every other field the file's.
    None where it does not lag so."""
    epochs, history = metrics.get("epochs"), list(state.get("history") or [])
    if not isinstance(epochs, list) or len(epochs) >= len(history):
        return None
    # record for record as written (a NaN, which early stopping lets pass, equals itself
    # there: compared as values it did not, and the file was rebuilt, tester DU)
    if _as_written(epochs) != _as_written(history[: len(epochs)]):
        return None  # a record of other epochs: damaged, not behind
    return {**metrics, **_history_of(state)}


def _as_written(records: list) -> str | None:
    """``records`` as metrics.json writes them (NaN as ``NaN``), or None where they are not
    JSON values."""
    try:
        return json.dumps(records, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _refuse_other_epochs(path: Path, metrics: dict[str, Any], state: dict[str, Any]) -> None:
    """Refuse metrics.json (``metrics``, read from ``path``) whose ``epochs`` is not the
    record of the checkpoint ``state``'s epochs: the checkpoint is written first and
    metrics.json from it, so a whole metrics.json holds as many.

    Raises:
        RunFolderError: naming both counts.
    """
    epochs = metrics.get("epochs")
    done = len(state.get("history") or [])
    if not isinstance(epochs, list):
        found = f"no 'epochs' list (keys: {listed(sorted(metrics)) or 'none'})"
    elif len(epochs) != done:
        found = f"{len(epochs)} epochs"
    else:
        return
    raise RunFolderError(
        f"run: {path} holds {found}, but {path.parent / CHECKPOINT} records {done}; it is "
        "damaged or from another run"
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _why_unreadable(err: Exception) -> str:
    """The reason in torch.load's refusal, without its advice to unpickle untrusted files;
    a file that is not a whole zip archive (torch.load's ``OSError: [Errno 22] Invalid
    argument`` or "failed finding central directory") is said to be cut short or damaged
    (tester P: the errno alone read like a pickle problem)."""
    found = re.search(r"WeightsUnpickler error: *([^\n]*(?:\n\n[^\n]+)?)", str(err))
    if found is None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, OSError) or "central directory" in str(err):
            first = first.split(". This is an internal")[0]
            return f"the file is cut short or damaged, not a whole checkpoint: {first}"
        return first
    reason = " ".join(found.group(1).split()).split(". Please")[0]
    return reason or "unsupported content"


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Raises:
        FolderNotWritableError: the folder cannot be written (:data:`NOT_WRITABLE`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as err:
        if err.errno in NOT_WRITABLE:
            raise not_writable(path.parent, err) from err
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, innermost first: the folders
    ``path.mkdir(parents=True)`` makes, for :func:`remove_empty_folders` to take back."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first, as :func:`missing_folders` lists them), stopping
    at the first one that is not empty: another process wrote into it meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


class RunLock:
    """An exclusive claim on a run folder for as long as this process works on it.

    ``fit`` takes it before any other work: an ``flock`` on ``RUN/.lock``, which the
    operating system releases when the process ends, however it ends. A second process
    asking for a held folder is refused at once with :class:`RunInUseError`, naming the
    holder's pid; a folder whose holder died (``kill -9``) is free again.
    """

    def __init__(self, run: RunFolder, command: bool = True) -> None:
        self.run, self._fd, self._created, self._found = run, None, False, set()
        self._command = command
        self._made: list[Path] = []

    def acquire(self) -> RunLock:
        path = self.run.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"run: {path} is a file; expected a run folder (a directory)")
        self._created = not path.exists()
        # the folders mkdir makes: a refused command removes them all (tester BX: a
        # refused fit --out runs/a left an empty runs/)
        self._made = missing_folders(path)
        try:
            self._found = set() if self._created else {p.name for p in path.iterdir()}
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as err:
            raise not_writable(path, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _in_use(path, fd)
            os.close(fd)
            raise error from None
        self._fd = fd
        try:  # a lock file it may open is not a folder it may write (tester U)
            check_writable(path)
        except BaseException:
            self.release()
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as err:  # a full disk after the check (tester BW: a traceback)
            self.release()
            mapped = _write_error(path / ".lock", err)
            if mapped is None:
                raise
            raise mapped from err
        self.run._claimed, self.run._command = True, self._command
        return self

    def release(self) -> None:
        """Let the folder go as this claim found it where nothing else was written (a
        command refused after claiming it): the lock files it made removed (tester BB's
        cases: a refused ``fit --out`` left them in a folder of other files), and the
        folders it made removed, its parents made for it too; where the run was written,
        the lock file emptied, since it names a holder only while one holds it (tester BE
        saw a refused ``--resume`` leave its pid)."""
        if self._fd is None:
            return
        self.run._claimed = self.run._command = False
        path, locks = self.run.path, {".lock", ".metrics.lock"}
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # a lock file that cannot be written still lets go
            pass
        try:  # a folder that can no longer be read is left as it is
            names = {p.name for p in path.iterdir()}
        except OSError:
            names = None
        if names is not None and names - self._found <= locks:
            for name in locks - self._found:
                (path / name).unlink(missing_ok=True)
            if self._created:
                remove_empty_folders(self._made)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
