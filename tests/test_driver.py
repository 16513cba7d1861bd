"""factorize() on dask's local scheduler: agreement with scikit-learn and the reference,
the monotone decrease Lee & Seung proved, one pass over V per iteration, bounded graphs."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import counting_array, make_low_rank, reference_mu, write_zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.decomposition import NMF as SkNMF

import dask_nmf
from dask_nmf.io import InputError
from dask_nmf.options import regularization

COSTS = ["frobenius", "kullback-leibler"]


def sklearn_fit(V, W0, H0, beta_loss, **kw):
    model = SkNMF(W0.shape[1], solver="mu", beta_loss=beta_loss, init="custom", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = model.fit_transform(V, W=W0.copy(), H=H0.copy())
    return W, model


def as_kind(kind, V, tmp_path):
    if kind == "numpy":
        return V
    if kind == "dask":
        return da.from_array(V, chunks=(31, 20))
    return write_zarr(tmp_path / "V.zarr", V, chunks=(23, 17))


@pytest.mark.parametrize("beta_loss", COSTS)
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("reg", [{}, {"alpha_W": 0.002, "alpha_H": 0.001, "l1_ratio": 0.4}])
def test_matches_sklearn_from_the_same_start(V_small, start, tmp_path, beta_loss, kind, reg):
    W0, H0 = start
    W_sk, model = sklearn_fit(V_small, W0, H0, beta_loss, max_iter=400, tol=1e-3, **reg)
    res = dask_nmf.factorize(
        as_kind(kind, V_small, tmp_path),
        4,
        beta_loss=beta_loss,
        W_init=W0,
        H_init=H0,
        max_iter=400,
        tol=1e-3,
        block_rows=40,
        **reg,
    )
    assert res.n_iter == model.n_iter_ < 400  # the same tol check stopped both
    assert res.converged
    np.testing.assert_allclose(res.W.compute(), W_sk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.H, model.components_, rtol=1e-9, atol=1e-12)
    assert res.reconstruction_err == pytest.approx(model.reconstruction_err_, rel=1e-9)
    assert len(res.loss_history) == res.n_iter + 1


@pytest.mark.parametrize("beta", [2, 1])
def test_loss_history_matches_reference(V_small, start, beta):
    W0, H0 = start
    reg = regularization(V_small.shape, 0.001, "same", 0.5)
    W_ref, H_ref, losses = reference_mu(V_small, W0, H0, beta, 15, *reg)
    res = dask_nmf.factorize(
        V_small,
        4,
        beta_loss=beta,
        W_init=W0,
        H_init=H0,
        max_iter=15,
        tol=0,
        alpha_W=0.001,
        l1_ratio=0.5,
        block_rows=50,
        loss_every=1,
    )
    np.testing.assert_allclose(res.loss_history[1:], losses, rtol=1e-9)
    np.testing.assert_allclose(res.W.compute(), W_ref, rtol=1e-9)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-9, atol=1e-300)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(2, 40),
    n=st.integers(2, 30),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    zero_rows=st.integers(0, 3),
    zero_cols=st.integers(0, 3),
    beta_loss=st.sampled_from(COSTS),
    block_rows=st.integers(1, 40),
)
def test_cost_never_increases(m, n, k, seed, zero_rows, zero_cols, beta_loss, block_rows):
    """Lee & Seung's auxiliary-function guarantee: no iteration raises the cost."""
    rng = np.random.default_rng(seed)
    V = rng.random((m, n)) * (rng.random((m, n)) < 0.7)  # sparse-ish, with exact zeros
    V[rng.choice(m, size=min(zero_rows, m - 1), replace=False)] = 0
    V[:, rng.choice(n, size=min(zero_cols, n - 1), replace=False)] = 0
    if V.sum() == 0:
        V[0, 0] = 1.0
    res = dask_nmf.factorize(
        V,
        k,
        beta_loss=beta_loss,
        init="random",
        random_state=seed,
        max_iter=25,
        tol=0,
        block_rows=block_rows,
        loss_every=1,
    )
    loss = np.array(res.loss_history)
    assert np.all(np.isfinite(loss))
    slack = 1e-9 * max(loss[0], 1e-300)  # rounding only
    assert np.all(np.diff(loss) <= slack), loss


@pytest.mark.parametrize("beta_loss", COSTS)
def test_one_pass_over_V_per_iteration(tmp_path, V_small, beta_loss):
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17))  # 7 x 3 = 21 chunks
    n_chunks = 7 * 3
    reads = {}
    for n_iter in (4, 9):
        arr, store = counting_array(path)
        dask_nmf.factorize(
            arr,
            3,
            beta_loss=beta_loss,
            init="random",
            random_state=0,
            max_iter=n_iter,
            tol=0,
            block_rows=46,
            keep_in_memory=False,
        )
        reads[n_iter] = store.chunk_reads
    assert (reads[9] - reads[4]) / 5 == n_chunks
    # set-up: one validation/statistics pass; the end: one more only for KL's final loss
    extra = reads[4] - 4 * n_chunks
    assert extra == (2 if beta_loss == "kullback-leibler" else 1) * n_chunks


def test_kept_in_memory_reads_V_once(tmp_path, V_small):
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17))
    arr, store = counting_array(path)
    res = dask_nmf.factorize(arr, 3, init="random", max_iter=12, tol=0, keep_in_memory=True)
    assert res.diagnostics["kept_in_memory"]
    assert store.chunk_reads == 21


def test_graph_does_not_grow(V_small):
    res = dask_nmf.factorize(V_small, 3, init="random", max_iter=50, tol=0, block_rows=20)
    tasks = res.diagnostics["graph_tasks"]
    assert len(tasks) == 50
    assert tasks[1] == tasks[49] == tasks[25]


@pytest.mark.parametrize("beta_loss", COSTS)
def test_callback_sees_every_iteration(V_small, beta_loss):
    seen = []
    res = dask_nmf.factorize(
        V_small,
        3,
        beta_loss=beta_loss,
        init="random",
        random_state=1,
        max_iter=13,
        tol=0,
        callback=lambda it, loss: seen.append((it, loss)),
    )
    assert [it for it, _ in seen] == list(range(1, 14))
    np.testing.assert_allclose([loss for _, loss in seen], res.loss_history[1:])


@pytest.mark.parametrize("tol", [0, 1e-3])
def test_kl_loss_every(V_small, tol):
    """KL's loss is evaluated at every loss_every-th iteration (and where tol looks)."""
    kw = dict(beta_loss="kullback-leibler", init="random", random_state=2, tol=tol, max_iter=23)
    every = dask_nmf.factorize(V_small, 3, loss_every=1, **kw)
    some = dask_nmf.factorize(V_small, 3, loss_every=4, **kw)
    assert some.n_iter == every.n_iter
    # Skipping the loss changes nothing else.
    np.testing.assert_allclose(some.H, every.H, rtol=1e-12)
    known = {0, some.n_iter} | set(range(0, some.n_iter, 4))
    if tol > 0:
        known |= set(range(0, some.n_iter, 10))
    losses = np.array(some.loss_history)
    assert len(losses) == some.n_iter + 1
    assert set(np.flatnonzero(~np.isnan(losses))) == known
    np.testing.assert_allclose(losses[sorted(known)], np.array(every.loss_history)[sorted(known)])
    default = dask_nmf.factorize(V_small, 3, **kw)  # every 10th
    assert set(np.flatnonzero(~np.isnan(default.loss_history))) == {0, 10, 20, default.n_iter}


@pytest.mark.parametrize("bad", [0, -1, 2.5, "10"])
def test_bad_loss_every(V_small, bad):
    with pytest.raises(InputError, match="loss_every"):
        dask_nmf.factorize(V_small, 3, loss_every=bad)


def test_max_iter_stops_unconverged(V_small):
    res = dask_nmf.factorize(V_small, 3, init="random", random_state=0, max_iter=7, tol=1e-4)
    assert res.n_iter == 7 and not res.converged


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_end_to_end(V_small, dtype):
    res = dask_nmf.factorize(V_small.astype(dtype), 3, init="random", max_iter=5)
    assert res.W.dtype == dtype and res.H.dtype == dtype
    assert res.W.compute().dtype == dtype


def test_integer_input_becomes_float64(rng):
    V = rng.integers(0, 5, size=(30, 10))
    res = dask_nmf.factorize(V, 2, init="random", max_iter=5)
    assert res.H.dtype == np.float64 and res.W.dtype == np.float64


def test_float32_agrees_with_float64(V_small, start):
    W0, H0 = start
    r64 = dask_nmf.factorize(V_small, 4, W_init=W0, H_init=H0, max_iter=30, tol=0)
    r32 = dask_nmf.factorize(
        V_small.astype(np.float32), 4, W_init=W0, H_init=H0, max_iter=30, tol=0
    )
    np.testing.assert_allclose(r32.H, r64.H, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "threads, blocks",
    [
        (1, (23,) * 6 + (19,)),  # the fewest blocks of at most 25 rows (7), evened out
        (2, (20,) * 7 + (17,)),  # ... and as many as 2 threads share evenly (8)
        (3, (18,) * 8 + (13,)),  # 9
    ],
)
def test_block_rows_default_follows_dask_chunk_size(V_small, threads, blocks):
    with dask.config.set({"array.chunk-size": f"{41 * 8 * 25}B", "num_workers": threads}):
        res = dask_nmf.factorize(V_small, 3, init="random", max_iter=2)
    assert res.W.chunks[0] == blocks
    assert res.params["block_rows"] == blocks[0]


@pytest.mark.parametrize(
    "n_rows, chunk, cap_rows, threads, expected",
    [
        # 100 chunks of 70, at most 4 per block: 25 blocks of 4 leave one thread
        # 13 of them; 34 blocks of 3 share out evenly.
        (7000, 70, 280, 2, 210),
        (7000, 70, 280, 1, 280),  # one thread: 25 blocks of 4 are fine
        (7000, 70, 7000, 4, 910),  # 8 blocks of 13 chunks (two per thread, no cap)
        (7000, 70, 35, 2, 35),  # the cap is below one chunk: blocks split chunks
        (7000, 7000, 10**6, 4, 875),  # one chunk: split for two blocks per thread
        (9000, 1000, 10**6, 4, 2000),  # 9 chunks, 4 threads: 5 blocks, 3000 rows at most each
    ],
)
def test_default_block_rows_shares_blocks_evenly(n_rows, chunk, cap_rows, threads, expected):
    from dask_nmf.io import default_block_rows, row_bounds

    with dask.config.set({"array.chunk-size": f"{cap_rows * 80}B"}):
        rows = default_block_rows(n_rows, 10, np.float64, row_chunk=chunk, parallelism=threads)
    assert rows == expected
    assert rows <= cap_rows
    bounds = row_bounds(n_rows, rows)  # dealt to the threads in turn
    busiest = max(sum(b - a for a, b in bounds[j::threads]) for j in range(threads))
    assert busiest <= -(-n_rows // threads) + min(
        chunk, rows
    )  # an even share, give or take a chunk


def test_block_rows_default_gives_every_thread_one_block_in_memory(tmp_path, V_small):
    with dask.config.set({"num_workers": 4}):
        res = dask_nmf.factorize(V_small, 3, init="random", max_iter=2)
        assert res.params["block_rows"] == 40  # ceil(157 / 4)
        # ... and two where V is read from a store
        path = write_zarr(tmp_path / "V.zarr", V_small, chunks=(1, 41))
        res = dask_nmf.factorize(path, 3, init="random", max_iter=2)
        assert res.params["block_rows"] == 20  # ceil(157 / 8)


def test_default_blocks_align_with_store_chunks(tmp_path, V_small):
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 41))
    with dask.config.set({"array.chunk-size": f"{41 * 8 * 50}B", "num_workers": 1}):
        res = dask_nmf.factorize(path, 3, init="random", max_iter=2)
    assert res.params["block_rows"] == 46  # 50 rounded down to whole 23-row chunks


@pytest.mark.parametrize("init", ["random", "nndsvda", "nndsvdar"])
def test_same_seed_same_result(V_small, init):
    a = dask_nmf.factorize(V_small, 3, init=init, random_state=7, max_iter=10, block_rows=40)
    b = dask_nmf.factorize(V_small, 3, init=init, random_state=7, max_iter=10, block_rows=40)
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.W.compute(), b.W.compute())


def test_different_seeds_differ(V_small):
    a = dask_nmf.factorize(V_small, 3, init="random", random_state=1, max_iter=3)
    b = dask_nmf.factorize(V_small, 3, init="random", random_state=2, max_iter=3)
    assert not np.allclose(a.H, b.H)


def test_V_is_never_modified(V_small):
    before = V_small.copy()
    dask_nmf.factorize(V_small, 3, beta_loss="kullback-leibler", init="random", max_iter=5)
    np.testing.assert_array_equal(V_small, before)


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda"])
def test_nndsvd_fit_agrees_with_sklearns_own(rng, init):
    """On an exactly rank-3 V the out-of-core SVD finds the same singular vectors as
    scikit-learn's dense randomized SVD, so the whole fit agrees."""
    W_true, H_true = rng.random((60, 3)) + 0.1, rng.random((3, 20)) + 0.1
    V = W_true @ H_true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SkNMF(3, solver="mu", init=init, max_iter=300, tol=0).fit(V)
        res = dask_nmf.factorize(V, 3, init=init, max_iter=300, tol=0, block_rows=25)
    assert res.reconstruction_err == pytest.approx(model.reconstruction_err_, rel=1e-5)
    if init == "nndsvda":  # plain nndsvd keeps its zeros: MU cannot move them
        assert res.reconstruction_err / np.linalg.norm(V) < 0.02


def test_blas_threads_shared_out_on_the_local_scheduler(V_small):
    """dask threads x BLAS threads must not oversubscribe the cores during a fit."""
    import os

    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    seen = []
    with dask.config.set(num_workers=2):
        dask_nmf.factorize(
            V_small,
            3,
            init="random",
            max_iter=3,
            callback=lambda it, loss: seen.append(blas_threads()),
        )
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert seen and all(t == expected for threads in seen for t in threads)
    assert blas_threads() == before  # restored afterwards


def test_block_owners_annotate_only_the_pinned_keys():
    from dask_nmf.cluster import BlockOwners

    owners = BlockOwners("nmf-step-abc-3-", ["tcp://a:1", "tcp://b:2"])
    assert owners("nmf-step-abc-3-0") == ["tcp://a:1"]
    assert owners("nmf-step-abc-3-1") == ["tcp://b:2"]
    assert owners("nmf-step-abc-3-2") == []  # no such block
    assert owners("nmf-step-abc-4-0") == []  # another pass
    assert owners("nmf-sum-abc-3-0-0") == []
    assert owners(("from-zarr", 0, 0)) == []


def test_auto_rank_as_scikit_learn(V_small, start, zarr_V):
    W0, H0 = start
    auto = dask_nmf.factorize(V_small, "auto", W_init=W0, H_init=H0, max_iter=20)
    given = dask_nmf.factorize(V_small, 4, W_init=W0, H_init=H0, max_iter=20)
    assert auto.H.shape == (4, 41)
    np.testing.assert_array_equal(auto.H, given.H)
    sk = SkNMF("auto", init="custom", solver="mu", max_iter=20).fit(V_small, W=W0, H=H0)
    assert sk.n_components_ == auto.H.shape[0]
    # Without a custom start, k is V's number of columns (here read from a zarr store).
    full = dask_nmf.factorize(zarr_V, "auto", init="random", random_state=0, max_iter=2)
    assert full.H.shape == (41, 41)
    with pytest.raises(dask_nmf.InputError, match="n_components must be a positive integer"):
        dask_nmf.factorize(V_small, "Auto")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(beta_loss="kullback-leibler"),
        dict(beta_loss=0.5),
        dict(accelerate=True),
        dict(solver="cd"),
        dict(solver="cd", accelerate=True, shuffle=True, random_state=0),
        dict(solver="anls"),
        dict(missing="nan"),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "mu",
)
@pytest.mark.parametrize("order", ["C", "F"])
def test_the_users_arrays_are_never_modified(rng, options, order):
    """V, W_init and H_init come back as they were, in either memory order (a
    transposed view of an F-ordered H is C-ordered: nothing may update it in place)."""
    V = make_low_rank(rng, 60, 13, 3)
    if options.get("missing"):
        V[rng.random(V.shape) < 0.1] = np.nan
    W0, H0 = rng.random((60, 3)) + 0.1, rng.random((3, 13)) + 0.1
    V, W0, H0 = (np.array(x, order=order) for x in (V, W0, H0))
    copies = [x.copy() for x in (V, W0, H0)]
    dask_nmf.factorize(V, 3, init="custom", W_init=W0, H_init=H0, max_iter=4, tol=0, **options)
    for x, c in zip((V, W0, H0), copies):
        np.testing.assert_array_equal(x, c)
