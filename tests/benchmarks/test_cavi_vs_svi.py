"""Smoke test: the CAVI-vs-SVI benchmark runs at tiny sizes and its bounds stay bounds."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_a_table_of_valid_bounds(tmp_path):
    out = tmp_path / "table.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cavi_vs_svi.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    rows = [
        line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    body = rows[1:]
    assert len(body) == 8
    for row in body:
        cells = [c.strip() for c in row.strip("|").split("|")]
        exact, bound, svi = cells[1], cells[2], cells[5]
        if exact:
            assert float(bound) <= float(exact) + 1e-6, row
            if svi:
                elbo, stderr = (float(v) for v in svi.split("±"))
                assert elbo <= float(exact) + 4 * stderr, row
