"""Opening V, splitting it into row blocks, and validating it.

Whatever the user has -- a zarr path or fsspec URL, a ``zarr.Array``, a dask
array, a NumPy array -- becomes an :class:`InputMatrix`: the shape, the dtype
we compute in, the row blocks, and one lazily read source per row block.  V is
never loaded whole and never written.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from dask.utils import parse_bytes

from . import kernels


class InputError(ValueError):
    """V (or an option describing it) cannot be used; the message says why."""


#: The most row blocks V may be split into.  Each block is a task or two of
#: every iteration's graph (and a W block the client tracks): at dask's
#: ~0.2-1 ms of scheduler time per task, 10**6 blocks would spend minutes
#: per iteration on scheduling alone, and the client's graph would take GBs.
MAX_BLOCKS = 1_000_000

#: Errors that codecs (numcodecs, zarr's pipeline) raise for bytes they cannot decode.
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError)


@dataclass
class InputMatrix:
    """V split into row blocks.

    Attributes
    ----------
    shape, dtype
        Shape of V and the floating dtype the factorization runs in.
    bounds
        ``(start, stop)`` of each row block.
    array
        V as a dask array chunked by exactly these row blocks (for dask and zarr
        input), or ``None`` for an in-memory V.
    local
        V itself when it was given in memory: a NumPy array or a SciPy CSR matrix.
    sparse
        Whether V's blocks are sparse (CSR); the kernels then never densify them.
    zarr
        The zarr store V is read from, when it is one (a dense ``zarr.Array`` or
        a :class:`ZarrCSR`): the solver then reads each block inside the task
        that updates it (:func:`read_rows_into`).
    source
        A description of where V came from (path, chunks), kept with results.
    labels
        For xarray input: the sample and feature dimensions and coordinates,
        with which results are labelled (see :func:`label_results`).
    """

    shape: tuple[int, int]
    dtype: np.dtype
    bounds: list[tuple[int, int]]
    array: da.Array | None = None
    local: Any = None
    source: dict = field(default_factory=dict)
    labels: dict | None = None
    sparse: bool = False
    stored_bytes: int | None = None
    zarr: zarr.Array | ZarrCSR | None = None

    @property
    def block_rows(self) -> int:
        return self.bounds[0][1] - self.bounds[0][0]

    @property
    def nbytes(self) -> int:
        """Bytes of V in memory (values and indices for sparse V, when known)."""
        if self.stored_bytes is not None:
            return self.stored_bytes
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _float_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        # (scikit-learn's phrase for complex data, which its checks and users match.)
        phrase = "Complex data not supported. " if dtype.kind == "c" else ""
        raise InputError(f"{phrase}V has dtype {dtype}; NMF needs real numbers (float or integer)")
    # Like scikit-learn: float32 stays float32, everything else becomes float64.
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def default_block_rows(
    n_rows: int,
    n_cols: int,
    dtype: np.dtype,
    row_chunk: int | None = None,
    parallelism: int = 1,
    row_bytes: int | None = None,
) -> int:
    """Rows per block: at most dask's ``array.chunk-size``, at least two blocks
    per worker thread where V has the rows, and as large as an even share of
    the work between the threads allows.

    Large, because every block costs the scheduler and a worker a task or two
    each iteration; evenly shared, because an iteration ends when the busiest
    thread does (blocks go to the threads in turn): of the block sizes from the
    largest allowed down to half of it, the largest whose busiest thread has at
    most 2 % more rows than the best of them.  Blocks are whole multiples of
    the store's row chunk when there are chunks enough for two blocks per
    thread, so no stored chunk is split between two blocks (and decompressed
    twice).
    """
    target = parse_bytes(dask.config.get("array.chunk-size"))
    if row_bytes is None:
        row_bytes = n_cols * np.dtype(dtype).itemsize
    threads = max(1, parallelism)
    cap = max(1, target // max(1, row_bytes))
    unit = 1
    if row_chunk and row_chunk <= cap and -(-n_rows // row_chunk) >= 2 * threads:
        unit = row_chunk
    units = -(-n_rows // unit)
    largest = max(1, min(cap // unit, -(-units // (2 * threads))))

    def busiest(size: int) -> int:
        """Units of the busiest thread when blocks of ``size`` go to the threads in turn."""
        count = -(-units // size)
        last = units - size * (count - 1)
        q, r = divmod(count, threads)
        if r == 0:  # the last thread has the short last block
            return max((q - 1) * size + last, q * size if threads > 1 else 0)
        return max(q * size + last, (q + 1) * size if r > 1 else 0, q * size)

    # One candidate per block count, from the fewest blocks to twice as many.
    first = -(-units // largest)
    sizes = sorted({-(-units // count) for count in range(first, min(units, 2 * first) + 1)})
    best = min(busiest(size) for size in sizes)
    size = max(size for size in sizes if busiest(size) <= 1.02 * best)
    return int(min(n_rows, size * unit))


def rows_array(read: Any, bounds: list, n_cols: int, dtype: Any, meta: Any) -> da.Array:
    """A dask array of V's rows, one task ``read(start, stop)`` per ``(start, stop)``."""
    return da.concatenate(
        [
            da.from_delayed(dask.delayed(read, pure=True)(a, b), (b - a, n_cols), dtype, meta=meta)
            for a, b in bounds
        ]
    )


def row_bounds(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive row blocks of ``block_rows`` rows."""
    return [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]


@dataclass(frozen=True)
class ZarrCSR:
    """A CSR matrix stored in zarr the way AnnData stores ``X``.

    A group with arrays ``data``, ``indices``, ``indptr`` and the attributes
    ``encoding-type: csr_matrix`` and ``shape``.  Row blocks are read through
    ``indptr`` without ever densifying V.
    """

    path: Any
    group: str
    shape: tuple[int, int]
    dtype: np.dtype
    nnz: int
    storage_options: dict | None = None

    def read_rows(self, start: int, stop: int):
        """Rows ``start:stop`` as a SciPy CSR matrix (runs on a worker)."""
        return read_csr_rows(
            self.path, self.group, start, stop, self.shape[1], self.storage_options
        )


def read_csr_rows(path, group, start, stop, n_cols, storage_options=None):
    """Rows ``start:stop`` of a zarr CSR group as a SciPy CSR matrix.

    The block's ``indptr`` and ``indices`` are checked before SciPy sees them
    (its kernels trust them and would read or write out of bounds); a bad
    block raises :class:`InputError`.
    """
    where = f"the CSR store {path!r}" + (f" (group {group!r})" if group else "")
    try:
        g = zarr.open_group(path, path=group, mode="r", storage_options=storage_options)
        indptr = g["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        nnz = int(g["data"].shape[0])
        if len(indptr) != stop - start + 1 or not 0 <= lo <= hi <= nnz:
            raise InputError(
                f"{where} is damaged: indptr[{start}:{stop + 1}] runs from {lo} to {hi}, "
                f"outside 0..{nnz} (the number of stored values)"
            )
        steps = np.diff(indptr)
        if steps.size and steps.min() < 0:
            row = start + int(np.argmax(steps < 0))
            raise InputError(
                f"{where} is damaged: indptr decreases at row {row} "
                f"({int(indptr[row - start])} -> {int(indptr[row - start + 1])})"
            )
        data, indices = g["data"][lo:hi], g["indices"][lo:hi]
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(f"cannot read rows {start}:{stop} of {where}: {exc}") from exc
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_cols:
            bad = low if low < 0 else high
            raise InputError(
                f"{where} is damaged: rows {start}:{stop} hold column index {bad}, outside "
                f"0..{n_cols - 1} (its shape attribute says {n_cols} columns)"
            )
    # (Checked above: SciPy's own check here is then only the cheap one.)
    return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, n_cols))


def _csr_group(node: zarr.Group, path: Any, group: str, storage_options) -> ZarrCSR | None:
    kind = node.attrs.get("encoding-type")
    if kind is None:
        return None
    if kind != "csr_matrix":
        raise InputError(
            f"{path!r} holds a {kind}; row blocks need csr_matrix (convert it with .tocsr())"
        )
    where = f"the CSR store {path!r}" + (f" (group {group!r})" if group else "")
    try:
        shape = tuple(int(x) for x in node.attrs["shape"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{where} has no valid shape attribute (two integers); got {node.attrs.get('shape')!r}"
        ) from None
    if len(shape) != 2 or min(shape) < 0:
        raise InputError(f"{where} has shape attribute {list(shape)}; expected [rows, columns]")
    arrays = {}
    for name in ("data", "indices", "indptr"):
        a = node.get(name)
        if not isinstance(a, zarr.Array) or a.ndim != 1:
            raise InputError(f"{where} has no 1-D array {name!r}: it is not a CSR matrix")
        arrays[name] = a
    data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
    for name in ("indices", "indptr"):
        if np.dtype(arrays[name].dtype).kind not in "iu":
            raise InputError(f"{where}: {name} has dtype {arrays[name].dtype}; expected integers")
    # Cheap structural checks (a few stored values); each block's indptr and
    # indices are checked as it is read (read_csr_rows).
    nnz = int(data.shape[0])
    if indices.shape[0] != nnz:
        raise InputError(
            f"{where} is damaged: {indices.shape[0]} column indices for {nnz} stored values"
        )
    if indptr.shape[0] != shape[0] + 1:
        raise InputError(
            f"{where} is damaged: indptr has {indptr.shape[0]} entries; its shape attribute "
            f"{list(shape)} needs {shape[0] + 1} (rows + 1)"
        )
    if nnz == 0:
        raise InputError(f"{where} stores no values: V is all zeros, there is nothing to factorize")
    if shape[0] > 0:
        try:
            first, last = int(indptr[0]), int(indptr[-1])
        except _DECODE_ERRORS as exc:
            raise InputError(f"cannot read indptr of {where}: {exc}") from exc
        if first != 0 or last != nnz:
            raise InputError(
                f"{where} is damaged: indptr runs from {first} to {last}; "
                f"a CSR matrix's runs from 0 to {nnz} (the number of stored values)"
            )
    return ZarrCSR(path, group, shape, np.dtype(data.dtype), nnz, storage_options)


def open_zarr_array(
    path: Any, array: str | None = None, storage_options: dict | None = None
) -> zarr.Array | ZarrCSR:
    """Open a zarr array read-only from a path/URL (or a group and array name).

    A group in AnnData's CSR encoding (``encoding-type: csr_matrix``) is
    returned as a :class:`ZarrCSR`.
    """
    if isinstance(path, (str, os.PathLike)):
        spath = os.fspath(path)
        if "://" not in spath and not os.path.exists(spath):
            raise InputError(f"no zarr store at {spath!r}: the path does not exist")
    try:
        node = zarr.open(path, mode="r", storage_options=storage_options)
    except FileNotFoundError as exc:
        raise InputError(f"no zarr store at {path!r}") from exc
    except Exception as exc:  # zarr raises several types for "not a store"
        raise InputError(f"cannot open {path!r} as a zarr store: {exc}") from exc
    if array is not None and (
        not isinstance(array, str) or array.strip("/") == "" or ".." in array.split("/")
    ):
        raise InputError(f"array= must name an array inside the zarr group; got {array!r}")
    if isinstance(node, zarr.Group):
        csr = _csr_group(node, path, "", storage_options)
        if csr is not None:
            if array is not None:
                raise InputError(f"{path!r} is a CSR matrix; it has no array {array!r}")
            return csr
        if array is None:
            names = sorted(node.array_keys())
            if len(names) == 1:
                array = names[0]
            else:
                raise InputError(
                    f"{path!r} is a zarr group with arrays {names}; say which one to use"
                )
        try:
            node = node[array]
        except (KeyError, ValueError):
            raise InputError(
                f"the zarr group {path!r} has no array {array!r} (it has {sorted(node.array_keys())})"
            ) from None
        if isinstance(node, zarr.Group):
            csr = _csr_group(node, path, array, storage_options)
            if csr is None:
                raise InputError(f"{array!r} in {path!r} is a group, not an array")
            return csr
    elif array is not None:
        raise InputError(f"{path!r} is a zarr array, not a group; it has no array {array!r}")
    return node


def _is_sparse_array(V: Any) -> bool:
    if sp.issparse(V):
        return True
    meta = getattr(V, "_meta", None)
    return meta is not None and (sp.issparse(meta) or hasattr(meta, "to_scipy_sparse"))


def open_input(
    V: Any,
    block_rows: int | None = None,
    *,
    array: str | None = None,
    dtype: Any = None,
    storage_options: dict | None = None,
    parallelism: int = 1,
    variable: str | None = None,
    sample_dims: Any = None,
    feature_dims: Any = None,
) -> InputMatrix:
    """Turn V into an :class:`InputMatrix` (no values are read here).

    Parameters
    ----------
    V : str, os.PathLike, zarr.Array, dask.array.Array or numpy.ndarray
        The non-negative matrix; a path or fsspec URL names a zarr store.
    block_rows : int, optional
        Rows per block; default from dask's ``array.chunk-size``.
    array : str, optional
        The array's name when V names a zarr group.
    dtype : {None, "float32", "float64"}
        Compute in this dtype instead of V's own.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    parallelism : int
        Worker threads available; the default ``block_rows`` gives each two blocks.
    variable : str, optional
        The variable of an xarray Dataset (or of a zarr store opened with xarray).
    sample_dims, feature_dims : str or sequence of str, optional
        For xarray input: the dimensions stacked into rows (samples) and columns
        (features).  A 2-D DataArray defaults to (first, second).
    """
    source: dict = {"kind": type(V).__name__}
    labels = None
    if isinstance(V, (str, os.PathLike)) and (variable is not None or sample_dims is not None):
        source = {"kind": "xarray-zarr", "path": os.fspath(V), "variable": variable}
        V = _open_xarray_zarr(V, storage_options)
    if _is_xarray(V):
        V, labels = _from_xarray(V, variable, sample_dims, feature_dims)
        source.update(labels["describe"])
    elif variable is not None or sample_dims is not None or feature_dims is not None:
        raise InputError("variable=, sample_dims= and feature_dims= apply to xarray input only")
    if isinstance(V, (str, os.PathLike)):
        source = {"kind": "zarr", "path": os.fspath(V), "array": array}
        V = open_zarr_array(V, array, storage_options)
    elif array is not None:
        raise InputError("array= only applies when V is a path to a zarr group")

    sparse = _is_sparse_array(V) or isinstance(V, ZarrCSR)
    if isinstance(V, zarr.Array):
        source.setdefault("kind", "zarr")
        source.update(shape=list(V.shape), dtype=str(V.dtype), chunks=list(V.chunks))
    elif isinstance(V, ZarrCSR):
        source.update(kind="zarr-csr", group=V.group, nnz=V.nnz)
    elif isinstance(V, da.Array):
        source.update(shape=list(V.shape), dtype=str(V.dtype))
    elif sp.issparse(V):
        # A csr_matrix whatever the container: SciPy's sparse *arrays* (csr_array, ...)
        # break dask's reductions (no ``keepdims``) and multiply element-wise.
        V = sp.csr_matrix(V)
        source = {"kind": "scipy.sparse", "nnz": int(V.nnz)}
    elif not isinstance(V, np.ndarray):
        if hasattr(V, "to_scipy_sparse"):  # pydata sparse in memory
            V = V.to_scipy_sparse().tocsr()
            return open_input(V, block_rows, dtype=dtype, parallelism=parallelism)
        try:
            V = np.asarray(V)
        except Exception as exc:
            raise InputError(f"cannot use an object of type {type(V).__name__} as V") from exc
        source = {"kind": "ndarray"}

    if len(V.shape) != 2:
        # The sentence after ours is scikit-learn's (its checks and users match it).
        hint = (
            "Expected 2D array, got 1D array instead: Reshape your data either using "
            "array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) "
            "if it contains a single sample."
            if len(V.shape) == 1
            else f"Found array with dim {len(V.shape)}, expected 2."
        )
        raise InputError(
            f"V must be 2-D (samples x features); got {len(V.shape)}-D of shape {V.shape}. {hint}"
        )
    if any(np.isnan(s) for s in V.shape):
        raise InputError(
            f"V has unknown chunk sizes (shape {V.shape}); call V.compute_chunk_sizes() first"
        )
    m, n = (int(s) for s in V.shape)
    if m == 0 or n == 0:
        what = "0 sample(s)" if m == 0 else "0 feature(s)"
        raise InputError(
            f"V is empty (shape {V.shape}): Found array with {what} (shape=({m}, {n})) "
            "while a minimum of 1 is required."
        )
    compute_dtype = _float_dtype(V.dtype) if dtype is None else _float_dtype(_as_dtype(dtype))
    row_chunk = None
    if isinstance(V, zarr.Array):
        row_chunk = int(V.chunks[0])
    elif isinstance(V, da.Array):
        row_chunk = int(max(V.chunks[0]))
    nnz = V.nnz if isinstance(V, ZarrCSR) or sp.issparse(V) else None
    # A sparse row costs its non-zeros (value + column index), not n values.
    row_bytes = None if nnz is None else max(1, nnz // m) * (compute_dtype.itemsize + 4)
    stored = None if nnz is None else nnz * (compute_dtype.itemsize + 4) + 8 * (m + 1)
    if block_rows is None:
        block_rows = default_block_rows(m, n, compute_dtype, row_chunk, parallelism, row_bytes)
    elif not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise InputError(f"block_rows must be a positive integer; got {block_rows!r}")
    block_rows = int(min(block_rows, m))
    in_memory = isinstance(V, np.ndarray) or sp.issparse(V)
    _check_block_sizes(m, n, block_rows, row_bytes or n * compute_dtype.itemsize, in_memory)
    if isinstance(V, zarr.Array):
        _check_something_stored(V)
    elif sp.issparse(V):
        _check_csr(V)
    source.setdefault("shape", [m, n])
    source.setdefault("dtype", str(V.dtype))
    bounds = row_bounds(m, block_rows)
    chunks = (tuple(b - a for a, b in bounds), (n,))

    common = dict(source=source, labels=labels, sparse=sparse, stored_bytes=stored)
    if isinstance(V, np.ndarray) or sp.issparse(V):
        arr = V if V.dtype == compute_dtype else V.astype(compute_dtype)
        return InputMatrix((m, n), compute_dtype, bounds, local=arr, **common)
    if isinstance(V, ZarrCSR):
        common["zarr"] = V
        arr = rows_array(V.read_rows, bounds, n, V.dtype, sp.csr_matrix((0, 0), dtype=V.dtype))
    elif isinstance(V, zarr.Array):
        # Reads each row block straight from the store, whatever its chunking.
        arr = da.from_array(
            V,
            chunks=chunks,
            name="from-zarr-" + dask.base.tokenize(V, chunks),
            getitem=zarr_getter,
        )
        common["zarr"] = V
    else:
        arr = V.rechunk(chunks) if V.chunks != chunks else V
    if arr.dtype != compute_dtype:
        arr = arr.astype(compute_dtype)
    return InputMatrix((m, n), compute_dtype, bounds, array=arr, **common)


def _as_dtype(dtype: Any) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise InputError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from None


def _check_block_sizes(
    m: int, n: int, block_rows: int, row_bytes: int, in_memory: bool = False
) -> None:
    """Refuse, before anything of size m is built, row blocks that cannot work."""
    target = parse_bytes(dask.config.get("array.chunk-size"))
    if row_bytes > target and not in_memory:
        raise InputError(
            f"one row of V ({n} columns) takes {row_bytes} bytes, more than a block of V may "
            f"({target} bytes: dask's array.chunk-size, on a cluster at most 1/8 of a worker "
            "thread's memory); raise array.chunk-size and the workers' memory, or check the "
            "store's shape"
        )
    blocks = -(-m // block_rows)
    if blocks > MAX_BLOCKS:
        raise InputError(
            f"V's {m} rows would make {blocks} row blocks of {block_rows} rows, more than "
            f"{MAX_BLOCKS} (each is a task of every iteration); pass a larger block_rows or "
            "raise dask's array.chunk-size, or check the store's shape"
        )


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


def _check_csr(X: Any) -> None:
    """Refuse a SciPy CSR matrix whose index arrays are inconsistent (O(nnz), once)."""
    try:
        X.check_format(full_check=True)
    except ValueError as exc:
        raise InputError(f"V is not a valid CSR matrix: {exc}") from None


def _is_xarray(V: Any) -> bool:
    return type(V).__module__.startswith("xarray.") and hasattr(V, "dims")


def _open_xarray_zarr(path: Any, storage_options: dict | None):
    try:
        import xarray as xr
    except ImportError as exc:  # pragma: no cover - xarray is in the "xarray" extra
        raise InputError(
            "variable=/sample_dims= need xarray: pip install 'dask_nmf[xarray]'"
        ) from exc
    spath = os.fspath(path)
    if "://" not in spath and not os.path.exists(spath):
        raise InputError(f"no zarr store at {spath!r}: the path does not exist")
    try:
        with warnings.catch_warnings():
            # unconsolidated stores are fine here: we read one variable's metadata
            warnings.simplefilter("ignore", RuntimeWarning)
            return xr.open_zarr(spath, storage_options=storage_options)
    except Exception as exc:
        raise InputError(f"cannot open {spath!r} with xarray: {exc}") from exc


def _dims(x: Any) -> tuple:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def _from_xarray(V: Any, variable, sample_dims, feature_dims):
    """A 2-D (samples x features) array from an xarray object, and its labels."""
    import xarray as xr

    if isinstance(V, xr.Dataset):
        names = list(V.data_vars)
        if variable is None:
            if len(names) != 1:
                raise InputError(f"the Dataset has variables {names}; say which one with variable=")
            variable = names[0]
        if variable not in V.data_vars:
            raise InputError(f"the Dataset has no variable {variable!r} (it has {names})")
        V = V[variable]
    elif variable is not None:
        raise InputError("variable= applies to a Dataset, not a DataArray")
    samples, features = _dims(sample_dims), _dims(feature_dims)
    if not samples and not features:
        if V.ndim != 2:
            raise InputError(
                f"V has dims {V.dims}; say which are samples and which features "
                "(sample_dims=, feature_dims=)"
            )
        samples, features = (V.dims[0],), (V.dims[1],)
    elif not samples:
        samples = tuple(d for d in V.dims if d not in features)
    elif not features:
        features = tuple(d for d in V.dims if d not in samples)
    unknown = [d for d in samples + features if d not in V.dims]
    if unknown:
        raise InputError(f"V has no dimension(s) {unknown}; its dims are {V.dims}")
    if sorted(samples + features) != sorted(V.dims):
        raise InputError(
            f"sample_dims {samples} and feature_dims {features} must split V's dims {V.dims}"
        )
    if len(samples) == 1 and len(features) == 1:
        sdim, fdim = samples[0], features[0]
        V2 = V.transpose(sdim, fdim)
    else:
        sdim, fdim = "sample", "feature"
        V2 = V.stack(sample=samples, feature=features).transpose(sdim, fdim)
    labels = {
        "sample_dim": sdim,
        "feature_dim": fdim,
        "sample_coords": V2[sdim].coords,
        "feature_coords": V2[fdim].coords,
        "describe": {
            "xarray_name": V.name if isinstance(V.name, str) else None,
            "sample_dims": list(samples),
            "feature_dims": list(features),
        },
    }
    return V2.data, labels


def label_results(W: Any, H: np.ndarray, labels: dict | None):
    """W and H as xarray DataArrays with V's coordinates (``W.unstack()`` gives maps)."""
    if not labels:
        return W, H
    import xarray as xr

    sdim, fdim = labels["sample_dim"], labels["feature_dim"]
    Wx = xr.DataArray(W, dims=(sdim, "component"), coords=labels["sample_coords"])
    Hx = xr.DataArray(H, dims=("component", fdim), coords=labels["feature_coords"])
    return Wx, Hx


def as_dask_array(V: InputMatrix) -> da.Array:
    """V as a dask array chunked by its row blocks (wrapping in-memory V once)."""
    if V.array is not None:
        return V.array
    meta = V.local[:0]
    return da.concatenate(
        [
            da.from_delayed(dask.delayed(block), block.shape, V.dtype, meta=meta)
            for block in block_sources(V)
        ]
    )


def block_sources(V: InputMatrix) -> list:
    """One dask ``Delayed`` (or in-memory array) per row block of V."""
    if V.local is not None:
        if sp.issparse(V.local):
            return [_csr_rows(V.local, a, b) for a, b in V.bounds]
        return [V.local[a:b] for a, b in V.bounds]  # views
    return list(V.array.to_delayed().ravel())


#: One reusable block buffer per thread for :func:`read_rows_into` (thread id -> array).
_BUFFERS: dict[int, np.ndarray] = {}
_BUFFERS_LOCK = threading.Lock()


class BlockReader:
    """A zarr store (dense array or CSR group) as a task argument of the solver's
    fused read-and-update steps.

    dask tokenizes every argument of a graph submitted to a cluster, every
    iteration; normalizing a ``zarr.Array`` took ~1.3 ms, so it is hidden
    behind a token made once (the array itself still travels with the task,
    1.3 kB pickled).
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


def _csr_rows(X, start: int, stop: int):
    """Rows ``start:stop`` of a CSR matrix as a view of its arrays.

    ``X[start:stop]`` would copy them: for a sparse V in memory, a second V.
    """
    a, b = X.indptr[start], X.indptr[stop]
    # (The (data, indices, indptr) constructor copies them, whatever ``copy`` says.)
    out = sp.csr_matrix((stop - start, X.shape[1]), dtype=X.dtype)
    out.data, out.indices = X.data[a:b], X.indices[a:b]
    out.indptr = X.indptr[start : stop + 1] - a
    return out


def check_stats(
    stats: dict,
    name: str = "V",
    *,
    dtype: Any = None,
    shape: tuple[int, int] | None = None,
    k: int = 1,
) -> None:
    """Raise :class:`InputError` if the statistics show NaN/inf or negative values.

    Given the ``dtype`` the fit computes in and V's ``shape`` (and the rank
    ``k``), also refuse a V that is all zeros or whose scale the dtype's
    arithmetic cannot carry: the updates form products of about
    ``max(V)^1.5`` and sums of ``max(V)^2`` over a row or column (norms, the
    NNDSVD's SVD), which must neither overflow nor underflow (V ~ 1e300 in float64, V ~ 2**64 in
    float32; V ~ 1e-300 gives W = H = 0).
    """
    if not stats["finite"]:
        # (The second sentences are scikit-learn's phrases, which users match.)
        raise InputError(
            f"{name} contains NaN or infinite values; NMF needs finite entries. "
            f"Input {name} contains NaN or infinity."
        )
    if stats["min"] < 0:
        raise InputError(
            f"{name} contains negative values (minimum {stats['min']:.6g}); NMF needs V >= 0. "
            f"Negative values in data passed to NMF (input {name})."
        )
    if dtype is None or shape is None:
        return
    info = np.finfo(dtype)
    vmax = float(stats.get("max", math.nan))
    if stats["sum"] == 0 or vmax == 0:
        raise InputError(f"{name} is all zeros; there is nothing to factorize")
    rescale = f"rescale {name} (e.g. divide it by its maximum, {vmax:.3g})"
    too_large = (
        not math.isfinite(stats["sum"])
        or not math.isfinite(stats["sumsq"])
        or vmax * vmax * max(shape) * k >= float(info.max) / 16
    )
    if too_large:
        raise InputError(
            f"{name}'s values (up to {vmax:.3g}) are too large for {np.dtype(dtype).name} "
            f"arithmetic: sums of their squares overflow; {rescale}"
        )
    if vmax * vmax <= float(info.tiny) / float(info.eps):  # squares (norms, SVD) underflow
        raise InputError(
            f"{name}'s values (at most {vmax:.3g}) are too small for {np.dtype(dtype).name} "
            f"arithmetic: the products of the updates underflow to zero; {rescale}"
        )


def check_factor(X: Any, shape: tuple[int, int], name: str) -> Any:
    """Validate a user-supplied initial factor (shape, finiteness, sign)."""
    if X is None:
        raise InputError(f"init='custom' needs {name}")
    if not isinstance(X, da.Array):
        X = np.asarray(X)
    if X.ndim != 2 or tuple(X.shape) != tuple(shape):
        raise InputError(f"{name} has shape {tuple(X.shape)}; expected {tuple(shape)}")
    if np.dtype(X.dtype).kind not in "biuf":
        raise InputError(f"{name} has dtype {X.dtype}; expected real numbers")
    stats = kernels.block_stats(X) if isinstance(X, np.ndarray) else dask.compute(_dask_stats(X))[0]
    check_stats(stats, name)
    if stats["sum"] == 0:
        raise InputError(f"{name} is all zeros; multiplicative updates cannot move from zero")
    return X


def _dask_stats(X: da.Array):
    blocks = X.to_delayed().ravel()
    parts = [dask.delayed(kernels.block_stats)(b) for b in blocks]
    return dask.delayed(kernels.merge_all_stats)(parts)
