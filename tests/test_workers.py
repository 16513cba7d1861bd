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
    """(In a worker) minor page faults of allocating, touching and freeing 8 MiB, 20 times."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = np.ones(2**20)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def faults(client) -> list[int]:
    client.run(page_faults_of_block_allocations)  # warm-up: first touches, heap growth
    return list(client.run(page_faults_of_block_allocations).values())


def test_workers_run_under_the_nannys_trim_threshold(cluster_client):
    import os

    env = cluster_client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert all(v is not None for v in env.values())  # what the module is there for


def test_tuned_workers_reuse_freed_blocks_and_are_restored(cluster_client):
    default = faults(cluster_client)  # dask's setting: every block is a fresh mmap
    assert min(default) > 2000  # (at least 100 faults per 8 MiB block)
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
