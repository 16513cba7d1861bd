"""solver="anls": alternating non-negative least squares by block principal
pivoting -- its NNLS against SciPy's, each half-step exact, the cost never
rising, and the solver through the driver, a zarr store and transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import one_pass, write_zarr
from scipy.optimize import nnls

import dask_nmf
from dask_nmf.solvers import AlternatingNNLS, Regularization, solver_class
from dask_nmf.solvers.anls import nnls_bpp


def scipy_nnls_columns(C, B):
    """``argmin_{x >= 0} ||C x - b||`` for every column b of B, by SciPy."""
    return np.column_stack(
        [nnls(C, B[:, j], maxiter=50 * C.shape[1])[0] for j in range(B.shape[1])]
    )


@pytest.mark.parametrize("shape", [(30, 5, 40), (12, 8, 25), (60, 12, 7)], ids=str)
@pytest.mark.parametrize("warm", [False, True])
def test_nnls_bpp_is_scipys_nnls(rng, shape, warm):
    """Many right-hand sides at once, with or without a warm-start support: the
    same solutions as SciPy's active-set NNLS, and the KKT conditions hold."""
    rows, k, p = shape
    C = rng.random((rows, k)) - 0.3  # mixed signs: many constraints active
    B = rng.random((rows, p)) - 0.2
    passive = rng.random((k, p)) < 0.5 if warm else None
    X = nnls_bpp(C.T @ C, C.T @ B, passive)
    expected = scipy_nnls_columns(C, B)
    np.testing.assert_allclose(X, expected, atol=1e-9 * max(1.0, np.abs(expected).max()))
    gradient = C.T @ C @ X - C.T @ B
    assert (X >= 0).all()
    assert (gradient[X == 0] >= -1e-9).all()
    np.testing.assert_allclose(gradient[X > 0], 0, atol=1e-9)


def test_nnls_bpp_with_a_singular_gram_matrix(rng):
    """Two equal columns of C (a singular Gram matrix): a minimizer still."""
    C = rng.random((20, 4))
    C[:, 3] = C[:, 1]
    B = rng.random((20, 6))
    X = nnls_bpp(C.T @ C, C.T @ B)
    best = scipy_nnls_columns(C, B)
    assert (X >= 0).all()
    for j in range(B.shape[1]):
        ours = np.linalg.norm(C @ X[:, j] - B[:, j])
        assert ours <= np.linalg.norm(C @ best[:, j] - B[:, j]) + 1e-9


def test_a_pass_solves_each_factor_exactly(rng, V_small, start):
    """One pass by hand (several row blocks): every row of W' is SciPy's NNLS of
    that row of V given H, and H' is SciPy's NNLS of V's columns given W'."""
    W0, H0 = start
    solver = AlternatingNNLS(
        Regularization(), float((V_small**2).sum()), float(V_small.sum()), np.float64
    )
    W1, state, report = one_pass(solver, V_small, W0, solver.start(H0, True))
    W_ref = scipy_nnls_columns(H0.T, V_small.T).T
    np.testing.assert_allclose(W1, W_ref, atol=1e-9 * W_ref.max())
    H_ref = scipy_nnls_columns(W1, V_small)
    np.testing.assert_allclose(state[0], H_ref, atol=1e-9 * H_ref.max())
    assert report.before == pytest.approx(0.5 * np.linalg.norm(V_small - W0 @ H0) ** 2)
    assert report.after == pytest.approx(0.5 * np.linalg.norm(V_small - W1 @ state[0]) ** 2)


@pytest.mark.parametrize(
    "reg", [{}, dict(alpha_W=0.02, alpha_H=0.01, l1_ratio=0.5)], ids=["plain", "l1-l2"]
)
def test_the_cost_never_increases(V_small, start, reg):
    """Each half-step minimizes the cost over one factor: the cost (loss plus
    penalties) of successive iterates never rises."""
    W0, H0 = start
    m, n = V_small.shape
    trail = []

    def cost(W, H):
        aW, aH, r = reg.get("alpha_W", 0.0), reg.get("alpha_H", 0.0), reg.get("l1_ratio", 0.0)
        pen = aW * n * (r * W.sum() + 0.5 * (1 - r) * (W**2).sum())
        pen += aH * m * (r * H.sum() + 0.5 * (1 - r) * (H**2).sum())
        return 0.5 * np.linalg.norm(V_small - W @ H) ** 2 + pen

    for t in range(1, 7):
        res = dask_nmf.factorize(
            V_small, 4, solver="anls", W_init=W0, H_init=H0, max_iter=t, tol=0, **reg
        )
        trail.append(cost(np.asarray(res.W), res.H))
    assert all(b <= a * (1 + 1e-12) for a, b in zip(trail, trail[1:]))


def test_anls_needs_fewer_passes_than_cd(V_small, start):
    """From the same start, 5 ANLS passes reach a lower error than 20 cd passes."""
    W0, H0 = start
    kw = dict(W_init=W0, H_init=H0, tol=0)
    anls = dask_nmf.factorize(V_small, 4, solver="anls", max_iter=5, **kw).loss_history
    cd = dask_nmf.factorize(V_small, 4, solver="cd", max_iter=20, **kw).loss_history
    assert anls[5] < cd[20]


def test_store_sparse_and_numpy_agree_and_stop(tmp_path, V_small, start):
    """The same fit from NumPy, a re-read zarr store and SciPy CSR; the stopping
    rule (every iteration) ends it before max_iter."""
    W0, H0 = start
    kw = dict(solver="anls", W_init=W0, H_init=H0, max_iter=100, tol=1e-3, block_rows=50)
    a = dask_nmf.factorize(V_small, 4, **kw)
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 41))
    b = dask_nmf.factorize(path, 4, keep_in_memory=False, **kw)
    c = dask_nmf.factorize(sp.csr_matrix(V_small), 4, **kw)
    assert a.converged and a.n_iter < 100
    for other in (b, c):
        assert other.n_iter == a.n_iter
        np.testing.assert_allclose(np.asarray(other.W), np.asarray(a.W), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other.H, a.H, rtol=1e-9, atol=1e-12)
    err = [math.sqrt(2 * x) for x in a.loss_history]
    t = a.n_iter
    assert (err[t - 1] - err[t]) / err[0] < 1e-3 <= (err[t - 2] - err[t - 1]) / err[0]


def test_the_rule_reported_is_the_rule_that_stops(V_small, start):
    """on_criterion sees the per-iteration decrease each iteration, the fit stops
    at the first below tol, and stop_reason quotes it."""
    W0, H0 = start
    seen = []
    res = dask_nmf.factorize(
        V_small,
        4,
        solver="anls",
        W_init=W0,
        H_init=H0,
        max_iter=100,
        tol=1e-3,
        on_criterion=lambda t, v: seen.append((t, v)),
    )
    err = [math.sqrt(2 * x) for x in res.loss_history]
    assert [t for t, _ in seen] == list(range(1, res.n_iter + 1))
    for t, v in seen:
        assert v == pytest.approx((err[t - 1] - err[t]) / err[0], rel=1e-12)
    assert seen[-1][1] < 1e-3 <= seen[-2][1]
    assert res.converged and "decrease/err0 (last iteration)" in res.stop_reason


def test_transform_is_the_exact_nnls(V_small, start):
    """transform with solver="anls": each row's NNLS given H, by the estimator too."""
    res = dask_nmf.factorize(V_small, 4, solver="anls", max_iter=10, random_state=0)
    W = np.asarray(dask_nmf.transform(V_small[:30], res.H, solver="anls"))
    np.testing.assert_allclose(W, scipy_nnls_columns(res.H.T, V_small[:30].T).T, atol=1e-9)
    est = dask_nmf.NMF(4, solver="anls", max_iter=10, random_state=0).fit(V_small)
    np.testing.assert_allclose(
        est.transform(V_small[:30]),
        scipy_nnls_columns(est.components_.T, V_small[:30].T).T,
        atol=1e-9,
    )


def test_anls_is_frobenius_only():
    assert solver_class("frobenius", "anls") is AlternatingNNLS
    with pytest.raises(dask_nmf.InputError, match="solver 'anls' does not handle"):
        solver_class("kullback-leibler", "anls")
