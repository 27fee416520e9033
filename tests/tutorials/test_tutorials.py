"""The tutorials run, their committed notebooks match their scripts, and the README links them.

Each tutorial is executed in fast mode (``PYRO_VAE_TUTORIAL_FAST=1``) by the same code as
``python tutorials/run.py``, into a temporary folder, so the committed notebooks (from a
full run) are never overwritten. A tutorial that reads Fashion-MNIST is skipped where
Debian's ``dataset-fashion-mnist`` is not installed, as the reader's own tests are.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from pyro_vae.datasets import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"


def _load_runner():
    spec = importlib.util.spec_from_file_location("tutorials_run", TUTORIALS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_runner()
SOURCES = run.sources(TUTORIALS)
IDS = [p.stem for p in SOURCES]


def test_tutorials_are_found():
    assert len(SOURCES) >= 4, f"expected the tutorial scripts in {TUTORIALS}, found {IDS}"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_notebook_matches_its_script(source):
    problem = run.out_of_sync(source)
    assert problem is None, problem


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_committed_notebook_was_fully_executed(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), 4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "a code cell was never executed"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "fast mode" not in text, "the committed notebook comes from a fast-mode run"
    assert any("image/png" in out.get("data", {}) for out in outputs), "no figure in the notebook"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_tutorial_runs_in_fast_mode(source, tmp_path):
    if 'load_data("fashion-mnist"' in source.read_text() and not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{source.stem} reads Fashion-MNIST, which is not installed")
    nb, _ = run.execute(source, tmp_path / f"{source.stem}.ipynb", fast=True, timeout=600)
    assert (tmp_path / f"{source.stem}.ipynb").is_file()
    text = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )
    assert "fast mode" in text, "the tutorial does not report its fast mode"


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path):
    script = tmp_path / "07_broken.py"
    script.write_text(
        '# %% [markdown]\n# A title\n\n# %%\nx = 1\n\n# %%\nraise ValueError("boom")\n'
    )
    with pytest.raises(run.TutorialError, match=r"07_broken: cell 2 .*ValueError: boom"):
        run.execute(script)


def test_out_of_sync_notebooks_are_reported(tmp_path):
    script = tmp_path / "07_demo.py"
    script.write_text("# %%\nx = 1\n")
    assert "missing" in run.out_of_sync(script)
    nbformat.write(run.read_source(script), tmp_path / "07_demo.ipynb")
    assert run.out_of_sync(script) is None
    script.write_text("# %%\nx = 2\n")
    assert "cell 0 differs" in run.out_of_sync(script)


def test_a_fast_run_writes_apart_and_a_fast_notebook_is_reported(tmp_path, monkeypatch):
    # tester H: `run.py 01 --fast` replaced the committed full-run notebook with a fast
    # run's, and --check still said every notebook matched its script
    script = tmp_path / "07_demo.py"
    script.write_text('# %%\nprint("fast mode: 2 epochs")\n')
    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(run, "FAST_OUT", tmp_path / "fast")
    monkeypatch.setattr(run, "sources", lambda directory=tmp_path: [script])
    assert run.main(["07", "--fast", "--timeout", "120"]) == 0
    assert (tmp_path / "fast" / "07_demo.ipynb").is_file()
    assert not (tmp_path / "07_demo.ipynb").exists()  # the committed one's place untouched
    (tmp_path / "fast" / "07_demo.ipynb").rename(tmp_path / "07_demo.ipynb")
    assert "holds a fast-mode run" in run.out_of_sync(script)


def test_select_by_number_or_name():
    assert run.select([]) == SOURCES
    first = SOURCES[0]
    assert run.select([first.stem[:2]]) == [first]
    assert run.select([first.name]) == [first]
    with pytest.raises(run.TutorialError, match="'99' matches 0"):
        run.select(["99"])


@pytest.mark.parametrize("given", [["--fast"], ["--out", "elsewhere"]])
def test_check_refuses_the_flags_of_a_run(given, capsys):
    """Tester FM: ``--check --fast`` was taken, and did nothing."""
    with pytest.raises(SystemExit) as stop:
        run.main(["--check", *given])
    assert stop.value.code == 2
    assert f"{given[0]} runs the tutorials, and --check runs none" in capsys.readouterr().err


def test_readme_links_every_tutorial():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tutorials", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\(tutorials/(\d\d_\w+)\.ipynb\)", section))
    assert linked == set(IDS), f"README's Tutorials section links {sorted(linked)}, not {IDS}"
