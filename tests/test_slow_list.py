"""The long tests that tests/conftest.py marks slow by node id still exist by those ids."""

import ast
import re
from pathlib import Path

from tests.conftest import _SLOW_TESTS

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_slow_test_exists():
    for node_id in _SLOW_TESTS:
        path, name = node_id.split("::")
        function, _, params = name.partition("[")
        tree = ast.parse((ROOT / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"{node_id}: no test {function} in {path}"
        if params:  # the parametrized id's values appear in the file
            for value in re.split(r"-", params.rstrip("]")):
                assert value in (ROOT / path).read_text(), f"{node_id}: no {value!r} in {path}"
