"""Sparse V in CSR: AnnData-style zarr groups (``data``, ``indices``, ``indptr``, a
``shape`` attribute), read by rows through ``indptr`` and checked so that SciPy never
sees an invalid matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from .matrix import _DECODE_ERRORS, InputError


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
        what = f"{group!r} in {path!r}" if group else repr(path)
        hint = " (convert it with .tocsr())" if kind.endswith("_matrix") else ""
        raise InputError(f"{what} holds a {kind}; row blocks need a csr_matrix{hint}")
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


def _check_csr(X: Any) -> None:
    """Refuse a SciPy CSR matrix whose index arrays are inconsistent (O(nnz), once)."""
    try:
        X.check_format(full_check=True)
    except ValueError as exc:
        raise InputError(f"V is not a valid CSR matrix: {exc}") from None


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
