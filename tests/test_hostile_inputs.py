"""Hostile or damaged inputs end in one InputError naming the problem.

Never a segfault, a hang, a traceback or a silently wrong result.  Stores
that used to crash SciPy's kernels are factorized in a subprocess, so that a
crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from conftest import write_zarr

import dask_nmf
from dask_nmf.io import MAX_BLOCKS, InputError

ROOT = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def write_csr_parts(path, data, indices, indptr, shape) -> str:
    """An AnnData-style CSR group written as given, with no checks at all."""
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
    if shape is not None:
        group.attrs["shape"] = list(shape)
    group.create_array("data", data=np.asarray(data, dtype="float64"))
    group.create_array("indices", data=np.asarray(indices, dtype="int32"))
    group.create_array("indptr", data=np.asarray(indptr, dtype="int64"))
    return str(path)


@pytest.fixture(scope="module")
def X():
    return sp.random(60, 12, density=0.3, random_state=0, format="csr")


def _bad_index(X, value):
    indices = X.indices.copy()
    indices[len(indices) // 2] = value
    return X.data, indices, X.indptr, X.shape


def _decreasing(X):
    indptr = X.indptr.copy()
    indptr[30] = indptr[31] + 1
    return X.data, X.indices, indptr, X.shape


def _short_end(X):
    indptr = X.indptr.copy()
    indptr[-1] -= 2
    return X.data, X.indices, indptr, X.shape


CSR_CASES = {
    "index >= n_cols": (lambda X: _bad_index(X, 1000), r"column index 1000, outside 0\.\.11"),
    "negative index": (lambda X: _bad_index(X, -3), r"column index -3, outside 0\.\.11"),
    "shape attribute too narrow": (
        lambda X: (X.data, X.indices, X.indptr, (60, 3)),
        r"outside 0\.\.2 \(its shape attribute says 3 columns\)",
    ),
    "shape attribute too short": (
        lambda X: (X.data, X.indices, X.indptr, (20, 12)),
        r"indptr has 61 entries; its shape attribute \[20, 12\] needs 21",
    ),
    "decreasing indptr": (_decreasing, r"indptr decreases at row 30"),
    "indptr not ending at nnz": (_short_end, r"indptr runs from 0 to \d+; .* runs from 0 to \d+"),
    "indices shorter than data": (
        lambda X: (X.data, X.indices[:-1], X.indptr, X.shape),
        r"\d+ column indices for \d+ stored values",
    ),
    "no shape attribute": (
        lambda X: (X.data, X.indices, X.indptr, None),
        r"no valid shape attribute",
    ),
    "no stored values": (lambda X: ([], [], np.zeros(61), X.shape), r"stores no values"),
}

PROBE = """
import sys, dask_nmf
try:
    dask_nmf.factorize(sys.argv[1], 2, max_iter=2, init="random", keep_in_memory={keep})
except dask_nmf.InputError as exc:
    print("InputError:", exc)
else:
    print("no error")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("keep_in_memory", [None, False])
@pytest.mark.parametrize("case", sorted(CSR_CASES))
def test_damaged_csr_store_is_refused(tmp_path, X, case, keep_in_memory):
    make, message = CSR_CASES[case]
    path = write_csr_parts(tmp_path / "X.zarr", *make(X))
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(keep=keep_in_memory), path],
        capture_output=True,
        text=True,
        timeout=100,
        env=ENV,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]  # (a negative code: killed by a signal)
    assert r.stdout.startswith("InputError:"), r.stdout + r.stderr[-2000:]
    assert re.search(message, r.stdout), r.stdout


@pytest.mark.timeout(120)
def test_invalid_scipy_csr_in_memory_is_refused():
    # In a subprocess: unchecked, SciPy's kernels corrupt the heap.
    code = """
import dask_nmf, scipy.sparse as sp
X = sp.random(60, 12, density=0.3, random_state=0, format="csr")
X.indices[3] = 99  # (SciPy's constructor checked it before this)
try:
    dask_nmf.factorize(X, 2, max_iter=2)
except dask_nmf.InputError as exc:
    print("InputError:", exc)
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100, env=ENV, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("InputError: V is not a valid CSR matrix"), r.stdout


def run_cli(args, timeout=150):
    """``dask-nmf`` as a real process: (exit status, stderr)."""
    r = subprocess.run(
        [sys.executable, "-m", "dask_nmf.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )
    return r.returncode, r.stderr


def assert_one_line_error(code, stderr, pattern):
    assert code == 2, stderr
    assert "Traceback (most recent call last)" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("dask-nmf: error: "), stderr
    assert re.search(pattern, last), last


@pytest.fixture
def address(cluster_client):
    return cluster_client.scheduler.address


@pytest.mark.timeout(180)
def test_cli_on_a_damaged_csr_store(tmp_path, X, address):
    path = write_csr_parts(tmp_path / "X.zarr", *_bad_index(X, 1000))
    out = str(tmp_path / "out.zarr")
    code, err = run_cli(["fit", path, "-k", "2", "-o", out, "--scheduler", address, "-q"])
    assert_one_line_error(code, err, r"column index 1000")
    code, err = run_cli(
        [
            "fit",
            write_csr_parts(tmp_path / "Y.zarr", *_decreasing(X)),
            "-k",
            "2",
            "-o",
            out,
            "--overwrite",
            "--scheduler",
            address,
            "-q",
        ]
    )
    assert_one_line_error(code, err, r"indptr decreases at row 30")


# --------------------------------------------------------------------------
# Metadata that claims what cannot be (no chunk ever written)
# --------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_row_larger_than_a_block_is_refused_at_once(tmp_path):
    path = str(tmp_path / "V.zarr")
    zarr.create_array(path, shape=(10**12, 10**12), chunks=(1000, 1000), dtype="float64")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"one row of V \(1000000000000 columns\) takes"):
        dask_nmf.factorize(path, 2, max_iter=2)
    assert time.perf_counter() - t0 < 20


@pytest.mark.timeout(60)
def test_too_many_row_blocks_are_refused_at_once(tmp_path):
    path = str(tmp_path / "V.zarr")
    zarr.create_array(path, shape=(10**13, 4), chunks=(10**6, 4), dtype="float64")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=rf"row blocks .* more than {MAX_BLOCKS}"):
        dask_nmf.factorize(path, 2, max_iter=2)
    with pytest.raises(InputError, match=rf"more than {MAX_BLOCKS}"):
        dask_nmf.factorize(path, 2, max_iter=2, block_rows=10)
    assert time.perf_counter() - t0 < 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_with_no_chunk_written_is_refused_at_once(tmp_path, zarr_format):
    path = str(tmp_path / "V.zarr")
    zarr.create_array(
        path, shape=(10**9, 50), chunks=(10_000, 50), dtype="float64", zarr_format=zarr_format
    )
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"stores no chunks: all its 1000000000 x 50 entries"):
        dask_nmf.factorize(path, 2, max_iter=2)
    assert time.perf_counter() - t0 < 20


def test_a_store_with_one_chunk_written_far_from_the_probes_is_used(tmp_path, V_small):
    # The probes miss this chunk; the listing that follows them finds it.
    path = str(tmp_path / "V.zarr")
    z = zarr.create_array(path, shape=(10_000, 41), chunks=(10, 41), dtype="float64")
    z[5005:5015] = V_small[:10] + 1.0
    res = dask_nmf.factorize(path, 2, max_iter=2, init="random", random_state=0)
    assert res.H.shape == (2, 41)


# --------------------------------------------------------------------------
# Damaged chunks, through the direct decoder and through zarr
# --------------------------------------------------------------------------
def damaged_store(tmp_path, V, codec, chunks):
    from zarr.codecs import BloscCodec, ZstdCodec

    comp = {"zstd": ZstdCodec(), "blosc": BloscCodec()}[codec]
    path = tmp_path / "V.zarr"
    z = zarr.create_array(
        str(path), shape=V.shape, chunks=chunks, dtype="float64", compressors=comp
    )
    z[...] = V
    chunk = path / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[16:48] = b"\xff" * 32  # past the frame header: the size still reads right
    chunk.write_bytes(bytes(raw))
    return str(path)


@pytest.mark.parametrize("keep_in_memory", [True, False])
@pytest.mark.parametrize(
    "codec,chunks",
    [("zstd", (40, 41)), ("blosc", (40, 41)), ("blosc", (40, 20))],  # (40, 20): zarr decodes
)
def test_a_damaged_chunk_is_an_input_error(tmp_path, V_small, codec, chunks, keep_in_memory):
    path = damaged_store(tmp_path, V_small, codec, chunks)
    with pytest.raises(InputError, match=r"V\.zarr.*c/1/0"):
        dask_nmf.factorize(path, 2, max_iter=2, init="random", keep_in_memory=keep_in_memory)


@pytest.mark.timeout(180)
def test_cli_on_a_damaged_chunk(tmp_path, V_small, address):
    path = damaged_store(tmp_path, V_small, "zstd", (40, 41))
    out = str(tmp_path / "out.zarr")
    code, err = run_cli(["fit", path, "-k", "2", "-o", out, "--scheduler", address, "-q"])
    assert_one_line_error(code, err, r"V\.zarr.*c/1/0")


# --------------------------------------------------------------------------
# Unknown chunk sizes, bad dtype, bad array names
# --------------------------------------------------------------------------
def test_unknown_chunk_sizes(rng):
    x = da.from_array(rng.random((100, 10)), chunks=(20, 10))
    with pytest.raises(InputError, match="unknown chunk sizes.*compute_chunk_sizes"):
        dask_nmf.factorize(x[x[:, 0] > 0.5], 2, max_iter=2)


@pytest.mark.parametrize("dtype", ["banana", object()])
def test_bad_dtype(V_small, dtype):
    with pytest.raises(InputError, match="dtype"):
        dask_nmf.factorize(V_small, 2, max_iter=2, dtype=dtype)


def test_cli_bad_dtype(tmp_path, V_small):
    store = write_zarr(tmp_path / "V.zarr", V_small, chunks=(40, 41))
    code, err = run_cli(
        ["fit", store, "-k", "2", "-o", str(tmp_path / "o.zarr"), "--dtype", "banana"]
    )
    assert_one_line_error(code, err, r"--dtype")


@pytest.fixture
def group(tmp_path, V_small):
    root = zarr.open_group(str(tmp_path / "G.zarr"), mode="w")
    root.create_array("a", data=V_small)
    root.create_array("b", data=V_small)
    return str(tmp_path / "G.zarr")


@pytest.mark.parametrize(
    "name,message",
    [
        (5, "array= must name an array"),
        ("", "array= must name an array"),
        ("../a", "array= must name an array"),
        ("a/../b", "array= must name an array"),
        ("c", r"has no array 'c' \(it has \['a', 'b'\]\)"),
        ("a/b", "has no array 'a/b'"),
    ],
)
def test_bad_array_names(group, name, message):
    with pytest.raises(InputError, match=message):
        dask_nmf.factorize(group, 2, max_iter=2, array=name)


@pytest.mark.parametrize("name", ["../a", "c"])
def test_cli_bad_array_names(tmp_path, group, name):
    code, err = run_cli(["fit", group, "-k", "2", "-o", str(tmp_path / "o.zarr"), "--array", name])
    assert_one_line_error(code, err, "array")
