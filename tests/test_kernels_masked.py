"""The masked kernels: against the weighted NumPy reference, against the unmasked
kernels when nothing is missing, and their statistics of the observed entries."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_low_rank, reference_masked_loss, reference_masked_mu

from dask_nmf import kernels
from dask_nmf import kernels_masked as km


@pytest.fixture
def problem(rng):
    V = make_low_rank(rng, 157, 41, 4)
    M = rng.random(V.shape) > 0.3
    V[~M] = np.nan
    return V, M, rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1


def masked_step(beta, V, M, W, H, l1=0.0, l2=0.0, with_loss=True):
    if beta == 2:
        return km.frobenius_block_step(V, M, W, H, l1, l2)
    return km.kl_block_step(V, M, W, H, l1, l2, with_loss)


@pytest.mark.parametrize("beta", [2, 1])
@pytest.mark.parametrize("reg", [(0.0, 0.0, 0.0, 0.0), (0.3, 0.2, 0.1, 0.4)])
def test_one_iteration_is_the_weighted_reference(problem, beta, reg, monkeypatch):
    """W' of the block step and H' from its sums equal the reference; small
    sub-blocks (several per block) give the same."""
    V, M, W, H = problem
    monkeypatch.setattr(kernels, "SUB_BLOCK_BYTES", 41 * 8 * 10)  # 10-row sub-blocks
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, W, H, beta, 1, *reg)
    W_new, parts = masked_step(beta, V, M, W, H, reg[0], reg[1])
    if beta == 2:
        H_new = km.frobenius_h_update(H, parts["A"], parts["D"], reg[2], reg[3])
        assert 0.5 * parts["r0"] == pytest.approx(reference_masked_loss(V, M, W, H, 2), rel=1e-12)
    else:
        H_new = km.kl_h_update(H, parts["A"], parts["C"], reg[2], reg[3])
        assert km.kl_divergence(parts) == pytest.approx(
            reference_masked_loss(V, M, W, H, 1), rel=1e-12
        )
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-12)
    np.testing.assert_allclose(H_new, H_ref, rtol=1e-12)


@pytest.mark.parametrize("beta", [2, 1])
def test_nothing_missing_equals_the_unmasked_kernels(rng, beta):
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    M = np.ones(V.shape, dtype=bool)
    W_m, parts_m = masked_step(beta, V, M, W, H, 0.1, 0.2)
    if beta == 2:
        W_u, parts_u = kernels.frobenius_block_step(V, W, H, H @ H.T, 0.1, 0.2, residual=True)
        np.testing.assert_allclose(parts_m["D"], parts_u["B"] @ H, rtol=1e-12)
        H_m = km.frobenius_h_update(H, parts_m["A"], parts_m["D"], 0.3)
        H_u = kernels.frobenius_h_update(H, parts_u["A"], parts_u["B"], 0.3)
        assert parts_m["r0"] == pytest.approx(parts_u["r0"], rel=1e-12)
    else:
        W_u, parts_u = kernels.kl_block_step(V, W, H, 0.1, 0.2)
        np.testing.assert_allclose(parts_m["C"], np.repeat(parts_u["w_sum"][:, None], 41, 1))
        H_m = km.kl_h_update(H, parts_m["A"], parts_m["C"], 0.3)
        H_u = kernels.kl_h_update(H, parts_u["A"], parts_u["w_sum"], 0.3)
        assert parts_m["vlogr"] == pytest.approx(parts_u["vlogr"], rel=1e-12)
    np.testing.assert_allclose(W_m, W_u, rtol=1e-12)
    np.testing.assert_allclose(parts_m["A"], parts_u["A"], rtol=1e-12)
    np.testing.assert_allclose(H_m, H_u, rtol=1e-12)


@pytest.mark.parametrize("beta", [2, 1])
def test_an_entirely_missing_row_and_column_stay_finite(problem, beta):
    """No observed entry: 0 / EPSILON, the row of W (column of H) becomes zero, not NaN."""
    V, M, W, H = problem
    M[5], M[:, 7] = False, False
    V[~M] = np.nan
    W_new, parts = masked_step(beta, V, M, W, H)
    assert np.isfinite(W_new).all() and not W_new[5].any() and W_new[6].all()
    H_new = (
        km.frobenius_h_update(H, parts["A"], parts["D"])
        if beta == 2
        else km.kl_h_update(H, parts["A"], parts["C"])
    )
    assert np.isfinite(H_new).all() and not H_new[:, 7].any() and H_new[:, 6].all()


def test_w_updates_are_the_block_steps(problem):
    V, M, W, H = problem
    np.testing.assert_allclose(
        km.frobenius_w_update(V, M, W, H, 0.1, 0.2),
        km.frobenius_block_step(V, M, W, H, 0.1, 0.2)[0],
    )
    np.testing.assert_allclose(
        km.kl_w_update(V, M, W, H, 0.1, 0.2), km.kl_block_step(V, M, W, H, 0.1, 0.2)[0]
    )
    assert km.frobenius_residual(V, M, W, H) == pytest.approx(
        2 * reference_masked_loss(V, M, W, H, 2), rel=1e-12
    )


def test_masks_from_nan_and_fill_values():
    V = np.array([[1.0, np.nan, -1.0], [0.0, 2.0, 3.0]])
    np.testing.assert_array_equal(km.mask(V), [[1, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(km.mask(V, fill=-1.0), [[1, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(km.mask(np.array([[1, -9], [2, 3]]), -9), [[1, 0], [1, 1]])
    V0, M = km.observed(V, -1.0)
    np.testing.assert_array_equal(V0, [[1, 0, 0], [0, 2, 3]])


def test_stats_of_the_observed_entries(rng):
    V = rng.random((30, 6))
    M = rng.random(V.shape) > 0.4
    M[:, 4] = False
    Vn = np.where(M, V, np.nan)
    parts = [km.block_stats(Vn[:10]), km.block_stats(Vn[10:])]
    stats = kernels.merge_all_stats(parts)
    assert stats["observed"] == M.sum() and stats["size"] == V.size
    assert stats["sum"] == pytest.approx(V[M].sum(), rel=1e-12)
    assert stats["sumsq"] == pytest.approx((V[M] ** 2).sum(), rel=1e-12)
    assert stats["min"] == V[M].min() and stats["max"] == V[M].max() and stats["finite"]
    np.testing.assert_allclose(stats["col_sum"], np.where(M, V, 0).sum(axis=0))
    np.testing.assert_array_equal(stats["col_count"], M.sum(axis=0))
    # The NNDSVD's input: missing entries filled with their column's observed mean.
    means = stats["col_sum"] / np.maximum(stats["col_count"], 1)
    filled = km.fill_columns(Vn, means)
    np.testing.assert_array_equal(filled[M], V[M])
    np.testing.assert_allclose(filled[~M], np.broadcast_to(means, V.shape)[~M])
    # An infinite observed entry is not a missing one; a block with none observed.
    Vn[0, 0] = np.inf
    assert not km.block_stats(Vn)["finite"]
    empty = km.block_stats(np.full((3, 2), np.nan))
    assert empty["observed"] == 0 and empty["sum"] == 0


# --------------------------------------------------------------------------
# Frobenius: the sparse correction (unmasked products less the unobserved share)
# --------------------------------------------------------------------------
def _masked_problem(rng, fraction, m=203, n=67, k=5, dtype=np.float64):
    """V observed where M is True, with an empty row and column and a nearly
    empty row and column (one observed entry: their products taken directly)."""
    V = make_low_rank(rng, m, n, k).astype(dtype)
    M = rng.random(V.shape) >= fraction
    M[4], M[:, 3] = False, False
    M[9], M[:, 8] = False, False
    M[9, 20] = M[30, 8] = True
    V[~M] = np.nan
    W = (rng.random((m, k)) + 0.1).astype(dtype)
    H = (rng.random((k, n)) + 0.1).astype(dtype)
    return V, M, W, H


def _h_next(parts, H, reg):
    return km.frobenius_h_update(H, parts["A"], parts["D"], reg[2], reg[3])


@pytest.mark.parametrize("path", ["sparse", "auto", "dense"])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.4, 0.9])
@pytest.mark.parametrize("gather", [0.0, 1.0])  # W·H at U: from a dense W·H, or gathered
@pytest.mark.parametrize("sub_rows", [7, 1000])
def test_frobenius_paths_are_the_weighted_reference(
    rng, path, fraction, gather, sub_rows, monkeypatch
):
    V, M, W, H = _masked_problem(rng, fraction)
    monkeypatch.setattr(kernels, "SUB_BLOCK_BYTES", V.shape[1] * 8 * sub_rows)
    monkeypatch.setattr(km, "GATHER_BELOW", gather)
    reg = (0.05, 0.1, 0.2, 0.03)
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, W, H, 2, 1, *reg)
    W_new, parts = km.frobenius_block_step(V, M, W, H, reg[0], reg[1], path=path)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-10)
    np.testing.assert_allclose(_h_next(parts, H, reg), H_ref, rtol=1e-10)
    assert 0.5 * parts["r0"] == pytest.approx(reference_masked_loss(V, M, W, H, 2), rel=1e-10)
    # The empty row and column give zero factors, exactly.
    assert not W_new[4].any() and not _h_next(parts, H, reg)[:, 3].any()


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.2])
def test_frobenius_sparse_and_dense_sums_agree_over_row_blocks(rng, fraction):
    """Block by block (each with its own direct columns), the sums add up to the
    same A, D and loss on either path."""
    V, M, W, H = _masked_problem(rng, fraction)
    sums = {}
    for path in ("sparse", "dense"):
        steps = [
            km.frobenius_block_step(V[a:b], M[a:b], W[a:b], H, path=path)
            for a, b in [(0, 60), (60, 61), (61, 203)]
        ]
        sums[path] = kernels.sum_partials([p for _, p in steps])
    for key in ("A", "D"):
        np.testing.assert_allclose(sums["sparse"][key], sums["dense"][key], rtol=1e-10)
    assert sums["sparse"]["r0"] == pytest.approx(sums["dense"]["r0"], rel=1e-10)


def test_frobenius_auto_path_by_unobserved_fraction(rng, monkeypatch):
    """A sub-block mostly missing forms M∘WH densely; one with few missing does not."""
    dense_calls = []
    dense = km._dense_sub_step
    monkeypatch.setattr(
        km, "_dense_sub_step", lambda *a: dense_calls.append(a[1].shape[0]) or dense(*a)
    )
    monkeypatch.setattr(kernels, "SUB_BLOCK_BYTES", 67 * 8 * 100)  # 100-row sub-blocks
    V, M, W, H = _masked_problem(rng, 0.02)
    M[100:] = rng.random((103, 67)) < 0.2  # 80 % unobserved in rows 100-202
    V = np.where(M, np.abs(V), np.nan)
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, W, H, 2, 1)
    W_new, parts = km.frobenius_block_step(V, M, W, H)
    assert dense_calls == [100, 3]  # (rows 100-199 and 200-202; not rows 0-99)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-10)
    np.testing.assert_allclose(_h_next(parts, H, (0, 0, 0, 0)), H_ref, rtol=1e-10)


def test_frobenius_loss_of_an_exact_fit_is_computed_directly(rng):
    """Where the expanded loss would be rounding noise (V = WH on the observed
    entries) the residual is formed directly: zero to rounding of the entries."""
    V, M, W, H = _masked_problem(rng, 0.05)
    V = np.where(M, W @ H, np.nan)
    _, parts = km.frobenius_block_step(V, M, W, H, path="sparse")
    assert 0 <= parts["r0"] <= 1e-28 * float(np.nansum(V**2))


def test_frobenius_float32_sparse_path_keeps_its_digits(rng):
    """float32: the differences lose only the unobserved share's digits, and the
    nearly empty row and column (one observed entry) are formed directly."""
    V, M, W, H = _masked_problem(rng, 0.25, dtype=np.float32)
    W_ref, H_ref, _, _ = reference_masked_mu(
        V.astype(float), M, W.astype(float), H.astype(float), 2, 1
    )
    W_new, parts = km.frobenius_block_step(V, M, W, H, path="sparse")
    assert W_new.dtype == np.float32
    np.testing.assert_allclose(W_new, W_ref, rtol=2e-5)
    np.testing.assert_allclose(_h_next(parts, H, (0, 0, 0, 0)), H_ref, rtol=2e-5)


def test_frobenius_unknown_path_is_refused(problem):
    V, M, W, H = problem
    with pytest.raises(ValueError, match="path must be"):
        km.frobenius_block_step(V, M, W, H, path="fast")
