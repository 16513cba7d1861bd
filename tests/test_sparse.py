"""Sparse V: SciPy matrices, dask arrays of sparse chunks, CSR in zarr (AnnData's layout)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import sparse as pydata_sparse
import zarr

import dask_nmf
from dask_nmf.datasets import make_sparse_counts, write_csr_zarr
from dask_nmf.io import InputError

COSTS = ["frobenius", "kullback-leibler"]


@pytest.fixture(scope="module")
def counts():
    X = make_sparse_counts(600, 80, 4, 0.05, seed=3, dtype="float64")
    X = X.tolil()
    X[5] = 0  # an empty row
    X = X.tocsr()
    X.eliminate_zeros()
    return X


@pytest.fixture
def no_densify(monkeypatch):
    """Fail if anything turns a sparse matrix dense."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("V was densified")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)


def fit(V, beta_loss, **kw):
    kw = {"init": "random", "random_state": 0, "max_iter": 25, "tol": 0, "block_rows": 130, **kw}
    return dask_nmf.factorize(V, 4, beta_loss=beta_loss, **kw)


@pytest.fixture(scope="module")
def dense_results(counts):
    return {beta: fit(counts.toarray(), beta) for beta in COSTS}


@pytest.mark.parametrize("beta_loss", COSTS)
def test_scipy_sparse_matches_dense(counts, dense_results, beta_loss, no_densify):
    res = fit(counts, beta_loss)
    ref = dense_results[beta_loss]
    np.testing.assert_allclose(res.H, ref.H, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.W.compute(), ref.W.compute(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.loss_history, ref.loss_history, rtol=1e-9)


@pytest.mark.parametrize("beta_loss", COSTS)
def test_csr_in_zarr_matches_dense(tmp_path, counts, dense_results, beta_loss, no_densify):
    write_csr_zarr(tmp_path / "X.zarr", counts, chunk_nnz=500)
    res = fit(str(tmp_path / "X.zarr"), beta_loss)
    ref = dense_results[beta_loss]
    np.testing.assert_allclose(res.H, ref.H, rtol=1e-9, atol=1e-12)
    assert res.source["kind"] == "zarr-csr" and res.source["nnz"] == counts.nnz


def test_csr_inside_an_anndata_like_group(tmp_path, counts, dense_results):
    root = zarr.open_group(str(tmp_path / "adata.zarr"), mode="w")
    root.create_array("obs_names", data=np.arange(counts.shape[0]))
    write_csr_zarr(tmp_path / "adata.zarr" / "X", counts)
    res = fit(str(tmp_path / "adata.zarr"), "kullback-leibler", array="X")
    np.testing.assert_allclose(res.H, dense_results["kullback-leibler"].H, rtol=1e-9, atol=1e-12)


def test_dask_array_of_sparse_chunks(counts, dense_results):
    dense = da.from_array(counts.toarray(), chunks=(70, 80))
    V = dense.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0)))
    res = fit(V, "frobenius")
    np.testing.assert_allclose(res.H, dense_results["frobenius"].H, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fmt", ["coo", pytest.param("gcxs", marks=pytest.mark.slow)])
@pytest.mark.parametrize("beta_loss", COSTS)
def test_dask_array_of_pydata_sparse_chunks(counts, dense_results, fmt, beta_loss):
    """Chunks that are pydata ``sparse`` arrays (COO or GCXS), as ``sparse.asarray`` gives."""
    dense = da.from_array(counts.toarray(), chunks=(70, 80))
    V = dense.map_blocks(
        pydata_sparse.asarray, format=fmt, meta=pydata_sparse.asarray(np.zeros((0, 0)), format=fmt)
    )
    assert isinstance(V.blocks[0, 0].compute(), pydata_sparse.SparseArray)
    res = fit(V, beta_loss)
    ref = dense_results[beta_loss]
    np.testing.assert_allclose(res.H, ref.H, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.loss_history, ref.loss_history, rtol=1e-9)


def test_pydata_sparse_in_memory(counts, dense_results):
    res = fit(pydata_sparse.COO.from_scipy_sparse(counts), "kullback-leibler")
    np.testing.assert_allclose(res.H, dense_results["kullback-leibler"].H, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("keep_in_memory", [None, False])
@pytest.mark.parametrize("beta_loss", COSTS)
def test_csr_store_on_a_cluster(
    tmp_path, counts, dense_results, cluster_client, beta_loss, keep_in_memory
):
    """Kept in memory, or re-read every pass inside the block steps (never densified)."""
    write_csr_zarr(tmp_path / "X.zarr", counts, chunk_nnz=500)
    res = fit(
        str(tmp_path / "X.zarr"), beta_loss, client=cluster_client, keep_in_memory=keep_in_memory
    )
    np.testing.assert_allclose(res.H, dense_results[beta_loss].H, rtol=1e-9, atol=1e-12)
    assert res.diagnostics["kept_in_memory"] is (keep_in_memory is None)


@pytest.mark.parametrize("beta_loss", COSTS)
def test_csr_store_read_in_the_steps(tmp_path, counts, dense_results, beta_loss, no_densify):
    write_csr_zarr(tmp_path / "X.zarr", counts, chunk_nnz=500)
    res = fit(str(tmp_path / "X.zarr"), beta_loss, keep_in_memory=False, dtype="float32")
    np.testing.assert_allclose(res.H, dense_results[beta_loss].H, rtol=1e-4, atol=1e-6)
    assert res.H.dtype == np.float32


@pytest.mark.parametrize("init", ["nndsvda", "nndsvdar"])
def test_nndsvd_on_sparse(counts, dense_results, init, no_densify):
    """The out-of-core SVD runs on the sparse blocks and gives a good start."""
    res = dask_nmf.factorize(counts, 4, init=init, random_state=0, max_iter=25, tol=0)
    assert res.reconstruction_err <= dense_results["frobenius"].reconstruction_err


def test_transform_sparse(counts):
    est = dask_nmf.NMF(4, beta_loss="kullback-leibler", max_iter=20, tol=0, random_state=0)
    est.fit(counts)
    np.testing.assert_allclose(est.transform(counts), est.transform(counts.toarray()), rtol=1e-9)


def test_sparse_validation(tmp_path, counts):
    bad = counts.copy()
    bad.data[3] = -1.0
    with pytest.raises(InputError, match="negative values"):
        dask_nmf.factorize(bad, 3)
    bad.data[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dask_nmf.factorize(bad, 3)
    group = zarr.open_group(str(tmp_path / "csc.zarr"), mode="w")
    group.attrs.update({"encoding-type": "csc_matrix", "shape": [3, 3]})
    with pytest.raises(InputError, match="csc_matrix"):
        dask_nmf.factorize(str(tmp_path / "csc.zarr"), 2)
