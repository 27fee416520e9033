"""Where a run's data came from, and whether it is still the same.

A file-based dataset's provenance (recorded in config.json's data section by ``pyro-vae
fit``) is its absolute path, the shape and dtype of its training array, and a SHA-256
checksum of its files' names and sizes. Names and sizes, not contents: the checksum of a
4 GB array costs one ``stat`` per file, not a read of 4 GB. It notices a file replaced by
one of another size (more rows, other images, another dtype), added or removed files and
renamed ones; a table's feature columns are recorded by name, in order, so a CSV whose
columns were reordered or renamed in place is noticed too. Data read whole into memory (a
table, an image folder) also record a SHA-256 of the values read (``content``: the
features and labels, or the pixels and labels), which costs one pass over memory already
filled, so an edit in place that keeps every size is noticed there too (tester FB: a CSV's
values shifted at the same size were scored as the run's data). In array and IDX files
(memory-mapped, possibly larger than memory) such an edit is not noticed.

Rebuilding a run (:func:`pyro_vae.experiment.load`: ``pyro-vae evaluate``, ``sample``,
``diagnose``, ``fit --resume``) compares the checksum with the data as they are now and
refuses when it changed, unless told to go on (``allow_changed_data``).

Likewise the run's own code: the SHA-256 of the bytes of its ``path.py:attr`` model and
guide files and of the modules of the user's own they import (:mod:`pyro_vae.spec_imports`
says which), in config.json's ``code``; a changed one is refused unless
``allow_changed_code``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALLOW_FLAG = "--allow-changed-data"
CODE_FLAG = "--allow-changed-code"
#: The role of a module of the user's own a model or guide file imports, before its name.
IMPORT_ROLE = "import:"


class DataChangedError(ValueError):
    """The data a run is rebuilt on are not those it was trained on (checksum differs)."""


class CodeChangedError(ValueError):
    """A model or guide file a run is rebuilt with is not the one it was trained with."""


def checksum(root: Path, files: Sequence[Path]) -> str:
    """``sha256:`` and the hex digest of the sorted lines ``name<TAB>size``, one per file,
    ``name`` relative to ``root`` (a dataset directory) or the bare file name."""
    lines = [f"{name}\t{size}\n" for name, size in file_sizes(root, files).items()]
    return "sha256:" + hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def file_sizes(root: Path, files: Sequence[Path]) -> dict[str, int]:
    """{name: size in bytes} of ``files``, ``name`` as :func:`checksum` writes it."""
    sizes = {}
    for f in files:
        f = Path(f)
        name = f.relative_to(root) if root.is_dir() and f.is_relative_to(root) else f.name
        sizes[str(name)] = os.stat(f).st_size
    return sizes


def file_provenance(
    path: Path,
    files: Sequence[Path],
    shape: Sequence[int],
    dtype: Any,
    columns: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    contents: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The provenance of a dataset at ``path`` (a file or a directory) read from ``files``:
    ``{"path", "shape", "dtype", "checksum", "files"}`` (plain JSON), and a table's feature
    ``columns`` in the order they were read, the class names its labels index
    (``classes``, a table's label names or an image folder's class folders), and the
    :func:`content_checksum` of the arrays read (``contents``, data read whole), where
    given."""
    root = Path(path).expanduser().resolve()
    resolved = [Path(f).expanduser().resolve() for f in files]
    out = {
        "path": str(root),
        "shape": [int(s) for s in shape],
        "dtype": str(dtype),
        "checksum": checksum(root, resolved),
        "files": file_sizes(root, resolved),
    }
    if columns is not None:
        out["columns"] = [str(c) for c in columns]
    if classes is not None:
        out["classes"] = [str(c) for c in classes]
    if contents is not None:
        out["content"] = content_checksum(contents)
    return out


def content_checksum(arrays: Sequence[np.ndarray]) -> str:
    """``sha256:`` and the hex digest of each array's dtype, shape and bytes (C order), in
    turn: the values read, whatever the file's formatting."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes in place, not a copy
    return "sha256:" + digest.hexdigest()


def data_changed(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether data whose provenance is ``current`` are not those ``recorded`` (False
    where the run recorded no checksum): the checksum of names and sizes, the shape where
    recorded (a .npy reshaped in place from [60, 6] to [60, 2, 3], every size kept, was
    scored as images over the run's own test block: tester CE), and a table's feature
    columns where both record them (a CSV's columns reordered in place keep its size and
    shape, and each column's weights were read against another's values). The one rule
    for :func:`check_unchanged` and for where ``evaluate`` writes its results (tester CI:
    changed columns read with ``--allow-changed-data`` replaced the run's own test block)."""
    if not recorded or not recorded.get("checksum"):
        return False
    return not all(_agreement(recorded, current or {}))


def _agreement(recorded: dict[str, Any], current: dict[str, Any]) -> tuple[bool, ...]:
    """Whether the checksums agree, the shapes (where recorded), a table's columns and the
    values read (where both record them)."""
    was, columns = recorded.get("columns"), current.get("columns")
    content = recorded.get("content"), current.get("content")
    return (
        current.get("checksum") == recorded["checksum"],
        recorded.get("shape") is None or recorded.get("shape") == current.get("shape"),
        was is None or columns is None or was == columns,
        None in content or content[0] == content[1],
    )


def check_unchanged(
    recorded: dict[str, Any] | None, current: dict[str, Any] | None, allow: bool
) -> None:
    """Refuse data whose checksum differs from the one the run recorded.

    Nothing is compared when the run recorded none (a config.json written before
    provenance, or data without files) or when ``allow``.

    Raises:
        DataChangedError: the checksums, the shapes, a table's feature columns or the
            values read differ, naming the path, both checksums, shapes and dtypes (or both
            column lists, or both content checksums), and how to go on anyway.
    """
    if allow or not data_changed(recorded, current):
        return
    current = current or {}
    now = current.get("checksum")
    same_files, shaped, same_columns, _ = _agreement(recorded, current)
    was, columns = recorded.get("columns"), current.get("columns")
    changes = _file_changes(recorded.get("files"), current.get("files"))
    if same_files and shaped and same_columns:
        found = (
            "its files keep their names, sizes and shape, but the values read from them "
            f"changed (their content gives {current.get('content')}, where config.json "
            f"recorded {recorded.get('content')}): they were edited in place"
        )
    elif same_files and shaped:
        found = (
            f"its file keeps its name, size and shape, but its feature columns are now "
            f"{columns} where config.json recorded {was}{column_changes(was, columns)}"
        )
    elif same_files:
        found = (
            f"its files keep their names and sizes ({now}), but hold shape "
            f"{current.get('shape')} ({current.get('dtype')}) where config.json recorded "
            f"{recorded.get('shape')} ({recorded.get('dtype')})"
        )
    else:
        found = (
            f"its files' names and sizes give {now} (shape {current.get('shape')}, "
            f"{current.get('dtype')}), but config.json recorded {recorded['checksum']} (shape "
            f"{recorded.get('shape')}, {recorded.get('dtype')})"
        )
    raise DataChangedError(
        f"data: {recorded.get('path', '?')} changed since the run was trained{changes}: "
        f"{found}; results would not be comparable. To evaluate on the data "
        f"as they are now, pass {ALLOW_FLAG} to evaluate, sample, diagnose, amortization-gap "
        "or grad-variance (from Python: allow_changed_data=True); a fit is not resumed on "
        "other data"
    )


def column_changes(was: list[str], now: list[str]) -> str:
    """How a table's columns changed: ``'; columns gone: [...]; columns new: [...]'`` (each
    part where it has names), or ``'; the same columns in another order'``; ``''`` where
    they are the same list."""
    if was == now:
        return ""
    gone = [c for c in was if c not in now]
    new = [c for c in now if c not in was]
    if not gone and not new:
        return "; the same columns in another order"
    return "".join(
        f"; columns {what}: {names}" for what, names in (("gone", gone), ("new", new)) if names
    )


def _file_changes(recorded: dict | None, current: dict | None) -> str:
    """' (x.labels.npy is gone; y.npy is new; x.npy has 800 bytes, not 1,000)', where both
    provenances list their files (recorded since the list was added); else ''. A label file
    removed beside its array changed only the checksum the message named (tester B's F8)."""
    if not recorded or not current:
        return ""
    parts = [f"{name} is gone" for name in sorted(set(recorded) - set(current))]
    parts += [f"{name} is new" for name in sorted(set(current) - set(recorded))]
    parts += [
        f"{name} has {current[name]:,} bytes, not {recorded[name]:,}"
        for name in sorted(set(recorded) & set(current))
        if recorded[name] != current[name]
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def code_provenance(files: dict[str, Path | None]) -> dict[str, dict[str, str]]:
    """{role: {"file", "sha256"}} of the user's own code (``files``: role to file; None for
    installed code): ``model`` and ``guide``, the files their specs execute
    (:func:`pyro_vae.spec.spec_file`), and ``import:NAME`` for each module of the user's
    own those import (:func:`pyro_vae.spec_imports.imported_files`): the SHA-256 of each
    file's bytes (a source file is small)."""
    out = {}
    for role, path in files.items():
        if path is not None and Path(path).is_file():
            out[role] = {"file": str(path), "sha256": file_sha256(path)}
    return out


def file_sha256(path: Path | str | None) -> str:
    """``sha256:`` and the hex digest of the file's bytes; ``no file`` where there is none."""
    if path is None or not Path(path).is_file():
        return "no file"
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_changes(recorded: dict | None, current: dict) -> list[tuple[str, dict, dict]]:
    """(role, what config.json recorded for it, ``{"file", "sha256"}`` now) of each
    recorded file whose code changed. ``current``: :func:`code_provenance` now, with the
    imported modules as they resolve now (:func:`pyro_vae.experiment.code_of`). The
    model's and guide's files are the ones ``current`` names; an imported module
    (``import:NAME``) is the file it resolves to now where ``current`` has it (run from
    another folder, or with a symlink moved, ``import nets`` may load another file: tester
    J), else the file the run recorded, read again (a module the code no longer reaches,
    or reaches only when run, is still compared). A file of other bytes, or none, is a
    change; the same bytes at another path are not."""
    changes = []
    for role, was in (recorded or {}).items():
        if role.startswith(IMPORT_ROLE) and role not in current:
            now = {"file": was.get("file"), "sha256": file_sha256(was.get("file"))}
        else:
            now = current.get(role, {"file": was.get("file"), "sha256": "no file"})
        if now["sha256"] != was.get("sha256"):
            changes.append((role, was, now))
    return changes


def check_code_unchanged(recorded: dict | None, current: dict, allow: bool) -> None:
    """Refuse to rebuild a run with a model or guide file, or a module of the user's own
    they import, that changed since it was trained (tester F's F1: a Laplace likelihood
    edited to a Normal one of the same parameters was evaluated, and a resumed run went on
    training it, with no word). ``current``: :func:`code_provenance` now, imported modules
    included (:func:`code_changes`). Nothing is compared for a run that recorded none, or
    when ``allow``; a run recorded before imported modules were compares its model and
    guide files alone.

    Raises:
        CodeChangedError: naming each changed file, its role (``model``, ``guide``, or the
            module and that the model or guide imports it) and both checksums (or that the
            file is gone, or that the module now loads from another file), and how to go
            on."""
    if allow:
        return
    changes = code_changes(recorded, current)
    if not changes:
        return
    raise CodeChangedError(
        f"{'; '.join(_described_change(*change) for change in changes)}; its weights would "
        f"be read into other code. To evaluate with the code as it is now, pass {CODE_FLAG} "
        "to evaluate, sample, diagnose, amortization-gap or grad-variance (from Python: "
        "allow_changed_code=True); a fit is not resumed with other code"
    )


def _described_change(role: str, was: dict, now: dict) -> str:
    where = _described_role(role)
    if now["sha256"] == "no file":
        return f"{where}: {was.get('file')} is gone (config.json recorded {was.get('sha256')})"
    if now["file"] != was.get("file"):
        return (
            f"{where}: loads from {now['file']} now (its bytes give {now['sha256']}), where "
            f"the run was trained with {was.get('file')} ({was.get('sha256')})"
        )
    return (
        f"{where}: {was.get('file')} changed since the run was trained (its bytes give "
        f"{now['sha256']}, config.json recorded {was.get('sha256')})"
    )


def _described_role(role: str) -> str:
    """'model', or 'module my_nets (imported by the model's or guide's file)'."""
    if role.startswith(IMPORT_ROLE):
        return f"module {role[len(IMPORT_ROLE) :]} (imported by the model's or guide's file)"
    return role
