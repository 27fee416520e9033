"""Build and execute the tutorials: ``python tutorials/run.py [--fast] [NAME ...]``.

Each tutorial is a jupytext percent-format script ``tutorials/NN_name.py`` (the file people
edit and review). This command turns every script into a notebook, executes it top to
bottom in a fresh ``python3`` kernel (nbclient), and writes the executed notebook beside
it as ``NN_name.ipynb``, outputs and figures included. A cell that raises stops the run
with an error naming the notebook, the cell and the exception.

``--fast`` (or ``PYRO_VAE_TUTORIAL_FAST=1`` in the environment) asks every tutorial for
its fast mode: fewer epochs, less data, fewer samples. It exists to check that the
tutorials run; the committed notebooks come from a full run, so a fast run writes to
``tutorials/fast/`` (ignored by git) unless ``--out`` says where (tester H: a fast run of
one tutorial replaced its committed notebook, and ``--check`` still passed). ``--check``
executes nothing and only verifies that every committed notebook holds the same cells as
its script, from a full run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
#: Where a fast run writes its notebooks when ``--out`` is not given.
FAST_OUT = HERE / "fast"
#: What a tutorial prints in fast mode (and a full run never does).
FAST_MARK = "fast mode"
FAST_ENV = "PYRO_VAE_TUTORIAL_FAST"
KERNEL = "python3"
FORMATS = "ipynb,py:percent"


class TutorialError(RuntimeError):
    """A tutorial failed to build or execute; the message names the notebook and the cell."""


def sources(directory: Path = HERE) -> list[Path]:
    """The tutorial scripts ``NN_name.py`` in ``directory``, in lecture order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py") if p.is_file())


def select(names: list[str], directory: Path = HERE) -> list[Path]:
    """The scripts named by ``names`` (``03``, ``03_vae`` or ``03_vae.py``); all when empty."""
    found = sources(directory)
    if not names:
        return found
    chosen = []
    for name in names:
        stem = Path(name).stem
        matches = [p for p in found if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(matches) != 1:
            raise TutorialError(
                f"tutorial: {name!r} matches {len(matches)} of "
                f"{', '.join(p.stem for p in found) or 'no tutorials'}; expected exactly one"
            )
        chosen.append(matches[0])
    return chosen


def read_source(path: Path) -> nbformat.NotebookNode:
    """The notebook a percent-format script describes, set up for the ``python3`` kernel."""
    nb = jupytext.read(path, fmt="py:percent")
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index}"  # stable ids keep reruns' diffs to what changed
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("jupytext", {})["formats"] = FORMATS
    return nb


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell type, source) of every cell: what a script and its notebook must agree on."""
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def out_of_sync(path: Path) -> str | None:
    """Why ``NN_name.ipynb`` does not hold the cells of ``NN_name.py``, or ``None`` if it does."""
    notebook = path.with_suffix(".ipynb")
    if not notebook.is_file():
        return f"{notebook.name} is missing; run `python tutorials/run.py {path.stem}`"
    executed = nbformat.read(notebook, 4)
    expected, stored = cells_of(read_source(path)), cells_of(executed)
    if expected == stored:
        if ran_fast(executed):
            return (
                f"{notebook.name} holds a fast-mode run, not the full run it should; "
                f"rerun `python tutorials/run.py {path.stem}`"
            )
        return None
    for index, (want, have) in enumerate(zip(expected, stored, strict=False)):
        if want != have:
            return (
                f"{notebook.name} cell {index} differs from {path.name}; "
                f"rerun `python tutorials/run.py {path.stem}`"
            )
    return (
        f"{notebook.name} has {len(stored)} cells but {path.name} has {len(expected)}; "
        f"rerun `python tutorials/run.py {path.stem}`"
    )


def ran_fast(nb: nbformat.NotebookNode) -> bool:
    """Whether the executed notebook ``nb`` printed that it ran in fast mode."""
    return any(
        FAST_MARK in out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


def _failed_cell(nb: nbformat.NotebookNode) -> tuple[int, str]:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, cell.source
    return -1, ""


def execute(
    path: Path,
    out: Path | None = None,
    fast: bool = False,
    timeout: int = 1800,
) -> tuple[nbformat.NotebookNode, float]:
    """Execute the tutorial script ``path``; write the notebook to ``out`` if given.

    The kernel runs in the script's directory with ``PYRO_VAE_TUTORIAL_FAST`` set to ``1``
    when ``fast`` (otherwise inherited from this process's environment).

    Returns:
        the executed notebook and the seconds it took.

    Raises:
        TutorialError: a cell raised or timed out; the message names the notebook, the cell
            index and its first line, and holds the kernel's traceback.
    """
    nb = read_source(path)
    env = dict(os.environ)
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    # tqdm.auto, imported by the training loop, warns in a kernel without ipywidgets even
    # though the tutorials show no progress bars; keep that out of the notebooks.
    env["PYTHONWARNINGS"] = ",".join(
        filter(None, [env.get("PYTHONWARNINGS"), "ignore:IProgress not found"])
    )
    if fast:
        env[FAST_ENV] = "1"
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        index, source = _failed_cell(nb)
        first = source.strip().splitlines()[0] if source.strip() else ""
        raise TutorialError(
            f"{path.stem}: cell {index} ({first!r}) raised {err.ename}: {err.evalue}\n{err}"
        ) from err
    except TimeoutError as err:
        raise TutorialError(f"{path.stem}: a cell ran past {timeout} s: {err}") from err
    seconds = time.perf_counter() - started
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    return nb, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute the tutorials and write the notebooks beside their scripts."
    )
    parser.add_argument(
        "names", nargs="*", help="tutorials to run (e.g. 03 or 03_vae); all if none"
    )
    parser.add_argument("--fast", action="store_true", help=f"fast mode (sets {FAST_ENV}=1)")
    parser.add_argument(
        "--out",
        type=Path,
        help="write the notebooks to this folder (default: tutorials/, or tutorials/fast/ "
        "with --fast: the committed notebooks are a full run's)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    parser.add_argument(
        "--check", action="store_true", help="only check that each notebook matches its script"
    )
    args = parser.parse_args(argv)
    if args.check and (args.fast or args.out):  # tester FM: --fast was taken and unused
        given = "--fast" if args.fast else "--out"
        parser.error(f"{given} runs the tutorials, and --check runs none; give one of them")
    try:
        paths = select(args.names)
    except TutorialError as err:
        print(err, file=sys.stderr)
        return 2
    if args.check:
        problems = [p for p in map(out_of_sync, paths) if p]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(paths) - len(problems)} of {len(paths)} notebooks match their scripts")
        return 1 if problems else 0
    fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")
    folder = args.out or (FAST_OUT if fast else None)
    for path in paths:
        target = (folder or path.parent) / f"{path.stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"{path.stem}: running{' (fast mode)' if fast else ''} ...", flush=True)
        try:
            _, seconds = execute(path, target, fast=fast, timeout=args.timeout)
        except TutorialError as err:
            print(err, file=sys.stderr)
            return 1
        print(f"{path.stem}: {seconds:.0f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
