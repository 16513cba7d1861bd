"""The β-divergence family (any real β by MU) and accelerated Frobenius MU.

β-divergence MU is checked against scikit-learn's ``NMF(solver="mu")`` from
the same start (factors and ``_beta_divergence``), through the solver
interface, ``factorize`` on NumPy, zarr and a LocalCluster, sparse V, the
estimator, ``transform``, resume and the CLI.  Accelerated MU is checked for
a cost that never increases and for far fewer passes than MU.
"""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from conftest import fit_from, make_low_rank, write_zarr
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _beta_divergence

import dask_nmf
from dask_nmf import kernels
from dask_nmf.cli import cli
from dask_nmf.io import InputError
from dask_nmf.solvers import (
    BETA_LOSSES,
    BetaDivergenceMU,
    FrobeniusMU,
    KullbackLeiblerMU,
    Regularization,
    beta_of,
    mu_beta,
    solver_class,
)

BETAS = [0, 0.5, 1.5, 3]
BOUNDS = [(0, 50), (50, 100), (100, 157)]


def positive(rng, m=157, n=41, k=4):
    """V near rank k with no zeros (β <= 0 refuses zeros)."""
    return make_low_rank(rng, m, n, k, zeros=False) + 0.01


def sklearn_fit(V, W, H, beta, max_iter, **kw):
    """scikit-learn's MU from (W, H): (W, H)."""
    est = SkNMF(
        W.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=max_iter, tol=0, **kw
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (ConvergenceWarning: tol=0 runs max_iter)
        W_out = est.fit_transform(V, W=W.copy(), H=H.copy())
    return W_out, est.components_


def sklearn_history(V, W, H, beta, n_iter):
    """_beta_divergence after each of n_iter MU iterations (one fit per length)."""
    out = [_beta_divergence(V, W, H, beta)]
    for t in range(1, n_iter + 1):
        out.append(_beta_divergence(V, *sklearn_fit(V, W, H, beta, t), beta))
    return out


def assert_rel(a, b, rtol=1e-6):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= rtol * np.abs(b).max()


# -- registry --------------------------------------------------------------------
def test_registry_finds_the_beta_solver_for_any_other_beta():
    assert beta_of("itakura-saito") == 0.0 and BETA_LOSSES["itakura-saito"] == 0.0
    assert solver_class(2.0) is FrobeniusMU and solver_class(1) is KullbackLeiblerMU
    for beta in (0, "itakura-saito", 0.5, 1.5, 3, -0.5):
        cls = solver_class(beta)
        assert issubclass(cls, BetaDivergenceMU) and cls.beta == beta_of(beta)
        assert cls is solver_class(beta)  # one class per β
    assert solver_class(0).loss_name == "itakura-saito" and solver_class(0.5).loss_name == 0.5
    for bad in (math.nan, math.inf, "is", True, None):
        with pytest.raises(InputError, match="beta_loss"):
            solver_class(bad)


def test_beta_solvers_pickle_small_and_by_reference(rng):
    V = positive(rng, 20, 6, 2)
    stats = kernels.block_stats(V)
    solver = solver_class(0.5)(Regularization(0.1), stats["sumsq"], stats["sum"], np.float64)
    data = pickle.dumps(solver.block_step)
    assert len(data) < 1024
    back = pickle.loads(data).__self__
    assert type(back) is type(solver) and back.beta == 0.5 and back.reg == solver.reg


def test_power_fast_paths_agree_with_numpy(rng):
    x = rng.random(1000) + 1e-3
    for p in (-2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3.5, 0.3, -1.7, 5):
        np.testing.assert_allclose(mu_beta.power(x.copy(), p), x**p, rtol=1e-13)


# -- the solver, as the engine runs it ---------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", [Regularization(), Regularization(0.3, 0.2, 0.1, 0.4)])
def test_passes_match_sklearn(rng, beta, reg):
    V = positive(rng)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    stats = kernels.block_stats(V)
    solver = solver_class(beta)(reg, stats["sumsq"], stats["sum"], np.float64)
    W, state, before, costs = W0, solver.start(H0, True), [], []
    for _ in range(10):
        steps = [solver.block_step(V[a:b], W[a:b], state, True) for a, b in BOUNDS]
        sums = kernels.sum_partials([parts for _, parts in steps])
        state_next = solver.next_state(state, sums)
        report = solver.pass_report(state, state_next, sums, True)
        assert report.problem is None
        before.append(report.before)
        costs.append(report.before + report.penalty_before)
        W, state = np.vstack([w for w, _ in steps]), state_next
    if reg == Regularization():
        W_sk, H_sk = sklearn_fit(V, W0, H0, beta, 10)
        assert_rel(W, W_sk)
        assert_rel(state[0], H_sk)
        np.testing.assert_allclose(before, sklearn_history(V, W0, H0, beta, 9), rtol=1e-9)
    else:  # (penalties: against the NumPy reference of the same rule)
        W_ref, H_ref = reference_beta_mu(V, W0, H0, beta, 10, reg)
        assert_rel(W, W_ref)
        assert_rel(state[0], H_ref)
    # the cost (loss + penalties) never rises
    assert all(b <= a * (1 + 1e-12) for a, b in zip(costs, costs[1:]))


def reference_beta_mu(V, W, H, beta, n_iter, reg):
    """Plain NumPy β-divergence MU with penalties, written from the update rule."""
    eps, g = np.finfo(np.float32).eps, mu_beta.gamma(beta)

    def update(X, num, den, l1, l2):
        den = den + l1 + l2 * X
        return X * (num / np.where(den == 0, eps, den)) ** g

    for _ in range(n_iter):
        WH = W @ H
        num = (V * np.maximum(WH, eps) ** (beta - 2) if beta < 2 else V * WH ** (beta - 2)) @ H.T
        den = (np.maximum(WH, eps) if beta < 1 else WH) ** (beta - 1) @ H.T
        W = update(W, num, den, reg.l1_W, reg.l2_W)
        if beta < 1:
            W[W < np.finfo(np.float64).eps] = 0
        WH = W @ H
        num = W.T @ (V * np.maximum(WH, eps) ** (beta - 2) if beta < 2 else V * WH ** (beta - 2))
        den = W.T @ (np.maximum(WH, eps) if beta < 1 else WH) ** (beta - 1)
        H = update(H, num, den, reg.l1_H, reg.l2_H)
        if beta <= 1:
            H[H < np.finfo(np.float64).eps] = 0
    return W, H


def test_loss_outside_a_pass_is_sklearns(rng):
    V = positive(rng)
    V[5, :3] = 1e-9  # below EPSILON: left out of the V terms, as scikit-learn does
    W, H = rng.random((157, 4)), rng.random((4, 41))
    stats = kernels.block_stats(V)
    for beta in BETAS + [-0.5]:
        solver = solver_class(beta)(Regularization(), stats["sumsq"], stats["sum"], np.float64)
        terms = kernels.sum_partials([solver.loss_terms(V[a:b], W[a:b], H) for a, b in BOUNDS])
        assert solver.loss_from_terms(terms, H) == pytest.approx(
            _beta_divergence(V, W, H, beta), rel=1e-10
        )


# -- factorize ------------------------------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
def test_factorize_matches_sklearn(rng, beta):
    V = positive(rng)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    res = dask_nmf.factorize(
        V, 4, beta_loss=beta, W_init=W0, H_init=H0, max_iter=30, tol=0, loss_every=1, block_rows=40
    )
    W_sk, H_sk = sklearn_fit(V, W0, H0, beta, 30)
    assert_rel(res.W.compute(), W_sk)
    assert_rel(res.H, H_sk)
    losses = res.loss_history
    assert len(losses) == 31 and not any(math.isnan(x) for x in losses)
    assert losses[0] == pytest.approx(_beta_divergence(V, W0, H0, beta), rel=1e-9)
    assert losses[-1] == pytest.approx(_beta_divergence(V, W_sk, H_sk, beta), rel=1e-6)
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # monotone
    assert res.params["beta_loss"] == ("itakura-saito" if beta == 0 else float(beta))


@pytest.mark.parametrize("beta", [1, 2])
def test_one_and_two_keep_their_own_solvers(rng, beta):
    V = positive(rng)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    res = dask_nmf.factorize(V, 4, beta_loss=float(beta), W_init=W0, H_init=H0, max_iter=10, tol=0)
    assert res.params["beta_loss"] == {1: "kullback-leibler", 2: "frobenius"}[beta]
    assert_rel(res.H, sklearn_fit(V, W0, H0, beta, 10)[1])


def test_default_loss_every_and_tol_stop_like_sklearn(rng):
    V = positive(rng)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    res = dask_nmf.factorize(V, 4, beta_loss=0.5, W_init=W0, H_init=H0, max_iter=200, tol=1e-2)
    est = SkNMF(4, solver="mu", beta_loss=0.5, init="custom", max_iter=200, tol=1e-2)
    W_sk = est.fit_transform(V, W=W0.copy(), H=H0.copy())
    assert res.n_iter == est.n_iter_ < 200 and res.converged
    assert_rel(res.W.compute(), W_sk)
    assert math.isnan(res.loss_history[1]) and not math.isnan(res.loss_history[10])


def test_zarr_store_on_a_cluster(rng, tmp_path, cluster_client):
    V = positive(rng)
    store = write_zarr(tmp_path / "V.zarr", V, chunks=(23, 17))
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    re_read = dict(block_rows=40, keep_in_memory=False, client=cluster_client)
    for beta in (0, 1.5):
        res = fit_from(store, (W0, H0), beta, max_iter=20, tol=0, loss_every=1, **re_read)
        W_sk, H_sk = sklearn_fit(V, W0, H0, beta, 20)
        assert_rel(res.H, H_sk)
        assert_rel(cluster_client.compute(res.W, sync=True), W_sk)
        assert all(b <= a for a, b in zip(res.loss_history, res.loss_history[1:]))


@pytest.mark.parametrize("beta", [0.5, 3])
def test_sparse_V_matches_sklearn(rng, beta):
    V = make_low_rank(rng, 157, 41, 4)
    V[V < 0.4] = 0.0
    X = sp.csr_matrix(V)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    res = dask_nmf.factorize(
        X, 4, beta_loss=beta, W_init=W0, H_init=H0, max_iter=15, tol=0, loss_every=1, block_rows=50
    )
    W_sk, H_sk = sklearn_fit(X, W0, H0, beta, 15)
    assert_rel(res.H, H_sk)
    assert res.loss_history[-1] == pytest.approx(_beta_divergence(X, W_sk, H_sk, beta), rel=1e-6)


@pytest.mark.parametrize("beta", [0, -0.5, "itakura-saito"])
def test_zeros_refused_for_beta_at_most_zero(rng, beta):
    V = make_low_rank(rng, 60, 20, 3)  # (a zero row and column)
    for X in (V, sp.csr_matrix(V)):
        with pytest.raises(InputError, match="When beta_loss <= 0 and X contains zeros"):
            dask_nmf.factorize(X, 3, beta_loss=beta, max_iter=5)
    with pytest.raises(ValueError, match="When beta_loss <= 0 and X contains zeros"):
        dask_nmf.NMF(3, beta_loss=beta, max_iter=5).fit(V)
    H = rng.random((3, 20)) + 0.1
    with pytest.raises(InputError, match="the solver may diverge"):
        dask_nmf.transform(V, H, beta_loss=beta)


@pytest.mark.parametrize("beta", [0, 0.5, 3])
def test_estimator_and_transform_match_sklearn(rng, beta):
    V = positive(rng)
    W0, H0 = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    name = "itakura-saito" if beta == 0 else beta
    ours = dask_nmf.NMF(4, beta_loss=name, init="custom", max_iter=20, tol=0)
    theirs = SkNMF(4, solver="mu", beta_loss=name, init="custom", max_iter=20, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = ours.fit_transform(V, W=W0.copy(), H=H0.copy())
        W_sk = theirs.fit_transform(V, W=W0.copy(), H=H0.copy())
        assert_rel(W, W_sk)
        assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-6)
        new = positive(np.random.default_rng(1), 30, 41, 4)
        assert_rel(ours.transform(new), theirs.transform(new))


def test_resume_with_another_beta_is_refused(rng, tmp_path):
    V = positive(rng)
    path = str(tmp_path / "ck.zarr")
    dask_nmf.factorize(V, 3, beta_loss=0.5, max_iter=10, checkpoint=path, random_state=0)
    # the float round-trips through the store: the same β resumes ...
    res = dask_nmf.factorize(
        V, 3, beta_loss=0.5, max_iter=20, checkpoint=path, resume=True, random_state=0
    )
    assert res.n_iter == 20 and dask_nmf.load(path).beta_loss == 0.5
    # ... another does not
    with pytest.raises(InputError, match="beta_loss=0.5, not 1.5"):
        dask_nmf.factorize(V, 3, beta_loss=1.5, max_iter=30, checkpoint=path, resume=True)
    path = str(tmp_path / "frobenius.zarr")
    dask_nmf.factorize(V, 3, max_iter=5, checkpoint=path, random_state=0)
    with pytest.raises(InputError, match="accelerate=False, not True"):
        dask_nmf.factorize(V, 3, max_iter=30, checkpoint=path, resume=True, accelerate=True)


def test_cli_beta_loss_takes_a_name_or_a_number(rng, tmp_path, cluster_client):
    address = cluster_client.scheduler.address
    V = positive(rng)
    store = write_zarr(tmp_path / "V.zarr", V, chunks=(40, 41))
    for value, recorded in (("0.5", 0.5), ("itakura-saito", "itakura-saito")):
        out = str(tmp_path / f"{value}.zarr")
        r = CliRunner().invoke(
            cli,
            [
                *("fit", store, "-k", "3", "-o", out, "--beta-loss", value),
                *("--max-iter", "5", "-q", "--scheduler", address),
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        assert dask_nmf.load(out).params["beta_loss"] == recorded
    r = CliRunner().invoke(cli, ["fit", store, "-k", "3", "-o", "x.zarr", "--beta-loss", "nan"])
    assert r.exit_code == 2 and "neither a cost" in r.output


# -- accelerated MU ----------------------------------------------------------------
def planted(rng, m=600, n=120, k=8, noise=0.05):
    return rng.random((m, k)) @ rng.random((k, n)) + noise * rng.random((m, n))


@pytest.mark.parametrize("reg", [{}, {"alpha_W": 1e-3, "l1_ratio": 0.5}])
def test_accelerated_mu_never_increases_the_cost(rng, reg):
    V = planted(rng)
    res = dask_nmf.factorize(
        V, 8, accelerate=True, init="random", random_state=0, max_iter=60, tol=0, **reg
    )
    losses = np.array(res.loss_history)
    assert res.params["accelerate"] is True
    assert np.all(np.diff(losses) <= 1e-10 * losses[0])


def test_accelerated_mu_needs_far_fewer_passes(rng):
    V = planted(rng)
    W0, H0 = rng.random((600, 8)), rng.random((8, 120))
    kw = dict(W_init=W0, H_init=H0, tol=0, block_rows=150)
    target = dask_nmf.factorize(V, 8, max_iter=200, **kw).loss_history[-1]
    fast = dask_nmf.factorize(V, 8, max_iter=50, accelerate=True, **kw).loss_history
    passes = next(t for t, loss in enumerate(fast) if loss <= target)
    assert passes <= 25  # vs 200


def test_accelerate_is_off_by_default_and_frobenius_only(rng):
    V = positive(rng)
    assert dask_nmf.NMF().get_params()["accelerate"] is False
    with pytest.raises(InputError, match="accelerate=True is not implemented"):
        dask_nmf.factorize(V, 3, beta_loss="kullback-leibler", accelerate=True)
    est = dask_nmf.NMF(3, accelerate=True, max_iter=20, random_state=0).fit(V)
    assert est.result_.params["accelerate"] is True
