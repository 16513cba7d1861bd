"""What a fit changes in dask's worker processes: malloc thresholds, restored afterwards."""

from __future__ import annotations

import sys

import dask
import pytest

from dask_nmf import workers

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only"
)


def page_faults_of_block_allocations() -> int:
    """(In a worker) minor page faults of allocating, touching and freeing 8 MiB, 20 times.

    Transparent huge pages are turned off for the probe (and put back): numpy
    asks for them on large arrays, and where the kernel grants them a fresh
    8 MiB mapping faults in 4 huge pages instead of 2048 small ones, which
    would hide the difference the probe is there to see.
    """
    import ctypes
    import resource

    import numpy as np

    pr_set_thp_disable, pr_get_thp_disable = 41, 42
    libc = ctypes.CDLL("libc.so.6")
    thp_was_disabled = libc.prctl(pr_get_thp_disable, 0, 0, 0, 0)
    libc.prctl(pr_set_thp_disable, 1, 0, 0, 0)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            block = np.ones(2**20)
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        libc.prctl(pr_set_thp_disable, thp_was_disabled, 0, 0, 0)


def faults(client) -> list[int]:
    client.run(page_faults_of_block_allocations)  # warm-up: first touches, heap growth
    return list(client.run(page_faults_of_block_allocations).values())


def test_workers_run_under_the_nannys_trim_threshold(cluster_client):
    import os

    env = cluster_client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert all(v is not None for v in env.values())  # what the module is there for


def test_tuned_workers_reuse_freed_blocks_and_are_restored(cluster_client):
    default = faults(cluster_client)  # dask's setting: every block is a fresh mmap
    assert min(default) > 20 * 1000  # (2048 small pages in each 8 MiB block)
    with workers.tuned_for_blocks(cluster_client, block_bytes=2**23):
        tuned = faults(cluster_client)
    assert max(tuned) < min(default) / 10
    restored = faults(cluster_client)
    assert min(restored) > max(default) / 2


def test_tuning_can_be_turned_off(cluster_client):
    default = faults(cluster_client)
    with dask.config.set({"dask-nmf.worker-malloc": False}):
        with workers.tuned_for_blocks(cluster_client, block_bytes=2**23):
            untouched = faults(cluster_client)
    assert min(untouched) > max(default) / 2


def test_undoing_does_not_wait_on_a_worker_that_is_gone(cluster_client):
    """The undoing at the end of a fit follows Ctrl-C too, which stops an embedded
    cluster's workers: a call to a worker that is gone waits 30 s for a connection."""
    import os
    import time

    t0 = time.perf_counter()
    workers.run_briefly(cluster_client, os.getpid, workers=["tcp://127.0.0.1:9"])  # no one there
    assert time.perf_counter() - t0 < workers._UNDO_WAIT + 2
    # ... and does its work on live workers before returning.
    cluster_client.run(_mark)
    workers.run_briefly(cluster_client, _unmark)
    assert not any(cluster_client.run(_marked).values())


def _mark():
    sys.modules[__name__].MARK = True


def _unmark():
    sys.modules[__name__].MARK = False


def _marked():
    return getattr(sys.modules[__name__], "MARK", False)
