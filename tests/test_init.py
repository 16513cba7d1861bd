"""Initializations: scikit-learn's formulas, computed out of core and reproducibly."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
from sklearn.decomposition._nmf import _initialize_nmf

from dask_nmf import init as nmf_init
from dask_nmf.io import InputError, open_input


def materialize(W_blocks):
    return np.vstack(dask.compute(*W_blocks))


@pytest.fixture
def exact_rank(rng):
    """Exactly rank 4, so every SVD method finds the same singular vectors."""
    return (rng.random((90, 4)) + 0.1) @ (rng.random((4, 30)) + 0.1)


def test_default_init_is_sklearns():
    assert nmf_init.resolve_init(None, 5, (100, 20)) == "nndsvda"
    assert nmf_init.resolve_init(None, 25, (100, 20)) == "random"
    with pytest.raises(InputError, match="unknown init 'svd'"):
        nmf_init.resolve_init("svd", 5, (100, 20))


def test_random_init_scale_and_blocks(rng):
    V = rng.random((500, 40)) * 3
    Vin = open_input(V, 120)
    W_blocks, H = nmf_init.random_init(Vin, 5, V.mean(), 0)
    W = materialize(W_blocks)
    assert W.shape == (500, 5) and H.shape == (5, 40)
    assert (W >= 0).all() and (H >= 0).all()
    # |N(0,1)| has mean sqrt(2/pi); scikit-learn scales it by sqrt(mean(V)/k)
    expected = np.sqrt(V.mean() / 5) * np.sqrt(2 / np.pi)
    assert W.mean() == pytest.approx(expected, rel=0.05)
    assert H.mean() == pytest.approx(expected, rel=0.1)


def test_random_init_reproducible(rng):
    Vin = open_input(rng.random((100, 10)), 30)
    a = nmf_init.random_init(Vin, 3, 0.5, 42)
    b = nmf_init.random_init(Vin, 3, 0.5, 42)
    np.testing.assert_array_equal(materialize(a[0]), materialize(b[0]))
    np.testing.assert_array_equal(a[1], b[1])
    c = nmf_init.random_init(Vin, 3, 0.5, 43)
    assert not np.allclose(a[1], c[1])


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda"])
def test_nndsvd_matches_sklearn(exact_rank, variant):
    V = exact_rank
    W_sk, H_sk = _initialize_nmf(V, 4, init=variant)
    Vin = open_input(V, 25)
    W_blocks, H = nmf_init.nndsvd_init(Vin, 4, V.mean(), variant, 0)
    np.testing.assert_allclose(materialize(W_blocks), W_sk, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(H, H_sk, rtol=1e-6, atol=1e-8)


def test_nndsvdar_fills_zeros_with_small_noise(exact_rank):
    V = exact_rank
    W_plain, H_plain = _initialize_nmf(V, 4, init="nndsvd")
    Vin = open_input(V, 25)
    W_blocks, H = nmf_init.nndsvd_init(Vin, 4, V.mean(), "nndsvdar", 0)
    W = materialize(W_blocks)
    zeros = W_plain == 0
    assert zeros.any()
    assert (W[zeros] > 0).all() and (W[zeros] < V.mean()).all()
    np.testing.assert_allclose(W[~zeros], W_plain[~zeros], rtol=1e-6)
    assert (H[H_plain == 0] < V.mean()).all()


def test_nndsvd_never_takes_a_dense_svd(exact_rank, monkeypatch):
    """The SVD is out of core: no NumPy SVD ever sees an m x n matrix."""
    shapes = []
    real_svd = np.linalg.svd

    def spy(a, *args, **kwargs):
        shapes.append(np.shape(a))
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", spy)
    Vin = open_input(exact_rank, 25)
    with dask.config.set(scheduler="sync"):
        nmf_init.nndsvd_init(Vin, 4, 1.0, "nndsvda", 0)
    assert shapes, "expected the small SVD of the projected matrix"
    assert all(min(s) < 25 for s in shapes), shapes


def test_nndsvd_warning_like_sklearn(rng):
    import dask_nmf

    V = rng.random((40, 10))
    with pytest.warns(UserWarning, match="cannot move entries that start at zero"):
        dask_nmf.factorize(V, 2, init="nndsvd", max_iter=2)


def test_custom_init_ignored_with_warning_unless_custom(rng):
    import dask_nmf

    V = rng.random((40, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dask_nmf.factorize(V, 2, W_init=np.ones((40, 2)), H_init=np.ones((2, 10)), max_iter=2)
    with pytest.warns(UserWarning, match="ignored"):
        dask_nmf.factorize(V, 2, init="random", W_init=np.ones((40, 2)), max_iter=2)


@pytest.mark.parametrize("variant", ["random", "nndsvdar"])
def test_init_does_not_depend_on_the_row_blocks(rng, variant):
    V = rng.random((9000, 12))
    results = []
    for block_rows in (9000, 1000, 4097):
        Vin = open_input(V, block_rows)
        if variant == "random":
            W_blocks, H = nmf_init.random_init(Vin, 3, V.mean(), 11)
        else:
            W_blocks, H = nmf_init.nndsvd_init(Vin, 3, V.mean(), variant, 11)
        results.append((materialize(W_blocks), H))
    for W, H in results[1:]:
        np.testing.assert_allclose(W, results[0][0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(H, results[0][1], rtol=1e-6)


@pytest.fixture
def zarr_V_16mb(tmp_path, rng):
    """A 16 MB V in zarr, 40 chunks of 200 rows."""
    import zarr

    V = (rng.random((8000, 6)) + 0.1) @ (rng.random((6, 250)) + 0.1)
    z = zarr.create_array(str(tmp_path / "V.zarr"), shape=V.shape, chunks=(200, 250), dtype="f8")
    z[...] = V
    return str(tmp_path / "V.zarr"), V


def test_nndsvd_reads_V_pass_by_pass_without_holding_it(zarr_V_16mb):
    """The randomized SVD's passes over V are computed one at a time, each
    dropping V's blocks when done; as one lazy graph they shared V's blocks,
    which dask then held in memory until the last pass (all of V)."""
    import tracemalloc

    path, V = zarr_V_16mb
    Vin = open_input(path, 200)
    assert Vin.local is None  # read from the store
    with dask.config.set(scheduler="threads"):
        nmf_init.nndsvd_init(Vin, 4, V.mean(), "nndsvda", 0)  # first-use allocations
        tracemalloc.start()
        try:
            W_blocks, H = nmf_init.nndsvd_init(Vin, 4, V.mean(), "nndsvda", 0)
            W = materialize(W_blocks)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < V.nbytes / 2, (peak, V.nbytes)  # (all of V held: 1.3 x V.nbytes)
    W_ref, H_ref = _initialize_nmf(V, 4, init="nndsvda")  # rank 6: compare the fit, not factors
    rel = np.linalg.norm(V - W @ H) / np.linalg.norm(V)
    rel_ref = np.linalg.norm(V - W_ref @ H_ref) / np.linalg.norm(V)
    assert rel < rel_ref * 1.05


@pytest.mark.parametrize(
    "chunk_rows, piece",
    [(200, 400), (1000, 500)],  # whole chunks (2 of 200), or half of a one-chunk block
)
def test_nndsvd_reads_a_re_read_store_in_pieces(
    zarr_V_16mb, tmp_path, monkeypatch, chunk_rows, piece
):
    """With V re-read from its store every pass, the randomized SVD reads it in
    pieces of at most half a block (dask holds several per worker thread at its
    peak), whole stored chunks where a block has two or more; W still comes in
    V's blocks."""
    import zarr

    from dask_nmf.io import BlockReader

    path, V = zarr_V_16mb
    if chunk_rows != 200:
        path = str(tmp_path / "V1000.zarr")
        zarr.create_array(path, shape=V.shape, chunks=(chunk_rows, 250), dtype="f8")[...] = V
    Vin = open_input(path, 1000)
    pieces = []
    read_rows = nmf_init.read_rows

    def recording(reader, a, b):
        pieces.append(b - a)
        return read_rows(reader, a, b)

    monkeypatch.setattr(nmf_init, "read_rows", recording)
    with dask.config.set(scheduler="threads"):
        W_blocks, H = nmf_init.nndsvd_init(
            Vin, 4, V.mean(), "nndsvda", 0, reader=BlockReader(Vin.zarr, Vin.dtype)
        )
        blocks = dask.compute(*W_blocks)
    assert len(pieces) >= 3 * 8000 // piece and set(pieces) == {piece}  # passes over V
    assert [w.shape[0] for w in blocks] == [1000] * 8
    W_ref, H_ref = nmf_init.nndsvd_init(open_input(V, 1000), 4, V.mean(), "nndsvda", 0)
    np.testing.assert_allclose(H, H_ref, rtol=1e-6)
    np.testing.assert_allclose(np.vstack(blocks), materialize(W_ref), rtol=1e-6, atol=1e-9)


def test_nndsvd_passes_run_on_the_given_cluster(zarr_V_16mb, cluster_client, monkeypatch):
    """The client passed in need not be dask's default scheduler: the SVD's
    passes over V still run on its workers, and none in this process."""
    from zarr.storage import LocalStore

    import dask_nmf

    path, _ = zarr_V_16mb
    local_reads = []
    real_get, real_get_sync = LocalStore.get, LocalStore.get_sync

    async def counting_get(self, key, *args, **kwargs):
        if key.startswith("c/"):
            local_reads.append(key)
        return await real_get(self, key, *args, **kwargs)

    def counting_get_sync(self, key, *args, **kwargs):
        if key.startswith("c/"):
            local_reads.append(key)
        return real_get_sync(self, key, *args, **kwargs)

    # Both ways zarr reads a local chunk (the fused reader reads synchronously).
    monkeypatch.setattr(LocalStore, "get", counting_get)
    monkeypatch.setattr(LocalStore, "get_sync", counting_get_sync)
    kw = dict(init="nndsvda", max_iter=2, tol=0, block_rows=200, keep_in_memory=False)
    with dask.config.set(scheduler="threads"):  # dask's default here: a local thread pool
        res = dask_nmf.factorize(path, 4, client=cluster_client, **kw)
    assert local_reads == []
    # The spies see this process's reads: the same fit on the local scheduler makes them.
    local = dask_nmf.factorize(path, 4, **kw)
    assert len(local_reads) > 0
    monkeypatch.undo()
    np.testing.assert_allclose(res.H, local.H, rtol=1e-8)


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_float32_agrees_with_float64(rng, variant):
    # The SVD runs in float64 for float32 V too: the two starts agree to float32's
    # precision (scikit-learn's: ~2e-6 relative), not ~2e-4 as a float32 SVD gave.
    V = rng.random((200, 30)) + 0.01
    starts = {}
    for dtype in (np.float64, np.float32):
        Vin = open_input(V.astype(dtype), 70)
        W_blocks, H = nmf_init.nndsvd_init(Vin, 5, float(V.mean()), variant, 0)
        W = materialize(W_blocks)
        assert W.dtype == dtype and H.dtype == dtype
        starts[dtype] = W, H
    for a, b in zip(starts[np.float32], starts[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", [None, "nndsvd", "nndsvda", "nndsvdar"])
def test_factorize_scipy_sparse_arrays(rng, init):
    import scipy.sparse as sp

    import dask_nmf

    V = rng.random((50, 12))
    V[V < 0.5] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = dask_nmf.factorize(sp.csr_matrix(V), 3, init=init, max_iter=5, random_state=0)
        for container in (sp.csr_array, sp.csc_array, sp.coo_array):
            res = dask_nmf.factorize(container(V), 3, init=init, max_iter=5, random_state=0)
            np.testing.assert_allclose(res.H, ref.H, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_more_components_than_min_shape(init):
    msg = rf"init = '{init}' can only be used when n_components <= min\(n_samples, n_features\)"
    with pytest.raises(InputError, match=msg):
        nmf_init.resolve_init(init, 5, (100, 4))
    assert nmf_init.resolve_init(init, 4, (100, 4)) == init
    assert nmf_init.resolve_init("random", 5, (100, 4)) == "random"
