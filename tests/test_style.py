"""The code base stays ruff clean (the linter is in the test extra)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "dask_nmf", "tests", "examples", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
