"""Import specs: ``package.module:attr`` or ``path/to/file.py:attr``.

Models and guides are named this way on the command line and in run folders, so a
user's own model is as first-class as the zoo's (``models.vae:VAE``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def load_object(spec: str, arg: str = "spec") -> Any:
    """The object an import spec names; errors name ``arg`` and say what was expected."""
    # A file path may itself hold a ':'; the attribute is after the last one.
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"{arg}: {spec!r} is not an import spec; expected 'package.module:attr' or "
            "'path/to/file.py:attr'"
        )
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{arg}: {spec!r} names the file {path}, which does not exist")
        name = _module_name(path)
        if name not in sys.modules:
            sys.modules[name] = _exec_file(name, path, spec, arg)
        module = sys.modules[name]
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{arg}: cannot import {module_name!r} from {spec!r} ({err})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{arg}: {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def spec_file(spec: str | None) -> Path | None:
    """The file a ``path/to/file.py:attr`` spec executes (resolved); None for a module spec
    (``package.module:attr``, installed code) or none."""
    module_name, sep, _ = (spec or "").rpartition(":")
    if not sep or not module_name.endswith(".py"):
        return None
    return Path(module_name).expanduser().resolve()


def executed_module(path: Path) -> ModuleType | None:
    """The module :func:`load_object` made by executing the file at ``path`` (resolved,
    as :func:`spec_file` gives it); None where it has not (yet)."""
    return sys.modules.get(_module_name(Path(path)))


def _module_name(path: Path) -> str:
    return f"_pyro_vae_user_{path.stem}_{abs(hash(str(path)))}"


def _exec_file(name: str, path: Path, spec: str, arg: str):
    """Execute a user's model file as module ``name``, with its folder on the import path
    while it runs, so it can import the modules beside it (``from my_layers import …``)."""
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ValueError(f"{arg}: {path} from {spec!r} has a syntax error: {err}") from err
    except ImportError as err:  # a helper it imports is not where it runs now (tester K)
        raise ValueError(
            f"{arg}: {path} from {spec!r} failed to import {err.name or 'a module'!r} ({err}); "
            f"expected its modules beside it ({folder}) or on PYTHONPATH"
        ) from err
    finally:
        sys.path.remove(folder)
    return module


def supported_options(factory: Any, standard: dict[str, Any]) -> dict[str, Any]:
    """The ``standard`` kwargs that ``factory`` accepts (all of them with ``**kwargs``)."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in standard.items() if takes_any or k in params}


def call_with_supported(factory: Any, standard: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Call ``factory`` with those ``standard`` kwargs it accepts, plus all of ``extra``.

    Standard options (sizes, likelihood) are offered to every model; a model that takes
    fewer simply does not receive them (:func:`supported_options` says which it takes).
    ``extra`` holds what the user asked for by name, so an unknown one is an error rather
    than silently ignored.
    """
    kwargs = supported_options(factory, standard)
    kwargs.update(extra)
    return factory(**kwargs)
