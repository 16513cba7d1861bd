"""Opening V in every supported form, and refusing bad input before any work."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import counting_array, write_zarr

import dask_nmf
from dask_nmf.io import InputError, open_input


def fit(V, **kw):
    kw.setdefault("init", "random")
    kw.setdefault("random_state", 0)
    kw.setdefault("max_iter", 8)
    kw.setdefault("tol", 0)
    return dask_nmf.factorize(V, 3, **kw)


@pytest.fixture
def expected(V_small):
    return fit(V_small, block_rows=40)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("chunks", [(23, 17), (157, 41), (1, 41), (60, 5)])
def test_zarr_path_any_format_any_chunking(tmp_path, V_small, expected, zarr_format, chunks):
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks, zarr_format=zarr_format)
    res = fit(path, block_rows=40)
    np.testing.assert_allclose(res.H, expected.H, rtol=1e-12)
    np.testing.assert_allclose(res.W.compute(), expected.W.compute(), rtol=1e-12)
    assert res.W.chunks[0] == (40, 40, 40, 37)  # W follows the row blocks, not the store
    assert res.source["path"] == path


def test_fsspec_url_and_zarr_array(tmp_path, V_small, expected):
    path = write_zarr(tmp_path / "V.zarr", V_small, (23, 17))
    for V in (f"file://{path}", zarr.open_array(path, mode="r")):
        res = fit(V, block_rows=40)
        np.testing.assert_allclose(res.H, expected.H, rtol=1e-12)


def test_array_inside_a_group(tmp_path, V_small, expected):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("counts", data=V_small, chunks=(50, 41))
    group.create_array("other", data=np.zeros(3))
    with pytest.raises(InputError, match="say which one"):
        fit(str(tmp_path / "g.zarr"))
    with pytest.raises(InputError, match="no array 'nope'"):
        fit(str(tmp_path / "g.zarr"), array="nope")
    res = fit(str(tmp_path / "g.zarr"), array="counts", block_rows=40)
    np.testing.assert_allclose(res.H, expected.H, rtol=1e-12)


def test_dask_array_any_chunks(V_small, expected):
    res = fit(da.from_array(V_small, chunks=(13, 7)), block_rows=40)
    np.testing.assert_allclose(res.H, expected.H, rtol=1e-12)


def test_numpy_is_split_into_views_once(V_small):
    Vin = open_input(V_small, 50)
    assert Vin.bounds == [(0, 50), (50, 100), (100, 150), (150, 157)]
    from dask_nmf.io import block_sources

    blocks = block_sources(Vin)
    assert all(np.shares_memory(b, V_small) for b in blocks)  # views, no copies


def test_dtype_option(V_small):
    res = fit(V_small, dtype="float32")
    assert res.H.dtype == np.float32


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda V: V - 1.0, "negative values"),
        (lambda V: np.where(np.arange(V.size).reshape(V.shape) == 5, np.nan, V), "NaN or infinite"),
        (lambda V: np.where(np.arange(V.size).reshape(V.shape) == 5, np.inf, V), "NaN or infinite"),
        (lambda V: V[0], "must be 2-D"),
        (lambda V: V[None], "must be 2-D"),
        (lambda V: V[:0], "empty"),
        (lambda V: V.astype(complex), "complex"),
        (lambda V: V.astype(str), "dtype"),
    ],
)
def test_bad_V_is_refused(V_small, mutate, message):
    with pytest.raises(InputError, match=message):
        fit(mutate(V_small))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"n_components": "three"}, "n_components"),
        ({"beta_loss": "itakura"}, "beta_loss"),
        ({"beta_loss": float("inf")}, "beta_loss"),
        ({"init": "pca"}, "unknown init"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"alpha_W": -0.1}, "alpha_W"),
        ({"alpha_H": "different"}, "alpha_H"),
        ({"l1_ratio": 1.5}, "l1_ratio"),
        ({"block_rows": 0}, "block_rows"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"init": "custom"}, "W_init and H_init"),
    ],
)
def test_bad_options_are_refused_before_V_is_read(tmp_path, V_small, kwargs, message):
    path = write_zarr(tmp_path / "V.zarr", V_small, (23, 17))
    arr, store = counting_array(path)
    kwargs = {"n_components": 3, **kwargs}
    with pytest.raises(InputError, match=message):
        dask_nmf.factorize(arr, **kwargs)
    assert store.chunk_reads == 0


def test_bad_values_are_found_in_one_pass(tmp_path, V_small):
    V = V_small.copy()
    V[100, 7] = -2.0
    path = write_zarr(tmp_path / "V.zarr", V, (23, 17))
    arr, store = counting_array(path)
    with pytest.raises(InputError, match=r"negative values \(minimum -2\)"):
        dask_nmf.factorize(arr, 3, block_rows=46, keep_in_memory=False)
    assert store.chunk_reads == 7 * 3  # one pass, then nothing else


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_bad_values_in_a_re_read_store_leave_no_read_buffers(tmp_path, V_small, zarr_format):
    """The validation pass reads a re-read store into the per-thread block
    buffers, as the iterations do; a refused V does not leave them behind."""
    from dask_nmf.io import release_read_buffers

    V = V_small.copy()
    V[100, 7] = np.nan
    store(tmp_path / "V.zarr", V, zarr_format)  # whole-row chunks: decoded in place
    release_read_buffers()
    with pytest.raises(InputError, match=r"NaN"):
        dask_nmf.factorize(str(tmp_path / "V.zarr"), 3, block_rows=40, keep_in_memory=False)
    assert release_read_buffers() == 0


@pytest.mark.parametrize(
    ("which", "value", "message"),
    [
        ("W_init", np.ones((10, 4)), r"W_init has shape \(10, 4\); expected \(157, 4\)"),
        ("H_init", np.ones((4, 40)), r"H_init has shape \(4, 40\); expected \(4, 41\)"),
        ("W_init", -np.ones((157, 4)), "W_init contains negative values"),
        ("H_init", np.full((4, 41), np.nan), "H_init contains NaN"),
        ("H_init", np.zeros((4, 41)), "H_init is all zeros"),
    ],
)
def test_bad_custom_init(V_small, start, which, value, message):
    W0, H0 = start
    kw = {"W_init": W0, "H_init": H0, which: value}
    with pytest.raises(InputError, match=message):
        dask_nmf.factorize(V_small, 4, init="custom", **kw)


def test_missing_store(tmp_path):
    with pytest.raises(InputError, match="no zarr store at .*does not exist"):
        fit(str(tmp_path / "nowhere.zarr"))


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="zarr"):
        fit(str(tmp_path / "plain"))


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_bad_custom_init_is_refused_before_V_is_read(tmp_path, V_small, start):
    path = write_zarr(tmp_path / "V.zarr", V_small, (23, 17))
    arr, store = counting_array(path)
    W0, H0 = start
    with pytest.raises(InputError, match="W_init has shape"):
        dask_nmf.factorize(arr, 4, W_init=W0[:10], H_init=H0)
    assert store.chunk_reads == 0


def test_sparse_blocks_are_views_of_V():
    """Row blocks of an in-memory CSR V share its arrays (no second copy of V)."""
    import scipy.sparse as sp

    from dask_nmf.io import block_sources

    X = sp.random(300, 40, density=0.1, format="csr", random_state=0)
    Vin = open_input(X, 70)
    blocks = block_sources(Vin)
    assert len(blocks) == 5
    for block, (a, b) in zip(blocks, Vin.bounds):
        assert np.shares_memory(block.data, Vin.local.data)
        assert (block != X[a:b]).nnz == 0


@pytest.mark.parametrize("store_dtype, dtype", [("float64", "float64"), ("float32", "float64")])
def test_fused_reads_decode_into_one_buffer_per_thread(tmp_path, V_small, store_dtype, dtype):
    from dask_nmf.io import BlockReader, read_rows_into, release_read_buffers

    V = V_small.astype(store_dtype)
    z = zarr.open_array(write_zarr(tmp_path / "V.zarr", V, chunks=(23, 17)), mode="r")
    reader = BlockReader(z, dtype)
    release_read_buffers()
    first = read_rows_into(reader, 0, 50)
    np.testing.assert_array_equal(first, V[:50].astype(dtype))
    assert first.dtype == np.dtype(dtype)
    first_copy = first.copy()
    last = read_rows_into(reader, 150, 157)  # the short last block
    np.testing.assert_array_equal(last, V[150:].astype(dtype))
    if store_dtype == dtype:
        # the same memory, overwritten: the caller must be done with a block before the next
        assert np.shares_memory(first, last)
        assert not np.array_equal(first[:7], first_copy[:7])
    else:
        assert not np.shares_memory(first, last)  # converted copies
    assert release_read_buffers() == 1
    assert release_read_buffers() == 0


def test_block_reader_tokenizes_without_touching_the_array(tmp_path, V_small):
    from dask.base import tokenize

    from dask_nmf.io import BlockReader

    z = zarr.open_array(write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17)), mode="r")
    a, b = BlockReader(z, "float64"), BlockReader(z, "float64")
    assert tokenize(a) == tokenize(a) != tokenize(b)  # one token per reader, made once


# Layouts whose chunks dask_nmf decodes itself, straight into the block buffer
# (zarr format, compressor, what BlockReader.direct names), and layouts it leaves to zarr.
DIRECT = {
    "zstd": (3, "zstd", "Zstd"),
    "zstd with checksum": (3, "zstd-checksum", "Zstd"),
    "blosc": (3, "blosc", "Blosc"),
    "uncompressed": (3, None, "uncompressed"),
    "v2 zstd": (2, "zstd", "Zstd"),
    "v2 uncompressed": (2, None, "uncompressed"),
}


def compressor(name, zarr_format):
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if name is None:
        return None
    if zarr_format == 2:
        return {"zstd": numcodecs.Zstd(), "gzip": numcodecs.GZip()}[name]
    return {
        "zstd": ZstdCodec(),
        "zstd-checksum": ZstdCodec(checksum=True),
        "blosc": BloscCodec(),
        "gzip": GzipCodec(),
    }[name]


def store(path, V, zarr_format=3, comp="zstd", chunks=(20, None), **kw):
    chunks = (chunks[0], V.shape[1] if chunks[1] is None else chunks[1])
    z = zarr.create_array(
        str(path),
        shape=V.shape,
        chunks=chunks,
        dtype=V.dtype,
        zarr_format=zarr_format,
        compressors=compressor(comp, zarr_format),
        **kw,
    )
    z[...] = V
    return zarr.open_array(str(path), mode="r")


BLOCKS = [(0, 20), (0, 60), (30, 95), (140, 157), (150, 157), (3, 9)]  # aligned, not, the edge


@pytest.mark.parametrize("layout", DIRECT)
def test_direct_decoding_equals_the_store(tmp_path, V_small, layout, monkeypatch):
    from dask_nmf.io import BlockReader, read_rows, read_rows_into

    zarr_format, comp, kind = DIRECT[layout]
    z = store(tmp_path / "V.zarr", V_small, zarr_format, comp)
    reader = BlockReader(z, "float64")
    direct = reader.direct
    assert (direct if isinstance(direct, str) else type(direct).__name__) == kind

    def not_zarr(*args, **kwargs):
        raise AssertionError("decoded by zarr")

    monkeypatch.setattr(zarr.Array, "get_basic_selection", not_zarr)
    for a, b in BLOCKS:
        np.testing.assert_array_equal(read_rows_into(reader, a, b), V_small[a:b])
        fresh = read_rows(reader, a, b)
        np.testing.assert_array_equal(fresh, V_small[a:b])
        assert not np.shares_memory(fresh, read_rows_into(reader, a, b))  # a new array


@pytest.mark.parametrize(
    "zarr_format, comp, kw",
    [
        (3, "gzip", {}),  # no numcodecs decoder into a buffer
        (3, "zstd", {"chunks": (20, 17)}),  # chunks split the rows
        (3, "zstd", {"shards": (40, 41)}),
        (2, "gzip", {}),
    ],
)
def test_other_layouts_are_read_by_zarr(tmp_path, V_small, zarr_format, comp, kw):
    from dask_nmf.io import BlockReader, read_rows, read_rows_into

    z = store(tmp_path / "V.zarr", V_small, zarr_format, comp, **kw)
    reader = BlockReader(z, "float64")
    assert reader.direct is None
    for a, b in BLOCKS:
        np.testing.assert_array_equal(read_rows_into(reader, a, b), V_small[a:b])
        np.testing.assert_array_equal(read_rows(reader, a, b), V_small[a:b])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_direct_decoding_fills_unwritten_chunks(tmp_path, V_small, zarr_format):
    from dask_nmf.io import BlockReader, read_rows_into

    z = zarr.create_array(
        str(tmp_path / "V.zarr"),
        shape=V_small.shape,
        chunks=(20, 41),
        dtype="float64",
        fill_value=3.0,
        zarr_format=zarr_format,
    )
    z[:40] = V_small[:40]  # chunks 2.. never written
    reader = BlockReader(zarr.open_array(str(tmp_path / "V.zarr"), mode="r"), "float64")
    assert reader.direct is not None
    block = read_rows_into(reader, 30, 70)
    np.testing.assert_array_equal(block[:10], V_small[30:40])
    assert (block[10:] == 3.0).all()


def test_a_damaged_chunk_is_named(tmp_path, V_small):
    import numcodecs

    from dask_nmf.io import BlockReader, read_rows_into

    z = store(tmp_path / "V.zarr", V_small)
    (tmp_path / "V.zarr" / "c" / "1" / "0").write_bytes(numcodecs.Zstd().encode(np.zeros(50)))
    with pytest.raises(ValueError, match=r"c/1/0 decodes to 400 bytes, not 6560"):
        read_rows_into(BlockReader(z, "float64"), 0, 60)


@pytest.mark.parametrize("layout", ["zstd", "blosc", "v2 uncompressed"])
def test_fit_re_reading_a_directly_decoded_store(tmp_path, V_small, expected, layout):
    zarr_format, comp, _ = DIRECT[layout]
    z = store(tmp_path / "V.zarr", V_small, zarr_format, comp)
    res = fit(str(tmp_path / "V.zarr"), block_rows=40, keep_in_memory=False)
    assert z.chunks == (20, 41)
    np.testing.assert_allclose(res.H, expected.H, rtol=1e-10)
    np.testing.assert_allclose(res.W.compute(), expected.W.compute(), rtol=1e-10)


@pytest.mark.skipif(
    not hasattr(zarr.abc.store, "SupportsGetSync"), reason="zarr < 3.1.5 reads asynchronously"
)
def test_a_local_store_holds_one_chunk_of_bytes_at_a_time(tmp_path, V_small, monkeypatch):
    # A block's compressed chunks all alive at once went back to the OS when
    # freed (they exceed what a worker's malloc keeps) and faulted in again.
    import gc
    import weakref

    from zarr.storage._common import StorePath

    from dask_nmf.io import BlockReader, read_rows_into

    z = store(tmp_path / "V.zarr", V_small)
    reader = BlockReader(z, "float64")
    assert reader.direct is not None
    alive, reads = [], []
    get_sync = StorePath.get_sync

    def counting(self, *args, **kwargs):
        gc.collect()
        reads.append(sum(ref() is not None for ref in alive))
        data = get_sync(self, *args, **kwargs)
        alive.append(weakref.ref(data))
        return data

    monkeypatch.setattr(StorePath, "get_sync", counting)
    np.testing.assert_array_equal(read_rows_into(reader, 10, 150), V_small[10:150])
    assert reads == [0] * 8  # 8 chunks, each read after the one before was freed


def test_direct_decoding_through_an_async_store(tmp_path, V_small):
    from zarr.storage import FsspecStore

    from dask_nmf.io import BlockReader, read_rows_into

    store(tmp_path / "V.zarr", V_small)
    z = zarr.open_array(f"file://{tmp_path / 'V.zarr'}", mode="r")
    assert isinstance(z.store_path.store, FsspecStore)  # read through zarr's event loop
    reader = BlockReader(z, "float64")
    assert reader.direct is not None
    for a, b in BLOCKS:
        np.testing.assert_array_equal(read_rows_into(reader, a, b), V_small[a:b])


# --------------------------------------------------------------------------
# Default row blocks of a wide V: the k x n partial sums counted
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "m, n, in_memory, expected",
    [
        (12_500, 2_000, True, 6_250),  # in memory: one block per thread
        (12_500, 2_000, False, 3_125),  # from a store: two per thread, as without k
        (1_000, 25_000, False, 250),  # 250 rows >= 4 k: still two per thread
        (1_000, 25_000, True, 500),
        (250, 100_000, False, 125),  # two per thread would be 63 rows < 4 k: one each
        (250, 100_000, True, 125),  # ... in memory, above the cap
        (500, 200_000, True, 125),  # ... above array.chunk-size (83 rows) in memory
        (500, 200_000, False, 63),  # read from a store: the byte cap holds
    ],
)
def test_default_block_rows_counts_the_partial(m, n, in_memory, expected):
    from dask_nmf.io import default_block_rows
    from dask_nmf.kernels import PARTIAL_REUSE

    k = 32
    with dask.config.set({"array.chunk-size": "128MiB"}):
        rows = default_block_rows(
            m, n, np.float64, parallelism=2, n_components=k, in_memory=in_memory
        )
        plain = default_block_rows(m, n, np.float64, parallelism=2)
    assert rows == expected
    if in_memory:
        assert rows > plain  # fewer, larger blocks
    elif plain >= PARTIAL_REUSE * k:
        assert rows == plain  # blocks already hold their partial: planned as before
    else:
        assert rows * n * 8 <= 128 * 2**20  # the byte cap holds


def test_wide_fit_uses_fewer_larger_blocks():
    V = np.random.default_rng(0).random((40, 5_000))
    with dask.config.set({"array.chunk-size": "1MiB", "num_workers": 2}):
        res = dask_nmf.factorize(V, 8, init="random", max_iter=2)
        plain = dask_nmf.io.default_block_rows(40, 5_000, np.float64, parallelism=2)
    assert plain == 10  # two per thread
    assert res.params["block_rows"] == 20  # 10 rows < 4 k = 32: one block per thread
