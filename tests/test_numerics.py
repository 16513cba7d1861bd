"""Numbers the fit can trust: losses that keep their digits near an exact fit, and
errors -- never a "converged" result -- when V changes under the fit, its scale is
beyond the dtype, or the options are not finite."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import fit_from, make_low_rank, reference_loss, reference_mu, write_zarr

import dask_nmf
from dask_nmf.cli import cli
from dask_nmf.cli_session import Abort, fail_on_input_errors
from dask_nmf.io import InputError
from dask_nmf.loop import FitError

COSTS = ["frobenius", "kullback-leibler"]
DTYPES = [np.float32, np.float64]


def exact_low_rank(rng, m=90, n=30, k=2):
    return (rng.random((m, k)) + 0.1) @ (rng.random((k, n)) + 0.1)


@pytest.mark.parametrize("block_rows", [90, 25])
def test_frobenius_loss_keeps_its_digits_near_an_exact_fit(tmp_path, rng, block_rows):
    """On an exactly rank-2 V the loss falls to ~1e-20 of ||V||^2; the expansion
    ||V||^2 - 2<W^T V, H> + <W^T W, H H^T> would report rounding noise there."""
    Wt, Ht = rng.random((90, 2)) + 0.1, rng.random((2, 30)) + 0.1
    V = Wt @ Ht
    # A start near the exact factors: the loss reaches ~1e-25 ||V||^2.
    W0, H0 = Wt * (1 + 0.01 * rng.random(Wt.shape)), Ht * (1 + 0.01 * rng.random(Ht.shape))
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(30, 30))
    res = dask_nmf.factorize(
        path,
        2,
        W_init=W0,
        H_init=H0,
        max_iter=300,
        tol=0,
        block_rows=block_rows,
        keep_in_memory=False,
    )
    _, _, expected = reference_mu(V, W0, H0, 2, 300)
    losses = np.array(res.loss_history)
    assert losses[-1] < 1e-18 * (V**2).sum()  # deep in the regime the expansion cannot see
    true = reference_loss(V, res.W.compute(), res.H, 2)
    assert losses[-1] == pytest.approx(true, rel=1e-6)
    # Every iteration's loss, not only the last, agrees with a direct computation
    # (the reference's own rounding is ~1e-16 ||V|| ||V - WH||).
    atol = 1e-14 * np.sqrt((V**2).sum()) * np.sqrt(np.maximum(losses[1:], 0))
    np.testing.assert_allclose(losses[1:], expected, rtol=1e-6, atol=atol.max())
    assert np.all(np.diff(losses) <= 1e-8 * losses[0])


def test_final_loss_of_a_deferred_state_is_direct(rng):
    """Stopped by max_iter in the direct regime, the last loss needs its own pass."""
    V = exact_low_rank(rng)
    res = dask_nmf.factorize(V, 2, init="nndsvda", max_iter=7, tol=0, block_rows=40)
    true = reference_loss(V, res.W.compute(), res.H, 2)
    assert len(res.loss_history) == 8
    assert res.loss_history[-1] == pytest.approx(true, rel=1e-6, abs=1e-25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_and_float64_losses_are_those_of_their_factors(rng, dtype):
    V = make_low_rank(rng, 120, 40, 3, noise=1e-3, zeros=False).astype(dtype)
    res = dask_nmf.factorize(V, 3, init="nndsvda", max_iter=60, tol=0, block_rows=50)
    W, H = res.W.compute().astype(np.float64), res.H.astype(np.float64)
    true = reference_loss(V.astype(np.float64), W, H, 2)
    assert res.loss_history[-1] == pytest.approx(true, rel=1e-3 if dtype == np.float32 else 1e-8)


def delete_some_chunks(path: str, rows_of_chunks: list[int]) -> None:
    """Remove V's chunks in these chunk rows (zarr v3 layout: c/<row>/<col>)."""
    for row in rows_of_chunks:
        shutil.rmtree(Path(path) / "c" / str(row))


def refit_store(path: str, beta_loss: str, callback, **kw):
    """A fit that re-reads V from ``path`` every pass, with ``callback`` changing it."""
    return dask_nmf.factorize(
        path,
        3,
        beta_loss=beta_loss,
        init="random",
        random_state=0,
        max_iter=40,
        tol=0,
        block_rows=40,
        keep_in_memory=False,
        callback=callback,
        **kw,
    )


@pytest.mark.parametrize("beta_loss", COSTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_deleted_mid_fit_stop_it(tmp_path, rng, beta_loss, dtype):
    """A re-read V that loses chunks (read back as zeros) is not a V the cost was
    decreasing for: the fit must fail, not end "converged"."""
    V = make_low_rank(rng, 160, 40, 3, zeros=False).astype(dtype)
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(20, 40))
    seen = []

    def callback(it, loss):
        seen.append(it)
        if it == 3:
            delete_some_chunks(path, [0, 1, 2])

    with pytest.raises(FitError, match="iteration") as err:
        refit_store(path, beta_loss, callback)
    assert "V changed" in str(err.value)
    assert max(seen) < 40


@pytest.mark.parametrize("beta_loss", COSTS)
def test_chunk_overwritten_with_nan_mid_fit(tmp_path, rng, beta_loss):
    V = make_low_rank(rng, 160, 40, 3, zeros=False)
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(20, 40))

    def callback(it, loss):
        if it == 2:
            zarr.open_array(path, mode="r+")[20:40] = np.nan

    with pytest.raises(FitError, match="NaN|nan"):
        refit_store(path, beta_loss, callback, loss_every=1)


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (1e300, None, "too large"),
        (1e-300, None, "too small"),
        (1e-30, "float32", "too small"),
        (np.uint64(2**64 - 1), "float32", "too large"),
        (0.0, None, "all zeros"),
    ],
)
@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_scale_beyond_the_dtype_is_refused(tmp_path, rng, values, dtype, message, kind):
    base = rng.random((40, 10)) + 0.5
    V = (base * values) if not isinstance(values, np.uint64) else np.full((40, 10), values)
    if kind == "zarr":
        V = write_zarr(tmp_path / "V.zarr", V, chunks=(10, 10))
    with pytest.raises(InputError, match=message):
        dask_nmf.factorize(V, 2, dtype=dtype, max_iter=5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scales_within_the_dtype_still_fit(rng, dtype):
    """Small and large V that the dtype can carry still fit."""
    V = make_low_rank(rng, 60, 20, 2, zeros=False)
    base = dask_nmf.factorize(V.astype(dtype), 2, max_iter=30, tol=0)
    expected = base.reconstruction_err / np.linalg.norm(V)
    for scale in [1e-6, 1e6] if dtype == np.float32 else [1e-100, 1e50]:
        res = dask_nmf.factorize((V * scale).astype(dtype), 2, max_iter=30, tol=0)
        relative = res.reconstruction_err / (np.linalg.norm(V) * scale)
        assert np.all(np.isfinite(res.H))
        # (Not equal: the init's and the updates' absolute guards, float32 eps, do
        # not scale with V; scikit-learn's neither.)
        assert relative < 2 * expected


@pytest.mark.parametrize(
    "option",
    [
        {"alpha_W": math.inf},
        {"alpha_W": math.nan},
        {"alpha_H": math.inf},
        {"l1_ratio": math.nan},
        {"tol": math.inf},
        {"tol": math.nan},
    ],
)
def test_non_finite_options_are_refused(V_small, option):
    name = next(iter(option))
    with pytest.raises(InputError, match=name):
        dask_nmf.factorize(V_small, 3, **option)
    with pytest.raises(InputError, match=name):
        dask_nmf.NMF(3, **option).fit(V_small)


@pytest.mark.parametrize("beta_loss", COSTS)
def test_regularized_cost_is_what_never_rises(V_small, start, beta_loss):
    """With penalties the data term alone may rise; the regularized cost may not,
    and a healthy regularized fit is not stopped."""
    res = fit_from(
        V_small, start, beta_loss, max_iter=60, tol=0, alpha_W=0.05, l1_ratio=0.5, loss_every=1
    )
    assert res.n_iter == 60 and np.all(np.isfinite(res.loss_history))


def test_cli_refuses_inf_alpha_before_starting_a_cluster(tmp_path, V_small):
    store = write_zarr(tmp_path / "V.zarr", V_small, chunks=(40, 41))
    r = CliRunner().invoke(
        cli, ["fit", store, "-k", "3", "-o", str(tmp_path / "o.zarr"), "--alpha-w", "inf"]
    )
    assert r.exit_code == 2
    assert "alpha_W must be a finite number" in r.output
    assert "LocalCluster" not in r.output
    assert not (tmp_path / "o.zarr").exists()


def test_cli_turns_fit_errors_into_exit_2():
    def broken():
        raise FitError("the fit broke down at iteration 7: H is all zeros; rescale V")

    with pytest.raises(Abort, match="iteration 7") as err:
        fail_on_input_errors(broken)
    assert err.value.exit_code == 2


def test_regularization_strong_enough_to_zero_the_factors_warns():
    """Zero factors are the answer of a strongly penalized problem (as in
    scikit-learn): a warning, not an error."""
    V = np.abs(np.random.default_rng(0).standard_normal((6, 5)))
    with pytest.warns(UserWarning, match="strong enough to zero the factors"):
        res = dask_nmf.factorize(V, 3, alpha_W=0.5, l1_ratio=1.0, init="random", random_state=0)
    assert not res.H.any()
