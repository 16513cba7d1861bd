"""Missing values: fits of the observed entries only (``missing=``), against the
weighted NumPy reference, through every entry point."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import (
    BOUNDS,
    fit_from,
    make_low_rank,
    one_pass,
    reference_masked_mu,
    write_zarr,
)

import dask_nmf
from dask_nmf import kernels_masked as km
from dask_nmf.io import InputError
from dask_nmf.options import FitOptions
from dask_nmf.solvers import (
    FrobeniusMU,
    MaskedFrobeniusMU,
    MaskedKullbackLeiblerMU,
    Regularization,
)

BETAS = ["frobenius", "kullback-leibler"]
BETA = {"frobenius": 2, "kullback-leibler": 1}
REGS = [Regularization(), Regularization(0.3, 0.2, 0.1, 0.4)]


@pytest.fixture
def holes(rng):
    """V_small-like data with 30 % of its entries NaN, the mask, and a start."""
    V = make_low_rank(rng, 157, 41, 4)
    M = rng.random(V.shape) > 0.3
    W, H = rng.random((157, 4)) + 0.1, rng.random((4, 41)) + 0.1
    return np.where(M, V, np.nan), M, (W, H)


def masked_solver(beta, V, reg=None, fill=None):
    stats = km.block_stats(V, fill)
    options = FitOptions(4, beta_loss=beta, missing="nan" if fill is None else fill)
    solver = options.solver_for(V.shape, stats, np.float64)
    if reg is not None:
        solver.reg = reg
    return solver


# -- the solvers, pass by pass ----------------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", REGS)
def test_passes_follow_the_weighted_reference(holes, beta, reg):
    V, M, (W, H) = holes
    solver = masked_solver(beta, V, reg)
    assert isinstance(solver, (MaskedFrobeniusMU, MaskedKullbackLeiblerMU))
    W_ref, H_ref, losses, _ = reference_masked_mu(
        V, M, W, H, BETA[beta], 10, reg.l1_W, reg.l2_W, reg.l1_H, reg.l2_H
    )
    state, before = solver.start(H, loss_unknown=True), []
    for _ in range(10):
        W, state, report = one_pass(solver, V, W, state, bounds=BOUNDS)
        assert report.problem is None
        before.append(report.before)
    np.testing.assert_allclose(W, W_ref, rtol=1e-10)
    np.testing.assert_allclose(state[0], H_ref, rtol=1e-10)
    np.testing.assert_allclose(before[1:], losses[:-1], rtol=1e-10)
    terms = [solver.loss_terms(V[a:b], W[a:b], state[0]) for a, b in BOUNDS]
    sums = {key: sum(t[key] for t in terms) for key in terms[0]}
    assert solver.loss_from_terms(sums, state[0]) == pytest.approx(losses[-1], rel=1e-10)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reg", REGS)
def test_the_cost_never_increases(holes, beta, reg):
    """Lee & Seung's argument with weights: the regularized cost over the observed
    entries decreases at every iteration (the reference and the fit agree on it)."""
    V, M, start = holes
    _, _, losses, penalties = reference_masked_mu(
        V, M, *start, BETA[beta], 60, reg.l1_W, reg.l2_W, reg.l1_H, reg.l2_H
    )
    cost = np.add(losses, penalties)
    assert (np.diff(cost) <= 1e-12 * cost[0]).all() and cost[-1] < 0.9 * cost[0]
    # The fit's own watch (loss + penalty, each pass) would stop it on a rise.
    alpha = 0.002 if reg.l1_W else 0.0
    res = fit_from(V, start, beta, missing="nan", max_iter=60, tol=0, loss_every=1,
                   alpha_W=alpha, l1_ratio=0.5)  # fmt: skip
    history = np.array(res.loss_history)
    if not alpha:
        assert (np.diff(history) <= 1e-12 * history[0]).all()


# -- fits: NumPy, zarr, fill values, masks ------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
def test_fit_equals_the_reference(holes, beta):
    V, M, start = holes
    W_ref, H_ref, losses, _ = reference_masked_mu(V, M, *start, BETA[beta], 15)
    res = fit_from(V, start, beta, missing="nan", max_iter=15, tol=0, loss_every=1, block_rows=50)
    np.testing.assert_allclose(np.asarray(res.W), W_ref, rtol=1e-10)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)
    np.testing.assert_allclose(res.loss_history[1:], losses, rtol=1e-10)
    assert res.params["missing"] == "nan"


def test_zarr_store_with_a_fill_value_reread_every_pass(tmp_path, holes):
    """A store whose missing entries hold -9999, re-read from disk each pass."""
    V, M, start = holes
    path = write_zarr(tmp_path / "V.zarr", np.where(M, V, -9999.0), chunks=(23, 41))
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, *start, 2, 12)
    res = fit_from(
        path, start, "frobenius", missing=-9999, max_iter=12, tol=0, keep_in_memory=False
    )
    np.testing.assert_allclose(np.asarray(res.W), W_ref, rtol=1e-10)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)
    with pytest.raises(InputError, match="negative values"):  # the fill is not missing here
        fit_from(path, start, "frobenius", max_iter=2)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_a_mask_array_names_the_missing_entries(tmp_path, holes, kind):
    V, M, start = holes
    filled = np.where(M, V, 0.0)  # (what V holds where the mask says missing is not read)
    mask = {
        "numpy": lambda: M,
        "dask": lambda: da.from_array(M, chunks=(50, 41)),
        "zarr": lambda: write_zarr(tmp_path / "M.zarr", M, chunks=(50, 41)),
    }[kind]()
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, *start, 1, 8)
    res = fit_from(filled, start, "kullback-leibler", missing=mask, max_iter=8, tol=0)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.W), W_ref, rtol=1e-10)
    assert res.params["missing"] == "mask"
    with pytest.raises(InputError, match="shape"):
        fit_from(filled, start, "frobenius", missing=M[:-1], max_iter=2)
    with pytest.raises(InputError, match="boolean"):
        fit_from(filled, start, "frobenius", missing=M.astype(float), max_iter=2)


def test_no_entry_missing_is_the_unmasked_fit(rng, V_small, start):
    """missing="nan" on complete V dispatches to the plain solver: the same fit exactly."""
    stats = km.block_stats(V_small)
    assert isinstance(
        FitOptions(4, missing="nan").solver_for(V_small.shape, stats, np.float64), FrobeniusMU
    )
    for beta in BETAS:
        a = fit_from(V_small, start, beta, max_iter=10, tol=0)
        b = fit_from(V_small, start, beta, missing="nan", max_iter=10, tol=0)
        np.testing.assert_array_equal(a.H, b.H)
        np.testing.assert_array_equal(np.asarray(a.W), np.asarray(b.W))


@pytest.mark.slow
def test_on_a_cluster_from_a_store(tmp_path, holes, cluster_client):
    V, M, start = holes
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(30, 41))
    W_ref, H_ref, losses, _ = reference_masked_mu(V, M, *start, 2, 12)
    res = fit_from(
        path, start, "frobenius", missing="nan", max_iter=12, tol=0, client=cluster_client,
        keep_in_memory=False, checkpoint=str(tmp_path / "ck.zarr"), checkpoint_every=5,
    )  # fmt: skip
    np.testing.assert_allclose(cluster_client.compute(res.W, sync=True), W_ref, rtol=1e-10)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)
    np.testing.assert_allclose(res.loss_history[1:], losses, rtol=1e-10)


# -- what the fit recovers --------------------------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
def test_30_percent_missing_recovers_a_planted_factorization(beta):
    """A planted rank-6 V (no noise), 30 % of entries missing at random: the fit of
    the observed entries predicts the missing ones about as well as a fit of the
    full data reproduces V (relative errors reported in the README)."""
    rng = np.random.default_rng(7)
    W0, H0 = rng.random((400, 6)), rng.random((6, 120))
    truth = W0 @ H0
    M = rng.random(truth.shape) > 0.3
    kw = dict(init="random", random_state=1, max_iter=400, tol=0)
    full = dask_nmf.factorize(truth, 6, beta_loss=beta, **kw)
    part = dask_nmf.factorize(np.where(M, truth, np.nan), 6, beta_loss=beta, missing="nan", **kw)

    def rel(res, where):
        R = np.asarray(res.W) @ res.H
        return np.linalg.norm((R - truth)[where]) / np.linalg.norm(truth[where])

    full_err, held_out, seen = rel(full, M | ~M), rel(part, ~M), rel(part, M)
    assert full_err < 0.03 and held_out < 0.03 and seen < 0.03
    assert held_out < 3 * full_err + 0.005


def test_an_entirely_missing_row_gets_a_zero_w_row(holes):
    V, M, start = holes
    V[10] = np.nan
    res = fit_from(V, start, "frobenius", missing="nan", max_iter=5, tol=0)
    W = np.asarray(res.W)
    assert np.isfinite(W).all() and not W[10].any() and W[11].any()


# -- inits --------------------------------------------------------------------------------
def test_inits_use_the_observed_entries(holes):
    """Random: scaled by the observed mean.  NNDSVD: the SVD of V with each missing
    entry its column's observed mean (the same start as from that filled V)."""
    from dask_nmf.init import initialize, random_init
    from dask_nmf.io import open_input

    V, M, _ = holes
    stats = km.block_stats(V)
    filled = km.fill_columns(V, stats["col_sum"] / stats["col_count"])
    Vin, Fin = open_input(V, 50), open_input(filled, 50)

    def dense(W):
        return np.vstack([np.asarray(w.compute() if hasattr(w, "compute") else w) for w in W])

    W, H = initialize("nndsvd", Vin, 4, stats, 3, None, missing="nan")
    W_f, H_f = initialize("nndsvd", Fin, 4, km.block_stats(filled), 3, None)
    np.testing.assert_allclose(H, H_f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense(W), dense(W_f), rtol=1e-10, atol=1e-12)
    W, H = initialize("random", Vin, 4, stats, 3, None, missing="nan")
    W_r, H_r = random_init(Vin, 4, np.nanmean(V), 3)
    np.testing.assert_allclose(H, H_r, rtol=1e-12)
    np.testing.assert_allclose(dense(W), dense(W_r), rtol=1e-12)


# -- refusals --------------------------------------------------------------------------------
def test_nan_is_refused_by_default_naming_the_option(holes):
    V, _, start = holes
    with pytest.raises(InputError, match="missing='nan'"):
        fit_from(V, start, "frobenius", max_iter=2)
    with pytest.raises(InputError, match="missing='nan'"):
        dask_nmf.NMF(2, init="random").fit(V)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="cd"), "not row-separable"),
        (dict(beta_loss="itakura-saito"), "frobenius' and 'kullback-leibler'"),
        (dict(accelerate=True), "accelerate"),
        (dict(missing="none"), "missing must be"),
        (dict(missing=float("inf")), "missing must be"),
    ],
)
def test_options_refused_with_missing_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        FitOptions(3, **{"missing": "nan", **kwargs})


def test_sparse_and_all_missing_refused(holes):
    import scipy.sparse as sp

    V, _, _ = holes
    with pytest.raises(InputError, match="sparse"):
        dask_nmf.factorize(sp.csr_matrix(np.nan_to_num(V)), 2, missing="nan")
    with pytest.raises(InputError, match="no observed entry"):
        dask_nmf.factorize(np.full((20, 5), np.nan), 2, missing="nan", init="random")
    V[0, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        dask_nmf.factorize(V, 2, missing="nan", init="random")


def test_resume_with_another_missing_is_refused(tmp_path, holes):
    V, M, start = holes
    ck = str(tmp_path / "ck.zarr")
    fit_from(V, start, "frobenius", missing="nan", max_iter=3, tol=0, checkpoint=ck)
    with pytest.raises(InputError, match="missing"):
        fit_from(np.where(M, V, -1.0), start, "frobenius", missing=-1.0, max_iter=6, checkpoint=ck,
                 resume=True)  # fmt: skip
    res = fit_from(V, start, "frobenius", missing="nan", max_iter=6, tol=0, checkpoint=ck,
                   resume=True)  # fmt: skip
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, *start, 2, 6)
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)


def test_resume_with_another_mask_is_refused(tmp_path, holes):
    """Two masks that differ only where V is 0: the same sum and ||V||^2 over the
    observed entries, yet another problem; the resume says so."""
    V, M, start = holes
    filled = np.where(M, V, 0.0)
    filled[:, 2] = 0.0  # (V_small's zero column: observed or not, the sums agree)
    other = M.copy()
    other[:, 2] = ~other[:, 2]
    ck = str(tmp_path / "ck.zarr")
    fit_from(filled, start, "frobenius", missing=M, max_iter=3, tol=0, checkpoint=ck)
    with pytest.raises(InputError, match="another set of V's entries is missing"):
        fit_from(filled, start, "frobenius", missing=other, max_iter=6, checkpoint=ck,
                 resume=True)  # fmt: skip
    res = fit_from(filled, start, "frobenius", missing=M, max_iter=6, tol=0, checkpoint=ck,
                   resume=True)  # fmt: skip
    assert res.n_iter == 6


def test_a_mask_for_an_array_in_a_group(tmp_path, holes):
    """missing=<mask> with array= naming V inside a zarr group (an AnnData layer,
    a group of several arrays): the mask applies to that array."""
    import zarr

    V, M, start = holes
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("V", shape=V.shape, chunks=(50, 41), dtype=V.dtype)[...] = np.where(M, V, 0)
    group.create_array("other", shape=(3,), dtype="f8")
    W_ref, H_ref, _, _ = reference_masked_mu(V, M, *start, 2, 5)
    res = fit_from(str(tmp_path / "g.zarr"), start, "frobenius", array="V", missing=M,
                   max_iter=5, tol=0)  # fmt: skip
    np.testing.assert_allclose(res.H, H_ref, rtol=1e-10)


def test_sparse_v_with_a_mask_and_nan_spelled_otherwise(holes):
    import scipy.sparse as sp

    V, M, start = holes
    with pytest.raises(InputError, match="missing= is not supported for sparse V"):
        dask_nmf.factorize(sp.csr_matrix(np.nan_to_num(V)), 2, missing=M)
    a = fit_from(V, start, "frobenius", missing="NaN", max_iter=3, tol=0)
    b = fit_from(V, start, "frobenius", missing="nan", max_iter=3, tol=0)
    np.testing.assert_array_equal(a.H, b.H)


# -- entry points ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
def test_estimator_and_transform_fit_observed_entries(holes, beta):
    V, M, _ = holes
    est = dask_nmf.NMF(4, beta_loss=beta, missing="nan", init="random", random_state=0, tol=0,
                       max_iter=30)  # fmt: skip
    W = est.fit_transform(V)
    assert np.isfinite(W).all() and np.isfinite(est.reconstruction_err_)
    # transform: MU on W alone over each row's observed entries.
    H = est.components_
    W_t = est.transform(V[:20])
    w0 = np.sqrt(np.nanmean(V[:20]) / 4)
    W_ref = np.full((20, 4), w0)
    for _ in range(est.max_iter):
        W_ref = (km.frobenius_w_update if beta == "frobenius" else km.kl_w_update)(
            V[:20], M[:20], W_ref, H
        )
    np.testing.assert_allclose(W_t, W_ref, rtol=1e-10)


def test_xarray_where_gives_the_missing_entries(rng):
    xr = pytest.importorskip("xarray")
    abund, spectra = rng.random((8, 9, 3)), rng.random((3, 12))
    cube = xr.DataArray(np.einsum("yxk,kb->yxb", abund, spectra), dims=("y", "x", "band"))
    clouds = xr.DataArray(rng.random((8, 9)) > 0.8, dims=("y", "x"))
    masked = cube.where(~clouds)  # NaN over every band of a cloudy pixel
    res = dask_nmf.factorize(masked, 3, sample_dims=("y", "x"), feature_dims="band",
                             missing="nan", init="random", random_state=0, max_iter=300, tol=0)  # fmt: skip
    assert "component" in res.W.unstack().dims
    values = masked.stack(s=("y", "x")).transpose("s", "band").values
    M = ~np.isnan(values)
    assert np.isfinite(res.H.values).all()
    W_np = res.W.values
    assert not W_np[~M.any(axis=1)].any()  # cloudy pixels: no observed band, zero abundances
    plain = dask_nmf.factorize(values, 3, missing="nan", init="random", random_state=0,
                               max_iter=300, tol=0, block_rows=res.params["block_rows"])  # fmt: skip
    np.testing.assert_allclose(W_np, np.asarray(plain.W), rtol=1e-10, atol=1e-14)
    resid = (W_np @ res.H.values - values)[M]
    assert np.linalg.norm(resid) < 0.05 * np.linalg.norm(values[M])


@pytest.mark.slow
def test_cli_missing_and_mask(tmp_path, holes, cluster_client):
    from dask_nmf.cli import cli

    V, M, _ = holes
    store = write_zarr(tmp_path / "V.zarr", V, chunks=(40, 41))
    out = str(tmp_path / "out.zarr")
    address = cluster_client.scheduler.address
    common = ["-k", "4", "--init", "random", "--seed", "0", "--max-iter", "20", "--tol", "0"]
    r = CliRunner().invoke(cli, ["fit", store, "-o", out, *common, "--scheduler", address,
                                 "--missing", "nan", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = dask_nmf.load(out)
    direct = dask_nmf.factorize(V, 4, init="random", random_state=0, max_iter=20, tol=0,
                                missing="nan", block_rows=res.params["block_rows"])  # fmt: skip
    np.testing.assert_allclose(res.H, direct.H, rtol=1e-9)
    # A separate mask store (True = observed) over a V with zeros in the holes.
    vstore = write_zarr(tmp_path / "V0.zarr", np.where(M, V, 0.0), chunks=(40, 41))
    mstore = write_zarr(tmp_path / "M.zarr", M, chunks=(40, 41))
    out2 = str(tmp_path / "out2.zarr")
    r = CliRunner().invoke(cli, ["fit", vstore, "-o", out2, *common, "--scheduler", address,
                                 "--mask", mstore, "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(dask_nmf.load(out2).H, direct.H, rtol=1e-9)
    assert zarr.open_array(mstore, mode="r").dtype == bool
    r = CliRunner().invoke(cli, ["fit", store, "-o", str(tmp_path / "o3.zarr"), *common,
                                 "--scheduler", address, "--missing", "abc"])  # fmt: skip
    assert r.exit_code == 2 and "--missing must be" in r.output
