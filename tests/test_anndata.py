"""AnnData stores written by the real ``anndata`` package (zarr formats 2 and 3): X dense
or CSR, layers, obs/var names carried to W and H, CSC and missing matrices refused."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr
from click.testing import CliRunner
from conftest import make_low_rank

import dask_nmf
from dask_nmf.cli import cli
from dask_nmf.io import InputError, open_input

FIT = dict(init="random", random_state=0, max_iter=15, tol=0, block_rows=40)


@pytest.fixture
def counts(rng):
    """A 97 x 23 non-negative matrix, a third of its entries zero (sparse-like)."""
    V = make_low_rank(rng, 97, 23, 3)
    V[rng.random(V.shape) < 0.3] = 0.0
    return V


def write_anndata(path, X, zarr_format=2, layers=None):
    """Write an AnnData with named cells and genes through ``anndata.write_zarr``."""
    m, n = X.shape if X is not None else next(iter(layers.values())).shape
    adata = anndata.AnnData(
        X=X,
        obs={"n": np.arange(m)},
        var={"g": np.arange(n)},
    )
    adata.obs_names = [f"cell{i}" for i in range(m)]
    adata.var_names = [f"gene{j}" for j in range(n)]
    for name, layer in (layers or {}).items():
        adata.layers[name] = layer
    with warnings.catch_warnings(), anndata.settings.override(zarr_write_format=zarr_format):
        warnings.simplefilter("ignore")  # (anndata's own deprecation notices)
        adata.write_zarr(str(path))
    return str(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("array", [None, "X"])
def test_X_of_an_anndata_store(tmp_path, counts, zarr_format, kind, array):
    X = counts if kind == "dense" else sp.csr_matrix(counts)
    path = write_anndata(tmp_path / "adata.zarr", X, zarr_format)
    res = dask_nmf.factorize(path, 3, array=array, **FIT)
    plain = dask_nmf.factorize(counts, 3, **FIT)
    np.testing.assert_allclose(res.H.values, plain.H, rtol=1e-10)
    np.testing.assert_allclose(res.W.values, plain.W.compute(), rtol=1e-10)
    # cells and genes label W's rows and H's columns, as xarray's coordinates do
    assert isinstance(res.W, xr.DataArray) and res.W.dims == ("obs", "component")
    assert res.H.dims == ("component", "var")
    assert list(res.W["obs"].values) == [f"cell{i}" for i in range(97)]
    assert list(res.H["var"].values) == [f"gene{j}" for j in range(23)]
    assert res.source["anndata"] == "X"


def test_layers_and_their_labels(tmp_path, counts):
    path = write_anndata(
        tmp_path / "adata.zarr",
        counts / 2,
        layers={"counts": sp.csr_matrix(counts), "dense": counts},
    )
    plain = dask_nmf.factorize(counts, 3, **FIT)
    for layer in ("layers/counts", "layers/dense"):
        res = dask_nmf.factorize(path, 3, array=layer, **FIT)
        np.testing.assert_allclose(res.H.values, plain.H, rtol=1e-10)
        assert res.W["obs"].values[5] == "cell5" and res.H["var"].values[7] == "gene7"


def test_transform_of_an_anndata_store_is_labelled(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", sp.csr_matrix(counts))
    est = dask_nmf.NMF(3, **FIT)
    W = est.fit_transform(path)
    W_again = est.transform(path)
    assert W_again.dims == ("obs", "component")
    assert list(W_again["obs"].values[:2]) == ["cell0", "cell1"]
    np.testing.assert_allclose(
        W_again.values, dask_nmf.NMF(3, **FIT).fit(counts).transform(counts), rtol=1e-8
    )
    assert W.shape == W_again.shape


def test_csc_X_is_refused_with_how_to_convert(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", sp.csc_matrix(counts))
    with pytest.raises(InputError, match=r"csc_matrix.*adata\.X = adata\.X\.tocsr\(\)"):
        open_input(path)
    # converted as the message says, the store is used
    adata = anndata.read_zarr(path)
    adata.X = adata.X.tocsr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(str(tmp_path / "csr.zarr"))
    assert open_input(str(tmp_path / "csr.zarr")).sparse


def test_csc_layer_names_the_layer(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", counts, layers={"raw": sp.csc_matrix(counts)})
    with pytest.raises(InputError, match=r"adata\.layers\['raw'\] = adata\.layers\['raw'\]\.tocsr"):
        open_input(path, array="layers/raw")


def test_store_without_X_says_which_matrices_it_has(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", None, layers={"counts": counts})
    with pytest.raises(InputError, match=r"has no X.*array=.*\['layers/counts'\]"):
        open_input(path)
    assert open_input(path, array="layers/counts").shape == counts.shape
    with pytest.raises(InputError, match=r"no 'layers/count'.*\['layers/counts'\]"):
        open_input(path, array="layers/count")


def test_a_data_frame_is_not_a_matrix(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", counts)
    with pytest.raises(InputError, match="'obs' in .* holds a dataframe"):
        open_input(path, array="obs")


@pytest.mark.slow
def test_cli_fits_an_anndata_store(tmp_path, counts):
    path = write_anndata(tmp_path / "adata.zarr", sp.csr_matrix(counts), zarr_format=3)
    out = str(tmp_path / "out.zarr")
    args = ["fit", path, "-k", "3", "-o", out, "-q", "--max-iter", "15", "--tol", "0"]
    args += ["--seed", "0", "--init", "random", "--block-rows", "40", "--n-workers", "1"]
    for extra in ([], ["--array", "X"]):
        r = CliRunner().invoke(cli, args + extra + (["--overwrite"] if extra else []))
        assert r.exit_code == 0, r.output
        H = dask_nmf.load(out).H
        np.testing.assert_allclose(H, dask_nmf.factorize(counts, 3, **FIT).H, rtol=1e-9)
