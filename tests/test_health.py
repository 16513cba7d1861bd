"""A fit on a sick cluster ends with a ClusterError that says what happened.

No workers, all workers lost mid-fit, a lost scheduler, workers killed for
memory: real LocalClusters and real `dask scheduler` / `dask worker` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import make_low_rank, stop_processes, write_zarr
from distributed import Client, LocalCluster

import dask_nmf
from dask_nmf import ClusterError

SCHEDULER = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]
GRACE = "1s"  # dask-nmf.no-worker-timeout in these tests


@pytest.fixture
def scheduler_with_a_worker(tmp_path):
    """A `dask scheduler` process and one nanny-less `dask worker` process."""
    sched_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [*SCHEDULER, "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    worker = subprocess.Popen(
        [*WORKER, "--scheduler-file", str(sched_file), "--no-nanny", "--nthreads", "1"]
        + ["--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "1GiB"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Client(scheduler_file=str(sched_file), set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            yield client, scheduler, worker
    finally:
        stop_processes([worker, scheduler])


@pytest.fixture
def V_path(tmp_path):
    V = make_low_rank(np.random.default_rng(0), 400, 40, 4)
    return write_zarr(tmp_path / "V.zarr", V, chunks=(50, 40))


FIT = dict(init="random", random_state=0, max_iter=10_000, tol=0, block_rows=50)


@pytest.mark.timeout(60)
def test_a_scheduler_with_no_workers_is_an_error_within_the_timeout(V_path):
    with (
        dask.config.set({"dask-nmf.no-worker-timeout": GRACE}),
        LocalCluster(n_workers=0, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        t0 = time.perf_counter()
        with pytest.raises(ClusterError, match="no dask worker joined the scheduler"):
            dask_nmf.factorize(V_path, 4, client=client, **FIT)
        assert time.perf_counter() - t0 < 10


def checkpointed_fit_error(V_path, client, callback, out) -> str:
    """The ClusterError's message of a fit checkpointed every 5 iterations that
    ``callback`` breaks the cluster of."""
    with pytest.raises(ClusterError) as info:
        dask_nmf.factorize(
            V_path, 4, client=client, callback=callback, checkpoint=out, checkpoint_every=5, **FIT
        )
    return str(info.value)


@pytest.mark.timeout(90)
def test_all_workers_lost_mid_fit_is_an_error_and_the_checkpoint_loads(
    scheduler_with_a_worker, V_path, tmp_path
):
    client, _, worker = scheduler_with_a_worker
    out = str(tmp_path / "out.zarr")

    def kill_the_worker(iteration, loss):
        if iteration == 12:
            worker.send_signal(signal.SIGKILL)

    with dask.config.set({"dask-nmf.no-worker-timeout": GRACE}):
        t0 = time.perf_counter()
        message = checkpointed_fit_error(V_path, client, kill_the_worker, out)
        elapsed = time.perf_counter() - t0
    assert "no workers" in message and "--resume" in message and out in message, message
    assert elapsed < 30
    ck = dask_nmf.load(out)
    assert ck.n_iter == 10 and ck.H.shape == (4, 40)
    assert np.isfinite(ck.W.compute()).all()


@pytest.mark.timeout(90)
def test_a_lost_scheduler_mid_fit_is_an_error_naming_it(scheduler_with_a_worker, V_path, tmp_path):
    client, scheduler, _ = scheduler_with_a_worker
    out = str(tmp_path / "out.zarr")
    address = client.scheduler.address

    def kill_the_scheduler(iteration, loss):
        if iteration == 7:
            scheduler.send_signal(signal.SIGKILL)

    t0 = time.perf_counter()
    message = checkpointed_fit_error(V_path, client, kill_the_scheduler, out)
    assert "lost the connection to the dask scheduler" in message and address in message
    assert "iteration 5" in message and "--resume" in message, message
    assert time.perf_counter() - t0 < 30
    assert dask_nmf.load(out).n_iter == 5


@pytest.fixture(scope="module")
def small_worker():
    """One worker process (with its nanny) limited to 400 MiB; dask gives up on a
    task at the first worker it kills."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="400MiB",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _lazy_V(rows: int, cols: int) -> da.Array:
    """A V of one block, made on the worker (nothing that large in this process)."""
    return da.ones((rows, cols), chunks=(rows, cols))


def fit_one_block(client, rows: int):
    """A fit of a lazy V of ``rows`` x 2500 ones in one block; its ClusterError's message."""
    with pytest.raises(ClusterError) as info:
        dask_nmf.factorize(
            _lazy_V(rows, 2_500),
            4,
            client=client,
            block_rows=rows,
            keep_in_memory=False,
            init="random",
        )
    return str(info.value)


@pytest.mark.timeout(60)
def test_a_block_larger_than_any_worker_is_refused_up_front(small_worker):
    t0 = time.perf_counter()
    message = fit_one_block(small_worker, 25_000)  # 500 MB in one block
    assert "500000000 bytes" in message and "memory limit" in message, message
    assert "--block-rows" in message and "--memory-limit" in message
    assert time.perf_counter() - t0 < 5


@pytest.mark.timeout(90)
def test_workers_killed_for_memory_is_an_error_naming_memory_and_block_size(small_worker):
    t0 = time.perf_counter()
    # 300 MB in one block: below the limit, but not with a worker around it
    message = fit_one_block(small_worker, 15_000)
    assert "memory" in message and "300000000 bytes" in message, message
    assert "died" in message and "--block-rows" in message
    assert time.perf_counter() - t0 < 60
    small_worker.wait_for_workers(1, timeout=30)  # the nanny brings it back


# --------------------------------------------------------------------------
# The command line: one line and exit status 2, no traceback
# --------------------------------------------------------------------------
CLI = [sys.executable, "-m", "dask_nmf.cli"]


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("dask-nmf: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--scheduler", ""], "--scheduler needs an address"),
        (["--n-workers", "0"], "--n-workers must be at least 1"),
        (["--n-workers", "-2"], "--n-workers must be at least 1"),
        (["--threads-per-worker", "0"], "--threads-per-worker must be at least 1"),
        (["--memory-limit", "banana"], "--memory-limit must be"),
        (["--scheduler", "tcp://a:1", "--scheduler-file", "s.json"], "contradict"),
    ],
)
def test_bad_cluster_options_exit_2_before_anything_starts(V_path, tmp_path, options, message):
    from click.testing import CliRunner

    from dask_nmf.cli import cli

    out = tmp_path / "out.zarr"
    for command in (["fit", V_path, "-k", "3", "-o", str(out)], ["transform", V_path]):
        if command[0] == "transform":
            command += ["--model", str(tmp_path / "m.zarr"), "-o", str(out)]
        r = CliRunner().invoke(cli, command + options)
        assert r.exit_code == 2, r.output
        assert message in r.output and r.output.count("\n") == 1, r.output
        assert not out.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["--scheduler", "--scheduler-file"])
def test_an_unreachable_scheduler_exits_2_quickly(V_path, tmp_path, how):
    target = "tcp://127.0.0.1:1" if how == "--scheduler" else str(tmp_path / "none.json")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*CLI, "fit", V_path, "-k", "3", "-o", str(tmp_path / "out.zarr"), how, target],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "DASK_DASK_NMF__CONNECT_TIMEOUT": "1s"},
    )
    assert proc.returncode == 2, proc.stderr
    assert target in _one_error_line(proc.stderr)
    assert time.perf_counter() - t0 < 30  # (the process itself starts in a few seconds)


@pytest.mark.timeout(90)
def test_cli_a_lost_scheduler_mid_fit_exits_2_with_resume(scheduler_with_a_worker, tmp_path):
    client, scheduler, _ = scheduler_with_a_worker
    address = client.scheduler.address
    V = make_low_rank(np.random.default_rng(0), 400, 40, 4)
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(50, 40))
    out = str(tmp_path / "out.zarr")
    proc = subprocess.Popen(
        [*CLI, "fit", path, "-k", "4", "-o", out, "--max-iter", "100000", "--tol", "0"]
        + ["--init", "random", "--checkpoint-every", "3", "--scheduler", address],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    deadline = time.time() + 60
    while time.time() < deadline:
        seen.append(proc.stderr.readline())
        if "checkpoint: iteration 3" in seen[-1]:
            break
    scheduler.send_signal(signal.SIGKILL)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 2, "".join(seen) + rest
    line = _one_error_line(rest)
    assert address in line and "--resume" in line, line
    assert dask_nmf.load(out).n_iter >= 3
