"""Pyro's own ELBO tests, run against every estimator in ``pyro_vae.estimators``.

Pyro's ``tests/infer/test_gradient.py`` and ``tests/infer/test_valid_models.py`` are
parametrized over Pyro's ELBO classes (``@pytest.mark.parametrize("Elbo", [...])``). This
script adds a row for every estimator in ``pyro_vae.estimators.names()`` (``score`` once per
control variate) to those parametrizations and runs them with Pyro's own settings, then
writes ``benchmarks/pyro_suite.md``: counts per estimator and file, and each failure's kind
with one example. CI does not run it. Usage::

    git clone https://github.com/pyro-ppl/pyro /tmp/pyro-src     # any Pyro source tree
    .venv/bin/python benchmarks/pyro_suite.py --pyro-src /tmp/pyro-src

All of it (about 2,200 tests) takes 15-20 minutes on 2 CPU cores, most of it in the
gradient tests that average over many particles or steps. ``--quick`` runs only
pyro_vae's rows without those (about 1,200 tests); ``--rows``, ``--file`` and ``-k``
select further, e.g. ``--rows iwae,score-ema -k test_plate_ok``.

Pyro's code is never copied into this repository: the two test files, their helpers
(``tests/common.py``, the conftests) and Pyro's ``setup.cfg`` are copied into a scratch
folder made with ``tempfile.mkdtemp()``, the test files are rewritten there, and pytest runs
in a separate process in that folder. That keeps Pyro's settings: its ``tests/conftest.py``
makes float64 the default dtype, its ``setup.cfg`` turns warnings into errors (with its own
ignores), its ``tests/infer/conftest.py`` seeds every test with 123.

The rewrite (with ``ast``) makes two changes to each test file:

- every ``parametrize`` whose argument names include ``Elbo`` gets one more value per
  estimator row, a :class:`RowFactory`. For single-name lists it is appended; for tuple
  lists (``"Elbo,local_samples"``) the entries of the row's Pyro counterpart are copied with
  the factory in place of the class (the ``Trace_ELBO`` entries when the counterpart is not
  in the list). Pyro's own values stay as they are.
- every comparison on ``Elbo`` (``Elbo is TraceEnum_ELBO``, ``Elbo in (...)``), which the
  tests use to pick a guide (``config_enumerate`` for ``TraceEnum_ELBO``) or an expected
  value, sees the row's Pyro counterpart: the registered class itself for the rows that
  are Pyro's classes (``trace``, ``analytic-kl``, ``enum``, ``tracegraph``), ``Trace_ELBO``
  for ours (``iwae``, ``score``, ``vimco``).

A :class:`RowFactory` is called like Pyro's ELBO classes and forwards to
``pyro_vae.estimators.get(name, **options)`` the keyword arguments the estimator's
constructor accepts (see :func:`translate_options`).

Results are recorded by this module itself, loaded into the test process as a pytest
plugin (``-p pyro_suite``): one JSON line per test phase with the estimator row, the
outcome, the exception's type and message and the file and line that raised it, which is
what the failure kinds are built from.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from report_common import output_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "pyro_suite.md"

TEST_FILES = ("tests/infer/test_gradient.py", "tests/infer/test_valid_models.py")
# What the test files import from ``tests.`` plus Pyro's pytest settings; all are copied.
SUPPORT_FILES = (
    "setup.cfg",
    "tests/__init__.py",
    "tests/common.py",
    "tests/conftest.py",
    "tests/infer/__init__.py",
    "tests/infer/conftest.py",
)
RESULTS_ENV = "PYRO_SUITE_RESULTS"
ROWS_ENV = "PYRO_SUITE_ROWS"
ID_PREFIX = "pv:"
NO_ELBO_ROW = "(tests without an Elbo parameter)"
# Keyword arguments Pyro's tests pass that are dropped where an estimator has no such
# argument: an estimator without ``vectorize_particles`` always vectorizes, which is what
# ``vectorize_particles=True`` (the only value these tests pass) asks for.
DROPPABLE = ("vectorize_particles",)


# --------------------------------------------------------------------------------------
# Estimator rows (used in both processes)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One estimator row: a registry name with fixed options.

    ``min_particles``: the fewest samples per step the estimator works with (the
    leave-one-out baselines need two); a test asking for fewer gets this many.
    """

    key: str
    name: str
    options: tuple[tuple[str, object], ...] = ()
    min_particles: int = 1

    @property
    def label(self) -> str:
        """How the row reads in the report."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"`{self.name}` ({opts})" if opts else f"`{self.name}`"


def estimator_rows() -> list[Row]:
    """A row per registered estimator, and one per control variate for ``score``."""
    from pyro_vae.estimators import CONTROL_VARIATES, names

    rows = []
    for name in names():
        if name == "score":
            for cv in CONTROL_VARIATES:
                rows.append(
                    Row(
                        f"score-{cv}",
                        name,
                        (("control_variate", cv),),
                        min_particles=2 if cv == "leave-one-out" else 1,
                    )
                )
        else:
            rows.append(Row(name, name, min_particles=2 if name == "vimco" else 1))
    return rows


def select_rows(keys: list[str] | None) -> list[Row]:
    """The rows with these keys (all when ``keys`` is empty); exits on an unknown key."""
    rows = estimator_rows()
    if not keys:
        return rows
    unknown = set(keys) - {r.key for r in rows}
    if unknown:
        raise SystemExit(
            f"--rows: {', '.join(sorted(unknown))} not among {', '.join(r.key for r in rows)}"
        )
    return [r for r in rows if r.key in keys]


def constructor_parameters(name: str) -> dict[str, object] | None:
    """The registered constructor's keyword parameters and defaults; None if it takes
    ``**kwargs`` (then everything is forwarded)."""
    from pyro_vae import estimators

    # The registry maps names to constructors; get() only builds instances, and building
    # one to look at it could itself be refused (leave-one-out with one particle).
    constructor = estimators._REGISTRY[name]
    params = inspect.signature(constructor).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params if p.name != "self"}


def translate_options(row: Row, kwargs: dict[str, object]) -> dict[str, object]:
    """Pyro's ELBO keyword arguments as the row's estimator takes them.

    - Arguments the constructor accepts are forwarded unchanged.
    - ``vectorize_particles`` is dropped where the constructor has no such argument (such
      an estimator always vectorizes). Any other unknown argument is forwarded too, so
      that the estimator's own error says it is not accepted.
    - Arguments the test does not give are left to the estimator's defaults.
    - ``num_particles`` below ``row.min_particles`` (given, or the constructor's default
      when the test gives none) is raised to ``row.min_particles``.
    """
    accepted = constructor_parameters(row.name)
    if accepted is None:
        return dict(kwargs)
    out = {k: v for k, v in kwargs.items() if k in accepted or k not in DROPPABLE}
    requested = out.get("num_particles", accepted.get("num_particles", 1))
    if isinstance(requested, int) and requested < row.min_particles:
        out["num_particles"] = row.min_particles
    return out


class RowFactory:
    """Stands in for a Pyro ELBO class in a test's parametrization.

    ``RowFactory(row)(**pyro_kwargs)`` returns ``pyro_vae.estimators.get(row.name,
    **row.options, **translate_options(row, pyro_kwargs))``. Its ``__name__`` is what
    pytest puts in the test id, e.g. ``test_plate[pv:score-ema-reparam]``.
    """

    def __init__(self, row: Row) -> None:
        self.row = row
        self.__name__ = ID_PREFIX + row.key

    def __call__(self, **kwargs):
        from pyro_vae.estimators import get

        return get(self.row.name, **dict(self.row.options), **translate_options(self.row, kwargs))

    def __repr__(self) -> str:
        return self.__name__

    def counterpart(self):
        """The Pyro ELBO class this row plays in the tests' ``Elbo is ...`` checks."""
        from pyro import infer

        from pyro_vae import estimators

        constructor = estimators._REGISTRY[self.row.name]
        if isinstance(constructor, type) and constructor.__module__.startswith("pyro."):
            return constructor
        return infer.Trace_ELBO


def pyro_counterpart(elbo):
    """What a rewritten ``Elbo is X`` compares: the counterpart of a row, else ``elbo``."""
    return elbo.counterpart() if isinstance(elbo, RowFactory) else elbo


# pytest.param(...) returns this type (pytest's ParameterSet); its marks and id are not
# copied to a row's entries.
_PARAMETER_SET = type(pytest.param(None))


def _values(entry) -> tuple:
    return tuple(entry.values) if isinstance(entry, _PARAMETER_SET) else tuple(entry)


def _elbo_of(entry, index: int):
    return _values(entry)[index]


def _with_elbo(entry, index: int, factory: RowFactory) -> tuple:
    values = _values(entry)
    return tuple(factory if i == index else v for i, v in enumerate(values))


def extend_elbo_params(argnames: str, argvalues) -> list:
    """Pyro's parametrization values plus one (or more) per estimator row.

    The rewritten test files call this in place of each ``Elbo`` value list.
    """
    from pyro.infer import Trace_ELBO

    names = [n.strip() for n in argnames.split(",")]
    index = names.index("Elbo")
    values = list(argvalues)
    extended = list(values)
    for row in select_rows([k for k in os.environ.get(ROWS_ENV, "").split(",") if k]):
        factory = RowFactory(row)
        if len(names) == 1:
            extended.append(factory)
            continue
        templates = (
            [v for v in values if _elbo_of(v, index) is factory.counterpart()]
            or [v for v in values if _elbo_of(v, index) is Trace_ELBO]
            or values[:1]
        )
        extended += [_with_elbo(v, index, factory) for v in templates]
    return extended


# --------------------------------------------------------------------------------------
# In the test process: the pytest plugin that records every result
# --------------------------------------------------------------------------------------


def row_of(item) -> str:
    """The estimator row a collected test belongs to."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "Elbo" not in params:
        return NO_ELBO_ROW
    elbo = params["Elbo"]
    if isinstance(elbo, RowFactory):
        return elbo.row.key
    return "pyro:" + getattr(elbo, "__name__", repr(elbo))


def _where(path: str) -> str:
    """A short name for the file a traceback frame is in."""
    for marker, name in (("/pyro_vae/", "pyro_vae"), ("/pyro/", "pyro"), ("/torch/", "torch")):
        if marker in path:
            return name + "/" + path.rsplit(marker, 1)[1]
    if "/tests/" in path:
        return "tests/" + path.rsplit("/tests/", 1)[1]
    return path.rsplit("/site-packages/", 1)[-1]


def exception_record(exc: BaseException) -> dict[str, object]:
    """Type, message and raising frames of a test's exception.

    For Pyro's ``xfail_if_not_implemented`` (an ``XFailed`` raised while handling a
    ``NotImplementedError``) it is the ``NotImplementedError`` that is recorded.
    """
    if isinstance(exc, pytest.xfail.Exception) and exc.__context__ is not None:
        exc = exc.__context__
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
    ours = [f for f in frames if "/pyro_vae/" in f[0]]
    return {
        "exc_type": type(exc).__name__,
        "is_warning": isinstance(exc, Warning),
        "is_refusal_type": isinstance(exc, (ValueError, NotImplementedError)),
        "message": str(exc)[:2000],
        "raised_in": f"{_where(frames[-1][0])}:{frames[-1][1]}" if frames else "",
        "pyro_vae_frame": f"{_where(ours[-1][0])}:{ours[-1][1]}" if ours else "",
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Append this phase's outcome to ``$PYRO_SUITE_RESULTS`` as one JSON line."""
    report = yield
    path = os.environ.get(RESULTS_ENV)
    if path:
        record = {
            "nodeid": item.nodeid,
            "row": row_of(item),
            "when": report.when,
            "outcome": report.outcome,
            "wasxfail": getattr(report, "wasxfail", None),
        }
        if call.excinfo is not None:
            record.update(exception_record(call.excinfo.value))
        if report.skipped and isinstance(report.longrepr, tuple):
            record["skip_reason"] = str(report.longrepr[2])
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    return report


# --------------------------------------------------------------------------------------
# In the driver: copy and rewrite Pyro's tests
# --------------------------------------------------------------------------------------


class _Rewriter(ast.NodeTransformer):
    """Extends ``Elbo`` parametrizations and routes comparisons on ``Elbo`` through the
    row's counterpart (see the module docstring)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.parametrizations = 0
        self.comparisons = 0
        self.elbo_keywords: set[str] = set()

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id == "Elbo":
            self.elbo_keywords.update(k.arg for k in node.keywords if k.arg)
        if not (isinstance(func, ast.Attribute) and func.attr == "parametrize" and node.args):
            return node
        argnames = node.args[0]
        if not (isinstance(argnames, ast.Constant) and isinstance(argnames.value, str)):
            return node
        if "Elbo" not in [n.strip() for n in argnames.value.split(",")]:
            return node
        if any(k.arg == "ids" and isinstance(k.value, ast.List) for k in node.keywords):
            raise SystemExit(
                f"{self.filename}:{node.lineno}: an Elbo parametrization with a literal ids= "
                "list; this script cannot add rows to it"
            )
        call = ast.Call(ast.Name("_pv_extend", ast.Load()), [argnames, node.args[1]], [])
        node.args[1] = ast.copy_location(call, node.args[1])
        self.parametrizations += 1
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)

        def wrap(operand: ast.expr) -> ast.expr:
            if isinstance(operand, ast.Name) and operand.id == "Elbo":
                self.comparisons += 1
                return ast.Call(ast.Name("_pv_counterpart", ast.Load()), [operand], [])
            return operand

        node.left = wrap(node.left)
        node.comparators = [wrap(c) for c in node.comparators]
        return node


@dataclass
class Rewrite:
    """A rewritten test file and what changed in it."""

    source: str
    parametrizations: int
    comparisons: int
    elbo_keywords: set[str]


def rewrite_test_file(source: str, filename: str) -> Rewrite:
    """Extend the ``Elbo`` parametrizations and reroute the ``Elbo`` comparisons."""
    tree = ast.parse(source, filename)
    rewriter = _Rewriter(filename)
    tree = rewriter.visit(tree)
    if rewriter.parametrizations == 0:
        raise SystemExit(f"{filename}: found no parametrize over 'Elbo'; has Pyro changed it?")
    imports = ast.parse(
        "from pyro_suite import extend_elbo_params as _pv_extend\n"
        "from pyro_suite import pyro_counterpart as _pv_counterpart\n"
    ).body
    body = tree.body
    at = next((i for i, s in enumerate(body) if not _is_preamble(s)), len(body))
    tree.body = body[:at] + imports + body[at:]
    ast.fix_missing_locations(tree)
    return Rewrite(
        ast.unparse(tree) + "\n",
        rewriter.parametrizations,
        rewriter.comparisons,
        rewriter.elbo_keywords,
    )


def _is_preamble(stmt: ast.stmt) -> bool:
    """A module docstring or a ``from __future__`` import, which must stay first."""
    if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
        return True
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def prepare_scratch(pyro_src: Path, scratch: Path) -> dict[str, Rewrite]:
    """Copy Pyro's test files and helpers into ``scratch``, rewrite the test files, and put
    this module beside them; returns each test file's rewrite."""
    for rel in SUPPORT_FILES:
        if (pyro_src / rel).exists():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pyro_src / rel, scratch / rel)
    rewrites = {}
    for rel in TEST_FILES:
        rewrite = rewrite_test_file((pyro_src / rel).read_text(), rel)
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_text(rewrite.source)
        rewrites[rel] = rewrite
    shutil.copyfile(Path(__file__).resolve(), scratch / "pyro_suite.py")
    return rewrites


def check_pyro_src(pyro_src: Path) -> None:
    """Exit with a clear message unless ``pyro_src`` holds the files this script needs."""
    missing = [
        rel
        for rel in (*TEST_FILES, "tests/common.py", "tests/conftest.py", "setup.cfg")
        if not (pyro_src / rel).is_file()
    ]
    if missing:
        raise SystemExit(
            f"--pyro-src {pyro_src}: not a Pyro source tree (missing {', '.join(missing)}); "
            "get one with `git clone https://github.com/pyro-ppl/pyro`"
        )


# --------------------------------------------------------------------------------------
# In the driver: run pytest and read its results
# --------------------------------------------------------------------------------------


def run_pytest(
    scratch: Path, files: list[str], args: argparse.Namespace, results: Path, log: Path
) -> float:
    """Run the rewritten tests in a separate process; returns the seconds it took."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        "-c",
        "setup.cfg",
        "--rootdir",
        ".",
        "-p",
        "pyro_suite",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=line",
        "-o",
        "console_output_style=count",
    ]
    if args.k:
        cmd += ["-k", args.k]
    env = dict(os.environ)
    env.pop("PYRO_DTYPE", None)  # Pyro's conftest then uses its default, float64
    env.pop("PYRO_DEVICE", None)  # and the CPU
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = str(scratch)
    env[RESULTS_ENV] = str(results)
    env[ROWS_ENV] = ",".join(args.rows or [])
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if rc not in (0, 1):  # 1: some tests failed, which is what this script counts
        tail = log.read_text()[-3000:]
        raise SystemExit(f"pytest exited with {rc}; the end of its output:\n{tail}")
    return seconds


@dataclass
class TestResult:
    """One test's outcome over its setup, call and teardown phases."""

    nodeid: str
    row: str
    outcome: str = "passed"  # passed, failed, skipped, xfailed, xpassed
    kind: str = ""
    example: str = ""
    phases: list[dict] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def read_results(path: Path) -> list[TestResult]:
    """Fold the plugin's per-phase JSON lines into one result per test."""
    tests: dict[str, TestResult] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        test = tests.setdefault(record["nodeid"], TestResult(record["nodeid"], record["row"]))
        test.phases.append(record)
    for test in tests.values():
        test.outcome, failing = _outcome(test.phases)
        if failing is not None:
            test.kind = failure_kind(failing)
            test.example = _example(failing)
    return list(tests.values())


def _outcome(phases: list[dict]) -> tuple[str, dict | None]:
    """The test's outcome and the phase record that explains it, if any."""
    for p in phases:
        if p["outcome"] == "failed":
            return "failed", p
    for p in phases:
        if p["wasxfail"] is not None:
            return ("xfailed", p) if p["outcome"] == "skipped" else ("xpassed", None)
    for p in phases:
        if p["outcome"] == "skipped":
            return "skipped", p
    return "passed", None


def _normalized(message: str, width: int = 90) -> str:
    """A message's first line with quoted names and numbers blanked, for grouping."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first)
    first = re.sub(r"\b\d+(\.\d+)?\b", "N", first)
    return first if len(first) <= width else first[: width - 1] + "…"


def failure_kind(p: dict) -> str:
    """A failed, xfailed or skipped phase's kind, e.g. ``refused: …`` or ``wrong value``."""
    if p["outcome"] == "skipped" and p["wasxfail"] is None:
        return "skipped: " + _normalized(p.get("skip_reason", ""))
    if p["wasxfail"] is not None:
        reason = exception_kind(p) if p.get("exc_type") else _normalized(p["wasxfail"])
        return "xfail: " + reason
    return exception_kind(p) + (" (in setup)" if p["when"] == "setup" else "")


def exception_kind(p: dict) -> str:
    """What kind of failure a recorded exception is."""
    exc, message = p.get("exc_type", ""), p.get("message", "")
    origin = p.get("raised_in", "").rsplit(":", 1)[0]
    if exc == "Failed" and message.startswith("DID NOT RAISE"):
        return "no error raised where Pyro's test expects one"
    if p.get("is_warning"):
        package = origin.split("/", 1)[0]
        return f"warning as error: {exc} from {package}: {_normalized(message, 60)}"
    if exc == "AssertionError" and "Regex pattern did not match" in message:
        return "an error, but not the one Pyro's test expects"
    if exc == "AssertionError" and "No warnings were raised" in message:
        return "no warning where Pyro's test expects one"
    if exc == "AssertionError":
        return "wrong value"
    if p.get("is_refusal_type") and origin.startswith("pyro_vae/"):
        return f"refused: {_normalized(message)}"
    if p.get("is_refusal_type") and origin.startswith("pyro/"):
        return f"error from Pyro: {exc}: {_normalized(message, 60)}"
    return f"crash: {exc} in {origin}"


def _example(p: dict) -> str:
    """One line describing a failing phase: exception, message and where it was raised."""
    if p["outcome"] == "skipped" and p["wasxfail"] is None:
        return p.get("skip_reason", "")
    if p["wasxfail"] is not None and not p.get("exc_type"):
        return str(p["wasxfail"])
    message = " ".join(p.get("message", "").split())
    if len(message) > 400:
        message = message[:399] + "…"
    where = p.get("raised_in", "")
    if p.get("pyro_vae_frame") and p["pyro_vae_frame"] != where:
        where += f", via {p['pyro_vae_frame']}"
    return f"{p.get('exc_type', '')}: {message} (raised at {where})"


# --------------------------------------------------------------------------------------
# In the driver: the report
# --------------------------------------------------------------------------------------


def versions(pyro_src: Path) -> dict[str, str]:
    """Where the tests came from and what they ran against."""
    info = {}
    init = pyro_src / "pyro" / "__init__.py"
    match = re.search(r'version_prefix = "([^"]+)"', init.read_text()) if init.exists() else None
    info["Pyro source"] = f"`{pyro_src}`, version {match.group(1) if match else 'unknown'}"
    commit = _git(pyro_src, "rev-parse", "HEAD")
    if commit:
        described = _git(pyro_src, "describe", "--tags")
        info["Pyro source"] += f", commit {commit}" + (f" ({described})" if described else "")
    info["pyro-ppl installed"] = importlib.metadata.version("pyro-ppl")
    info["torch"] = importlib.metadata.version("torch")
    info["Python"] = platform.python_version()
    ours = _git(REPO, "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git(REPO, "status", "--porcelain", "--", "pyro_vae", "models")
    if dirty:
        ours += f", with uncommitted changes to {len(dirty.splitlines())} files under pyro_vae/"
    info["pyro_vae"] = ours
    return info


def _git(folder: Path, *args: str) -> str:
    if not (folder / ".git").exists():
        return ""
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


COLUMNS = ("passed", "failed", "skipped", "xfailed")


def count_table(rows: list[tuple[str, str]], results: list[TestResult], files: list[str]) -> str:
    """A markdown table: per row, the outcome counts in each file, and failures' refusals."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in results:
        counts[r.row, r.file][r.outcome] += 1
    short = {f: f.removeprefix("test_").removesuffix(".py") for f in files}
    head = ["estimator"] + [f"{short[f]}: {c}" for f in files for c in COLUMNS]
    head.append("failures that are refusals")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label in rows:
        cells = [label]
        for f in files:
            c = counts[key, f]
            cells += [
                str(c["passed"] + c["xpassed"]),
                str(c["failed"]),
                str(c["skipped"]),
                str(c["xfailed"]),
            ]
        failed = [r for r in results if r.row == key and r.outcome == "failed"]
        refused = sum(r.kind.startswith("refused") for r in failed)
        cells.append(f"{refused} of {len(failed)}" if failed else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kinds_section(
    key: str, label: str, results: list[TestResult], outcomes=("failed", "xfailed")
) -> str:
    """For one row: each failure (and xfail) kind with its count, an example id and message."""
    mine = [r for r in results if r.row == key and r.outcome in outcomes]
    if not mine:
        return ""
    groups: dict[str, list[TestResult]] = defaultdict(list)
    for r in mine:
        groups[r.kind].append(r)
    lines = [f"### {label}", ""]
    for kind, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        first = members[0]
        lines.append(
            f"- **{len(members)} × {kind}** — e.g. `{first.nodeid.split('::')[-1]}` "
            f"({first.file}): {first.example}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class RunInfo:
    """What the report's header says about the run."""

    command: list[str]
    rows: list[Row]
    files: list[str]
    partial: bool
    seconds: float
    versions: dict[str, str]
    rewrites: dict[str, Rewrite]


def translation_table(rows: list[Row], keywords: set[str]) -> str:
    """Per row: which of Pyro's ELBO arguments are not passed on, the defaults that apply
    where a test gives none, and the fewest particles."""
    lines = [
        "| estimator | Pyro's arguments dropped | `num_particles` when the test gives none "
        "| `vectorize_particles` when the test gives none | fewest `num_particles` |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        accepted = constructor_parameters(row.name)
        if accepted is None:
            dropped, particles, vectorize = [], "its default", "its default"
        else:
            dropped = sorted(k for k in keywords if k not in accepted and k in DROPPABLE)
            particles = max(int(accepted.get("num_particles", 1)), row.min_particles)
            vectorize = accepted.get("vectorize_particles", "always vectorizes")
        shown = ", ".join(f"`{k}`" for k in dropped) or "none"
        lines.append(f"| {row.label} | {shown} | {particles} | {vectorize} | {row.min_particles} |")
    return "\n".join(lines)


def header(run: RunInfo, results: list[TestResult]) -> list[str]:
    """The report's opening: how it was produced, and how to read it."""
    n = Counter(r.outcome for r in results)
    keywords = set().union(*(w.elbo_keywords for w in run.rewrites.values()))
    changed = "; ".join(
        f"{rel.rsplit('/', 1)[1]}: {w.parametrizations} parametrizations and "
        f"{w.comparisons} `Elbo is/in` checks"
        for rel, w in run.rewrites.items()
    )
    return [
        "# Pyro's ELBO tests against pyro_vae's estimators",
        "",
        f"Produced by `{' '.join(shlex.quote(a) for a in run.command)}` "
        f"({time.strftime('%Y-%m-%d')}; pytest ran {run.seconds / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores)"
        + (" — **a partial run** (`-k`/`--rows`/`--file`/`--quick`)." if run.partial else "."),
        "",
        *[f"- {k}: {v}" for k, v in run.versions.items()],
        "",
        "Pyro's `tests/infer/test_gradient.py` and `tests/infer/test_valid_models.py` were "
        "copied to a scratch folder with their helpers and run there in their own pytest "
        "process with Pyro's settings: float64 default dtype (Pyro's `tests/conftest.py`), "
        "warnings as errors with Pyro's ignores (its `setup.cfg`), seed 123 per test. "
        f"Every `parametrize` over `Elbo` got one value per row below ({changed} rewritten). "
        "A test's `Elbo is X` checks see the row's Pyro counterpart (the class itself for "
        "`trace`, `analytic-kl`, `enum`, `tracegraph`; `Trace_ELBO` for `iwae`, `score`, "
        "`vimco`), so each row gets the guides and expected values Pyro's tests give that "
        "class. Tests that construct a Pyro ELBO directly, with no `Elbo` parameter, are not "
        "changed. Details: the docstring of `benchmarks/pyro_suite.py`.",
        "",
        "Pyro's tests call `Elbo(...)` with "
        + ", ".join(f"`{k}`" for k in sorted(keywords))
        + ". Each row passes on the arguments its constructor accepts, drops "
        "`vectorize_particles` (always `True` where these tests give it) for an estimator "
        "without that argument, and raises `num_particles` to the fewest the estimator works "
        "with (two for the leave-one-out baselines). Where a test gives no argument, the "
        "estimator's own default applies, as for a user who calls "
        "`pyro_vae.estimators.get(name)`. Pyro's ELBOs draw particles one by one by "
        "default; an estimator that vectorizes them by default puts them in an outer plate, "
        "so a model whose own batch shapes clash with that plate fails for it only (Pyro's "
        "`invalid shape of pyro.param` below).",
        "",
        translation_table(run.rows, keywords),
        "",
        "Pyro's tests were written for Pyro's ELBOs, and some of their expectations are "
        "Pyro's design rather than correctness: pathwise gradients for reparameterizable "
        "sites (`score` takes REINFORCE gradients everywhere; `iwae` and `vimco` optimize "
        "the K-sample bound, K being the test's `num_particles`), the warnings Pyro's ELBOs "
        "give. So a `wrong value` for those rows on a "
        "gradient test can be expected; `test_valid_models.py` checks that valid models run "
        "and invalid ones raise, so each failure there is worth a look. A refusal is a "
        "`ValueError` or `NotImplementedError` raised by pyro_vae's own code.",
        "",
        f"All tests: {n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped, "
        f"{n['xfailed']} xfailed, {n['xpassed']} xpassed (counted as passed below).",
        "",
    ]


KINDS_LEGEND = (
    "Kinds: `refused: <message>` (pyro_vae raised a ValueError/NotImplementedError), "
    "`wrong value` (an assertion on a value), `no error raised…`/`no warning…`/`an error, "
    "but not the one…` (Pyro's test expects an error or a warning), `warning as error: "
    "<category> from <package>`, `crash: <exception> in <file>` (anything else), `xfail: "
    "<reason>` (Pyro's `xfail_if_not_implemented` turned a NotImplementedError into an "
    "xfail). The message is the first line, with quoted names and numbers blanked."
)


def write_report(out: Path, run: RunInfo, results: list[TestResult]) -> None:
    """Write the markdown report."""
    files = [Path(f).name for f in run.files]
    ours = [(r.key, r.label) for r in run.rows]
    pyro_keys = sorted({r.row for r in results if r.row.startswith("pyro:")})
    pyro_rows = [(k, f"Pyro's `{k.removeprefix('pyro:')}`") for k in pyro_keys]
    if any(r.row == NO_ELBO_ROW for r in results):
        pyro_rows.append((NO_ELBO_ROW, NO_ELBO_ROW))
    parts = header(run, results)
    parts += ["## pyro_vae's estimators", "", count_table(ours, results, files), ""]
    if pyro_rows:
        parts += ["## Pyro's own parametrization, unchanged (for reference)", ""]
        parts += [count_table(pyro_rows, results, files), ""]
    parts += ["## Failures and xfails by kind", "", KINDS_LEGEND, ""]
    parts += [s for key, label in ours if (s := kinds_section(key, label, results))]
    pyro_sections = [
        s for key, label in pyro_rows if (s := kinds_section(key, label, results, ("failed",)))
    ]
    if pyro_sections:
        parts += ["## Failures in Pyro's own rows", "", *pyro_sections]
    out.write_text("\n".join(parts).rstrip() + "\n")


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pyro-src",
        type=Path,
        required=True,
        help="a Pyro source tree (git checkout or unpacked archive)",
    )
    parser.add_argument(
        "--out",
        type=output_file,
        default=DEFAULT_OUT,
        help=f"the markdown report (default {DEFAULT_OUT.relative_to(REPO)})",
    )
    parser.add_argument(
        "--rows",
        type=lambda s: s.split(","),
        default=None,
        help="only these estimator rows, e.g. score-ema,iwae (default all)",
    )
    parser.add_argument(
        "--file",
        action="append",
        choices=("gradient", "valid_models"),
        help="only this test file (repeatable; default both)",
    )
    parser.add_argument("-k", help="pytest -k expression selecting tests, e.g. 'pv:iwae'")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only pyro_vae's rows, and skip the gradient tests that average "
        "over 50,000-200,000 particles or 500 steps",
    )
    parser.add_argument(
        "--keep-scratch",
        action="store_true",
        help="keep the scratch folder (rewritten tests, pytest log, results)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        heavy = "test_subsample_gradient or test_plate[ or test_plate_elbo_vectorized_particles"
        quick = f"pv: and not ({heavy})"
        args.k = f"({args.k}) and {quick}" if args.k else quick
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pyro_src = args.pyro_src.resolve()
    check_pyro_src(pyro_src)
    rows = select_rows(args.rows)  # before the long run, which could outlast an import
    files = [rel for rel in TEST_FILES if not args.file or any(f in rel for f in args.file)]
    scratch = Path(tempfile.mkdtemp(prefix="pyro_suite-"))
    try:
        rewrites = prepare_scratch(pyro_src, scratch)
        results_path, log = scratch / "results.jsonl", scratch / "pytest.log"
        print(f"running Pyro's tests in {scratch} (log: {log})", flush=True)
        seconds = run_pytest(scratch, files, args, results_path, log)
        if not results_path.exists():
            raise SystemExit(f"no test ran; see {log}:\n{log.read_text()[-3000:]}")
        results = read_results(results_path)
        run = RunInfo(
            command=["python", "benchmarks/pyro_suite.py", *argv],
            rows=rows,
            files=files,
            partial=bool(args.k or args.rows or args.file),
            seconds=seconds,
            versions=versions(pyro_src),
            rewrites=rewrites,
        )
        write_report(args.out, run, results)
        print(f"wrote {args.out} ({len(results)} tests, {seconds / 60:.1f} min)")
    finally:
        if args.keep_scratch:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
