"""V, results and checkpoints in S3: a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import make_low_rank

import dask_nmf


def test_fit_checkpoint_resume_in_s3(s3, cluster_client):
    V = make_low_rank(np.random.default_rng(4), 300, 40, 3)
    arr = zarr.create_array(
        "s3://nmf/V.zarr", shape=V.shape, chunks=(50, 40), dtype="f8", storage_options=s3
    )
    arr[...] = V
    kw = dict(init="random", random_state=0, tol=0, block_rows=60, storage_options=s3)
    first = dask_nmf.factorize(
        "s3://nmf/V.zarr",
        3,
        max_iter=12,
        checkpoint="s3://nmf/ck.zarr",
        checkpoint_every=5,
        client=cluster_client,
        **kw,
    )
    back = dask_nmf.load("s3://nmf/ck.zarr", storage_options=s3)
    assert back.n_iter == 12
    np.testing.assert_array_equal(back.H, first.H)
    np.testing.assert_array_equal(back.W.compute(), cluster_client.compute(first.W, sync=True))
    resumed = dask_nmf.factorize(
        "s3://nmf/V.zarr",
        3,
        max_iter=25,
        checkpoint="s3://nmf/ck.zarr",
        resume=True,
        client=cluster_client,
        **kw,
    )
    straight = dask_nmf.factorize(V, 3, max_iter=25, **{**kw, "storage_options": None})
    np.testing.assert_allclose(resumed.H, straight.H, rtol=1e-9)
    with cluster_client.as_current():  # W's blocks are on that cluster
        resumed.to_zarr("s3://nmf/result.zarr", storage_options=s3)
    final = dask_nmf.load("s3://nmf/result.zarr", storage_options=s3)
    np.testing.assert_allclose(final.W.compute(), straight.W.compute(), rtol=1e-9)


def test_missing_object_store_path(s3):
    with pytest.raises(dask_nmf.InputError, match="s3://nmf/absent.zarr"):
        dask_nmf.factorize("s3://nmf/absent.zarr", 2, storage_options=s3)
