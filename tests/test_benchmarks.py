"""The benchmarks' measuring helpers (benchmarks/common.py) report what they measured."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"


@pytest.fixture
def common():
    spec = importlib.util.spec_from_file_location("bench_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.QUIET_WAIT = 0.0  # (no waiting for an idle machine in a test)
    return module


def test_per_iteration_is_not_fooled_by_a_cold_first_call(common):
    calls = []

    def run(n):  # 10 ms per iteration; the first call pays 0.3 s of start-up
        time.sleep((0.3 if not calls else 0.0) + 0.01 * n)
        calls.append(n)

    r = common.per_iteration(run, 2, 6, repeats=1)
    assert r["ms_per_iter"] == pytest.approx(10, abs=4)


def test_per_iteration_never_reports_a_negative_time(common):
    def run(n):  # the longer run is faster (noise beyond the iterations' own time)
        time.sleep(0.05 - 0.005 * n)

    r = common.per_iteration(run, 2, 6, repeats=1)
    assert math.isnan(r["ms_per_iter"])


def test_a_run_writes_to_a_new_folder(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.fresh_results_dir("quick")
    assert path.is_dir() and path.parent == tmp_path / "runs" and not any(path.iterdir())
