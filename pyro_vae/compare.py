"""Training runs side by side: one table and one figure of validation curves.

``pyro-vae compare RUN [RUN ...]`` reads each run folder's config.json and metrics.json
(nothing is recomputed, no checkpoint is loaded) and writes ``comparison.csv`` and
``comparison.png``. The table is a ``pandas.DataFrame`` (pandas, not a table writer of our
own); the figure is drawn on its own ``matplotlib.figure.Figure``, without pyplot.

Columns, in nats per datapoint where they are densities:

- ``evaluated_on``: the split the run's ``test_elbo``, ``log_px``, ``kl`` and
  ``active_units`` come from: ``test set``, or ``training set`` for a guide with free
  per-datapoint parameters (an ``AutoNormal`` over per-image latents), which has no
  posterior for test images (tester U: such a run sat in the same columns as test-set
  runs, its rows called "test rows"); empty for a run not evaluated;
- ``test_elbo``: the test ELBO; ``log_px``: the importance-weighted log p(x) with its
  ``K`` draws (Burda et al. 2015), on the first ``log_px_points`` test rows;
- ``test_elbo_original_units``, ``log_px_original_units``: for a table of ``normal``
  columns, whose model sees them standardized by the training rows (so ``test_elbo`` and
  ``log_px`` are nats per row of the standardized columns), the same in the file's units,
  as metrics.json records them (:func:`pyro_vae.tables.original_units`); empty elsewhere,
  and noted (tester U: only the standardized nats were shown, unlabelled);
- ``kl``: the mean KL(q(z | x) ‖ p(z)) on the test set (the rate), for runs whose
  evaluation recorded it (empty for older runs: ``pyro-vae evaluate RUN`` records it);
- ``active_units``: of ``latent_dim`` (Burda et al. 2015, §5.2);
- ``s_per_epoch``: the median wall-clock seconds of an epoch (the median, because the
  first epoch also records the compiled step);
- ``model``, ``guide`` (``model's own`` when the run used the model's ``make_guide``;
  its own options, ``--guide-opt``, in brackets),
  ``estimator`` with its options, ``precision`` (``--precision``), ``data``, ``epochs``
  run and ``best_epoch``. The printed table (:func:`format_table`) leaves out the long
  ``model`` and ``data`` columns and ``log_px_points``; the CSV has them all.

Runs on different data (another dataset, split, binarization or likelihood) have ELBOs
that cannot be compared; :func:`compare_runs` says so in :attr:`Comparison.notes` (runs
that differ only in ``val_fraction`` are tested on the same rows, and noted as validating
on different ones, unless those change the test data too: :func:`_test_data`), as it
does for bounds on different quantities (log p(x), a CVAE's log p(x | y), M2's
log p(x, y)), for log p(x) estimated on different rows of one split, and for runs
evaluated on the training set beside runs evaluated on the test set (not comparable).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from pyro_vae.checkpoint import (
    EVALUATED_ON_TRAINING_SET,
    RunFolder,
    RunFolderError,
    atomic_path,
    missing_folders,
    remove_empty_folders,
)
from pyro_vae.plots import epoch_axis, save_png
from pyro_vae.run_config import migrate
from pyro_vae.tables import is_table_path

__all__ = ["Comparison", "compare_runs", "plot_validation_curves", "write_comparison"]

COLUMNS = (
    "run",
    "evaluated_on",
    "test_elbo",
    "log_px",
    "K",
    "log_px_points",
    "test_elbo_original_units",
    "log_px_original_units",
    "kl",
    "test_accuracy",
    "active_units",
    "latent_dim",
    "s_per_epoch",
    "epochs",
    "best_epoch",
    "estimator",
    "guide",
    "precision",
    "labels",
    "model",
    "data",
)


@dataclass
class Comparison:
    """What :func:`compare_runs` read.

    Attributes:
        table: one row per run, :data:`COLUMNS` (NaN where a run has no such number).
        curves: per run (by its ``run`` label), ``(epochs, validation ELBO)`` lists.
        validation: what the curves are (metrics.json's ``validation``, e.g. "held-out
            ELBO per datapoint (nats)"), or "validation ELBO" when runs differ.
        notes: warnings for the reader (runs on different data, runs not evaluated).
    """

    table: pd.DataFrame
    curves: dict[str, tuple[list[int], list[float]]]
    validation: str
    notes: list[str]


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def _estimator(config: dict[str, Any]) -> str:
    """The estimator with its options, and the objective's β and KL warm-up where they are
    not the ELBO's (tester L2: a β = 2 run and a warm-up run read as plain ``trace``)."""
    if not config:
        return "?"
    estimator = config.get("estimator") or {}
    train = config.get("train") or {}
    objective = {}
    if train.get("beta", 1.0) != 1.0:
        objective["beta"] = train["beta"]
    if train.get("kl_warmup_epochs") or 0:
        objective["kl_warmup_epochs"] = train["kl_warmup_epochs"]
    options = _options({**(estimator.get("options") or {}), **objective})
    return f"{estimator.get('name', '?')}({options})" if options else estimator.get("name", "?")


def _guide(config: dict[str, Any]) -> str:
    """The guide's spec with its own options (``--guide-opt``): IAF runs of 2 and 4 flows
    must not read alike."""
    options = _options(config.get("guide_options") or {})
    spec = config.get("guide") or "model's own"
    return f"{spec}({options})" if options else spec


def _model(config: dict[str, Any]) -> str:
    name = str(config.get("model", "?")).rsplit(":", 1)[-1]
    options = _options(config.get("model_options") or {})
    return f"{name}({options})" if options else name


#: What makes a run's data (its DataConfig but the training labels a model observes).
_DATA_KEYS = (
    "likelihood", "binarize", "threshold", "levels", "val_fraction", "test_fraction",
    "split_seed", "image_size", "crop", "columns", "label_column", "layout",
)  # fmt: skip


def _data(config: dict[str, Any], keys: tuple[str, ...] = _DATA_KEYS) -> str:
    """The run's data in one string: its name and every setting of :data:`_DATA_KEYS`
    given (a crop only when on), and the first 12 hex digits of a file's checksum (tester
    J: runs with other binarization thresholds were not told apart)."""
    if not config:
        return "?"
    data = config.get("data") or {}
    static = data.get("likelihood", "bernoulli") == "bernoulli" and data.get("binarize") in (
        None,
        "static",
    )
    if not static:  # the threshold binarizes static Bernoulli pixels only (tester K)
        keys = tuple(k for k in keys if k != "threshold")
    if is_table_path(str(data.get("name"))):  # a table takes no binarization (tester CT)
        keys = tuple(k for k in keys if k not in ("binarize", "threshold"))
    details = [f"{k}={data[k]}" for k in keys if data.get(k) not in (None, False)]
    checksum = (data.get("provenance") or {}).get("checksum")
    if checksum:
        details.append(f"checksum={str(checksum).removeprefix('sha256:')[:12]}")
    content = (data.get("provenance") or {}).get("content")
    if content:  # the values read, where recorded (a table's, an image folder's)
        details.append(f"content={str(content).removeprefix('sha256:')[:12]}")
    return f"{data.get('name', '?')}({', '.join(details)})"


def _test_data(config: dict[str, Any]) -> str:
    """What a run's test numbers are computed on: :func:`_data` without ``val_fraction``
    where the test rows do not depend on it. They do where the validation rows' draws come
    first from one generator (dynamic binarization: :func:`pyro_vae.data.load_data` draws
    the validation images' pixels, then the test images') or the training rows set the
    test rows' units (a table's normal likelihood standardizes by the training split);
    elsewhere ``val_fraction`` only moves rows between training and validation (the
    test split is drawn first, by ``test_fraction`` and ``split_seed``)."""
    data = (config or {}).get("data") or {}
    standardized = data.get("likelihood") == "normal" and is_table_path(str(data.get("name")))
    return _data(config) if standardized else _test_rows(config)


def _test_rows(config: dict[str, Any]) -> str:
    """Which rows a run's test numbers score, in the file's own units: :func:`_data`
    without ``val_fraction`` (the test split is drawn first) but under dynamic binarization
    (its test pixels' draws follow the validation images'). A table standardized by other
    training rows scores the same rows, in other units (:func:`_test_data`)."""
    data = (config or {}).get("data") or {}
    if data.get("likelihood") == "bernoulli" and data.get("binarize") == "dynamic":
        return _data(config)
    return _data(config, tuple(k for k in _DATA_KEYS if k != "val_fraction"))


_COUNTS = ("K", "log_px_points", "active_units", "latent_dim", "epochs", "best_epoch")


def _number(section: dict[str, Any], key: str) -> float:
    value = section.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _count(section: dict[str, Any], key: str) -> int | None:
    value = section.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def _evaluated_on(metrics: dict[str, Any]) -> str | None:
    """The split a run's test block was computed on, as metrics.json records it
    (``evaluated_on``; a block written before it was recorded: ``training set`` for a
    local guide, else ``test set``), or ``None`` for a run not evaluated."""
    test = metrics.get("test") or {}
    if not test:
        return None
    split = test.get("evaluated_on")
    if isinstance(split, str):
        return split
    return EVALUATED_ON_TRAINING_SET if metrics.get("local_guide") else "test set"


def _row(label: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics.get("test") or {}
    epochs = metrics.get("epochs") or []
    seconds = [e["seconds"] for e in epochs if isinstance(e.get("seconds"), (int, float))]
    return {
        "run": label,
        "evaluated_on": _evaluated_on(metrics),
        "test_elbo": _number(test, "elbo"),
        "log_px": _number(test, "log_likelihood"),
        "K": _count(test, "log_likelihood_samples"),
        "log_px_points": _count(test, "log_likelihood_points"),
        "test_elbo_original_units": _number(test, "elbo_original_units"),
        "log_px_original_units": _number(test, "log_likelihood_original_units"),
        "kl": _number(test, "kl"),
        "active_units": _count(test, "active_units"),
        "latent_dim": _count(test, "latent_dim"),
        "s_per_epoch": statistics.median(seconds) if seconds else math.nan,
        "epochs": len(epochs),
        "best_epoch": _count(metrics, "best_epoch"),
        "estimator": _estimator(config),
        "guide": _guide(config) if config else "?",
        "precision": (config.get("train") or {}).get("precision", "32") if config else "?",
        "model": _model(config),
        "data": _data(config),
        "labels": _labels_observed(config, test),
        "test_accuracy": _number(test, "test_accuracy"),
    }


def _labels_observed(config: dict[str, Any], test: dict[str, Any]) -> str | None:
    """For a label model's run (its test block says what its bounds are of): the training
    labels it observed, ``"100 labelled"``, ``"0.5 of each class"`` or ``"all"``; else None
    (tester BP: runs of M2 on 100 labels and on half of them had identical rows)."""
    if "labels_in_bound" not in test and "conditioned_on_labels" not in test:
        return None
    data = (config or {}).get("data") or {}
    if data.get("labelled") is not None:
        return f"{data['labelled']} labelled"
    if data.get("labels_fraction") is not None:
        return f"{data['labels_fraction']:g} of each class"
    return "all" if config else "?"


def _read(folder: RunFolder) -> tuple[dict[str, Any], dict[str, Any]]:
    """The folder's config (migrated) and metrics. A folder written by
    :func:`pyro_vae.train.fit` from Python has metrics.json but no config.json: its
    config is ``{}``.

    Raises:
        pyro_vae.checkpoint.RunFolderError: neither file, or one that does not read.
    """
    if not folder.file("config.json").is_file() and folder.file("metrics.json").is_file():
        return {}, folder.read_metrics()
    return migrate(folder.read_config()), folder.read_metrics()


def compare_runs(runs: Sequence[str | os.PathLike]) -> Comparison:
    """Read the run folders ``runs`` into one :class:`Comparison` (nothing recomputed).

    Every folder is read before anything is returned, so one bad path fails the whole
    comparison up front.

    Raises:
        ValueError: ``runs`` is empty.
        pyro_vae.checkpoint.RunFolderError: a path that is not a run folder (no
            config.json, unreadable JSON, another format), naming the path.
    """
    if not runs:
        raise ValueError("runs: none given; expected one or more run folders")
    paths = [Path(r) for r in runs]
    table, curves, validations, notes, tests, test_data = [], {}, set(), [], {}, {}
    test_rows: dict[str, str] = {}
    labels = _labels(paths)
    for label, path in zip(labels, paths, strict=True):
        folder = RunFolder(path)
        config, metrics = _read(folder)
        if not config:
            notes.append(
                f"{label}: no config.json (fit from Python): model, guide and estimator unknown"
            )
        table.append(_row(label, config, metrics))
        test_data[label] = _test_data(config) if config else "?"
        test_rows[label] = _test_rows(config) if config else "?"
        tests[label] = metrics.get("test") or {}
        points = [
            (e["epoch"], e["val_elbo"])
            for e in metrics.get("epochs") or []
            if isinstance(e.get("val_elbo"), (int, float))
        ]
        curves[label] = ([p[0] for p in points], [p[1] for p in points])
        if metrics.get("validation"):
            validations.add(metrics["validation"])
        if not folder.file("metrics.json").is_file() and folder.has_checkpoint:
            # tester CF: a finished run's lost metrics.json read as "unfinished", 0 epochs
            notes.append(
                f"{label}: no metrics.json, so no history or test numbers shown (its "
                f"checkpoint holds them: `pyro-vae fit --resume {quote(str(path))}` rebuilds it)"
            )
        elif not metrics.get("test"):
            why = (  # tester CA: a run that diverged was called stopped or unfinished
                "its training diverged"
                if metrics.get("stop_reason") == "diverged"
                # tester CM: a finished fit from Python was called stopped or unfinished
                else "pyro_vae.fit from Python scores no test set"
                if not config
                else "a stopped or unfinished run"
            )
            notes.append(f"{label}: not evaluated on the test set ({why})")
        notes.extend(_other_weights(label, metrics))
    notes.extend(_listed_twice(paths, labels))
    frame = pd.DataFrame(table, columns=list(COLUMNS)).astype({c: "Int64" for c in _COUNTS})
    notes[:0] = _data_notes(frame, test_data, test_rows)
    notes.extend(_training_set_notes(frame))
    notes.extend(_standardized_notes(frame))
    notes.extend(_unlike_bounds(frame, tests, test_data))
    validation = validations.pop() if len(validations) == 1 else "validation ELBO"
    return Comparison(frame, curves, validation, notes)


def _listed_twice(paths: list[Path], labels: list[str]) -> list[str]:
    """A note for each folder given more than once (``runs/a`` and ``./runs/a/``: two
    identical rows, unsaid, tester CF)."""
    seen: dict[Path, str] = {}
    notes = []
    for path, label in zip(paths, labels, strict=True):
        folder = path.resolve()
        if folder in seen:
            same = (
                f"{label} is listed twice"
                if label == seen[folder]
                else f"{seen[folder]} and {label} are one folder ({folder})"
            )
            notes.append(f"{same}: its row is shown twice")
        else:
            seen[folder] = label
    return notes


def _other_weights(label: str, metrics: dict[str, Any]) -> list[str]:
    """A note where the test block scored other weights than the run keeps: an
    ``evaluate`` while the fit trained on, which then stopped (tester L2: epoch 1's
    numbers shown beside 3 epochs)."""
    scored = (metrics.get("test") or {}).get("scored_weights_of_epoch")
    kept = metrics.get("best_epoch") or len(metrics.get("epochs") or [])
    if scored is None or not kept or scored == kept:
        return []
    return [
        f"{label}: its test numbers scored the weights of epoch {scored}, not those it keeps "
        f"(epoch {kept}): evaluate it again"
    ]


#: A run's content checksum in its data description (:func:`_data`).
_CONTENT = re.compile(r", content=[0-9a-f]+")

#: How a note on runs on different data (their numbers not comparable) begins.
OTHER_DATA = "the runs use different data"
#: How a note on runs that validate on different rows of the same data begins.
OTHER_VALIDATION_ROWS = "the runs validate on different rows"


def _data_notes(
    frame: pd.DataFrame, test_data: dict[str, str], test_rows: dict[str, str]
) -> list[str]:
    """A note where runs' test numbers are on different data (not comparable), else
    where only their validation rows differ (``val_fraction``: the curves and best epochs
    are on other rows, the test numbers on the same, but for runs evaluated on the
    training set, whose rows ``val_fraction`` moves: tester U). Tables of ``normal``
    columns standardized by other training rows score the same test rows in other units:
    their ``*_original_units`` columns are comparable (tester DM: all called not)."""
    known = frame[frame["data"] != "?"]
    which = "; ".join(f"{r.run}: {r.data}" for r in known.itertuples())
    data = known["data"]
    if any("content=" not in test_data[r.run] for r in known.itertuples()):
        # a run from before the values were recorded: compared by the checksum of names
        # and sizes alone, as its own rebuild is (tester FD: "different data" for one file)
        test_data = {k: _CONTENT.sub("", v) for k, v in test_data.items()}
        test_rows = {k: _CONTENT.sub("", v) for k, v in test_rows.items()}
        data = data.str.replace(_CONTENT, "", regex=True)
    groups: dict[str, list[str]] = {}
    for r in known.itertuples():
        groups.setdefault(test_data[r.run], []).append(r.run)
    same_rows = len({test_rows[r.run] for r in known.itertuples()}) == 1
    if len(groups) > 1 and same_rows and known["test_elbo_original_units"].notna().all():
        return [
            f"{OTHER_DATA} ({which}): each standardizes its table by its own training rows, "
            "so test_elbo and log_px, nats of the standardized columns, are not comparable; "
            "test_elbo_original_units and log_px_original_units (comparison.csv) are: the "
            "same test rows, in the file's units"
        ]
    if len(groups) > 1:
        # tester CF: of three runs one on other data, all three were "not comparable"
        alike = [", ".join(g) for g in groups.values() if len(g) > 1]
        within = f"; those on the same test data are: {'; '.join(alike)}" if alike else ""
        return [
            f"{OTHER_DATA} ({which}), so their ELBOs and log p(x) are not comparable"
            f" across data{within}"
        ]
    if data.nunique() > 1:
        training = list(known["run"][known["evaluated_on"] == EVALUATED_ON_TRAINING_SET])
        same = (
            f"the test-set runs' test numbers are on the same test rows; {', '.join(training)}"
            ": evaluated on their training rows, which val_fraction changes"
            if training
            else "their test numbers are on the same test rows"
        )
        return [
            f"{OTHER_VALIDATION_ROWS} ({which}): their validation curves and best epochs "
            f"are on different rows; {same}"
        ]
    return []


def _bound_of(test: dict[str, Any]) -> str:
    """What a run's test ELBO and log p(x) bound: log p(x), or, for a model of labels with
    every test label observed, log p(x | y) (it conditions on y: the CVAE) or log p(x, y)
    (y is a latent with a prior: M2), as the fit recorded in ``labels_in_bound``."""
    given = test.get("labels_in_bound")
    if given == "joint":
        return "log p(x, y)"
    if given == "conditioned" or test.get("conditioned_on_labels"):
        return "log p(x | y)"
    return "log p(x)"


def _unlike_bounds(
    frame: pd.DataFrame, tests: dict[str, dict[str, Any]], test_data: dict[str, str]
) -> list[str]:
    """Notes where evaluated runs' numbers measure different things: bounds on different
    quantities (tester B's F5: M2's log p(x, y) beside a VAE's log p(x) read as M2 1.2
    nats worse), naming the runs that are comparable with each other, the same quantity
    on the same test data (``test_data``, each run's; tester EF: the note called every
    run not comparable, two VAEs on the same data among them), or log p(x) on different
    test rows."""
    notes = []
    evaluated = {label: test for label, test in tests.items() if test}
    bounds = {label: _bound_of(test) for label, test in evaluated.items()}
    if len(set(bounds.values())) > 1:
        which = "; ".join(f"{label}: {bound}" for label, bound in bounds.items())
        unlabelled = [label for label, t in evaluated.items() if "test_log_px_unlabelled" in t]
        hint = (
            f" ({', '.join(unlabelled)}: its metrics.json's test_elbo_unlabelled and "
            "test_log_px_unlabelled bound log p(x))"
            if unlabelled
            else ""
        )
        # tester DW: M2's kl beside a VAE's read as 8 times the rate; its q(y | x) is the
        # point mass at the observed label, whose KL from the uniform p(y) is log C
        joint = (
            " (a bound on log p(x, y), every test label observed, has in its kl the point "
            "mass q(y | x)'s KL from p(y), log C for C uniform classes)"
            if "log p(x, y)" in bounds.values()
            else ""
        )
        groups: dict[tuple[str, Any], list[str]] = {}
        for label, bound in bounds.items():
            groups.setdefault((bound, test_data.get(label)), []).append(label)
        alike = [", ".join(g) for g in groups.values() if len(g) > 1]
        within = (
            f"; those comparable with each other (the same quantity on the same test data) "
            f"are: {'; '.join(alike)}"
            if alike
            else ""
        )
        notes.append(
            f"the runs' bounds are of different quantities ({which}), so their test_elbo, "
            f"log_px and kl are not comparable across them{within}{joint}{hint}"
        )
    for split in dict.fromkeys(frame["evaluated_on"].dropna()):  # each split's runs alike
        points = {
            row.run: row.log_px_points
            for row in frame.itertuples()
            if row.run in evaluated and row.evaluated_on == split and not pd.isna(row.log_px_points)
        }
        if len(set(points.values())) > 1:
            which = "; ".join(f"{label}: the first {n}" for label, n in points.items())
            rows = "training" if split == EVALUATED_ON_TRAINING_SET else "test"
            notes.append(
                f"log_px is estimated on different {rows} rows ({which}), so it differs by "
                "which rows as well as by the model; re-evaluate with the same --ll-points "
                "to compare"
            )
    return notes


def _training_set_notes(frame: pd.DataFrame) -> list[str]:
    """A note naming the runs evaluated on the training set (a guide with free
    per-datapoint parameters has no posterior for test images), whose numbers are the
    training images': not comparable with the test-set runs' beside them (tester U), nor
    are their validation curves, the training set's ELBO rather than held-out rows'."""
    split = frame["evaluated_on"]
    training = list(frame["run"][split == EVALUATED_ON_TRAINING_SET])
    if not training:
        return []
    tested = list(frame["run"][split.notna() & (split != EVALUATED_ON_TRAINING_SET)])
    its = "its" if len(training) == 1 else "their"
    unlike = (
        f", so they are not comparable with the test-set runs' ({', '.join(tested)})"
        if tested
        else ""
    )
    return [
        f"{', '.join(training)}: evaluated on the training set (the guide has free "
        f"per-datapoint parameters, so it has no posterior for test images): {its} "
        f"test_elbo, log_px, kl and active_units are the training images'{unlike}; {its} "
        "validation curve is the training set's ELBO too"
    ]


def _standardized_notes(frame: pd.DataFrame) -> list[str]:
    """A note naming the runs on a table of ``normal`` columns: their ``test_elbo`` and
    ``log_px`` are nats of the standardized columns, and the file's units are in the
    ``*_original_units`` columns (comparison.csv)."""
    runs = list(frame["run"][frame["test_elbo_original_units"].notna()])
    if not runs:
        return []
    return [
        f"{', '.join(runs)}: normal columns of a table, which the model sees standardized "
        "by the training rows: test_elbo and log_px are nats per row of the standardized "
        "columns; test_elbo_original_units and log_px_original_units (comparison.csv) are "
        "in the file's units"
    ]


def plot_validation_curves(comparison: Comparison, path: str | os.PathLike) -> Path:
    """One line per run: validation ELBO against epoch, its highest point marked; a PNG at
    ``path`` (written atomically). Returns ``path``."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for label, (epochs, values) in comparison.curves.items():
        if not epochs:
            continue
        (line,) = ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=label)
        best = max(range(len(values)), key=values.__getitem__)
        ax.plot(epochs[best], values[best], "o", color=line.get_color(), markersize=6)
    epoch_axis(ax.xaxis)
    ax.set_ylabel(comparison.validation)
    ax.grid(alpha=0.3)
    title = "validation curves (circle: best epoch)"
    if any(n.startswith(OTHER_DATA) for n in comparison.notes):
        title += "\nruns on different data: not comparable"
    elif EVALUATED_ON_TRAINING_SET in set(comparison.table["evaluated_on"].dropna()):
        title += "\nsome runs validate on their training set: not comparable"
    elif any(n.startswith(OTHER_VALIDATION_ROWS) for n in comparison.notes):
        title += "\neach run validates on its own rows (val_fraction)"
    ax.set_title(title, fontsize=9)
    if comparison.curves:
        ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, path)


def write_comparison(comparison: Comparison, out: str | os.PathLike) -> tuple[Path, Path]:
    """``comparison.csv`` (the table) and ``comparison.png`` (the curves) in ``out``,
    created if missing; each written atomically. Returns both paths.

    Raises:
        pyro_vae.checkpoint.RunFolderError: ``out`` exists and is not a directory.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out: {out} is a file; expected a directory for the comparison")
    made = missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        csv = out / "comparison.csv"
        with atomic_path(csv) as tmp:
            comparison.table.to_csv(tmp, index=False, float_format="%.6g")
        return csv, plot_validation_curves(comparison, out / "comparison.png")
    except BaseException:  # a full disk: the folders made for it go too (tester BY)
        remove_empty_folders(made)
        raise


def format_table(comparison: Comparison) -> str:
    """The table as text for a terminal: the numbers first, one run per line."""
    table = comparison.table
    wide = ["log_px_points", "latent_dim", "model", "data"]
    optional = ("_original_units", "labels", "test_accuracy")  # shown where a run has one
    wide += [c for c in table.columns if c.endswith(optional) and table[c].isna().all()]
    shown = table.drop(columns=wide)
    shown["active_units"] = [
        "—" if pd.isna(a) else f"{a}/{d}" if not pd.isna(d) else str(a)
        for a, d in zip(table["active_units"], table["latent_dim"], strict=True)
    ]
    for column in shown.columns:
        shown[column] = [_cell(v) for v in shown[column]]
    return shown.to_string(index=False)


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
