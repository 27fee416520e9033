"""The README-numbers script rewrites exactly its marked blocks, and the README has them."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "readme_numbers", ROOT / "benchmarks" / "readme_numbers.py"
)
readme_numbers = importlib.util.module_from_spec(_spec)
sys.modules["readme_numbers"] = readme_numbers  # dataclasses look their module up there
_spec.loader.exec_module(readme_numbers)

TEXT = (
    "intro -18.0\n"
    "<!-- readme-numbers: digits -->\n```\nold\n```\n<!-- /readme-numbers -->\n"
    "between\n"
    "<!-- readme-numbers: fashion-fit -->\nkept\n<!-- /readme-numbers -->\n"
)


def test_only_the_named_blocks_change_and_are_reported():
    text, changed = readme_numbers.replace_blocks(TEXT, {"digits": "```\nnew\n```\n"})
    assert changed == ["digits"]
    assert text == TEXT.replace("```\nold\n```\n", "```\nnew\n```\n")
    again, changed = readme_numbers.replace_blocks(text, {"digits": "```\nnew\n```\n"})
    assert (again, changed) == (text, [])


def test_a_command_without_a_block_is_refused():
    with pytest.raises(ValueError, match="fashion-diagnose"):
        readme_numbers.replace_blocks(TEXT, {"fashion-diagnose": "x\n"})


def test_the_fit_block_is_what_fit_printed_from_stopped_to_figures(tmp_path):
    stdout = "epoch 1\nstopped: max epochs\ntest ELBO  -1.0\nfigures: a.png\n"
    shown = readme_numbers._show_fit(stdout, tmp_path)
    assert shown == "```\nstopped: max epochs\ntest ELBO  -1.0\n```\n"


def test_the_readme_marks_a_block_for_every_command():
    readme = (ROOT / "README.md").read_text()
    names = {m.group("name") for m in readme_numbers.BLOCK.finditer(readme)}
    assert names == set(readme_numbers.COMMANDS)
