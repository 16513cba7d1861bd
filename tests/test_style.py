"""The code base stays ruff clean (the linter is in the test extra)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_clean():
    dirs = [d for d in ("dask_nmf", "tests", "examples", "benchmarks") if (ROOT / d).is_dir()]
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *dirs],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
