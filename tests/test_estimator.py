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


# -- scikit-learn's behaviour (issue: "Behave exactly like scikit-learn's NMF") --


def test_transform_checks_n_features_in_like_sklearn(V_small, tmp_path):
    est = NMF(3, max_iter=5, tol=0).fit(V_small)
    assert est.n_features_in_ == 41
    msg = "X has 10 features, but NMF is expecting 41 features as input"
    for X in (V_small[:, :10], da.from_array(V_small[:, :10], chunks=(50, 10))):
        with pytest.raises(ValueError, match=msg):
            est.transform(X)


def test_input_errors_carry_sklearns_phrases(V_small, tmp_path):
    bad = {
        "Negative values in data passed to": -V_small,
        "Complex data not supported": V_small.astype(complex),
        "Reshape your data": V_small[0],
        r"0 feature\(s\) \(shape=\(157, 0\)\) while a minimum of 1 is required": V_small[:, :0],
        r"0 sample\(s\)": V_small[:0],
        "contains NaN": np.where(V_small > 0.5, np.nan, V_small),
    }
    for phrase, X in bad.items():
        for Xin in (X, da.from_array(X)):  # in memory (sklearn's helpers) and lazy (ours)
            with pytest.raises(ValueError, match=phrase):
                NMF(2, max_iter=5).fit(Xin)
    store = write_zarr(tmp_path / "neg.zarr", -V_small, (40, 41))
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        NMF(2, max_iter=5).fit(store)


def test_parameter_errors_give_our_wording_and_sklearns():
    from sklearn.utils._param_validation import InvalidParameterError

    from dask_nmf import InputError

    X = np.ones((5, 4))
    with pytest.raises(InvalidParameterError) as info:
        NMF(n_components=0).fit(X)
    assert isinstance(info.value, InputError)
    assert "n_components must be a positive integer; got 0" in str(info.value)
    assert "The 'n_components' parameter of NMF must be" in str(info.value)
    # only one side knows the parameter's rule: its message alone
    with pytest.raises(InvalidParameterError, match="The 'verbose' parameter of NMF must be"):
        NMF(verbose="loud").fit(X)
    with pytest.raises(ValueError, match="unknown beta_loss 'itakura'"):
        NMF(beta_loss="itakura").fit(X)
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        NMF(block_rows=0).fit(X)


def test_sparse_input_is_tagged_and_accepted(V_small):
    import scipy.sparse as sp

    assert NMF().__sklearn_tags__().input_tags.sparse
    est = NMF(3, init="random", random_state=0, max_iter=10, tol=0)
    W = est.fit_transform(V_small)
    for container in (sp.csr_matrix, sp.csc_array, sp.coo_array, sp.csr_array):
        W_sp = clone(est).fit_transform(container(V_small))
        np.testing.assert_allclose(W_sp, W, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("init", [None, "nndsvd", "nndsvda", "nndsvdar"])
def test_scipy_sparse_arrays_with_nndsvd(V_small, init):
    import scipy.sparse as sp

    kw = dict(init=init, random_state=0, max_iter=5, tol=0)
    W = quiet(NMF(3, **kw).fit_transform, sp.csr_matrix(V_small))
    for container in (sp.csr_array, sp.csc_array, sp.coo_array):
        np.testing.assert_allclose(
            quiet(NMF(3, **kw).fit_transform, container(V_small)), W, rtol=1e-7, atol=1e-10
        )


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_needs_k_at_most_min_shape(init):
    X = np.ones((6, 4))
    msg = rf"init = '{init}' can only be used when n_components <= min\(n_samples, n_features\)"
    for Xin in (X, da.from_array(X)):
        with pytest.raises(ValueError, match=msg):
            NMF(5, init=init).fit(Xin)
    NMF(5, max_iter=5).fit(X)  # the default then is init="random", as in scikit-learn


def test_float32_fit_starts_where_float64_does(rng):
    X = rng.random((60, 12)) + 0.01
    est64 = NMF(4, max_iter=1, tol=0, random_state=0)
    est32 = NMF(4, max_iter=1, tol=0, random_state=0)
    W64, W32 = est64.fit_transform(X), est32.fit_transform(X.astype(np.float32))
    assert W32.dtype == np.float32 and est32.components_.dtype == np.float32
    np.testing.assert_allclose(W32, W64, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(est32.components_, est64.components_, rtol=2e-5, atol=1e-6)


def test_dtype_rules_follow_sklearn(rng):
    X = rng.random((20, 6))
    W0, H0 = rng.random((20, 2)) + 0.1, rng.random((2, 6)) + 0.1
    for W, H in (
        (W0.astype(np.float32), H0),
        (W0, H0.astype(np.float32)),
        (W0.astype(int) + 1, H0),
    ):
        with pytest.raises(TypeError, match="should have the same dtype as X"):
            NMF(2, init="custom").fit(X, W=W, H=H)
    with pytest.raises(TypeError, match="should have the same dtype as X"):
        NMF(2, init="custom").fit(X.astype(np.float32), W=W0, H=H0)
    NMF(2, init="custom", max_iter=5).fit((X * 10).astype(int), W=W0, H=H0)  # int X -> float64
    est32 = quiet(NMF(2, max_iter=5).fit, X.astype(np.float32))
    with pytest.raises(TypeError, match="H should have the same dtype as X"):
        est32.transform(X)
    with pytest.raises(TypeError, match="H should have the same dtype as X"):
        est32.transform(da.from_array(X))
    assert est32.transform(X.astype(np.float32)).dtype == np.float32
    est64 = quiet(NMF(2, max_iter=5).fit, X)
    assert est64.transform((X * 10).astype(np.int32)).dtype == np.float64
    with pytest.raises(TypeError, match="H should have the same dtype as X"):
        est64.transform(X.astype(np.float32))


def test_object_and_list_input_like_sklearn(rng):
    X = rng.random((10, 4))
    W = quiet(NMF(2, max_iter=5, random_state=0).fit_transform, X)
    for Xin in (X.astype(object), X.tolist()):
        W2 = quiet(NMF(2, max_iter=5, random_state=0).fit_transform, Xin)
        assert W2.dtype == np.float64
        np.testing.assert_allclose(W2, W)


def test_w_h_not_used_is_a_runtime_warning(rng):
    X = rng.random((6, 5))
    with pytest.warns(RuntimeWarning, match="When init!='custom', provided W or H are ignored"):
        NMF(2, max_iter=5, tol=0).fit(X, W=rng.random((6, 2)))


def test_custom_factor_shape_errors(rng):
    X = rng.random((6, 5))
    H = rng.random((2, 5))
    est = NMF(2, init="custom")
    with pytest.raises(ValueError, match="Array with wrong first dimension passed to NMF"):
        est.fit(X, W=rng.random((5, 2)), H=H)
    with pytest.raises(ValueError, match="Array with wrong second dimension passed to NMF"):
        est.fit(X, W=rng.random((6, 3)), H=H)
    with pytest.raises(ValueError, match=r"Negative values in data passed to NMF \(input H\)"):
        est.fit(X, W=rng.random((6, 2)), H=-H)
    with pytest.raises(ValueError, match=r"Array passed to NMF \(input H\) is full of zeros"):
        est.fit(X, W=rng.random((6, 2)), H=0 * H)


def test_n_components_auto(rng):
    X = rng.random((6, 5))
    assert NMF().n_components == "auto"  # scikit-learn's default
    est = quiet(NMF(max_iter=5).fit, X)
    assert est.n_components_ == 5
    W, H = rng.random((6, 2)), rng.random((2, 5))
    est = NMF(init="custom", max_iter=5, tol=0).fit(X, W=W, H=H)
    assert est.n_components_ == est._n_components == 2


def test_feature_names_in_from_a_dataframe(rng):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(rng.random((20, 4)), columns=["a", "b", "c", "d"])
    est = quiet(NMF(2, max_iter=5).fit, X)
    assert list(est.feature_names_in_) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="feature names should match"):
        est.transform(X[["d", "c", "b", "a"]])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        est.transform(X.to_numpy())
    quiet(est.fit, da.from_array(X.to_numpy()))  # a fit without names forgets them
    assert not hasattr(est, "feature_names_in_")


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_convergence_warning_points_at_the_callers_line(V_small, method):
    est = NMF(4, max_iter=15, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(est, method)(V_small)
    found = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(found) == 1
    # This line, not a line inside dask_nmf or scikit-learn's set_output wrapper.
    assert found[0].filename == __file__
    assert est.stop_reason_.startswith("max_iter reached (15 iterations) before tol was met")
    assert est.stop_reason_ in str(found[0].message)
    assert "Maximum number of iterations 15 reached" in str(found[0].message)  # (scikit-learn's)
