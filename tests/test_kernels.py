"""The per-block kernels against a plain NumPy implementation of the update rules."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_low_rank, reference_loss, reference_mu

from dask_nmf import kernels

BETAS = [2, 1]
REGS = [(0.0, 0.0, 0.0, 0.0), (0.3, 0.2, 0.1, 0.4)]


def run_blocks(V, W, H, beta, bounds, reg=(0.0, 0.0, 0.0, 0.0)):
    """One iteration through the kernels, block by block, as the driver runs it."""
    l1_W, l2_W, l1_H, l2_H = reg
    W_new, total = [], None
    for a, b in bounds:
        if beta == 2:
            Wb, parts = kernels.frobenius_block_step(V[a:b], W[a:b], H, H @ H.T, l1_W, l2_W)
        else:
            Wb, parts = kernels.kl_block_step(V[a:b], W[a:b], H, l1_W, l2_W)
        W_new.append(Wb)
        total = parts if total is None else kernels.add_partials(total, parts)
    if beta == 2:
        H_new = kernels.frobenius_h_update(H, total["A"], total["B"], l1_H, l2_H)
    else:
        H_new = kernels.kl_h_update(H, total["A"], total["w_sum"], l1_H, l2_H)
    return np.vstack(W_new), H_new, total


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("bounds", [[(0, 157)], [(0, 50), (50, 100), (100, 157)]])
def test_one_iteration_matches_reference(rng, beta, reg, bounds):
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)), rng.random((4, 41))
    W_ref, H_ref, _ = reference_mu(V, W, H, beta, 1, *reg)
    W_new, H_new, _ = run_blocks(V, W, H, beta, bounds, reg)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-12)
    np.testing.assert_allclose(H_new, H_ref, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("beta", BETAS)
def test_sub_blocks_do_not_change_the_result(rng, beta, monkeypatch):
    V = make_low_rank(rng, 120, 30, 3)
    W, H = rng.random((120, 3)), rng.random((3, 30))
    whole = run_blocks(V, W, H, beta, [(0, 120)])
    for budget in ("SUB_BLOCK_BYTES", "PRODUCT_BLOCK_BYTES"):
        monkeypatch.setattr(kernels, budget, 7 * 30 * 8)  # 7-row sub-blocks
    pieces = run_blocks(V, W, H, beta, [(0, 120)])
    for x, y in zip(whole[:2], pieces[:2]):
        np.testing.assert_allclose(x, y, rtol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_inputs_are_not_modified(rng, beta):
    V = make_low_rank(rng, 40, 20, 3)
    W, H = rng.random((40, 3)), rng.random((3, 20))
    copies = V.copy(), W.copy(), H.copy()
    run_blocks(V, W, H, beta, [(0, 40)])
    for x, y in zip((V, W, H), copies):
        np.testing.assert_array_equal(x, y)


def test_frobenius_loss_from_reduced_sums(rng):
    V = make_low_rank(rng, 60, 25, 3)
    W, H = rng.random((60, 3)), rng.random((3, 25))
    loss = kernels.frobenius_loss(float((V**2).sum()), W.T @ V, W.T @ W, H)
    assert loss == pytest.approx(reference_loss(V, W, H, 2), rel=1e-10)


def test_kl_loss_from_block_terms(rng):
    V = make_low_rank(rng, 60, 25, 3)  # has a zero row and column: 0 log 0 = 0
    W, H = rng.random((60, 3)), rng.random((3, 25))
    parts = [kernels.kl_loss_terms(V[a:b], W[a:b], H) for a, b in [(0, 17), (17, 60)]]
    total = kernels.add_partials(*parts)
    loss = kernels.kl_divergence(float(V.sum()), total["vlogr"], total["w0_sum"], H)
    assert loss == pytest.approx(reference_loss(V, W, H, 1), rel=1e-10)
    # the KL step reports the same loss for the state it starts from
    _, step_parts = kernels.kl_block_step(V, W, H)
    assert kernels.kl_divergence(
        float(V.sum()), step_parts["vlogr"], step_parts["w0_sum"], H
    ) == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_zero_denominators_are_guarded(beta):
    V = np.zeros((5, 4))
    V[0, 0] = 1.0
    W = np.zeros((5, 2))
    W[0] = 1.0
    H = np.zeros((2, 4))
    H[0, 0] = 1.0
    W_new, H_new, _ = run_blocks(V, W, H, beta, [(0, 5)])
    assert np.isfinite(W_new).all() and np.isfinite(H_new).all()
    assert (W_new >= 0).all() and (H_new >= 0).all()


@pytest.mark.parametrize("beta", BETAS)
def test_float32_stays_float32(rng, beta):
    V = make_low_rank(rng, 30, 12, 2).astype(np.float32)
    W, H = rng.random((30, 2), dtype=np.float32), rng.random((2, 12), dtype=np.float32)
    W_new, H_new, total = run_blocks(V, W, H, beta, [(0, 30)])
    assert W_new.dtype == np.float32 and H_new.dtype == np.float32
    assert total["A"].dtype == np.float32


def test_block_stats():
    V = np.array([[1.0, 2.0], [0.0, 3.0]])
    s = kernels.merge_stats(kernels.block_stats(V[:1]), kernels.block_stats(V[1:]))
    assert s == {"min": 0.0, "max": 3.0, "finite": True, "sum": 6.0, "sumsq": 14.0}
    bad = V.copy()
    bad[1, 0] = np.nan
    assert kernels.block_stats(bad)["finite"] is False
    bad[1, 0] = -np.inf
    assert kernels.block_stats(bad)["finite"] is False
    neg = V.copy()
    neg[0, 1] = -0.5
    assert kernels.block_stats(neg)["min"] == -0.5


# --------------------------------------------------------------------------
# Wide V: sub-blocks sized by the k x n partial, element-wise work in column tiles
# --------------------------------------------------------------------------
@pytest.fixture
def small_tiles(monkeypatch):
    """Cache budget and tile floor small enough that a 37 x 1001 V is "wide":
    sub-blocks of a few rows (sized by the partial) and ~20-column tiles."""
    monkeypatch.setattr(kernels, "SUB_BLOCK_BYTES", 2000)
    monkeypatch.setattr(kernels, "PRODUCT_BLOCK_BYTES", 2000)
    monkeypatch.setattr(kernels, "MIN_TILE_COLS", 16)


def wide_case(rng, sparse):
    import scipy.sparse as sp

    V = make_low_rank(rng, 37, 1001, 3)
    if sparse:
        V[rng.random(V.shape) < 0.9] = 0.0
        V = sp.csr_matrix(V)
    W, H = rng.random((37, 3)), rng.random((3, 1001))
    return V, W, H


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", REGS)
def test_tiled_kernels_match_reference_on_a_wide_v(rng, small_tiles, beta, reg, sparse):
    V, W, H = wide_case(rng, sparse)
    rows = kernels._sub_step(kernels._row_bytes(V), partial_bytes=kernels._partial_bytes(H))
    if not sparse:  # several sub-blocks (a sparse V's rows are cheap: one) ...
        assert 1 < rows < 37
    assert kernels._tile_cols(min(rows, 37), 1001, 8) < 1001  # ... in several column tiles
    dense = V.toarray() if sparse else V
    W_ref, H_ref, _ = reference_mu(dense, W, H, beta, 1, *reg)
    W_new, H_new, _ = run_blocks(V, W, H, beta, [(0, 20), (20, 37)], reg)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-12)
    np.testing.assert_allclose(H_new, H_ref, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("sparse", [False, True])
def test_tiled_loss_terms_match_reference_on_a_wide_v(rng, small_tiles, sparse):
    V, W, H = wide_case(rng, sparse)
    dense = V.toarray() if sparse else V
    r0 = kernels.frobenius_block_step(V, W, H, H @ H.T, residual=True)[1]["r0"]
    assert 0.5 * r0 == pytest.approx(reference_loss(dense, W, H, 2), rel=1e-12)
    assert 0.5 * kernels.residual_sumsq(V, W, H) == pytest.approx(0.5 * r0, rel=1e-12)
    v_sum = float(dense.sum())
    for parts in (kernels.kl_loss_terms(V, W, H), kernels.kl_block_step(V, W, H)[1]):
        loss = kernels.kl_divergence(v_sum, parts["vlogr"], parts["w0_sum"], H)
        assert loss == pytest.approx(reference_loss(dense, W, H, 1), rel=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_wide_sub_blocks_hold_the_partial_and_tiles_the_cache(rng, beta, monkeypatch):
    """With the default budget, a wide block is one sub-block (not one per few
    rows), and its tiles of V / WH stay within SUB_BLOCK_BYTES."""
    m, n, k = 40, 30_000, 32
    V, W, H = rng.random((m, n)), rng.random((m, k)), rng.random((k, n))
    rows = kernels._sub_step(kernels._row_bytes(V), partial_bytes=kernels._partial_bytes(H))
    assert rows >= kernels.PARTIAL_REUSE * k  # the old rule gave 4 MiB / 240 kB = 17 rows
    tile = kernels._tile_cols(min(rows, m), n, 8)
    assert tile < n and min(rows, m) * tile * 8 <= kernels.SUB_BLOCK_BYTES
    shapes = []
    real = kernels._kl_ratio

    def spy(V, W, H, out=None, HT=None):
        shapes.append(V.shape)
        return real(V, W, H, out=out, HT=HT)

    monkeypatch.setattr(kernels, "_kl_ratio", spy)
    W_ref, H_ref, _ = reference_mu(V, W, H, beta, 1)
    W_new, H_new, _ = run_blocks(V, W, H, beta, [(0, m)])
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-12)
    np.testing.assert_allclose(H_new, H_ref, rtol=1e-11)
    if beta == 1:
        assert {s[0] for s in shapes} == {m} and max(s[1] for s in shapes) == tile
