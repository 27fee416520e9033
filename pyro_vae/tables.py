"""CSV and Parquet tables as datasets: feature columns, a label column, and what each
likelihood needs of them.

Files are read with pandas (``read_csv``, ``read_parquet``): CSV dialects, quoting,
compression (``.csv.gz``) and Parquet's encodings are pandas' and pyarrow's to get right,
not ours. A CSV's separator (comma, semicolon, tab or ``|``) is sniffed from its start
(:func:`csv_separator`), so a semicolon- or tab-separated file reads as a comma one.
Parquet needs pyarrow (``pip install 'pyro_vae[parquet]'``) or fastparquet.
The whole table is read into memory.

- Features: ``columns`` names them (in that order); by default every numeric column but
  the label, in the file's order. Each must be numeric (bool counts) with no missing or
  infinite value.
- Labels: ``label_column``'s values, read as text from a CSV; integers (written plainly,
  without a leading zero) stay as they are, anything else (names, codes such as ``007``,
  categories, booleans) becomes the index of its text in sorted order, the texts kept
  as the class names. Without a label column every row's label is 0.

What the observations are follows the likelihood (:func:`table_observations`):
``normal`` standardizes each column, (x − mean) / std, with the mean and standard
deviation (ddof 0) of the *training* split alone, so no statistic of the held-out rows
leaks into training; ``bernoulli`` needs 0/1 columns, ``continuous-bernoulli`` values in
[0, 1] (proportions) and ``categorical`` non-negative integers, each used as they are.

A model of standardized columns gives densities of the standardized values: in nats of
x_std = (x − mean) / std. :func:`original_units` turns a row's log-density into one of
the file's values by the change of variables log p(x) = log p(x_std) − Σ_j log std_j,
and :func:`squared_errors` a reconstruction's squared error into one of the file's values,
(x̂ − x)² = (x̂_std − x_std)² std_j² per column j.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import numpy as np
import torch

from pyro_vae.checks import MAX_LEVELS

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")


class TableError(ValueError):
    """A table that cannot be a dataset; the message names the column and why."""


@dataclass(frozen=True)
class Table:
    """The numbers of a table.

    Attributes:
        features: ``[N, D]`` float64, one column per feature.
        labels: ``[N]`` int64.
        columns: the D feature columns' names.
        label_column: the label column's name, or ``None``.
        classes: the label values in the order of their indices, when they were not
            integers; ``None`` otherwise.
        text_columns: the columns left out of the features because they hold text (only
            where ``columns`` was not given).
    """

    features: np.ndarray
    labels: np.ndarray
    columns: tuple[str, ...]
    label_column: str | None
    classes: tuple[str, ...] | None
    text_columns: tuple[str, ...] = ()


def is_table_path(path: str) -> bool:
    """Whether ``path`` names a table by its suffix (:data:`TABLE_SUFFIXES`, any case)."""
    return path.lower().endswith(TABLE_SUFFIXES)


def refuse_binarization(given: dict[str, Any]) -> None:
    """Refuse binarization options (``given``: name -> value) for a table, naming the first.

    Binarization thresholds or draws image intensities in [0, 1]; a table's columns are
    used as they are (``bernoulli`` needs them 0/1 already), so such an option would be
    silently ignored.

    Raises:
        TableError: ``given`` is not empty.
    """
    for name, value in given.items():
        raise TableError(
            f"{name}: {value!r} sets how image intensities are binarized, but the data is a "
            "table, whose columns are used as they are (bernoulli needs 0/1 columns; normal "
            f"standardizes them); leave {name} out"
        )


def read_table(
    path: str | os.PathLike,
    columns: list[str] | tuple[str, ...] | None = None,
    label_column: str | None = None,
) -> Table:
    """Read a CSV (or TSV) or Parquet file (Parquet when the name ends in ``.parquet`` or
    ``.pq``).

    Raises:
        TableError: an unreadable or empty file; a CSV whose first line is not a header
            or cannot be told from data (:func:`_refuse_data_as_header`); two columns of
            one name (pandas renames the second ``name.1``); a ``label_column`` or one of
            ``columns`` that is not there (the columns that are, named); with ``columns``
            not given, a first column without a header holding 0..N−1 (pandas' index, which
            ``to_csv`` writes unless ``index=False``: a feature of row numbers); a
            non-numeric feature column; a missing (NaN) or infinite value (column, count and
            first row named); an integer column whose distinct values float64 cannot
            tell apart (beyond 2⁵³; two of them named); non-integer numeric labels;
            Parquet without pyarrow or fastparquet (the extra to install named).
    """
    import pandas as pd

    path = Path(path)
    frame = _read(path, label_column)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        expected = "at least one row" if _is_parquet(path) else "a header and at least one row"
        raise TableError(f"data: {path} has no rows; expected {expected}")
    names = [str(c) for c in frame.columns]
    frame.columns = names
    if label_column is not None and label_column not in names:
        raise TableError(
            f"label_column: {label_column!r} is not a column of {path}; its columns are "
            f"{column_list(names)}"
        )
    if columns is None:
        _refuse_written_index(frame, path)
    chosen = _feature_columns(frame, path, columns, label_column)
    for name in chosen:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            _refuse_huge_integers(frame[name], name, path, chosen=True)
            row, value = _first_non_number(frame[name])
            raise TableError(
                f"columns: {name!r} of {path} holds {frame[name].dtype} values such as "
                f"{value!r} ({_row_words(path, row)}); expected numeric "
                "feature columns (leave it out of --columns, or encode it as numbers first)"
            )
    features = frame[chosen].to_numpy(dtype=np.float64)
    _check_finite(features, chosen, path)
    _check_integers_kept(frame, chosen, path)
    labels, classes = _labels(frame, path, label_column)
    left = [c for c in names if c not in chosen + [label_column]]  # text, where not chosen
    text = () if columns is not None else tuple(left)
    return Table(features, labels, tuple(chosen), label_column, classes, text)


def _check_integers_kept(frame, chosen: list[str], path: Path) -> None:
    """Refuse an integer column whose distinct values float64 cannot tell apart: beyond
    2⁵³ its spacing exceeds 1, and 60 integers from 2⁶² up all became 2⁶², then refused as
    a constant column (tester FB)."""
    for name in chosen:
        written = frame[name].to_numpy()
        if written.dtype.kind not in "iu" or not len(written):
            continue
        distinct = np.unique(written)
        read = distinct.astype(np.float64)
        merged = np.flatnonzero(read[1:] == read[:-1])
        if len(merged):
            a, b = int(distinct[merged[0]]), int(distinct[merged[0] + 1])
            raise TableError(
                f"columns: {name!r} of {path} holds the integers {a} and {b}, which float64 "
                f"reads as one number ({read[merged[0]]:.17g}: beyond 2**53 its values are "
                "more than 1 apart), so distinct values would be modelled as equal; expected "
                "values float64 tells apart: subtract an offset (such as the column's "
                "minimum) or rescale the column in the file (or leave it out with --columns)"
            )


def _read(path: Path, label_column: str | None = None):
    """The file as a DataFrame; a CSV's ``label_column`` read as text, so that labels
    written alike as numbers stay apart (``007`` and ``7``: :func:`_labels`)."""
    import pandas as pd

    parquet = _is_parquet(path)
    if parquet:
        _require_parquet_engine()
    try:
        if parquet:
            return pd.read_parquet(path)
        separator = csv_separator(path)
        _check_header(path, separator)
        frame = pd.read_csv(path, sep=separator)
        if label_column is not None and label_column in frame.columns:
            # by position: an index pandas inferred (R's row names, one field more than the
            # header) is read as text here, and aligning by it lost every label (tester FA)
            frame[label_column] = _label_text(path, separator, label_column).to_numpy()
        return frame
    except TableError:
        raise  # the header's own refusal, said as it is
    except pd.errors.EmptyDataError as err:
        raise TableError(f"data: {path} is empty; expected a header and rows") from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        kind = "Parquet" if parquet else "CSV"
        raise TableError(
            f"data: {path} could not be read as {kind} ({err}){_array_hint(path)}"
        ) from err


def _array_hint(path: Path) -> str:
    """'; it is a numpy array ...' where ``path`` starts as a ``.npy`` or ``.npz`` does
    (``table:x.npy`` was said to be a CSV that could not be read, and no more)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return ""
    kinds = {b"\x93NUMPY": "a numpy .npy array", b"PK\x03\x04": "a zip archive (an .npz?)"}
    kind = next((k for magic, k in kinds.items() if head.startswith(magic)), None)
    if kind is None:
        return ""
    return f"; it is {kind}, not a table: give it as `--data {quote(str(path))}`, without 'table:'"


HEADER_SAMPLE_LINES = 200
"""How many lines from the top of a CSV :func:`_check_header` reads to tell a header."""


def _check_header(path: Path, separator: str) -> None:
    """Refuse a CSV whose first line is not a header (:func:`_refuse_data_as_header`), or
    one that names a column twice (pandas reads the second ``g1`` as ``g1.1`` without a
    word, tester U, and ``--columns g1`` would pick one of two)."""
    records = _first_records(path, separator, HEADER_SAMPLE_LINES)
    if not records:
        return  # empty, or unreadable: pandas says what is wrong with the file
    _refuse_data_as_header(path, separator, records)
    seen, twice = set(), []
    for name, _ in records[0]:
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        raise TableError(
            f"data: {path} names the column(s) {twice} more than once in its header; expected "
            "one column per name (pandas would read the second as name.1): rename them"
        )


def _refuse_data_as_header(path: Path, separator: str, records: list[list[tuple[str, bool]]]):
    """Refuse the first line of a CSV unless it is a header, which pandas takes it for.

    The columns that hold numbers in every later line sampled (every column, where there is
    no later line) decide: the first line is a header when each of their cells in it that
    is not blank is a name (not a number, or a number quoted where the cells below are
    not: ``"1","2"``); it is data when none is a name, and a line that gives both names
    and numbers is refused, since it cannot be told which it is. A line that gives those
    columns no name and no number (a table of text alone) is left as pandas reads it. A
    text column (a label's ``cat``) cannot be told from its own header by type, so it
    does not count.
    Taken as a header, a first line of data was one row lost without a word (tester: an
    ``np.savetxt`` file; a headerless file with a text label column, ``cat,0.1,0.2``; one
    with a blank cell, ``0.1,,0.3``).

    Raises:
        TableError: the first line reads as data, or names some numeric columns and gives
            others numbers (it cannot be told which); the file and the cells named.
    """
    first, below = records[0], records[1:]
    numbers, names = [], []
    for j, (cell, quoted) in enumerate(first):
        column = [row[j] for row in below if j < len(row) and row[j][0].strip()]
        if below and not (column and all(_is_number(c) for c, _ in column)):
            continue  # not a numeric column: a text cell above it tells nothing
        if not cell.strip():
            continue  # blank: a missing value, or a column without a name (an index's)
        named = not _is_number(cell) or (quoted and not any(q for _, q in column))
        (names if named else numbers).append(cell)
    if not numbers:
        return
    shown = separator.join(c for c, _ in first[:4]) + (separator + "..." if len(first) > 4 else "")
    fix = (
        "Add a header line naming the columns (numpy: np.savetxt(..., header='a,b,c', "
        "comments='')); a name that is a number needs quotes (\"400\") or a letter (w400)"
    )
    if not names:
        what = "is all numbers" if len(numbers) == len(first) else "reads as data"
        raise TableError(
            f"data: the first line of {path} {what} ({shown!r}), not a header of column "
            f"names: {numbers[:3]} stand where the lines below hold numbers, so it would be "
            f"read as the names and left out of the data. {fix}"
        )
    raise TableError(
        f"data: the first line of {path} ({shown!r}) gives names {names[:3]} to some columns "
        f"that hold numbers below and numbers {numbers[:3]} to others, so it cannot be told "
        f"whether it is a header or the first row of data. {fix}"
    )


def _first_records(path: Path, separator: str, limit: int) -> list[list[tuple[str, bool]]]:
    """The records of the first ``limit`` lines of a CSV file, blank ones left out (as
    pandas does), each a list of (cell, whether it was quoted). A record the limit may
    have cut is dropped. Empty where the file cannot be read (pandas says why)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            lines = list(itertools.islice(f, limit))
        reader, records, start = csv.reader(lines, delimiter=separator), [], 0
        for cells in reader:
            raw, start = "".join(lines[start : reader.line_num]), reader.line_num
            if cells and not (len(lines) == limit and start == limit):
                quoted = _quoted_cells(raw, separator, len(cells))
                records.append(list(zip(cells, quoted, strict=True)))
    except (csv.Error, OSError, EOFError):
        return []
    return records


def _quoted_cells(raw: str, separator: str, count: int) -> list[bool]:
    """Which of a record's ``count`` cells are quoted in its text ``raw``: the csv module
    read again with quoting off keeps the quotes. Where that splits differently (a quoted
    cell holding the separator or a line break), none is taken as quoted."""
    try:
        plain = next(
            csv.reader([raw.rstrip("\r\n")], delimiter=separator, quoting=csv.QUOTE_NONE), []
        )
    except csv.Error:
        return [False] * count
    if len(plain) != count:
        return [False] * count
    return [len(c) >= 2 and c[0] == c[-1] == '"' for c in plain]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _refuse_written_index(frame, path: Path) -> None:
    """Refuse a first column without a header (pandas' ``Unnamed: 0``) that holds 0..N−1:
    the index ``DataFrame.to_csv`` writes unless ``index=False``, which would be a feature
    of row numbers (tester U: trained on as one, the features line its only trace)."""
    first = str(frame.columns[0])
    column = frame[frame.columns[0]]
    if not first.startswith("Unnamed: ") or column.dtype.kind not in "iu":
        return
    if np.array_equal(column.to_numpy(), np.arange(len(column))):
        raise TableError(
            f"data: the first column of {path} has no header and holds 0..{len(column) - 1}, "
            "the row index pandas' to_csv writes unless index=False; it would be a feature "
            "of row numbers: save the table with index=False, or choose the features with "
            "--columns"
        )


SEPARATORS = ",;\t|"
"""The separators :func:`csv_separator` chooses from."""


def csv_separator(path: Path, sample_bytes: int = 65536) -> str:
    """The field separator of a CSV file: one of :data:`SEPARATORS`, found by Python's
    ``csv.Sniffer`` on the first ``sample_bytes`` (decompressed for ``.gz``); ``","``
    when it cannot tell (one column, say).

    pandas' own ``read_csv(sep=None)`` sniffs the same way, but only with its Python
    engine, which is several times slower than the C engine on a large table; sniffing
    a sample here and passing the separator keeps the C engine.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            sample = f.read(sample_bytes)
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except (csv.Error, OSError, EOFError):
        return ","


def _require_parquet_engine() -> None:
    for engine in ("pyarrow", "fastparquet"):
        try:
            __import__(engine)
            return
        except ImportError:
            continue
    raise TableError(
        "data: reading Parquet needs pyarrow, which is not installed; install the optional "
        "extra with `pip install 'pyro_vae[parquet]'` (or `pip install pyarrow`)"
    )


def _feature_columns(frame, path: Path, columns, label_column: str | None) -> list[str]:
    import pandas as pd

    names = list(frame.columns)
    if columns is None:
        chosen = [c for c in names if c != label_column and pd.api.types.is_numeric_dtype(frame[c])]
        _refuse_mostly_numeric(frame, path, [c for c in names if c not in chosen + [label_column]])
        if not chosen:
            raise TableError(
                f"columns: {path} has no numeric column besides the label; its columns are "
                f"{names} (dtypes {[str(frame[c].dtype) for c in names]})"
            )
        return chosen
    if isinstance(columns, str) or not columns:
        raise TableError(f"columns: {columns!r}; expected a non-empty list of column names")
    missing = [c for c in columns if c not in names]
    if missing:
        raise TableError(
            f"columns: {missing} are not columns of {path}; its columns are {column_list(names)}"
        )
    if label_column in columns:
        raise TableError(
            f"columns: the label column {label_column!r} is among the feature columns; "
            "expected it in label_column only"
        )
    if len(set(columns)) != len(columns):
        raise TableError(f"columns: {list(columns)} names a column twice")
    return list(columns)


def column_list(names: list[str], plain: bool = False, more: str = "", shown: int = 12) -> str:
    """``names`` as a message lists them (``plain``: unquoted, unbracketed): all of them up
    to ``shown`` + 1, else the first ``shown``, the last and their count, ``more`` after it
    (testers CT, CR: a 2,000-column table's features line was 12,898 characters long, its
    refusals 31,000)."""
    cut = len(names) > shown + 1
    listed = [*names[:shown], "...", names[-1]] if cut else list(names)
    text = ", ".join(listed) if plain else str(listed).replace("'...'", "...")
    return f"{text} ({len(names):,} columns{more})" if cut else text


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _row_words(path: Path, row: int) -> str:
    """Where a cell is, in a refusal: a CSV's rows counted after its header line; a Parquet
    file has none (tester FB: "header not counted" of a Parquet file)."""
    if _is_parquet(path):
        return f"row {row}, 0-based"
    return f"data row {row}, 0-based, header not counted"


def _first_non_number(values) -> tuple[int, Any]:
    """(data row, value) of the first cell of a column that does not read as a number
    (pandas' ``to_numeric``); the first cell where every one does."""
    import pandas as pd

    parsed = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero((parsed.isna() & values.notna()).to_numpy())
    row = int(bad[0]) if len(bad) else 0
    return row, values.iloc[row]


def _refuse_huge_integers(values, name: str, path: Path, chosen: bool = False, text=None) -> None:
    """Refuse a column holding integers beyond 64 bits (``123456789012345678901234``),
    which pandas reads as text, naming the first (tester FB: called "numbers written with
    a comma"). ``text``: its present cells as stripped strings, where made already."""
    import pandas as pd

    if text is None:
        text = values[values.notna()].astype(str).str.strip()
    whole = text.str.fullmatch(r"[+-]?\d+")
    huge = whole & (pd.to_numeric(text.where(whole), errors="coerce").abs() >= 2.0**63)
    if huge.any():
        row = int(np.flatnonzero(values.index.isin(huge[huge].index))[0])
        raise TableError(
            f"columns: {name!r} of {path} holds integers beyond 64 bits, such as "
            f"{values.iloc[row]!r} ({_row_words(path, row)}), which pandas reads as text, so "
            "it is not read as numeric; write them as floats (such as 1.5e+25) if their "
            "float64 rounding will do, or "
            + (
                "leave it out of --columns"
                if chosen
                else "name the features with --columns to leave it out"
            )
        )


def _refuse_mostly_numeric(frame, path: Path, others: list[str]) -> None:
    """Refuse a column left out of the default features as not numeric although most of its
    cells are numbers, or numbers written with a comma: one bad cell (a decimal comma, a
    stray unit) made pandas read it as text, and dropping it silently changed the data
    (tester B's F4: ``'1,5'`` in one of 400 rows, and the column was gone with no word;
    tester D's F3: a whole column of decimal commas, a European export). Named with the
    first bad cell. A column of text (names, codes such as ``S000``) is left out as before,
    and so is one of numbers with units (``12 mg``)."""
    import pandas as pd

    for name in others:
        values = frame[name]
        present = values[values.notna()]
        if not len(present):
            continue
        parsed = pd.to_numeric(present, errors="coerce")
        text = present.astype(str).str.strip()
        commas = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
        _refuse_huge_integers(values, name, path, text=text)
        if parsed.notna().mean() >= 0.5 and parsed.isna().any():
            row, value = _first_non_number(values)
            raise TableError(
                f"columns: {name!r} of {path} is numbers but for {int(parsed.isna().sum())} "
                f"cells such as {value!r} ({_row_words(path, row)}), so "
                "it is not read as numeric and would be left out of the features; fix those "
                "cells (a decimal comma is not converted), or name the features with "
                "--columns to leave it out"
            )
        written = text.str.contains(",", regex=False).any()
        if written and commas.notna().mean() >= 0.5:  # a decimal comma (or thousands) column
            row, value = _first_non_number(values)
            raise TableError(
                f"columns: {name!r} of {path} holds numbers written with a comma, such as "
                f"{value!r} ({_row_words(path, row)}), which are not "
                "converted (a decimal comma and a thousands separator read alike), so it "
                "would be left out of the features; write them with a decimal point, or name "
                "the features with --columns to leave it out"
            )


def _check_finite(features: np.ndarray, columns: list[str], path: Path) -> None:
    bad = ~np.isfinite(features)
    if bad.any():
        column = int(np.flatnonzero(bad.any(0))[0])
        rows = np.flatnonzero(bad[:, column])
        raise TableError(
            f"data: column {columns[column]!r} of {path} has {len(rows)} missing (NaN) or "
            f"infinite values, the first in {_row_words(path, int(rows[0]))}; expected complete "
            "numeric data: drop or impute those rows first"
        )


def _label_text(path: Path, separator: str, label_column: str):
    """A CSV's ``label_column`` as written, text (so ``007`` and ``7`` stay apart:
    :func:`_labels`), with only an empty cell missing: pandas' default missing-value
    words (``None``, ``NA``, ``null``, ``nan``, ...) are class names there (tester EZ: a
    severity column of None, Mild, Severe was refused as "a missing label"). The feature
    columns keep pandas' defaults."""
    import pandas as pd

    column = pd.read_csv(
        path, sep=separator, usecols=[label_column], dtype=str, keep_default_na=False,
        na_values=[""],
    )  # fmt: skip
    return column[label_column]


def _labels(frame, path: Path, label_column: str | None) -> tuple[np.ndarray, tuple | None]:
    """``[N]`` int64 labels and the class names they index (``None`` where the labels are
    the integers themselves).

    A label column of integers (numbers, or text each written as a plain integer:
    :func:`_integer_labels`) keeps its integers. Any other column (text such as ``007``
    beside ``7``, Parquet categories, booleans) is read as text and each label becomes the
    index of its text among the distinct texts in sorted (Python string) order, so no two
    labels written differently merge (tester: ``007`` and ``7`` read as one class 7).

    Raises:
        TableError: a missing label (its row named); numbers that are not all integers
            (one named), which are no class labels.
    """
    import pandas as pd

    if label_column is None:
        return np.zeros(frame.shape[0], dtype=np.int64), None
    values = frame[label_column]
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise TableError(
            f"label_column: {label_column!r} of {path} has a missing label in "
            f"{_row_words(path, row)}; expected a label in every row"
        )
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    text = values.astype(str)
    numbers = pd.to_numeric(values if numeric else text, errors="coerce").to_numpy(np.float64)
    whole = np.isfinite(numbers) & (numbers == np.round(numbers))
    if (numeric or np.isfinite(numbers).all()) and not whole.all():
        odd = numbers[~whole][0]
        raise TableError(
            f"label_column: {label_column!r} of {path} holds non-integer values such as "
            f"{odd}; expected class labels (integers or names)"
        )
    if numeric or _integer_labels(text, numbers):
        return _exact_integers(values, text, numbers, path, label_column), None
    classes, codes = np.unique(text.to_numpy(dtype=str), return_inverse=True)
    return codes.astype(np.int64), tuple(str(c) for c in classes)


def _integer_labels(text, numbers: np.ndarray) -> bool:
    """Whether labels read as text (``text``, a Series; ``numbers``, their values, NaN
    where not a number) are integers: every one a finite whole number, none written with a
    leading zero (``007`` is a code, named as written), and no two written differently
    with one value (``7`` and ``7.0``), so that reading them as integers merges nothing."""
    if not (np.isfinite(numbers).all() and np.array_equal(numbers, np.round(numbers))):
        return False
    if text.str.strip().str.match(_LEADING_ZERO).any():
        return False
    exact = [_plain_int(t, n) for t, n in zip(text.tolist(), numbers.tolist(), strict=True)]
    pairs = set(zip(text.tolist(), exact, strict=True))
    return len(pairs) == len({value for _, value in pairs})


def _plain_int(written: str, number: float) -> int | float:
    """The label ``written`` as Python reads an integer (exact at any size), else its
    float value ``number`` (``1.000e+00``)."""
    try:
        return int(str(written).strip())
    except ValueError:
        return number


_LEADING_ZERO = re.compile(r"[+-]?0\d")
_INT64 = (-(2**63), 2**63 - 1)


def _exact_integers(values, text, numbers: np.ndarray, path: Path, label_column: str):
    """The integer labels as ``[N]`` int64, each exactly as written: not through float64,
    which merges integers above 2**53 (tester AH: 9007199254740993 and ...992 one class)
    and overflows at 2**63.

    Raises:
        TableError: a label outside int64, or one written as a float (``1e17``) too large
            for its value to be exact; naming it."""
    import pandas as pd

    if pd.api.types.is_signed_integer_dtype(values):
        return values.to_numpy(np.int64)
    exact = []
    for written, number in zip(text.tolist(), numbers.tolist(), strict=True):
        value = _plain_int(written, number)
        if isinstance(value, float):  # 1.000e+00 (np.savetxt's) or a float column's 3.0
            if abs(number) >= 2**53:
                raise TableError(
                    f"label_column: {label_column!r} of {path} holds {written!r}, a float too "
                    "large to be one integer exactly; write integer labels as integers"
                )
            value = int(number)
        if not _INT64[0] <= value <= _INT64[1]:
            raise TableError(
                f"label_column: {label_column!r} of {path} holds {written!r}, outside the "
                "64-bit integers labels are kept in; expected class labels such as 0..C−1 "
                "or names"
            )
        exact.append(value)
    return np.asarray(exact, dtype=np.int64)


def table_observations(
    features: dict[str, np.ndarray],
    likelihood: str,
    levels: int | None,
    columns: tuple[str, ...],
    info: dict[str, Any],
    standardization: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """The observations of each split (``train``, ``val``, ``test``: ``[n, D]`` float64
    features) for ``likelihood`` (module docstring), float32, and the largest value a
    likelihood's mean is drawn against (1, or L − 1 levels). What was done is added to
    ``info``: ``columns`` (the features), and ``standardization`` (columns, training mean
    and std) or ``levels``. ``standardization``: a run's recorded one, applied instead of
    the training split's where its columns are ``columns`` (a run's data evaluated again,
    changed: scored through the transform its networks were trained on, as a fitted
    scaler is reused on new data; tester CT: a column shifted by 1,000 scored as before).

    Raises:
        TableError: the gaussian likelihood (whose sigmoid mean cannot reach standardized
            values: use normal); a feature column constant on the training split (normal),
            or not 0/1 (bernoulli), or outside [0, 1] (continuous-bernoulli), or not
            integers in 0..levels − 1 (categorical); named.
    """
    info["columns"] = list(columns)  # the features, as `pyro-vae fit` prints them
    if likelihood == "gaussian":
        raise TableError(
            "likelihood: 'gaussian' keeps its mean in (0, 1) (a sigmoid, for pixel "
            "intensities), so it cannot model a table's standardized columns, which are "
            "real-valued; use likelihood 'normal' (--likelihood normal), whose mean is unbounded"
        )
    if likelihood == "normal":
        if standardization is not None and standardization.get("columns") == list(columns):
            return _standardized_as_recorded(features, standardization, info), 1.0
        return _standardized(features, columns, info), 1.0
    every = np.concatenate(list(features.values()))
    if likelihood == "bernoulli":
        _check_support(every, columns, (every == 0) | (every == 1), "binary 0/1 values", likelihood)
    elif likelihood == "continuous-bernoulli":
        _check_support(every, columns, (every >= 0) & (every <= 1), "values in [0, 1]", likelihood)
    else:
        integer = (every == np.round(every)) & (every >= 0)
        _check_support(every, columns, integer, "non-negative integer levels", likelihood)
        levels = _table_levels(every, levels)
        info["levels"] = levels
    obs = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in features.items()}
    return obs, 1.0 if likelihood != "categorical" else float(levels - 1)


# per-row log-densities of x: the generic bounds and M2's bounds with the label unobserved
ORIGINAL_UNITS = ("elbo", "log_likelihood", "test_elbo_unlabelled", "test_log_px_unlabelled")


def original_units(metrics: dict[str, Any], standardization: dict[str, Any]) -> dict[str, Any]:
    """The per-row log-densities of ``metrics`` (``elbo``, ``log_likelihood``: nats per row
    of the standardized columns) in the table's original units, as ``<key>_original_units``,
    by log p(x) = log p(x_std) − Σ_j log std_j (the standardization's Jacobian), with
    ``units`` saying which is which. ``standardization``: the ``info`` entry
    :func:`table_observations` records (its ``std``, one per column). A KL between
    latent distributions has no data units and is left as it is. When ``metrics`` holds
    ``reconstruction_mse_original_units`` (:func:`squared_errors`, computed with the
    reconstruction), ``units`` says what both mean squared errors are too.
    """
    log_jacobian = float(np.log(np.asarray(standardization["std"], dtype=np.float64)).sum())
    out: dict[str, Any] = {
        f"{key}_original_units": metrics[key] - log_jacobian
        for key in ORIGINAL_UNITS
        if key in metrics
    }
    if out:
        out["units"] = (
            f"{', '.join(k for k in ORIGINAL_UNITS if k in metrics)}: nats per row of the "
            "standardized columns (x - mean) / std; "
            "*_original_units: nats per row of the file's values, minus sum_j log std_j "
            f"= {log_jacobian:.6g} nats"
        )
    if "reconstruction_mse_original_units" in metrics:
        mse = (
            "reconstruction_mse: squared error of the standardized columns, the mean over "
            "columns and rows; reconstruction_mse_original_units: the same squared errors "
            "times each column's training variance std_j^2 (those of the file's values), "
            "averaged alike"
        )
        out["units"] = f"{out['units']}; {mse}" if out else mse
    return out


def squared_errors(
    x_hat: torch.Tensor, x: torch.Tensor, standardization: dict[str, Any]
) -> torch.Tensor:
    """A reconstruction's squared error per row, ``[N, 2]``: column 0 the mean over the D
    columns of (x̂_j − x_j)² in standardized units (what ``reconstruction_mse`` averages
    for any data), column 1 the mean over the columns of (x̂_j − x_j)² std_j², which is
    the squared error of the de-standardized values x̂_j std_j + mean_j and x_j std_j +
    mean_j, in the file's units squared (``reconstruction_mse_original_units``). Both are
    plain means over columns, so a column of large variance weighs more in the second.

    Args:
        x_hat, x: ``[N, D]`` standardized values (a reconstruction and the data).
        standardization: the ``info`` entry :func:`table_observations` records (its
            ``std``, one per column, from the training split).

    Raises:
        ValueError: ``x_hat`` and ``x`` are not both ``[N, D]`` with D the standardized
            columns.
    """
    std = torch.as_tensor(standardization["std"], dtype=torch.float64, device=x.device)
    if x_hat.shape != x.shape or x.dim() != 2 or x.shape[1] != std.numel():
        raise ValueError(
            f"x_hat, x: shapes {tuple(x_hat.shape)} and {tuple(x.shape)}; expected both "
            f"[N, {std.numel()}], one value per standardized column"
        )
    error = (x_hat.double() - x.double()).pow(2)
    return torch.stack([error.mean(-1), (error * std.pow(2)).mean(-1)], -1)


def _standardized(
    features: dict[str, np.ndarray], columns: tuple[str, ...], info: dict[str, Any]
) -> dict[str, torch.Tensor]:
    train = features["train"]
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = train.mean(0), train.std(0)
    finite = np.isfinite(mean) & np.isfinite(std)
    overflowed = [c for c, ok in zip(columns, finite, strict=True) if not ok]
    if overflowed:  # (tester CT: values near 1e200 gave std inf, and every row 0, silently)
        raise TableError(
            f"columns: {overflowed} have values so large that their mean or variance "
            "overflows float64 on the training split, so the normal likelihood's "
            "standardization (x - mean) / std would make them all 0; rescale them in the "
            "file (or leave them out with --columns)"
        )
    # one value in every row, read as such: the computed std of a constant column is the
    # rounding of its mean, not 0 (tester CZ: 0.1 in 50 rows gave 4e-17, and the column
    # became -1 in every row, the ELBO in the file's units 96.8 nats high a row)
    # (tester DC: one value in 59 rows and its next float in one passed, 36 nats a row
    # high; values near 1e-170 that differ, whose variance underflows, were "constant")
    spread = train.max(0) - train.min(0) if len(train) else np.zeros(len(columns))
    size = np.maximum(np.abs(train).max(0), np.finfo(np.float64).tiny) if len(train) else 1.0
    rounding = spread <= 8 * np.finfo(np.float64).eps * size  # one value, to rounding
    underflowed = [c for c, s, r in zip(columns, std, rounding, strict=True) if not r and s == 0]
    if underflowed:
        raise TableError(
            f"columns: {underflowed} have values so small that their variance underflows "
            "float64 on the training split, so the normal likelihood's standardization "
            "(x - mean) / std is undefined; rescale them in the file (or leave them out "
            "with --columns)"
        )
    constant = [c for c, s, r in zip(columns, std, rounding, strict=True) if r or not s > 0]
    if constant:
        raise TableError(
            f"columns: {constant} are constant on the training split (standard deviation 0), "
            "so the normal likelihood's standardization (x - mean) / std is undefined; "
            "leave them out with --columns (columns=[...])"
        )
    info["standardization"] = {
        "columns": list(columns),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "from": "train split",
    }
    return {k: torch.as_tensor((v - mean) / std, dtype=torch.float32) for k, v in features.items()}


def _standardized_as_recorded(
    features: dict[str, np.ndarray], recorded: dict[str, Any], info: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Each split's ``(x - mean) / std`` with a run's ``recorded`` mean and std (float64,
    as JSON keeps them: the training split's to the bit, where the data are unchanged),
    recorded in ``info`` as it was."""
    mean = np.asarray(recorded["mean"], dtype=np.float64)
    std = np.asarray(recorded["std"], dtype=np.float64)
    info["standardization"] = dict(recorded)
    out = {k: torch.as_tensor((v - mean) / std, dtype=torch.float32) for k, v in features.items()}
    every = torch.cat(list(out.values()))
    beyond = [c for c, ok in zip(recorded["columns"], every.isfinite().all(0), strict=True)
              if not ok]  # fmt: skip
    if beyond:  # (tester CR: values near 1e200 were refused as "NaN or infinite pixels")
        raise TableError(
            f"columns: {beyond} hold values beyond float32's range (3.4e38) once "
            "standardized with the run's training mean and std: the data lie that far "
            "outside those the run was trained on"
        )
    return out


def _check_support(
    every: np.ndarray, columns, ok: np.ndarray, expected: str, likelihood: str
) -> None:
    if ok.all():
        return
    column = int(np.flatnonzero((~ok).any(0))[0])
    value = every[~ok[:, column], column][0]
    default = " (fit's default)" if likelihood == "bernoulli" else ""
    raise TableError(
        f"likelihood: {likelihood!r}{default} needs {expected} in every feature column, "
        f"but column {columns[column]!r} holds {value:g}; for real values use the normal "
        "likelihood (--likelihood normal), which standardizes each column"
    )  # (tester FB: the likelihood went unnamed, the default one too)


def _table_levels(every: np.ndarray, levels: int | None) -> int:
    top = int(every.max()) if every.size else 0
    if levels is None:
        levels = max(top + 1, 2)
    elif top >= levels:
        raise TableError(
            f"levels: {levels}, but the table holds the level {top}; expected more than its "
            "largest value"
        )
    if levels > MAX_LEVELS:
        raise TableError(
            f"levels: the table's largest value {top} needs {levels} categorical levels; "
            f"expected at most {MAX_LEVELS}"
        )
    return levels
