"""Smoke test: the inference-gap benchmark runs at tiny sizes and writes its tables."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_the_gap_and_split_tables(tmp_path):
    out = tmp_path / "table.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "inference_gap.py"),
            "--quick",
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    families = ["Normal (diagonal)", "low-rank Normal, rank 2", "IAF, 2 steps"]
    families.append("neural spline flow, 2 steps")
    assert [r.split("|")[1].strip() for r in rows] == [
        "encoder family",
        *families,
        "encoder family",
        *families,
    ]
    for row in rows[1:5]:
        gap = float(row.split("|")[3].split("±")[0])
        assert gap > -1.0, row  # a gap from a K = 8 IWAE estimate: near zero or above
    assert "Target (issue 17)" in text and "load average before" in text
