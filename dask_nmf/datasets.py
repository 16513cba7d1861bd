"""Generated datasets for demos, examples and benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr


def make_low_rank_store(
    path: Any,
    m: int,
    n: int,
    k: int,
    *,
    noise: float = 0.01,
    seed: int = 0,
    chunk_rows: int = 2_000,
    dtype: Any = "float64",
    overwrite: bool = False,
) -> zarr.Array:
    """Write ``V = W0 H0 + noise`` (uniform non-negative factors) to a zarr array.

    V is written one row chunk at a time, so it never has to fit in memory.

    Returns
    -------
    zarr.Array
        The array written (chunks of ``chunk_rows`` whole rows).
    """
    rng = np.random.default_rng(seed)
    H0 = rng.random((k, n))
    V = zarr.create_array(
        path, shape=(m, n), chunks=(min(chunk_rows, m), n), dtype=dtype, overwrite=overwrite
    )
    for start in range(0, m, chunk_rows):
        rows = min(chunk_rows, m - start)
        block = rng.random((rows, k)) @ H0 + noise * rng.random((rows, n))
        V[start : start + rows] = block.astype(dtype, copy=False)
    return V
