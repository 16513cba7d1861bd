"""Labelled input: xarray DataArrays and Datasets (also from zarr), labelled results."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import dask_nmf
from dask_nmf.cli import cli
from dask_nmf.io import InputError


@pytest.fixture
def cube(rng):
    """A small 'hyperspectral' cube: y x x pixels, 9 bands, rank 3."""
    abund = rng.random((6, 7, 3))
    spectra = rng.random((3, 9))
    data = np.einsum("yxk,kb->yxb", abund, spectra)
    return xr.DataArray(
        data,
        dims=("y", "x", "band"),
        name="refl",
        coords={"y": np.arange(6) * 2.0, "x": np.arange(7) * 3.0, "band": np.linspace(400, 800, 9)},
    )


def test_cube_gives_labelled_maps(cube):
    res = dask_nmf.factorize(
        cube,
        3,
        sample_dims=("y", "x"),
        feature_dims="band",
        init="random",
        random_state=0,
        max_iter=30,
        tol=0,
    )
    maps = res.W.unstack()
    assert maps.dims == ("component", "y", "x")
    np.testing.assert_array_equal(maps["x"], cube["x"])
    np.testing.assert_array_equal(res.H["band"], cube["band"])
    # the same numbers as the plain 2-D matrix
    plain = dask_nmf.factorize(
        cube.values.reshape(42, 9),
        3,
        init="random",
        random_state=0,
        max_iter=30,
        tol=0,
        block_rows=res.params["block_rows"],
    )
    np.testing.assert_allclose(res.H.values, plain.H, rtol=1e-12)
    np.testing.assert_allclose(res.W.values, plain.W.compute(), rtol=1e-12)


def test_two_dim_dataarray_and_feature_dims_only(cube):
    spectra = cube.stack(pixel=("y", "x")).transpose("pixel", "band")
    res = dask_nmf.factorize(spectra.reset_index("pixel"), 2, init="random", max_iter=5)
    assert res.W.dims == ("pixel", "component") and res.H.dims == ("component", "band")
    res = dask_nmf.factorize(cube, 2, feature_dims=["band"], init="random", max_iter=5)
    assert res.W.unstack().dims == ("component", "y", "x")


def test_dataset_from_zarr_and_the_cli(tmp_path, cube):
    path = str(tmp_path / "cube.zarr")
    cube.to_dataset().chunk({"y": 3}).to_zarr(path, consolidated=False)
    ds = xr.open_zarr(path, consolidated=False)
    res = dask_nmf.factorize(
        ds,
        3,
        variable="refl",
        sample_dims=("y", "x"),
        init="random",
        random_state=0,
        max_iter=10,
        tol=0,
        block_rows=21,
    )
    by_path = dask_nmf.factorize(
        path,
        3,
        variable="refl",
        sample_dims=("y", "x"),
        init="random",
        random_state=0,
        max_iter=10,
        tol=0,
        block_rows=21,
    )
    np.testing.assert_allclose(res.H.values, by_path.H.values, rtol=1e-12)
    assert by_path.source["variable"] == "refl" and by_path.source["sample_dims"] == ["y", "x"]
    out = str(tmp_path / "out.zarr")
    r = CliRunner().invoke(
        cli,
        [
            "fit",
            path,
            "-k",
            "3",
            "-o",
            out,
            "--variable",
            "refl",
            "--sample-dims",
            "y,x",
            "--feature-dims",
            "band",
            "-q",
            "--max-iter",
            "10",
            "--tol",
            "0",
            "--seed",
            "0",
            "--block-rows",
            "21",
            "--n-workers",
            "1",
            "--init",
            "random",
        ],
    )
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(dask_nmf.load(out).H, by_path.H.values, rtol=1e-9)


def test_estimator_keeps_labels(cube):
    est = dask_nmf.NMF(3, max_iter=10, tol=0, random_state=0)
    W = est.fit_transform(cube.isel(y=0))
    assert isinstance(W, xr.DataArray) and W.dims == ("x", "component")
    assert isinstance(est.components_, np.ndarray)
    assert est.transform(cube.isel(y=1)).dims == ("x", "component")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "say which are samples"),
        ({"sample_dims": ("y", "t")}, "no dimension"),
        ({"sample_dims": ("y",), "feature_dims": ("band",)}, "must split"),
        ({"variable": "refl"}, "applies to a Dataset"),
    ],
)
def test_bad_dims(cube, kwargs, message):
    with pytest.raises(InputError, match=message):
        dask_nmf.factorize(cube, 2, **kwargs)


def test_dataset_needs_a_variable(cube):
    ds = xr.Dataset({"a": cube, "b": cube * 2})
    with pytest.raises(InputError, match="say which one"):
        dask_nmf.factorize(ds, 2, sample_dims=("y", "x"))
    with pytest.raises(InputError, match="no variable 'c'"):
        dask_nmf.factorize(ds, 2, variable="c", sample_dims=("y", "x"))


def test_one_feature_dim_keeps_its_name_several_are_stacked(cube, rng):
    res = dask_nmf.factorize(cube, 2, sample_dims=("y", "x"), init="random", max_iter=5)
    assert res.H.dims == ("component", "band")
    np.testing.assert_array_equal(res.H["band"], cube["band"])
    assert res.W.dims == ("sample", "component")
    # two feature dims: H's columns are a MultiIndex of them, unstacked back
    pol = xr.concat([cube, 2 * cube], dim=xr.DataArray(["h", "v"], dims="pol", name="pol"))
    res = dask_nmf.factorize(pol, 2, sample_dims=("y", "x"), init="random", max_iter=5)
    assert res.H.dims == ("component", "feature")
    spectra = res.H.unstack("feature")
    assert spectra.dims == ("component", "pol", "band")
    np.testing.assert_array_equal(spectra["pol"], ["h", "v"])


@pytest.fixture
def cube_later(cube, rng):
    """Another scene of the same bands."""
    return cube.copy(data=rng.random(cube.shape) * cube.values.mean())


def test_estimator_transform_of_a_cube(cube, cube_later):
    kw = dict(init="random", random_state=0, max_iter=30, tol=0, block_rows=14)
    est = dask_nmf.NMF(3, **kw)
    W_fit = est.fit_transform(cube, sample_dims=("y", "x"))
    assert W_fit.unstack().dims == ("component", "y", "x")
    W = est.transform(cube_later, sample_dims=("y", "x"))
    assert isinstance(W, xr.DataArray) and W.unstack().dims == ("component", "y", "x")
    np.testing.assert_array_equal(W.unstack()["x"], cube["x"])
    # the same numbers as the plain matrix with the same H, and the fit's dims by default
    plain = est.transform(cube_later.values.reshape(42, 9))
    np.testing.assert_allclose(W.values, plain, rtol=1e-10)
    np.testing.assert_allclose(est.transform(cube_later).values, plain, rtol=1e-10)
    by_feature = est.transform(cube_later, feature_dims="band")
    np.testing.assert_allclose(by_feature.values, plain, rtol=1e-10)


def test_transform_function_with_a_labelled_H(cube, cube_later):
    res = dask_nmf.factorize(cube, 3, sample_dims=("y", "x"), init="random", max_iter=20)
    W = dask_nmf.transform(cube_later.transpose("band", "x", "y"), res.H, block_rows=14)
    assert W.unstack().dims == ("component", "x", "y")
    plain = dask_nmf.transform(
        cube_later.transpose("x", "y", "band").values.reshape(42, 9), res.H.values, block_rows=14
    )
    np.testing.assert_allclose(W.values, plain.compute(), rtol=1e-10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.assign_coords(band=c["band"] + 1.0), "coordinate differs from H's"),
        (lambda c: c.isel(band=slice(None, None, -1)), "coordinate differs from H's"),
        (lambda c: c.rename(band="wavelength"), "no dimension"),
    ],
)
def test_transform_refuses_other_features(cube, change, message):
    est = dask_nmf.NMF(2, init="random", max_iter=5, tol=0).fit(cube, sample_dims=("y", "x"))
    with pytest.raises(InputError, match=message):
        est.transform(change(cube))
    with pytest.raises(InputError, match=message):
        dask_nmf.transform(change(cube), est.result_.H)


@pytest.mark.slow
def test_cli_transform_of_a_cube(tmp_path, cube, cube_later):
    path, later = str(tmp_path / "cube.zarr"), str(tmp_path / "later.zarr")
    cube.to_dataset().to_zarr(path, consolidated=False)
    cube_later.to_dataset().to_zarr(later, consolidated=False)
    model, out = str(tmp_path / "model.zarr"), str(tmp_path / "W.zarr")
    dims = ["--variable", "refl", "--sample-dims", "y,x", "--feature-dims", "band"]
    common = ["-q", "--block-rows", "14", "--n-workers", "1"]
    r = CliRunner().invoke(
        cli,
        ["fit", path, "-k", "3", "-o", model, "--init", "random", "--seed", "0"] + dims + common,
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["transform", later, "--model", model, "-o", out] + dims + common)
    assert r.exit_code == 0, r.output
    est = dask_nmf.NMF.load(model).set_params(block_rows=14)
    expected = est.transform(cube_later.values.reshape(42, 9))
    import zarr

    np.testing.assert_allclose(zarr.open_array(out, mode="r")[...], expected, rtol=1e-10)
