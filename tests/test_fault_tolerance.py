"""Losing a worker: real `dask scheduler` and `dask worker` processes, one SIGKILLed mid-fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_low_rank, stop_processes, write_zarr
from distributed import Client

import dask_nmf

DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


@pytest.fixture
def real_cluster(tmp_path):
    """A scheduler and two nanny-less workers, each its own process on 127.0.0.1."""
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            DASK
            + [
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    workers = [
        subprocess.Popen(
            WORKER
            + [
                "--scheduler-file",
                str(sched_file),
                "--no-nanny",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--memory-limit",
                "1GiB",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    procs += workers
    try:
        with Client(scheduler_file=str(sched_file), set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            yield client, workers
    finally:
        stop_processes(procs)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_fit_survives_a_killed_worker(real_cluster, tmp_path, beta_loss):
    client, workers = real_cluster
    V = make_low_rank(np.random.default_rng(3), 400, 60, 5)
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(50, 60))
    kw = dict(beta_loss=beta_loss, init="random", random_state=2, max_iter=40, tol=0, block_rows=50)
    addresses = {w: i["name"] for w, i in client.scheduler_info()["workers"].items()}
    killed = []

    def kill_one(iteration, loss):
        if iteration == 15 and not killed:
            # the worker holding the most keys: it surely holds W blocks
            who = client.has_what()
            victim = max(who, key=lambda a: len(who[a]))
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed.append(victim)

    res = dask_nmf.factorize(path, 5, client=client, callback=kill_one, **kw)
    assert killed and len(client.scheduler_info()["workers"]) == 1
    assert len(addresses) == 2
    undisturbed = dask_nmf.factorize(path, 5, **kw)  # threaded, in this process
    assert res.n_iter == 40
    np.testing.assert_allclose(res.H, undisturbed.H, rtol=1e-9)
    np.testing.assert_allclose(client.compute(res.W, sync=True), undisturbed.W.compute(), rtol=1e-9)
    assert json.dumps(res.loss_history)  # plain floats
    np.testing.assert_allclose(res.loss_history, undisturbed.loss_history, rtol=1e-9)
