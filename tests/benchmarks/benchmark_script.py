"""Load a benchmark script as a module, as `python benchmarks/NAME.py` would see it: with
its sibling modules (report_common) importable and itself in ``sys.modules`` (where a
dataclass it defines looks its module up)."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    """``benchmarks/{name}.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def run(name: str, *argv: str) -> None:
    """``python benchmarks/{name}.py *argv`` in a subprocess from the repository root, one
    thread (``OMP_NUM_THREADS=1``), as its end-to-end smoke tests run it; raises
    ``CalledProcessError`` (with its output) where the script fails."""
    import os
    import subprocess

    subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *argv],
        check=True,
        cwd=BENCHMARKS.parent,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
