"""Reading V's row blocks from a zarr store inside the tasks that use them.

A block is decoded into one reused buffer per worker thread; chunks of the
common layouts (whole rows; zstd, Blosc or no compressor; zarr v2 or v3) are
decompressed straight into it by numcodecs, one compressed chunk in memory at a
time; other layouts go through zarr.  A chunk that cannot be decoded is named
in an :class:`InputError`."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr

from .csr import ZarrCSR
from .matrix import _DECODE_ERRORS, InputError

#: Chunks probed for existence before a store is listed (:func:`_check_something_stored`).
_PROBES = 16


def _check_something_stored(z: zarr.Array) -> None:
    """Refuse a dense zarr store in which no chunk was ever written.

    Every entry of such a V is the fill value; its metadata alone can claim
    any size, and reading it would decode nothing but fill for the whole
    claimed size.  Up to ``_PROBES`` chunks spread over the rows are looked up
    (a few requests); only if none is there is the store listed, up to the
    first chunk found.
    """
    import asyncio

    from zarr.core.sync import sync

    grid = z.metadata.chunk_grid.chunk_shape  # stored objects (shards, where sharded)
    rows = -(-z.shape[0] // grid[0])
    picks = sorted({int(i) for i in np.linspace(0, rows - 1, min(rows, _PROBES))})
    paths = [z.store_path / z.metadata.encode_chunk_key((i, 0)) for i in picks]

    async def probe() -> bool:
        if any(await asyncio.gather(*(p.exists() for p in paths))):
            return True
        meta = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
        prefix = z.store_path.path + "/" if z.store_path.path else ""
        async for key in z.store_path.store.list_prefix(prefix):
            if not key.endswith(meta):
                return True
        return False

    if not sync(probe()):
        raise InputError(
            f"the zarr array {z.store_path} stores no chunks: all its {z.shape[0]} x "
            f"{z.shape[1]} entries are the fill value {z.fill_value}"
            + (" (V is all zeros)" if z.fill_value == 0 else "")
            + "; was it ever written?"
        )


#: One reusable block buffer per thread for :func:`read_rows_into` (thread id -> array).
_BUFFERS: dict[int, np.ndarray] = {}


_BUFFERS_LOCK = threading.Lock()


class BlockReader:
    """A zarr store (dense array or CSR group) as a task argument of the solver's
    fused read-and-update steps.

    dask tokenizes every argument of a graph submitted to a cluster, every
    iteration; normalizing a ``zarr.Array`` is slow, so it is hidden behind a
    token made once (the array itself still travels with the task, small when
    pickled).
    """

    def __init__(self, array: zarr.Array | ZarrCSR, dtype: Any):
        self.array, self.dtype = array, np.dtype(dtype)
        self.token = f"nmf-zarr-reader-{uuid.uuid4().hex}"
        #: How chunks are decoded straight into the block buffer (None: by zarr).
        self.direct = _direct_decoder(array) if isinstance(array, zarr.Array) else None

    def __dask_tokenize__(self) -> str:
        return self.token


def read_rows(reader: BlockReader, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a dense zarr ``reader``, as a new array (a task's
    result that dask may hold), decoded in place where the layout allows."""
    z = reader.array
    return _read_dense_into(reader, start, stop, np.empty((stop - start, z.shape[1]), z.dtype))


def read_rows_into(reader: BlockReader, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``reader``'s array, decoded into this thread's buffer.

    For a task that reads V's block and is done with it before it returns (the
    solver's fused read-and-update step): the array returned is overwritten by
    this thread's next call.  Reusing one buffer per thread, instead of a fresh
    block-sized allocation per read, spares the page faults of mapping new
    memory for every block (see :mod:`dask_nmf.workers`).  Chunks of the common
    layouts are decompressed straight into it (:func:`_direct_decoder`).
    """
    z = reader.array
    if isinstance(z, ZarrCSR):  # a fresh CSR block (its size follows the non-zeros)
        X = z.read_rows(start, stop)
        return X if X.dtype == reader.dtype else X.astype(reader.dtype)
    rows, n = stop - start, z.shape[1]
    tid = threading.get_ident()
    with _BUFFERS_LOCK:
        buf = _BUFFERS.get(tid)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != n or buf.dtype != z.dtype:
            buf = _BUFFERS[tid] = np.empty((rows, n), dtype=z.dtype)
    return _read_dense_into(reader, start, stop, buf[:rows])


def _read_dense_into(reader: BlockReader, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Rows ``start:stop`` of a dense zarr ``reader`` into ``out`` (of the store's
    dtype); returns them in the reader's dtype."""
    from zarr.core.buffer import default_buffer_prototype

    z = reader.array
    if reader.direct is not None:
        _read_chunks_into(z, reader.direct, start, stop, out)
    else:
        try:
            z.get_basic_selection(
                (slice(start, stop), slice(None)),
                out=default_buffer_prototype().nd_buffer.from_numpy_array(out),
            )
        except _DECODE_ERRORS as exc:
            raise _damaged(z, start, stop, exc) from exc
    return out if out.dtype == reader.dtype else out.astype(reader.dtype)


#: Set where chunks are stored uncompressed: their bytes are copied as they are.
_UNCOMPRESSED = "uncompressed"


def _direct_decoder(z: zarr.Array) -> Any:
    """The codec that decodes ``z``'s chunks straight into a block buffer, or None.

    zarr decodes each chunk into a new buffer and copies it into the caller's
    ``out``, through its event loop and thread pool; reading V out of core,
    that cost ~30 % of the store's read + decompress rate on two threads
    (benchmarks/README.md).  The common layout -- 2-d, chunks spanning whole
    rows, native little-endian bytes, at most one Zstd or Blosc compressor --
    is decoded here by the same numcodecs codecs, in place; any other layout
    (sharding, filters, transposes, checksums, ...) is left to zarr.
    """
    import numcodecs

    md = z.metadata
    if (
        z.ndim != 2
        or z.chunks[1] != z.shape[1]
        or not z.dtype.isnative
        or sys.byteorder != "little"
        or z.dtype.hasobject
    ):
        return None
    if md.zarr_format == 3:
        from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
        from zarr.core.chunk_grids import RegularChunkGrid

        codecs = tuple(md.codecs)
        if not isinstance(md.chunk_grid, RegularChunkGrid) or not codecs:
            return None
        first, rest = codecs[0], codecs[1:]
        if not isinstance(first, BytesCodec) or (first.endian and first.endian.value != "little"):
            return None
        if not rest:
            return _UNCOMPRESSED
        if len(rest) == 1 and isinstance(rest[0], ZstdCodec):
            return numcodecs.Zstd()
        if len(rest) == 1 and isinstance(rest[0], BloscCodec):
            return numcodecs.Blosc()
        return None
    if md.filters or md.order != "C":
        return None
    if md.compressor is None:
        return _UNCOMPRESSED
    if isinstance(md.compressor, (numcodecs.Zstd, numcodecs.Blosc)):
        return type(md.compressor)()
    return None


def _decoded_size(codec: Any, data: np.ndarray) -> int | None:
    """How many bytes a chunk decodes to, as its frame header says (None: unknown)."""
    if codec is _UNCOMPRESSED:
        return data.nbytes
    import numcodecs

    if isinstance(codec, numcodecs.Blosc):  # Blosc's header: 4 bytes, then the size
        return int.from_bytes(data[4:8].tobytes(), "little") if data.size >= 16 else None
    # A Zstandard frame header (RFC 8878, 3.1.1.1): magic, descriptor, window,
    # dictionary id, then the content size, when the writer put it there.
    b = data[:18].tobytes()
    if len(b) < 6 or int.from_bytes(b[:4], "little") != 0xFD2FB528:
        return None
    fhd = b[4]
    fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(b) < pos + width:
        return None
    size = int.from_bytes(b[pos : pos + width], "little")
    return size + 256 if width == 2 else size


def _read_chunks_into(z: zarr.Array, codec: Any, start: int, stop: int, out: np.ndarray) -> None:
    """Rows ``start:stop`` of ``z`` into ``out``, each chunk decoded in place where
    it lies wholly inside them (edge chunks through a scratch chunk)."""
    rows_per_chunk, n = z.chunks
    first, last = start // rows_per_chunk, (stop - 1) // rows_per_chunk
    paths = [z.store_path / z.metadata.encode_chunk_key((i, 0)) for i in range(first, last + 1)]
    found = _get_chunks(paths)
    chunk_bytes = rows_per_chunk * n * z.dtype.itemsize
    fill = 0 if z.fill_value is None else z.fill_value
    for i in range(first, last + 1):
        data = next(found)  # (zip would hold the last chunk's bytes while reading this one)
        a, b = i * rows_per_chunk, (i + 1) * rows_per_chunk  # the stored chunk's rows
        lo, hi = max(a, start), min(b, stop)
        if data is None:  # never written: the fill value
            out[lo - start : hi - start] = fill
            continue
        raw = data.as_numpy_array()
        size = _decoded_size(codec, raw)
        if size is not None and size != chunk_bytes:
            raise InputError(
                f"chunk {paths[i - first]} decodes to {size} bytes, not {chunk_bytes} "
                f"({rows_per_chunk} x {n} {z.dtype}): the store is damaged"
            )
        whole = lo == a and hi == b
        dest = out[a - start : b - start] if whole else np.empty((rows_per_chunk, n), z.dtype)
        try:
            if codec is _UNCOMPRESSED:
                dest.reshape(-1).view(np.uint8)[:] = raw
            else:
                codec.decode(raw, out=dest)
        except _DECODE_ERRORS as exc:
            raise InputError(f"cannot decode chunk {paths[i - first]}: {exc}") from exc
        if not whole:
            out[lo - start : hi - start] = dest[lo - a : hi - a]
        del data, raw, dest  # (from a local store: freed before the next chunk is read)


def _damaged(z: zarr.Array, start: int, stop: int, exc: BaseException) -> InputError:
    """The error for rows ``start:stop`` of ``z`` that zarr could not decode."""
    rows = z.chunks[0]
    first, last = (z.metadata.encode_chunk_key((i, 0)) for i in (start // rows, (stop - 1) // rows))
    span = first if first == last else f"{first} .. {last}"
    return InputError(
        f"cannot read rows {start}:{stop} of {z.store_path} (chunks {span}, the store may be "
        f"damaged): {type(exc).__name__}: {exc}"
    )


def zarr_getter(a: Any, b: Any, asarray: bool = True, lock: Any = None) -> Any:
    """dask's ``getter`` for a zarr array, raising :class:`InputError` for chunks
    that cannot be decoded."""
    from dask.array.core import getter

    try:
        return getter(a, b, asarray=asarray, lock=lock)
    except _DECODE_ERRORS as exc:
        rows = b[0] if isinstance(b, tuple) else b
        start, stop = rows.start or 0, rows.stop if rows.stop is not None else a.shape[0]
        raise _damaged(a, start, stop, exc) from exc


def _get_chunks(paths: list) -> Iterator:
    """The stored bytes at ``paths`` (None where absent), in order.

    Stores that can read synchronously (local files, memory) are read in the
    calling thread, one chunk at a time as the caller asks for the next: through
    zarr's event loop, every read of a block is a hop to its thread and back,
    and the two worker threads' reads queue there; and one compressed chunk
    alive at a time, not a whole block's, stays within what a worker's malloc
    keeps for reuse (:mod:`dask_nmf.workers`) -- a block's worth of chunk bytes
    freed at once went back to the operating system, to be faulted in again by
    the next read.  Other stores (object storage) are read all at once,
    concurrently: there the latency of each request counts.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prototype = default_buffer_prototype()
    try:
        from zarr.abc.store import SupportsGetSync
    except ImportError:  # zarr < 3.1.5
        SupportsGetSync = ()
    if paths and isinstance(paths[0].store, SupportsGetSync):
        return (p.get_sync(prototype=prototype) for p in paths)
    return iter(sync(_get_all(paths, prototype)))


async def _get_all(paths: list, prototype: Any) -> list:
    """The stored bytes at ``paths``, read concurrently (None where absent)."""
    import asyncio

    return await asyncio.gather(*(p.get(prototype=prototype) for p in paths))


def release_read_buffers() -> int:
    """Drop the block buffers of :func:`read_rows_into` (all threads); returns how many."""
    with _BUFFERS_LOCK:
        count = len(_BUFFERS)
        _BUFFERS.clear()
    return count
