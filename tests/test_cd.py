"""solver="cd": scikit-learn's coordinate descent, through the interface, the
driver (NumPy, a re-read zarr store, a real cluster), checkpoints and resume,
transform, the estimator and the command line -- against scikit-learn itself."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_pass, write_zarr
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _fit_coordinate_descent

import dask_nmf
from dask_nmf import kernels, persistence
from dask_nmf.cli import cli
from dask_nmf.io import InputError
from dask_nmf.solvers import SOLVERS, CoordinateDescent, Regularization, solver_class
from dask_nmf.solvers.cd import permutation

K = 4
#: Converges within MAX_ITER on V_small from the ``start`` fixture, in every case below.
TOL, MAX_ITER = 2e-3, 400
CASES = {
    "plain": {},
    "shuffle": dict(shuffle=True, random_state=3),
    "l1-l2": dict(alpha_W=0.01, l1_ratio=0.5),
    "shuffle-l1-l2-H": dict(alpha_W=0.01, alpha_H=0.02, l1_ratio=0.3, shuffle=True, random_state=7),
}


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def assert_close(ours, theirs, rtol=1e-6):
    """Equal to ``rtol`` relative to the largest entry (CD zeroes entries exactly)."""
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * scale)


def sklearn_fit(V, W0, H0, **kw) -> SkNMF:
    est = SkNMF(K, solver="cd", init="custom", tol=TOL, max_iter=MAX_ITER, **kw)
    est._W = quiet(est.fit_transform, V, W=W0.copy(), H=H0.copy())
    return est


def check(res, est):
    """Our result is scikit-learn's: factors, iterations, error."""
    assert res.n_iter == est.n_iter_ < MAX_ITER and res.converged
    assert_close(np.asarray(res.W), est._W)
    assert_close(res.H, est.components_)
    assert math.sqrt(2 * res.loss_history[-1]) == pytest.approx(est.reconstruction_err_, rel=1e-6)


# -- the registry, refusals ------------------------------------------------------------------


def test_registered_for_frobenius_only():
    assert SOLVERS[("cd", 2.0)] is CoordinateDescent
    assert solver_class("frobenius", "cd") is CoordinateDescent
    # scikit-learn refuses KL with cd; we do too, with its phrase.
    with pytest.raises(ValueError) as theirs:
        SkNMF(2, solver="cd", beta_loss="kullback-leibler").fit(np.ones((3, 3)))
    phrase = str(theirs.value)
    for beta_loss in ("kullback-leibler", 1):
        with pytest.raises(InputError, match="does not handle beta_loss") as ours:
            solver_class(beta_loss, "cd")
        assert "solver='mu'" in str(ours.value)
    assert phrase in str(pytest.raises(InputError, solver_class, "kullback-leibler", "cd").value)
    with pytest.raises(ValueError, match=re.escape(phrase)):
        dask_nmf.NMF(2, solver="cd", beta_loss="kullback-leibler").fit(np.ones((3, 3)))
    with pytest.raises(InputError, match=re.escape(phrase)):
        dask_nmf.factorize(np.ones((3, 3)), 2, solver="cd", beta_loss="kullback-leibler")


def test_permutations_are_those_of_a_random_state():
    """Draw i of (seed, k) is RandomState(seed)'s i-th permutation, asked for in any order."""
    for seed in (0, 3, 2**31 + 5):
        rng = np.random.RandomState(seed)
        expected = [rng.permutation(6) for _ in range(200)]
        for i in (0, 1, 2, 150, 151, 3, 199, 0):  # forward, back far (replayed), again
            np.testing.assert_array_equal(permutation(seed, 6, i), expected[i])
    np.testing.assert_array_equal(permutation(None, 5, 17), np.arange(5))


# -- the interface, as the engine runs a pass --------------------------------------------------


@pytest.fixture(params=["compiled", "numpy"])
def sweep_kind(request, monkeypatch):
    """Both sweeps: scikit-learn's compiled one (the default) and the NumPy one
    that stands in where it cannot be imported."""
    from dask_nmf.solvers import cd

    if request.param == "numpy":
        monkeypatch.setattr(cd, "_compiled_sweep", None)
    else:
        assert cd._compiled_sweep is not None
    return request.param


@pytest.mark.parametrize("sub_rows", [None, 7])
@pytest.mark.parametrize("shuffle", [False, True])
def test_passes_are_sklearn_iterations(V_small, start, shuffle, sweep_kind, sub_rows, monkeypatch):
    """n passes through block_step / next_state are n iterations of scikit-learn's
    _fit_coordinate_descent; each report's loss is the direct one, and ``done``
    comes exactly where scikit-learn stops.  With either sweep, and with the
    block's products formed in sub-blocks of 7 rows or all at once."""
    if sub_rows:
        monkeypatch.setattr(kernels, "PRODUCT_BLOCK_BYTES", sub_rows * V_small.shape[1] * 8)
    W, H = start
    reg = Regularization(0.3, 0.2, 0.1, 0.4)
    stats = kernels.block_stats(V_small)
    solver = CoordinateDescent(
        reg, stats["sumsq"], stats["sum"], V_small.dtype, tol=TOL, shuffle=shuffle, random_state=5
    )

    def sklearn_cd(tol, max_iter):
        # scikit-learn's loop from the same start, with these penalties (l1/l2 of W, of H)
        return _fit_coordinate_descent(
            V_small,
            start[0].copy(),
            start[1].copy(),
            tol,
            max_iter,
            0.3,
            0.1,
            0.2,
            0.4,
            shuffle=shuffle,
            random_state=5,
        )

    _, _, n_sk = sklearn_cd(TOL, MAX_ITER)
    assert 5 < n_sk < MAX_ITER
    state = solver.start(H, loss_unknown=True)
    for n in range(1, n_sk + 1):
        W_ref, H_ref, _ = sklearn_cd(0.0, n)
        W, state, report = one_pass(solver, V_small, W, state)
        assert report.problem is None and report.done == (n == n_sk)
        if n in (1, 2, n_sk):
            assert_close(W, W_ref, 1e-10)
            assert_close(state[0], H_ref, 1e-10)
            loss = 0.5 * float(((V_small - W @ state[0]) ** 2).sum())
            assert report.after == pytest.approx(loss, rel=1e-9)
        # The state given back as H, its iteration and its carry (as after a
        # checkpoint) goes on identically.
        state = solver.start(state[0], False, n, solver.carry(state))


def test_direct_loss_near_an_exact_fit(rng):
    """Reused from Frobenius MU: where the expansion has no digits left, the next
    pass computes ||V - WH||^2 directly."""
    W0, H0 = rng.random((157, 2)) + 0.1, rng.random((2, 41)) + 0.1
    V = W0 @ H0
    stats = kernels.block_stats(V)
    solver = CoordinateDescent(Regularization(), stats["sumsq"], stats["sum"], V.dtype)
    _, state, report = one_pass(solver, V, W0, solver.start(H0, loss_unknown=True))
    assert report.before == pytest.approx(0.0, abs=1e-20)
    assert state[2] and math.isnan(report.after)
    _, _, report = one_pass(solver, V, W0, state)
    assert report.before < 1e-20


def test_small_and_picklable(V_small):
    import pickle

    stats = kernels.block_stats(V_small)
    solver = CoordinateDescent(
        Regularization(),
        stats["sumsq"],
        stats["sum"],
        V_small.dtype,
        shuffle=True,
        random_state=np.random.RandomState(0),
    )
    assert isinstance(solver.random_state, int)  # a seed travels, not a RandomState
    assert len(pickle.dumps(solver)) < 1024
    assert (
        pickle.loads(pickle.dumps(solver.block_step)).__self__.random_state == solver.random_state
    )


# -- the driver ----------------------------------------------------------------------------------


def fit_cd(V, start, case, **kw):
    """Our cd from scikit-learn's start, with scikit-learn's tol and max_iter."""
    return dask_nmf.factorize(
        V,
        K,
        solver="cd",
        init="custom",
        W_init=start[0],
        H_init=start[1],
        tol=TOL,
        max_iter=MAX_ITER,
        **kw,
        **CASES[case],
    )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("block_rows", [157, 50, 23])
def test_numpy_matches_sklearn(V_small, start, case, block_rows):
    est = sklearn_fit(V_small, *start, **CASES[case])
    res = fit_cd(V_small, start, case, block_rows=block_rows)
    check(res, est)
    # Every iteration's loss is known; unpenalized, it never rises (CD minimizes exactly).
    losses = np.array(res.loss_history)
    assert len(losses) == res.n_iter + 1 and np.isfinite(losses).all()
    if case in ("plain", "shuffle"):
        assert (np.diff(losses) <= 1e-9 * losses[0]).all()


@pytest.mark.parametrize("keep_in_memory", [False, True])
@pytest.mark.parametrize("case", ["plain", "shuffle-l1-l2-H"])
def test_zarr_store_matches_sklearn(tmp_path, V_small, start, case, keep_in_memory):
    store = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17))
    est = sklearn_fit(V_small, *start, **CASES[case])
    res = fit_cd(store, start, case, block_rows=46, keep_in_memory=keep_in_memory)
    check(res, est)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["shuffle", "shuffle-l1-l2-H"])
@pytest.mark.parametrize("keep_in_memory", [False, True])
def test_cluster_matches_sklearn(tmp_path, cluster_client, V_small, start, case, keep_in_memory):
    """On two worker processes, passes run ahead of their predecessor's report and
    the state goes through a checkpoint every 7 iterations: same permutations,
    same initial violation, scikit-learn's result."""
    store = write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17))
    est = sklearn_fit(V_small, *start, **CASES[case])
    res = fit_cd(
        store,
        start,
        case,
        block_rows=40,
        client=cluster_client,
        checkpoint_every=7,
        keep_in_memory=keep_in_memory,
    )
    res.W = cluster_client.compute(res.W).result()
    check(res, est)


def test_checkpoint_and_resume_match_sklearn(tmp_path, V_small, start):
    """A run stopped at max_iter, resumed to a larger one, stops where an
    uninterrupted run (and scikit-learn) does: the initial violation is kept."""
    kw = dict(CASES["shuffle-l1-l2-H"], solver="cd", init="custom", tol=TOL, block_rows=50)
    ck = str(tmp_path / "ck.zarr")
    est = sklearn_fit(V_small, *start, **CASES["shuffle-l1-l2-H"])
    first = quiet(
        dask_nmf.factorize,
        V_small,
        K,
        W_init=start[0],
        H_init=start[1],
        max_iter=40,
        checkpoint=ck,
        checkpoint_every=15,
        **kw,
    )
    assert first.n_iter == 40 and not first.converged
    state = persistence.read_meta(ck)["state"]
    assert state["solver_state"]["violation_init"] > 0
    res = quiet(dask_nmf.factorize, V_small, K, max_iter=MAX_ITER, checkpoint=ck, resume=True, **kw)
    check(res, est)


def test_resume_with_another_solver_is_refused(tmp_path, V_small):
    ck = str(tmp_path / "ck.zarr")
    dask_nmf.factorize(V_small, K, max_iter=5, checkpoint=ck, random_state=0)
    with pytest.raises(InputError, match="made with solver='mu', not 'cd'"):
        dask_nmf.factorize(
            V_small, K, solver="cd", max_iter=10, checkpoint=ck, resume=True, random_state=0
        )


def test_nndsvd_init_does_not_warn_for_cd(V_small):
    """Coordinate descent moves zeros: MU's warning about init='nndsvd' does not apply."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dask_nmf.factorize(V_small, K, solver="cd", init="nndsvd", max_iter=5, tol=0)
    with pytest.warns(UserWarning, match="cannot update zeros"):
        dask_nmf.factorize(V_small, K, init="nndsvd", max_iter=5, tol=0)


# -- the estimator, transform, the command line ----------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "shuffle-l1-l2-H"])
def test_estimator_and_transform_match_sklearn(V_small, start, case):
    kw = dict(CASES[case], tol=TOL, max_iter=MAX_ITER)
    ours = dask_nmf.NMF(K, solver="cd", init="custom", block_rows=157, **kw)
    W = quiet(ours.fit_transform, V_small, W=start[0].copy(), H=start[1].copy())
    theirs = sklearn_fit(V_small, *start, **CASES[case])
    assert ours.n_iter_ == theirs.n_iter_
    assert_close(W, theirs._W)
    assert_close(ours.components_, theirs.components_)
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-6)
    # transform: W from zero with H fixed, stopped on the violation (one block: exact).
    theirs.components_ = ours.components_.copy()
    new = V_small[:90] * 1.5
    assert_close(ours.transform(new), quiet(theirs.transform, new))
    # Several blocks: each block stops on its own violation, i.e. each block's W is
    # scikit-learn's transform of its rows.
    ours.set_params(block_rows=30)
    W_blocks = ours.transform(new)
    for a in range(0, 90, 30):
        assert_close(W_blocks[a : a + 30], quiet(theirs.transform, new[a : a + 30]))


def test_cli_fit_and_transform_with_cd(tmp_path, cluster_client, V_small):
    store = write_zarr(tmp_path / "V.zarr", V_small, chunks=(40, 41))
    out, w_out = str(tmp_path / "out.zarr"), str(tmp_path / "W.zarr")
    args = ["fit", store, "-k", "3", "-o", out, "--solver", "cd", "--shuffle", "--seed", "2"]
    args += ["--max-iter", "60", "--tol", "1e-3", "--scheduler", cluster_client.scheduler.address]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = dask_nmf.load(out)
    assert res.params["solver"] == "cd" and res.params["shuffle"] is True
    direct = dask_nmf.factorize(
        V_small,
        3,
        solver="cd",
        shuffle=True,
        random_state=2,
        max_iter=60,
        tol=1e-3,
        block_rows=res.params["block_rows"],
    )
    assert res.n_iter == direct.n_iter
    assert_close(res.H, direct.H, 1e-9)
    r = CliRunner().invoke(
        cli,
        [
            "transform",
            store,
            "--model",
            out,
            "-o",
            w_out,
            "--block-rows",
            "40",
            "--scheduler",
            cluster_client.scheduler.address,
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    W_t = np.asarray(persistence_open(w_out))
    theirs = SkNMF(3, solver="cd", tol=1e-3, max_iter=60, shuffle=True, random_state=2)
    quiet(theirs.fit, V_small)
    theirs.components_ = np.asarray(res.H)
    expected = np.vstack([quiet(theirs.transform, V_small[a : a + 40]) for a in range(0, 157, 40)])
    assert_close(W_t, expected)


def persistence_open(path):
    import zarr

    return zarr.open_array(path, mode="r")[...]


# -- accelerated coordinate descent (Gillis & Glineur's accelerated HALS) ---------------


def reference_accelerated_hals(V, W, H, n_iter, l1=(0.0, 0.0), l2=(0.0, 0.0)):
    """Plain NumPy accelerated HALS on the whole matrix (one block, one sub-block):
    per iteration, up to floor(1 + 0.5 rho) W sweeps from V Hᵀ and H Hᵀ, then as
    many H sweeps from Wᵀ V and Wᵀ W, each stopped once a sweep moves the factor
    by less than 0.1 times the first one did; penalties as scikit-learn's."""
    m, n = V.shape
    k = W.shape[1]
    W, H = W.copy(), H.copy()

    def inner(X, gram, data, limit):  # X: k x rows (component rows), gram: k x k
        first = None
        for _ in range(limit):
            before = X.copy()
            for t in range(k):
                grad = gram[t] @ X - data[t]
                if gram[t, t] != 0:
                    X[t] = np.maximum(X[t] - grad / gram[t, t], 0)
            moved = np.linalg.norm(X - before)
            if first is None:
                first = moved
            elif moved < 0.1 * first:
                break
        return X

    def limit(rho):
        return max(1, int(np.floor(1 + 0.5 * rho)))

    for _ in range(n_iter):
        gram = H @ H.T + l2[0] * np.eye(k)
        Wt = inner(
            W.T.copy(), gram, (V @ H.T).T - l1[0], limit(1 + (m * n + n * k) / (m * (k + 1)))
        )
        W = Wt.T.copy()
        gram = W.T @ W + l2[1] * np.eye(k)
        H = inner(H, gram, W.T @ V - l1[1], limit(1 + (m * n + m * k) / (n * (k + 1))))
    return W, H


@pytest.mark.parametrize(
    "reg", [{}, dict(alpha_W=0.01, alpha_H=0.02, l1_ratio=0.4)], ids=["plain", "l1-l2"]
)
def test_accelerated_cd_is_the_reference_and_never_increases_the_cost(V_small, start, reg):
    """Every pass of accelerated cd is the NumPy reference's iteration, and the
    cost (loss + penalties) never rises: each inner sweep minimizes exactly."""
    W0, H0 = start
    m, n = V_small.shape
    res = dask_nmf.factorize(
        V_small,
        K,
        solver="cd",
        accelerate=True,
        init="custom",
        W_init=W0,
        H_init=H0,
        max_iter=15,
        tol=0,
        block_rows=m,
        **reg,
    )
    alpha_W = reg.get("alpha_W", 0.0)
    alpha_H = reg.get("alpha_H", alpha_W)
    rho = reg.get("l1_ratio", 0.0)
    l1 = (alpha_W * rho * n, alpha_H * rho * m)
    l2 = (alpha_W * (1 - rho) * n, alpha_H * (1 - rho) * m)
    W_ref, H_ref = reference_accelerated_hals(V_small, W0, H0, 15, l1, l2)
    assert_close(np.asarray(res.W), W_ref, rtol=1e-9)
    assert_close(res.H, H_ref, rtol=1e-9)
    assert res.params["accelerate"] is True
    # (the full cost is what decreases with penalties; compare it at each known state)
    costs = []
    W, H = W0.copy(), H0.copy()
    for t in range(1, 6):
        W, H = reference_accelerated_hals(V_small, W0, H0, t, l1, l2)
        costs.append(
            0.5 * np.linalg.norm(V_small - W @ H) ** 2
            + l1[0] * W.sum()
            + 0.5 * l2[0] * (W**2).sum()
            + l1[1] * H.sum()
            + 0.5 * l2[1] * (H**2).sum()
        )
    assert all(b <= a * (1 + 1e-12) for a, b in zip(costs, costs[1:]))
    losses = res.loss_history
    if not reg:
        assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:]))


def test_accelerated_cd_needs_fewer_passes(V_small, start):
    """From the same start, accelerated cd's error after 10 passes is below plain
    cd's after 10, and at most what plain cd reaches after 30."""
    W0, H0 = start
    kw = dict(solver="cd", init="custom", W_init=W0, H_init=H0, tol=0)
    plain = dask_nmf.factorize(V_small, K, max_iter=30, **kw).loss_history
    fast = dask_nmf.factorize(V_small, K, max_iter=10, accelerate=True, **kw).loss_history
    assert fast[10] < plain[10]
    assert fast[10] <= plain[30] * (1 + 1e-9)


def test_accelerated_cd_on_blocks_shuffled_and_stopping(V_small, start):
    """Several blocks (ρ per block), shuffled order, the violation rule: the fit
    stops by the rule, the cost never rose, and the result does not depend on
    the threads the blocks ran on (same seed, same answer)."""
    W0, H0 = start
    kw = dict(
        solver="cd",
        accelerate=True,
        init="custom",
        W_init=W0,
        H_init=H0,
        shuffle=True,
        random_state=5,
        tol=TOL,
        max_iter=MAX_ITER,
        block_rows=40,
    )
    a = dask_nmf.factorize(V_small, K, **kw)
    b = dask_nmf.factorize(V_small, K, **kw)
    assert a.converged and a.n_iter < MAX_ITER
    np.testing.assert_array_equal(np.asarray(a.W), np.asarray(b.W))
    losses = a.loss_history
    assert all(y <= x * (1 + 1e-12) for x, y in zip(losses, losses[1:]))
    plain = dask_nmf.factorize(V_small, K, **dict(kw, accelerate=False))
    assert a.n_iter < plain.n_iter
