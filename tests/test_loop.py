"""The iteration loop's stopping: what the rule tests, and why a fit stopped."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition._nmf import _update_coordinate_descent

import dask_nmf


def mu_rule(losses: list[float], t: int) -> float:
    """scikit-learn's MU rule, from its code: the decrease of sqrt(2 loss) over
    the last 10 iterations, relative to the initial sqrt(2 loss)."""
    err = np.sqrt(2 * np.asarray(losses))
    return float((err[t - 10] - err[t]) / err[0])


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_mu_reports_the_value_the_rule_compares_with_tol(V_small, beta_loss):
    seen = []
    res = dask_nmf.factorize(
        V_small,
        4,
        beta_loss=beta_loss,
        random_state=0,
        max_iter=1000,
        tol=1e-3,
        on_criterion=lambda t, value: seen.append((t, value)),
    )
    assert res.converged
    # Tested every 10 iterations, on the relative 10-iteration decrease.
    assert [t for t, _ in seen] == list(range(10, res.n_iter + 1, 10))
    np.testing.assert_allclose(
        [v for _, v in seen], [mu_rule(res.loss_history, t) for t, _ in seen], rtol=1e-12
    )
    assert seen[-1][1] < 1e-3 <= min(v for _, v in seen[:-1])
    assert res.stop_reason == (
        f"tol met at iteration {res.n_iter}: decrease/err0 = {seen[-1][1]:.3g} < tol = 0.001"
    )


def test_mu_stopped_by_max_iter_says_what_the_rule_last_saw(V_small):
    res = dask_nmf.factorize(V_small, 4, random_state=0, max_iter=25, tol=1e-9)
    assert not res.converged and res.n_iter == 25
    value = mu_rule(res.loss_history, 20)
    assert value > 1e-9
    assert res.stop_reason == (
        f"max_iter reached (25 iterations) before tol was met: decrease/err0 = {value:.3g} "
        "at iteration 20, not < tol = 1e-09; raise max_iter to go on, or tol to stop sooner"
    )
    short = dask_nmf.factorize(V_small, 4, random_state=0, max_iter=5)
    assert "not tested yet (it looks every 10 iterations)" in short.stop_reason
    all_of_them = dask_nmf.factorize(V_small, 4, random_state=0, max_iter=12, tol=0)
    assert all_of_them.stop_reason == "max_iter reached (12 iterations; tol=0 runs them all)"


def sklearn_cd_ratios(V, W, H, tol, max_iter):
    """scikit-learn's coordinate descent loop (its own update), returning the
    violation relative to the first iteration's at every iteration until it stops."""
    W, Ht = W.copy(order="C"), np.ascontiguousarray(H.T)
    ratios = []
    for n_iter in range(1, max_iter + 1):
        violation = _update_coordinate_descent(V, W, Ht, 0.0, 0.0, False, None)
        violation += _update_coordinate_descent(V.T, Ht, W, 0.0, 0.0, False, None)
        if n_iter == 1:
            first = violation
        ratios.append(violation / first)
        if violation / first <= tol:
            break
    return ratios


def test_cd_reports_its_violation_ratio(V_small, start):
    W0, H0 = start
    seen = []
    res = dask_nmf.factorize(
        V_small,
        4,
        solver="cd",
        W_init=W0,
        H_init=H0,
        max_iter=500,
        tol=1e-3,
        on_criterion=lambda t, value: seen.append((t, value)),
    )
    expected = sklearn_cd_ratios(V_small, W0, H0, 1e-3, 500)
    assert res.converged and res.n_iter == len(expected)
    assert [t for t, _ in seen] == list(range(1, res.n_iter + 1))  # every pass
    np.testing.assert_allclose([v for _, v in seen], expected, rtol=1e-8)
    assert res.stop_reason == (
        f"tol met at iteration {res.n_iter}: violation/first = {seen[-1][1]:.3g} <= tol = 0.001"
    )
