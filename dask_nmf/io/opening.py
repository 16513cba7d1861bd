"""Turning whatever the user has into an :class:`InputMatrix`: a zarr path or URL, a
zarr array or group, a dask array, NumPy, SciPy sparse, xarray."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from dask.utils import parse_bytes

from .anndata import anndata_labels, anndata_matrix, is_anndata
from .blocks import _check_block_sizes, default_block_rows, row_bounds, rows_array
from .csr import ZarrCSR, _check_csr, _csr_group
from .matrix import InputError, InputMatrix, _as_dtype, _float_dtype
from .reader import _check_something_stored, zarr_getter
from .xarray_inputs import _from_xarray, _is_xarray, _open_xarray_zarr


def open_zarr_array(
    path: Any, array: str | None = None, storage_options: dict | None = None
) -> zarr.Array | ZarrCSR:
    """Open a zarr array read-only from a path/URL (or a group and array name).

    A group in AnnData's CSR encoding (``encoding-type: csr_matrix``) is
    returned as a :class:`ZarrCSR`; in an AnnData store (written by
    ``anndata``), ``array`` defaults to ``X``.
    """
    return _open_zarr(path, array, storage_options)[0]


def _open_zarr(
    path: Any, array: str | None, storage_options: dict | None
) -> tuple[zarr.Array | ZarrCSR, dict | None]:
    """:func:`open_zarr_array`, and the labels of an AnnData store's matrix (or None)."""
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
    root, labels = node, None
    if is_anndata(node):
        array = anndata_matrix(node, path, array)
    elif isinstance(node, zarr.Group):
        csr = _csr_group(node, path, "", storage_options)
        if csr is not None:
            if array is not None:
                raise InputError(f"{path!r} is a CSR matrix; it has no array {array!r}")
            return csr, None
    if isinstance(node, zarr.Group):
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
            node = _csr_group(node, path, array, storage_options)
            if node is None:
                raise InputError(f"{array!r} in {path!r} is a group, not an array")
        if is_anndata(root) and len(node.shape) == 2:
            labels = anndata_labels(root, array, tuple(node.shape))
    elif array is not None:
        raise InputError(f"{path!r} is a zarr array, not a group; it has no array {array!r}")
    return node, labels


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
    block_bytes: Callable[[bool], int] | None = None,
    n_components: int | None = None,
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
        Worker threads available; the default ``block_rows`` gives each one block
        (two where V is read from a store).
    variable : str, optional
        The variable of an xarray Dataset (or of a zarr store opened with xarray).
    sample_dims, feature_dims : str or sequence of str, optional
        For xarray input: the dimensions stacked into rows (samples) and columns
        (features).  A 2-D DataArray defaults to (first, second).
    block_bytes : callable, optional
        ``block_bytes(whole_blocks)``: the most bytes a block may hold, given
        whether V is a lazy input other than a dense zarr store (the NNDSVD's
        SVD reads those in whole blocks).  Default: dask's ``array.chunk-size``.
    n_components : int, optional
        k, where known: the default ``block_rows`` counts the blocks' k x n
        partial sums (fewer, larger blocks on a wide V).
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
        V, labels = _open_zarr(V, array, storage_options)
        if labels is not None:
            source.update(labels["describe"])
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
            return open_input(
                V, block_rows, dtype=dtype, parallelism=parallelism, n_components=n_components
            )
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
    in_memory = isinstance(V, np.ndarray) or sp.issparse(V)
    # Other lazy inputs than a dense zarr store are read whole by the NNDSVD's SVD.
    whole_blocks = not in_memory and not isinstance(V, zarr.Array)
    if block_bytes is None:
        limit = parse_bytes(dask.config.get("array.chunk-size"))
    else:
        limit = block_bytes(whole_blocks)
    if block_rows is None:
        block_rows = default_block_rows(
            m, n, compute_dtype, row_chunk, parallelism, row_bytes, limit, n_components, in_memory
        )
    elif not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise InputError(f"block_rows must be a positive integer; got {block_rows!r}")
    block_rows = int(min(block_rows, m))
    _check_block_sizes(m, n, block_rows, row_bytes or n * compute_dtype.itemsize, limit, in_memory)
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
