"""What is added up over blocks: the statistics of V's blocks, the blocks'
partial-sum dictionaries, and a k x n sum of products over sub-blocks.

Pure functions of arrays, like :mod:`dask_nmf.kernels` (which re-exports them).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp


def as_block(V):
    """A dense block as an ndarray; a sparse one (scipy.sparse, pydata sparse) as CSR."""
    if sp.issparse(V):
        return V.tocsr()
    if hasattr(V, "to_scipy_sparse"):  # pydata sparse COO / GCXS
        return V.to_scipy_sparse().tocsr()
    return np.asarray(V)


def _product(a, b, out: np.ndarray) -> np.ndarray:
    """``a @ b`` into ``out`` (dense), or a new array (a sparse operand)."""
    if sp.issparse(b) or out.dtype != np.result_type(a, b):
        return a @ b
    return np.matmul(a, b, out=out)


class ProductSum:
    """A k x n sum of products ``X^T Y`` over the sub-blocks of a block.

    The first product is written straight into the sum (no zeros to add to),
    later ones through one reused buffer; a sparse Y's products are summed
    transposed (SciPy forms ``Y^T X``, n x k).

    Parameters
    ----------
    k, n : int
        The sum's shape.
    dtype : numpy.dtype
        The sum's dtype (W's).
    """

    def __init__(self, k: int, n: int, dtype: np.dtype):
        self.shape, self.dtype = (k, n), dtype
        self.total_ = self.buffer = None
        self.transposed = False

    def add(self, X: np.ndarray, Y, cols: slice | None = None) -> None:
        """Add ``X^T Y`` (to the columns ``cols`` of the sum, where given; dense Y)."""
        if sp.issparse(Y):
            self._add_sparse(X, Y)
            return
        if self.total_ is None and cols is None:
            self.total_ = _product(X.T, Y, np.empty(self.shape, self.dtype))
            return
        if self.total_ is None:
            self.total_ = np.zeros(self.shape, self.dtype)
        if self.buffer is None:
            self.buffer = np.empty(self.shape[0] * self.shape[1], self.dtype)
        k, width = self.shape[0], Y.shape[1]
        target = self.total_ if cols is None else self.total_[:, cols]
        target += _product(X.T, Y, self.buffer[: k * width].reshape(k, width))

    def _add_sparse(self, X: np.ndarray, Y) -> None:
        product = np.asarray(Y.T @ X)  # n x k
        if product.dtype != self.dtype:
            product = product.astype(self.dtype)
        if self.total_ is None:
            self.total_, self.transposed = product, True
        else:
            self.total_ += product

    def total(self) -> np.ndarray:
        """The sum, C-contiguous k x n (zeros if nothing was added)."""
        if self.total_ is None:
            return np.zeros(self.shape, self.dtype)
        return np.ascontiguousarray(self.total_.T) if self.transposed else self.total_


def block_stats(V) -> dict:
    """Statistics of one block for validation and set-up, in one read.

    ``min``, ``max`` (of the finite values), ``finite`` (all finite), ``sum`` and
    ``sumsq`` (float64).  For a sparse block they come from the stored values
    (and the implicit zeros).
    """
    V = as_block(V)
    if V.shape[0] * V.shape[1] == 0:
        return {"min": np.inf, "max": -np.inf, "finite": True, "sum": 0.0, "sumsq": 0.0}
    values = V.data if sp.issparse(V) else V
    finite = bool(np.isfinite(values).all())
    if values.size == 0:
        vmin = vmax = 0.0
    elif finite:
        vmin, vmax = float(values.min()), float(values.max())
    else:
        vmin = float(np.nanmin(np.where(np.isfinite(values), values, np.inf)))
        vmax = float(np.nanmax(np.where(np.isfinite(values), values, -np.inf)))
    if sp.issparse(V) and V.nnz < V.shape[0] * V.shape[1]:
        vmin, vmax = min(vmin, 0.0), max(vmax, 0.0)
    v64 = values.astype(np.float64, copy=False).ravel()
    with np.errstate(over="ignore"):  # an inf sum of squares is reported, not warned of
        sumsq = float(np.dot(v64, v64)) if finite else np.nan
    return {
        "min": vmin,
        "max": vmax,
        "finite": finite,
        "sum": float(v64.sum()),
        "sumsq": sumsq,
    }


#: Additive statistics of the observed entries (:func:`dask_nmf.kernels_masked.block_stats`).
_MASKED_STATS = ("observed", "size", "col_sum", "col_count")


def merge_stats(a: dict, b: dict) -> dict:
    """Combine two :func:`block_stats` results (or two of the masked ones)."""
    out = {
        "min": min(a["min"], b["min"]),
        "max": max(a.get("max", np.nan), b.get("max", np.nan)),
        "finite": a["finite"] and b["finite"],
        "sum": a["sum"] + b["sum"],
        "sumsq": a["sumsq"] + b["sumsq"],
    }
    out.update({key: a[key] + b[key] for key in _MASKED_STATS if key in a})
    return out


#: From this many bytes on, a k x n array's element-wise work may run in column
#: tiles on several threads (below it, starting them costs more than they save).
THREADED_BYTES = 4 * 2**20


def column_tiles(fn: Callable[[slice], Any], n_cols: int, threads: int = 1) -> list:
    """``[fn(cols) for cols in tiles]`` over ``threads`` tiles of ``n_cols`` columns,
    run on that many threads (one tile, on this thread, for ``threads`` <= 1).

    For the work on k x n arrays that runs while every block waits for it (the
    sums, the H update): on a local scheduler the other threads are idle then.
    NumPy and BLAS release the GIL for the arrays' work.
    """
    if threads <= 1 or n_cols < 2:
        return [fn(slice(0, n_cols))]
    step = -(-n_cols // min(threads, n_cols))
    tiles = [slice(a, min(a + step, n_cols)) for a in range(0, n_cols, step)]
    with ThreadPoolExecutor(len(tiles)) as pool:
        return list(pool.map(fn, tiles))


def add_partials(a: dict, b: dict) -> dict:
    """Sum two partial-sum dictionaries key by key."""
    return {key: a[key] + b[key] for key in a}


def sum_partials(parts: list[dict], threads: int = 1) -> dict:
    """:func:`add_partials` over a list (one node of a reduction tree).

    The arrays are added into a new one: one new k x n array per node, not
    one per part (each a fresh mmap's page faults on a wide V).  The parts
    themselves are task results and stay unchanged (a task re-run after a lost
    worker sees them as they were).  ``threads``: large 2-d arrays are added in
    that many column tiles at once (:func:`column_tiles`).
    """
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key, first in parts[0].items():
        if not isinstance(first, np.ndarray):
            out[key] = sum((p[key] for p in parts[1:]), first)
            continue
        total = np.empty_like(first)
        values = [p[key] for p in parts]

        def add(cols: slice, total=total, values=values) -> None:
            np.add(values[0][..., cols], values[1][..., cols], out=total[..., cols])
            for v in values[2:]:
                total[..., cols] += v[..., cols]

        big = first.ndim == 2 and first.nbytes >= THREADED_BYTES
        column_tiles(add, first.shape[-1], threads if big else 1)
        out[key] = total
    return out


def merge_all_stats(parts: list[dict]) -> dict:
    """:func:`merge_stats` over a list (one node of a reduction tree)."""
    out = parts[0]
    for p in parts[1:]:
        out = merge_stats(out, p)
    return out
