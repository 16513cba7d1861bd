"""The solvers through their own interface, against the NumPy reference, no dask.

A pass is run here exactly as the engine runs it: ``block_step`` per row block,
the partial sums added up, ``next_state`` and ``pass_report`` on the sums.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BOUNDS, make_low_rank, one_pass, reference_loss, reference_mu

from dask_nmf import kernels
from dask_nmf.io import InputError
from dask_nmf.solvers import (
    SOLVERS,
    FrobeniusMU,
    KullbackLeiblerMU,
    Regularization,
    Solver,
    beta_of,
    solver_class,
)

BETAS = [2, 1]
REGS = [Regularization(), Regularization(0.3, 0.2, 0.1, 0.4)]


def make(beta, V, reg=None, dtype=np.float64) -> Solver:
    stats = kernels.block_stats(V)
    return solver_class(beta)(reg or Regularization(), stats["sumsq"], stats["sum"], dtype)


def test_registry():
    assert solver_class("frobenius") is FrobeniusMU and solver_class(2) is FrobeniusMU
    assert solver_class("kullback-leibler") is KullbackLeiblerMU and solver_class(1.0) is KL
    assert {("mu", 2.0), ("mu", 1.0), ("mu", None), ("cd", 2.0)} <= set(SOLVERS)
    assert beta_of("frobenius") == 2.0 and solver_class(3).beta == 3.0  # (test_beta.py)
    for bad in ("itakura-saito-typo", float("nan"), True, None):
        with pytest.raises(InputError, match="beta_loss"):
            solver_class(bad)
    with pytest.raises(InputError, match="unknown solver 'als'"):
        solver_class("frobenius", solver="als")
    with pytest.raises(InputError, match="solver 'cd' does not handle beta_loss"):
        solver_class("kullback-leibler", solver="cd")


KL = KullbackLeiblerMU


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", REGS)
def test_passes_follow_the_reference(rng, beta, reg, threads, monkeypatch):
    """Ten passes through the interface give the reference's factors and losses
    (with ``threads``, Frobenius's H update runs in that many column tiles)."""
    monkeypatch.setattr(kernels, "THREADED_BYTES", 0)
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    start_loss = reference_loss(V, W, H, beta)
    W_ref, H_ref, losses_ref = reference_mu(
        V, W, H, beta, 10, reg.l1_W, reg.l2_W, reg.l1_H, reg.l2_H
    )
    solver = make(beta, V, reg)
    solver.threads = threads
    state, before = solver.start(H, loss_unknown=True), []
    for _ in range(10):
        W, state, report = one_pass(solver, V, W, state)
        before.append(report.before)
        assert report.problem is None
    np.testing.assert_allclose(W, W_ref, rtol=1e-10)
    np.testing.assert_allclose(state[0], H_ref, rtol=1e-10)
    # Each pass knows the loss of the state it started from (the first one, and
    # every KL pass that is asked for it) ...
    assert before[0] == pytest.approx(start_loss, rel=1e-9)
    if beta == 1:
        np.testing.assert_allclose(before[1:], losses_ref[:-1], rtol=1e-9)
    else:
        # ... and Frobenius's of the state it produced, from its sums.
        assert report.after == pytest.approx(losses_ref[-1], rel=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_loss_outside_a_pass(rng, beta):
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)), rng.random((4, 41))
    solver = make(beta, V)
    terms = kernels.sum_partials([solver.loss_terms(V[a:b], W[a:b], H) for a, b in BOUNDS])
    assert solver.loss_from_terms(terms, H) == pytest.approx(
        reference_loss(V, W, H, beta), rel=1e-10
    )


def test_frobenius_switches_to_the_direct_loss_near_an_exact_fit(rng):
    """Where ||V||^2 - 2<A, H> + <B, HH^T> has no digits left, the state says so
    and the next pass computes ||V - WH||^2 itself."""
    W0, H0 = rng.random((157, 2)) + 0.1, rng.random((2, 41)) + 0.1
    V = W0 @ H0
    solver = make(2, V)
    _, state, report = one_pass(solver, V, W0, solver.start(H0, loss_unknown=True))
    assert report.before == pytest.approx(0.0, abs=1e-20)  # computed directly
    assert state[2] and math.isnan(report.after)  # deferred to the next pass
    _, _, report = one_pass(solver, V, W0, state)
    assert report.before < 1e-20


@pytest.mark.parametrize("beta", BETAS)
def test_broken_states_are_reported(rng, beta):
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)), rng.random((4, 41))
    solver = make(beta, V)
    _, _, report = one_pass(solver, V, np.zeros_like(W), solver.start(H, True))
    assert report.problem is not None and report.problem[1] == "H is all zeros"
    _, _, report = one_pass(solver, V, W * np.nan, solver.start(H, True))
    assert report.problem is not None and report.problem[0] == 0  # the loss itself


def test_problems_of_H_are_named():
    problem = Solver._problem
    H = np.ones((3, 5))
    assert problem(1.0, True, 2.0, H) is None
    for bad in (np.nan, np.inf):
        broken = H.copy()
        broken[1, 2] = bad
        assert problem(1.0, True, 2.0, broken) == (1, "H has NaN or infinite entries")
    assert problem(1.0, True, 2.0, np.zeros((3, 5))) == (1, "H is all zeros")
    assert problem(1.0, True, 2.0, np.eye(3, 5)) is None
    assert problem(np.nan, True, 2.0, H)[0] == 0 and problem(1.0, True, np.inf, H)[0] == 1


def test_kl_notices_V_changed(rng):
    V = make_low_rank(rng, 157, 41, 4)
    W, H = rng.random((157, 4)), rng.random((4, 41))
    solver = make(1, V)
    changed = V.copy()
    changed[:50] = 0
    _, _, report = one_pass(solver, changed, W, solver.start(H))
    assert report.problem[0] == 0 and report.problem[1].startswith("V changed")


@pytest.mark.parametrize("beta", BETAS)
def test_transform_block_is_mu_on_w_alone(rng, beta):
    V = make_low_rank(rng, 50, 20, 3)
    H = rng.random((3, 20))
    W = make(beta, V).transform_block(V, H, 0.5, max_iter=25, tol=0.0)
    # reference: the W half of the reference iteration, H held fixed
    W_ref = np.full((50, 3), 0.5)
    eps = np.finfo(np.float32).eps
    for _ in range(25):
        if beta == 2:
            num, den = V @ H.T, W_ref @ H @ H.T
        else:
            num, den = (V / np.maximum(W_ref @ H, eps)) @ H.T, H.sum(axis=1)[None, :]
        W_ref = W_ref * num / np.where(den == 0, eps, den)
    np.testing.assert_allclose(W, W_ref, rtol=1e-10)


def test_transform_block_stops_on_its_own_tolerance(rng):
    V = make_low_rank(rng, 50, 20, 3, noise=0.0, zeros=False)
    H = rng.random((3, 20))
    solver = make(2, V)
    loose = solver.transform_block(V, H, 0.5, max_iter=500, tol=1e-2)
    tight = solver.transform_block(V, H, 0.5, max_iter=500, tol=0.0)
    assert not np.allclose(loose, tight)  # stopped early
    assert reference_loss(V, loose, H, 2) >= reference_loss(V, tight, H, 2)


def test_solvers_are_small_and_picklable(rng):
    """Their bound methods travel in every pass's graph."""
    import pickle

    V = make_low_rank(rng, 20, 6, 2)
    for beta in BETAS:
        solver = make(beta, V, Regularization(0.1, 0.2, 0.3, 0.4))
        back = pickle.loads(pickle.dumps(solver.block_step))
        assert back.__self__.reg == solver.reg
        assert len(pickle.dumps(solver)) < 1024
