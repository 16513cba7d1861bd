"""Row blocks: how many rows a block holds (from the workers' memory), the blocks' bounds,
and V's blocks as dask arrays or per-block sources."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.utils import parse_bytes

from ..kernels import PARTIAL_REUSE
from .csr import _csr_rows
from .matrix import InputError, InputMatrix

#: The most row blocks V may be split into.  Each block is a task or two of
#: every iteration's graph (and a W block the client tracks): at dask's
#: ~0.2-1 ms of scheduler time per task, 10**6 blocks would spend minutes
#: per iteration on scheduling alone, and the client's graph would take GBs.
MAX_BLOCKS = 1_000_000


def default_block_rows(
    n_rows: int,
    n_cols: int,
    dtype: np.dtype,
    row_chunk: int | None = None,
    parallelism: int = 1,
    row_bytes: int | None = None,
    block_bytes: int | None = None,
    n_components: int | None = None,
    in_memory: bool = False,
) -> int:
    """Rows per block: at most dask's ``array.chunk-size``, at least one block
    per worker thread where V has the rows (two when V is read from a store),
    and as large as an even share of the work between the threads allows.

    Large, because every block costs the scheduler and a worker a task or two
    each iteration; evenly shared, because an iteration ends when the busiest
    thread does (blocks go to the threads in turn): of the block sizes from the
    largest allowed down to half of it, the largest whose busiest thread has at
    most 2 % more rows than the best of them.  Blocks are whole multiples of
    the store's row chunk when there are chunks enough for two blocks per
    thread, so no stored chunk is split between two blocks (and decompressed
    twice).  ``block_bytes``: the most a block may hold (default: dask's
    ``array.chunk-size``).

    ``n_components`` (k) counts each block's k x n partial sums: every block
    emits and adds them whatever its rows, so on a wide V a block should hold
    at least ``PARTIAL_REUSE`` times their bytes.  Where two blocks per
    thread would be thinner than that, each thread gets one; V in memory
    (``in_memory``: its blocks are views, or spread over the workers anyway)
    may exceed ``block_bytes`` to get there.
    """
    target = block_bytes or parse_bytes(dask.config.get("array.chunk-size"))
    if row_bytes is None:
        row_bytes = n_cols * np.dtype(dtype).itemsize
    threads = max(1, parallelism)
    cap = max(1, target // max(1, row_bytes))
    partial = (n_components or 0) * n_cols * np.dtype(dtype).itemsize
    min_rows = max(1, -(-PARTIAL_REUSE * partial // max(1, row_bytes)))
    if in_memory:
        cap = max(cap, min(min_rows, n_rows))
    unit = 1
    if row_chunk and row_chunk <= cap and -(-n_rows // row_chunk) >= 2 * threads:
        unit = row_chunk
    units = -(-n_rows // unit)
    # V in memory: blocks are views of equal cost, and one per thread is fastest
    # (each block is a task or two and adds a k x n partial; bench_shapes.py).
    # Read from a store, two per thread let one block's read overlap another's work.
    two = not in_memory and -(-units // (2 * threads)) * unit >= min_rows
    per_thread = 2 if two else 1
    largest = max(1, min(cap // unit, -(-units // (per_thread * threads))))

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


def _check_block_sizes(
    m: int, n: int, block_rows: int, row_bytes: int, target: int, in_memory: bool = False
) -> None:
    """Refuse, before anything of size m is built, row blocks that cannot work
    (``target``: the most bytes a block may hold)."""
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


def as_dask_array(V: InputMatrix, placed: list | None = None) -> da.Array:
    """V as a dask array chunked by its row blocks.

    An in-memory V is wrapped block by block; ``placed``: handles of those
    blocks already on a cluster (``Runner.place``), which the graph then
    refers to by key instead of carrying V's values to the scheduler again.
    """
    if V.array is not None:
        return V.array
    meta = V.local[:0]
    blocks = placed if placed is not None else block_sources(V)
    return da.concatenate(
        [
            da.from_delayed(dask.delayed(block), (b - a, V.shape[1]), V.dtype, meta=meta)
            for block, (a, b) in zip(blocks, V.bounds)
        ]
    )


def block_sources(V: InputMatrix) -> list:
    """One dask ``Delayed`` (or in-memory array) per row block of V."""
    if V.local is not None:
        if sp.issparse(V.local):
            return [_csr_rows(V.local, a, b) for a, b in V.bounds]
        return [V.local[a:b] for a, b in V.bounds]  # views
    return list(V.array.to_delayed().ravel())
