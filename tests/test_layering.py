"""The package's shape, checked: layers import only downwards, `pyro_vae` never imports
`models`, Pyro's private names appear only in `pyro_vae/pyro_compat.py`, no function runs
over 80 lines, and `tests/` mirrors `pyro_vae/` and `models/` file for file.

The layers, bottom up (README, "Layout"): a module may import its own layer and
the ones below it, never one above. Imports inside functions count too. `cavi` is a
branch of its own: it imports only utilities, and nothing but the layers above the
estimators imports it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_vae"

# Bottom up. A key names a module or a package (every module under it).
LAYERS: dict[str, int] = {
    # 0: utilities: run-folder I/O, argument checks, specs, figures, Pyro compatibility
    "pyro_vae.checkpoint": 0,
    "pyro_vae.checks": 0,
    "pyro_vae.spec": 0,
    "pyro_vae.spec_imports": 0,
    "pyro_vae.plots": 0,
    "pyro_vae.image_grid": 0,
    "pyro_vae.pyro_compat": 0,
    "pyro_vae.site_masks": 0,  # reads masks off Pyro sites; cavi reads them too
    "pyro_vae.plate_frames": 0,  # a guide's sites inside the model's plates; cavi's too
    "pyro_vae.moved": 0,
    "pyro_vae.nn": 0,
    "pyro_vae.convnets": 0,
    "pyro_vae.devices": 0,
    "pyro_vae.torchrun_environment": 0,  # torchrun's variables, checked
    "pyro_vae.wrapped_source": 0,
    "pyro_vae.progress": 0,
    "pyro_vae.interruptions": 0,
    "pyro_vae.precision": 0,
    "pyro_vae.module_hooks": 0,  # global module hooks that torch.compile runs untraced
    # 1: data and likelihoods (the pixel checks live where the data meets its likelihood)
    "pyro_vae.idx": 1,
    "pyro_vae.mapped_rows": 1,
    "pyro_vae.array_source": 1,
    "pyro_vae.provenance": 1,
    "pyro_vae.image_folder": 1,
    "pyro_vae.tables": 1,
    "pyro_vae.datasets": 1,
    "pyro_vae.data": 1,
    "pyro_vae.data_source": 1,
    "pyro_vae.labels": 1,
    "pyro_vae.tensor_data": 1,
    "pyro_vae.likelihoods": 1,
    # 2: guides, the plate they declare, the model protocol
    "pyro_vae.plate_declaration": 2,
    "pyro_vae.guides": 2,
    "pyro_vae.model_protocol": 2,
    # 3: the trace toolkit
    "pyro_vae.plates": 3,
    "pyro_vae.minibatch": 3,
    "pyro_vae.traces": 3,
    "pyro_vae.draw_tracking": 3,  # draws tracked through a run; traces and estimators read it
    "pyro_vae.pointwise": 3,
    "pyro_vae.enumerated_sites": 3,
    "pyro_vae.weights": 3,
    "pyro_vae.annealing": 3,
    "pyro_vae.objectives": 3,
    "pyro_vae.latent_dims": 3,
    # 4: estimators; cavi (its own branch, see CAVI below)
    "pyro_vae.estimators": 4,
    "pyro_vae.cavi": 4,
    # 5: evaluate
    "pyro_vae.evaluate": 5,
    "pyro_vae.latent_summaries": 5,
    "pyro_vae.predictive": 5,
    # 6: train (validates through evaluate) and its parts
    "pyro_vae.training_config": 6,
    "pyro_vae.svi_step": 6,
    "pyro_vae.training_pair": 6,
    "pyro_vae.divergence": 6,
    "pyro_vae.early_stopping": 6,
    "pyro_vae.fit_checkpoint": 6,
    "pyro_vae.train": 6,
    "pyro_vae.distributed": 6,
    "pyro_vae.torchrun_agent": 6,
    "pyro_vae.tensorboard_log": 6,
    # 7: diagnostics (inference data, PSIS, calibration, gradient variance, the run report),
    # amortization
    "pyro_vae.diagnostics": 7,
    "pyro_vae.amortization": 7,
    # 8: the run configuration and the experiment it describes
    "pyro_vae.run_config": 8,
    "pyro_vae.experiment": 8,
    "pyro_vae.prior_model": 8,
    "pyro_vae.compare": 8,
    # 9: the command line
    "pyro_vae.cli": 9,
    "pyro_vae.cli_parser": 9,
    "pyro_vae.cli_config": 9,
    "pyro_vae.cli_resume": 9,
    "pyro_vae.cli_report": 9,
    "pyro_vae.cli_evaluate": 9,
    "pyro_vae.cli_analysis": 9,
    "pyro_vae.__main__": 9,
    # old import paths, kept as lazy re-exports (they warn once): the layer they point to
    "pyro_vae.compiled": 4,
    "pyro_vae.calibration": 7,
}
PACKAGE_INIT = 9  # pyro_vae/__init__.py re-exports the public API
CAVI = "pyro_vae.cavi"
# Thin re-exports left at an old import path warn once and hand over from a module-level
# ``__getattr__`` (PEP 562); imports inside one point upwards on purpose and are not counted.
LAZY_RE_EXPORT = "__getattr__"
PYRO_COMPAT = PACKAGE / "pyro_compat.py"
MAX_FUNCTION_LINES = 80


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


MODULES = _modules(PACKAGE, "pyro_vae")


def _layer(module: str) -> int | None:
    if module == "pyro_vae":
        return PACKAGE_INIT
    while module and module != "pyro_vae":
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function, absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _nodes_outside_lazy_re_exports(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pyro_vae import estimators` imports a module, not the package's __init__
            submodules = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)
    return names


def _nodes_outside_lazy_re_exports(tree: ast.Module):
    """Every node of ``tree`` except those inside a module-level ``__getattr__``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            lazy = isinstance(child, ast.FunctionDef) and child.name == LAZY_RE_EXPORT
            if not (lazy and node is tree):
                stack.append(child)


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if _layer(m) is None]
    assert not unplaced, f"add these to LAYERS (and the README's layer list): {unplaced}"


def test_pyro_vae_never_imports_models():
    offenders = {
        m: sorted(i for i in _imports(m, p) if i == "models" or i.startswith("models."))
        for m, p in MODULES.items()
    }
    assert not {m: i for m, i in offenders.items() if i}


def test_no_layer_imports_one_above_it():
    upward = {}
    for module, path in MODULES.items():
        mine = _layer(module)
        for name in _imports(module, path):
            if not name.startswith("pyro_vae"):
                continue
            theirs = _layer(name)
            if theirs is not None and theirs > mine:
                upward.setdefault(module, []).append(f"{name} (layer {theirs} > {mine})")
    assert not upward, upward


def test_cavi_is_a_branch_of_its_own():
    leaks = {}
    for module, path in MODULES.items():
        imported = {i for i in _imports(module, path) if i.startswith("pyro_vae.")}
        if module.startswith(CAVI):
            bad = {i for i in imported if not i.startswith(CAVI) and _layer(i) != 0}
        else:
            bad = {i for i in imported if i.startswith(CAVI)} if _layer(module) <= 4 else set()
        if bad:
            leaks[module] = sorted(bad)
    assert not leaks, leaks


def _pyro_private_names() -> set[str]:
    """Underscore names Pyro defines (functions, methods, classes, attributes), from its source."""
    root = Path(importlib.util.find_spec("pyro").origin).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            if name and name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def _own_names() -> set[str]:
    """Underscore names ``pyro_vae`` defines itself (ours to use anywhere)."""
    names: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def test_pyro_private_names_only_in_the_compatibility_module():
    """A Pyro underscore name read or written outside ``pyro_compat.py`` fails, on any
    receiver: ``elbo._get_trace``, ``part._model = ...``. Two uses are ours, not Pyro's:
    ``self.<name>`` where ``pyro_vae`` defines ``<name>`` itself (its own attribute, or its
    override of a Pyro hook such as ``_get_trace``), and ``super().<name>`` inside an
    override of that name. Pyro's plate frames are ``NamedTuple``s, so the namedtuple
    methods (``frame._replace``) count as Pyro's too."""
    namedtuple_api = {"_replace", "_asdict", "_make", "_fields", "_field_defaults"}
    private = _pyro_private_names() | namedtuple_api
    own = _own_names()

    def ours(node: ast.Attribute, function: str | None) -> bool:
        receiver = node.value
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            return node.attr in own
        return (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Name)
            and receiver.func.id == "super"
            and function == node.attr
        )

    def visit(node: ast.AST, module: str, function: str | None, uses: list[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pyro":
            uses += [f"{module}:{node.lineno} {a.name}" for a in node.names if a.name[0] == "_"]
        elif isinstance(node, ast.Attribute) and node.attr in private and not ours(node, function):
            uses.append(f"{module}:{node.lineno} .{node.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, module, function, uses)

    uses: list[str] = []
    for module, path in MODULES.items():
        if path != PYRO_COMPAT:
            visit(_tree(path), module, None, uses)
    assert not uses, f"move these into pyro_vae/pyro_compat.py: {uses}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


@pytest.mark.parametrize("package", ["pyro_vae", "models"])
def test_tests_mirror_the_package_file_for_file(package):
    missing = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(ROOT)
        test = ROOT / "tests" / relative.parent / f"test_{path.name}"
        if not test.exists():
            missing.append(str(test.relative_to(ROOT)))
    assert not missing, missing


def test_no_user_facing_message_names_a_tester():
    """Tester references belong in comments and docstrings: tester DD found "tester BJ"
    and "tester CS" inside refusals users read."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [
            f"{path}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and re.search(r"\btester\b", node.value, re.IGNORECASE)
        ]
    assert not found, found
