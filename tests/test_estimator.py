"""dask_nmf.NMF as a scikit-learn estimator."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import write_zarr
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from dask_nmf import NMF

COSTS = ["frobenius", "kullback-leibler"]


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("beta_loss", COSTS)
def test_fit_transform_matches_sklearn(V_small, start, beta_loss):
    W0, H0 = start
    ours = NMF(4, init="custom", beta_loss=beta_loss, max_iter=80, alpha_W=0.001)
    theirs = SkNMF(4, solver="mu", init="custom", beta_loss=beta_loss, max_iter=80, alpha_W=0.001)
    W = quiet(ours.fit_transform, V_small, W=W0.copy(), H=H0.copy())
    W_sk = quiet(theirs.fit_transform, V_small, W=W0.copy(), H=H0.copy())
    assert isinstance(W, np.ndarray)  # NumPy in, NumPy out
    np.testing.assert_allclose(W, W_sk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=1e-9, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-9)
    assert ours.n_components_ == 4 and ours.n_features_in_ == V_small.shape[1]


@pytest.mark.parametrize("beta_loss", COSTS)
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_transform_matches_sklearn(V_small, start, beta_loss, tol):
    W0, H0 = start
    ours = quiet(
        NMF(4, init="custom", beta_loss=beta_loss, max_iter=30, tol=tol).fit, V_small, W=W0, H=H0
    )
    theirs = SkNMF(4, solver="mu", beta_loss=beta_loss, max_iter=30, tol=tol)
    quiet(theirs.fit, V_small)
    theirs.components_ = ours.components_.copy()
    new = V_small[:60] * 1.5
    W_ours = ours.transform(new)
    W_sk = quiet(theirs.transform, new)
    if tol == 0:
        np.testing.assert_allclose(W_ours, W_sk, rtol=1e-9, atol=1e-12)
    else:  # the stopping rule is applied per block: same answer to the tolerance
        np.testing.assert_allclose(W_ours, W_sk, rtol=0.05, atol=1e-3)


def test_dask_and_zarr_in_give_dask_out(tmp_path, V_small):
    est = NMF(3, init="random", random_state=0, max_iter=10, tol=0)
    W_np = est.fit_transform(V_small)
    for X in (
        da.from_array(V_small, chunks=(40, 41)),
        write_zarr(tmp_path / "V.zarr", V_small, (40, 41)),
    ):
        W = NMF(3, init="random", random_state=0, max_iter=10, tol=0, block_rows=157).fit_transform(
            X
        )
        assert isinstance(W, da.Array)
        Wt = est.transform(X)
        assert isinstance(Wt, da.Array) and Wt.shape == (157, 3)
    np.testing.assert_allclose(W.compute(), W_np, rtol=1e-10)


def test_inverse_transform(V_small):
    est = NMF(3, init="random", random_state=0, max_iter=50)
    W = quiet(est.fit_transform, V_small)
    np.testing.assert_allclose(est.inverse_transform(W), W @ est.components_)
    Wd = da.from_array(W, chunks=(50, 3))
    np.testing.assert_allclose(est.inverse_transform(Wd).compute(), W @ est.components_)
    with pytest.raises(ValueError, match="expected"):
        est.inverse_transform(W[:, :2])


def test_sklearn_api_plumbing(V_small):
    est = NMF(3, beta_loss="kullback-leibler", alpha_W=0.1, random_state=3)
    assert est.get_params()["beta_loss"] == "kullback-leibler"
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    twin.set_params(max_iter=5, tol=0)
    assert twin.max_iter == 5
    pipe = make_pipeline(MinMaxScaler(), NMF(2, max_iter=20, tol=0, random_state=0))
    out = pipe.fit_transform(V_small)
    assert out.shape == (157, 2) and (out >= 0).all()
    names = pipe[-1].get_feature_names_out()
    assert list(names) == ["nmf0", "nmf1"]


def test_n_components_none_means_n_features(rng):
    X = rng.random((30, 6))
    est = quiet(NMF(max_iter=5).fit, X)
    assert est.components_.shape == (6, 6)


def test_convergence_warning_when_max_iter_stops(V_small):
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 3"):
        NMF(3, max_iter=3, random_state=0).fit(V_small)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        NMF(3, max_iter=3, tol=0, random_state=0).fit(V_small)


def test_unfitted_transform_raises(V_small):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        NMF(3).transform(V_small)


def test_transform_checks_width(V_small):
    est = NMF(3, max_iter=5, tol=0).fit(V_small)
    with pytest.raises(ValueError, match="41 features"):
        est.transform(V_small[:, :10])
