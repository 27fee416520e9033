"""The long tests that tests/conftest.py marks slow by node id still exist by those ids."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import _SLOW_TESTS, _check_slow_ids

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_slow_test_exists():
    # a parametrized id is checked where its test is collected (_check_slow_ids); each file
    # parsed once (parsing test_cli.py for each of its ids took 10 s on a loaded machine)
    functions: dict[str, set[str]] = {}
    for node_id in _SLOW_TESTS:
        path, name = node_id.split("::")
        function = name.partition("[")[0]
        if path not in functions:
            tree = ast.parse((ROOT / path).read_text())
            functions[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in functions[path], f"{node_id}: no test {function} in {path}"


def test_a_listed_parametrized_id_that_was_renamed_is_refused_at_collection():
    listed = next(n for n in sorted(_SLOW_TESTS) if "[" in n)
    function = listed.split("[")[0]
    others = [f"{function}[other]", *sorted(n for n in _SLOW_TESTS if n.startswith(function))]
    whole = [SimpleNamespace(nodeid=node_id) for node_id in others]
    _check_slow_ids(whole)  # collected whole, under the listed ids
    renamed = [SimpleNamespace(nodeid=f"{function}[renamed]"), *whole[:1]]
    with pytest.raises(pytest.UsageError, match="_SLOW_TESTS lists"):
        _check_slow_ids(renamed)
    _check_slow_ids(renamed[:1])  # one id asked for on the command line: not judged
    _check_slow_ids([SimpleNamespace(nodeid="tests/other.py::test_x")])  # not collected
