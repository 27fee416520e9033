"""The user's own source files that a ``path/to/file.py:attr`` spec's file imports.

A run records the SHA-256 of its model's and guide's own files
(:func:`pyro_vae.provenance.code_provenance`), and of the modules of the user's own that
those files import, directly or through one another: a helper beside the model file
(``from my_nets import Decoder``), a package folder beside it, a module on PYTHONPATH.

**The rule.** A module is the user's own when its source is a ``.py`` file outside the
Python installation's standard library, outside every ``site-packages`` or
``dist-packages`` folder (``sysconfig``'s purelib and platlib, :func:`site.getsitepackages`,
the user site, any such folder on ``sys.path``), and outside this package (``pyro_vae``)
and the model zoo shipped beside it (``models/``). A project of the user's own installed
editable (``pip install -e``, its files left where they are) counts; numpy, torch, Pyro and
pyro_vae do not, nor compiled extensions.

**How they are found**, two ways, their union:

- From the source (:mod:`ast`), nothing executed: every ``import`` statement of the file, at
  the top or inside a function (an import not run yet, or run after the spec was loaded),
  resolved as Python resolves it while the spec file runs (its folder first, then
  ``sys.path``), relative imports within a package included; each file found is read in
  turn. What ``if __name__ == "__main__":`` imports is left out: a spec file never runs as
  the main module.
- From the executed module, where :func:`pyro_vae.spec.load_object` has run the file: the
  modules its namespace holds, the modules that define the classes and functions it holds
  (``__module__``), and theirs in turn. This finds what the source does not say (a
  computed ``importlib.import_module(name)``, a folder the file put on ``sys.path``) and
  the file a module really came from when ``sys.modules`` already held one of that name.

Not the standard library's :mod:`modulefinder`: it follows every import into torch and
Pyro (the user's own files are a few among thousands) and, on torch 2.13, fails there on a
package without a loader (``AttributeError: 'NoneType' object has no attribute
'is_package'``); this reads the user's own files alone, and asks
:class:`importlib.machinery.PathFinder` where each import would load from.

**Limits.** A file read that is not a module (hyperparameters in JSON, a pickled network)
is not covered; nor a module imported by a computed name inside a function that had not
run when the run recorded its files; nor a module of the user's installed into
site-packages (its reinstall goes unnoticed). A module the source names but that never
runs (under ``if TYPE_CHECKING:``, a fallback in ``try``/``except ImportError``) is
covered when its file exists: an edit to it is refused too, and ``--allow-changed-code``
goes on.
"""

from __future__ import annotations

import ast
import site
import sys
import sysconfig
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType

#: This package's folder; the zoo (``models/``) is beside it in a source checkout.
_PACKAGE = Path(__file__).resolve().parent


def imported_files(path: Path, module: ModuleType | None = None) -> dict[str, Path]:
    """{module name: source file} of the user's own modules (the rule above) that the file
    at ``path`` imports, directly or transitively; ``module``: what executing that file
    made (:func:`pyro_vae.spec.executed_module`), whose namespace adds what it reaches; None
    where it has not run. ``path`` itself is not listed.

    Raises:
        ValueError: ``path`` is not a readable Python file (naming it)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"path: {path} is not a file; expected a model or guide .py file")
    excluded = _excluded_roots()
    found = _reachable(module, excluded) if module is not None else {}
    search = [str(path.parent), *sys.path]
    queue = [(path, None), *((file, name) for name, file in found.items())]
    read: set[Path] = set()
    while queue:
        file, name = queue.pop()
        if file in read:
            continue
        read.add(file)
        package = _package_of(file, name)
        for candidate in sorted(_imported_names(file, package)):
            if candidate in found:
                continue
            source = _own(_origin(candidate, search), excluded)
            if source is not None and source != path:
                found[candidate] = source
                queue.append((source, candidate))
    return {name: file for name, file in sorted(found.items()) if file != path}


def _excluded_roots() -> tuple[Path, ...]:
    """The folders whose modules are not the user's own: the standard library, every
    site-packages, this package and the zoo beside it."""
    paths = sysconfig.get_paths()
    roots = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    roots += [*site.getsitepackages(), site.getusersitepackages()]
    roots += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    roots += [str(_PACKAGE), str(_PACKAGE.parent / "models")]
    return tuple(Path(r).resolve() for r in roots if r)


def _own(file: str | None, excluded: tuple[Path, ...]) -> Path | None:
    """``file`` resolved, where it is the source of a module of the user's own; else None."""
    if not file or not file.endswith(".py"):
        return None
    resolved = Path(file).resolve()
    if not resolved.is_file() or any(resolved.is_relative_to(r) for r in excluded):
        return None
    return resolved


def _reachable(module: ModuleType, excluded: tuple[Path, ...]) -> dict[str, Path]:
    """{name: file} of the user's own modules that ``module``'s namespace holds, or that
    define what it holds, and theirs in turn."""
    found: dict[str, Path] = {}
    seen = {module.__name__}
    stack = [module]
    while stack:
        for value in list(vars(stack.pop()).values()):
            if isinstance(value, ModuleType):
                target = value
            else:
                owner = _module_name_of(value)
                target = sys.modules.get(owner) if isinstance(owner, str) else None
            if target is None or target.__name__ in seen:
                continue
            seen.add(target.__name__)
            file = _own(getattr(target, "__file__", None), excluded)
            if file is not None:
                found[target.__name__] = file
                stack.append(target)
    return found


def _module_name_of(value) -> object:
    """``value.__module__``, or None; any error of an object's own attribute lookup (a lazy
    proxy's) is its business, not a reason to refuse the run."""
    try:
        return getattr(value, "__module__", None)
    except Exception:
        return None


def _package_of(file: Path, name: str | None) -> str | None:
    """The package relative imports in ``file`` (module ``name``) start from; None for
    the spec file itself, which runs as a top-level module."""
    if name is None:
        return None
    return name if file.name == "__init__.py" else name.rpartition(".")[0]


def _imported_names(file: Path, package: str | None) -> set[str]:
    """Every module name an import statement of ``file`` may load, absolute: the packages
    on the way and, for ``from a import b``, ``a.b`` (which may be a submodule)."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError, OSError):
        return set()  # not importable as it is; the run's own checks say why
    names: set[str] = set()
    for node in _nodes_outside_main(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.update(_prefixes(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            if base:
                names.update(_prefixes(base))
                names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return names


def _nodes_outside_main(tree: ast.Module):
    """Every node of ``tree`` except those under a top-level ``if __name__ == "__main__":``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not (node is tree and _is_main_guard(child)):
                stack.append(child)


def _is_main_guard(node: ast.AST) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    texts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and texts == {"__main__"}


def _prefixes(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']: importing a submodule runs each package on the way."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _absolute(node: ast.ImportFrom, package: str | None) -> str | None:
    """The absolute module a ``from … import`` names; None for a relative one outside a
    package (it fails when run)."""
    if not node.level:
        return node.module
    if not package:
        return None
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None
    anchor = parts[: len(parts) - node.level + 1]
    return ".".join(anchor + ([node.module] if node.module else []))


def _origin(name: str, search: list[str]) -> str | None:
    """The file module ``name`` would load from: the module ``sys.modules`` holds by that
    name, which an import returns without searching (a script ``copy.py`` beside the model
    file is not what ``import copy`` loads once the standard library's is there: tester J),
    else the one found on ``search`` (then inside each package on the way), with nothing
    executed; None where it is neither."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    parts = name.split(".")
    spec: ModuleSpec | None = PathFinder.find_spec(parts[0], search)
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec.origin if spec is not None else None
