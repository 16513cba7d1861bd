"""Generated datasets for demos, examples and benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr


def fast_compressors() -> list:
    """The codec we write dense float stores with: Blosc LZ4 with byte shuffle.

    Measured on noisy float32 data (benchmarks/README.md, "codecs"): zarr's
    default zstd decodes at 0.8 GB/s on 2 threads, Blosc-LZ4 + shuffle at
    1.8 GB/s while storing less (1.31x vs 1.18x); uncompressed reads at
    2.5 GB/s.  Reading V is most of an out-of-core iteration.
    """
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]


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
    attributes: dict | None = None,
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
        path,
        shape=(m, n),
        chunks=(min(chunk_rows, m), n),
        dtype=dtype,
        compressors=fast_compressors(),
        overwrite=overwrite,
        attributes=attributes,
    )
    for start in range(0, m, chunk_rows):
        rows = min(chunk_rows, m - start)
        block = rng.random((rows, k)) @ H0 + noise * rng.random((rows, n))
        V[start : start + rows] = block.astype(dtype, copy=False)
    return V


def write_csr_zarr(path: Any, X: Any, *, chunk_nnz: int = 1_000_000, overwrite: bool = False):
    """Store a SciPy sparse matrix in zarr as CSR, the way AnnData stores ``X``.

    A group with ``data``, ``indices``, ``indptr`` and the attributes
    ``encoding-type: csr_matrix``, ``encoding-version``, ``shape``.
    """
    X = X.tocsr()
    group = zarr.open_group(path, mode="w" if overwrite else "w-")
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": list(X.shape)}
    )
    chunk = max(1, min(chunk_nnz, X.nnz))
    group.create_array("data", data=X.data, chunks=(chunk,))
    group.create_array("indices", data=X.indices, chunks=(chunk,))
    group.create_array(
        "indptr", data=X.indptr.astype(np.int64), chunks=(max(1, min(chunk, X.shape[0] + 1)),)
    )
    return group


def make_sparse_counts(
    m: int, n: int, k: int, density: float, *, seed: int = 0, dtype: Any = "float32"
):
    """A synthetic single-cell-like count matrix: Poisson counts of a rank-k rate,
    kept at about ``density`` non-zeros, as SciPy CSR.

    Each cell (row) expresses a random subset of genes (columns); the counts at
    those entries are Poisson with rates from non-negative factors.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 1.0, size=(k, n))  # sparse-ish gene programs
    rows, cols, vals = [], [], []
    per_row = max(1, int(round(density * n)))
    for start in range(0, m, 10_000):
        stop = min(m, start + 10_000)
        size = rng.gamma(5.0, 2.0, size=(stop - start, 1))  # cell "library size"
        usage = rng.dirichlet(np.full(k, 0.5), size=stop - start) * size
        c = np.sort(rng.choice(n, size=(stop - start, per_row)), axis=1)
        rate = (usage[:, :, None] * programs[:, c].transpose(1, 0, 2)).sum(axis=1)
        counts = rng.poisson(rate) + 1  # observed entries are non-zero
        rows.append(np.repeat(np.arange(start, stop), per_row))
        cols.append(c.ravel())
        vals.append(counts.ravel())
    X = sp.csr_matrix(
        (np.concatenate(vals).astype(dtype), (np.concatenate(rows), np.concatenate(cols))),
        shape=(m, n),
    )
    X.sum_duplicates()
    return X
