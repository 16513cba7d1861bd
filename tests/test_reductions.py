"""Sums over blocks: partial-sum dictionaries and k x n product sums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dask_nmf import reductions


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n_parts", [2, 4])
def test_sum_partials_adds_in_place_without_changing_the_parts(rng, threads, n_parts, monkeypatch):
    monkeypatch.setattr(reductions, "THREADED_BYTES", 0)  # (column tiles even here)
    parts = [
        {"A": rng.random((3, 5)), "B": rng.random((3, 3)), "x": float(i), "rows": i}
        for i in range(4)
    ][:n_parts]
    copies = [{key: np.copy(v) for key, v in p.items()} for p in parts]
    total = reductions.sum_partials(parts, threads)
    np.testing.assert_allclose(total["A"], sum(p["A"] for p in copies), rtol=1e-15)
    np.testing.assert_allclose(total["B"], sum(p["B"] for p in copies), rtol=1e-15)
    assert total["x"] == total["rows"] == sum(range(n_parts))
    for p, c in zip(parts, copies):
        for key in p:
            np.testing.assert_array_equal(p[key], c[key])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("tiles", [False, True])
def test_product_sum_over_sub_blocks_and_tiles(rng, sparse, tiles):
    X, Y = rng.random((23, 4)), rng.random((23, 301))
    if sparse:
        Y[rng.random(Y.shape) < 0.8] = 0.0
    total = reductions.ProductSum(4, 301, np.float64)
    for rows in (slice(0, 10), slice(10, 23)):
        Ys = sp.csr_matrix(Y[rows]) if sparse else Y[rows]
        if tiles and not sparse:
            for cols in (slice(0, 100), slice(100, 250), slice(250, 301)):
                total.add(X[rows], Ys[:, cols], cols)
        else:
            total.add(X[rows], Ys)
    out = total.total()
    assert out.flags.c_contiguous and out.shape == (4, 301)
    np.testing.assert_allclose(out, X.T @ Y, rtol=1e-13)
    np.testing.assert_array_equal(reductions.ProductSum(2, 3, np.float64).total(), np.zeros((2, 3)))
