"""Which of a model file's imports are the user's own: the rule, found from the source and
from the executed module."""

import sys

import pytest

from pyro_vae.spec import executed_module, load_object
from pyro_vae.spec_imports import imported_files


@pytest.fixture
def forget_modules():
    """Names of the user's modules a test imports, taken out of sys.modules afterwards (a
    module is cached by name, and another test's file may import one of the same name)."""
    names: list[str] = []
    yield names
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]


def write(folder, files: dict[str, str]):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_helpers_packages_and_lazy_imports_are_found_installed_code_is_not(tmp_path):
    write(
        tmp_path,
        {
            "model.py": "import torch\nfrom torch import nn\nimport pyro_vae.spec\n"
            "from models.vae import VAE\nimport si_helper\nfrom si_pkg.layers import Block\n"
            "def model():\n    from si_lazy import X\n"
            "if __name__ == '__main__':\n    import si_main_only\n",
            "si_helper.py": "import json\n",
            "si_lazy.py": "X = 1\n",
            "si_main_only.py": "",
            "si_pkg/__init__.py": "",
            "si_pkg/layers.py": "from .blocks import Block\n",
            "si_pkg/blocks.py": "Block = 1\n",
        },
    )
    found = imported_files(tmp_path / "model.py")
    assert found == {
        "si_helper": tmp_path / "si_helper.py",
        "si_lazy": tmp_path / "si_lazy.py",  # inside a function: not run yet, still covered
        "si_pkg": tmp_path / "si_pkg" / "__init__.py",
        "si_pkg.blocks": tmp_path / "si_pkg" / "blocks.py",  # a relative import, transitively
        "si_pkg.layers": tmp_path / "si_pkg" / "layers.py",
    }  # torch, pyro_vae and the zoo are not the user's; a __main__ block never runs


def test_the_executed_module_adds_what_its_source_does_not_say(tmp_path, forget_modules):
    # a folder the model file puts on sys.path, and a module imported by a computed name
    forget_modules += ["si_far", "si_computed"]
    write(
        tmp_path,
        {
            "lib/si_far.py": "class Far:\n    pass\n",
            "model.py": "import importlib, sys\n"
            f"sys.path.append({str(tmp_path / 'lib')!r})\nfrom si_far import Far\n"
            "computed = importlib.import_module('si_' + 'computed')\n",
            "si_computed.py": "",
        },
    )
    path = (tmp_path / "model.py").resolve()
    assert imported_files(path) == {}  # from the source alone: neither is found
    try:
        load_object(f"{path}:Far")
        assert imported_files(path, executed_module(path)) == {
            "si_computed": (tmp_path / "si_computed.py").resolve(),
            "si_far": (tmp_path / "lib" / "si_far.py").resolve(),
        }
    finally:
        sys.path.remove(str(tmp_path / "lib"))


def test_a_module_already_imported_is_the_file_it_came_from(tmp_path, forget_modules):
    # sys.modules holds si_cached from another folder, so that file is what the model runs,
    # not the si_cached.py beside it
    forget_modules.append("si_cached")
    write(tmp_path, {"other/si_cached.py": "class Net:\n    pass\n"})
    sys.path.insert(0, str(tmp_path / "other"))
    try:
        import si_cached  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path / "other"))
    write(tmp_path, {"model.py": "from si_cached import Net\n", "si_cached.py": "Net = 1\n"})
    path = (tmp_path / "model.py").resolve()
    load_object(f"{path}:Net")
    found = imported_files(path, executed_module(path))
    assert found == {"si_cached": (tmp_path / "other" / "si_cached.py").resolve()}


def test_a_path_that_is_not_a_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"path: .*absent\.py is not a file; expected"):
        imported_files(tmp_path / "absent.py")
