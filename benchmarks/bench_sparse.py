"""Sparse V: time and memory per iteration against density, vs scikit-learn and the dense path.

    python benchmarks/run.py --case sparse [--quick]

At a fixed shape, V is a synthetic count matrix (``dask_nmf.datasets.make_sparse_counts``)
at several densities, held as a SciPy CSR matrix in memory.  For each density
and cost: dask_nmf's per-iteration time on the sparse matrix, scikit-learn's
``NMF(solver="mu")`` on the same sparse matrix from the same start, and (at one
density) dask_nmf on the densified matrix.  Per-iteration time is
(t(N2) - t(N1)) / (N2 - N1), so set-up cancels.  Memory is the peak of the
bytes NumPy/SciPy allocated during a fit (``tracemalloc``, which sees every
NumPy array), above what was allocated before it: V itself is not counted, the
work arrays and copies each solver makes are.
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings
from functools import partial

import numpy as np
from common import blas_threads, per_iteration, table

import dask_nmf
from dask_nmf.datasets import make_sparse_counts


def fit_ours(V, k, beta, W0, H0, block_rows, n_iter):
    dask_nmf.factorize(
        V, k, beta_loss=beta, W_init=W0, H_init=H0, max_iter=n_iter, tol=0, block_rows=block_rows
    )


def fit_sklearn(X, k, beta, W0, H0, n_iter):
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NMF(k, solver="mu", beta_loss=beta, init="custom", max_iter=n_iter, tol=0).fit(
            X, W=W0.copy(), H=H0.copy()
        )


def peak_allocated(fn) -> float:
    """MB allocated at the peak of ``fn()`` above the level before it."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 1e6


def run(args, ctx) -> dict:
    log = ctx["log"]
    m, n, k = (20_000, 1_000, 8) if args.quick else (100_000, 2_000, 16)
    densities = [0.002, 0.01, 0.05] if args.quick else [0.001, 0.003, 0.01, 0.03, 0.1]
    dense_at = 0.01
    n1, n2 = (2, 6) if args.quick else (2, 10)
    repeats = 1 if args.quick else 2
    block_rows = m // 4
    log(f"  V {m}x{n} float64 CSR, k={k}, block_rows={block_rows}; dask_nmf on the threaded "
        f"scheduler; scikit-learn with its default BLAS threads; N1={n1}, N2={n2}")
    log(f"  dense V would be {m * n * 8 / 1e6:.0f} MB")
    rows = []
    for density in densities:
        X = make_sparse_counts(m, n, k, density, seed=0, dtype="float64")
        rng = np.random.default_rng(0)
        W0, H0 = rng.random((m, k)), rng.random((k, n))
        for beta in ("frobenius", "kullback-leibler"):
            ours = partial(fit_ours, X, k, beta, W0, H0, block_rows)
            sklearn = partial(fit_sklearn, X, k, beta, W0, H0)
            row = {"density": density, "nnz": int(X.nnz), "beta_loss": beta,
                   "csr_MB": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e6}
            row["ours_ms"] = per_iteration(ours, n1, n2, repeats)["ms_per_iter"]
            with blas_threads(None):
                row["sklearn_ms"] = per_iteration(sklearn, n1, n2, repeats)["ms_per_iter"]
            row["ours_over_sklearn"] = row["ours_ms"] / row["sklearn_ms"]
            row["ours_peak_MB"] = peak_allocated(partial(ours, n1))
            row["sklearn_peak_MB"] = peak_allocated(partial(sklearn, n1))
            if density == dense_at:
                D = X.toarray()
                dense = partial(fit_ours, D, k, beta, W0, H0, block_rows)
                row["dense_ms"] = per_iteration(dense, n1, n2, repeats)["ms_per_iter"]
                row["dense_peak_MB"] = peak_allocated(partial(dense, n1))
                row["sparse_over_dense"] = row["ours_ms"] / row["dense_ms"]
                del D, dense
            rows.append(row)
            log(f"    density {density:6.3f} nnz {X.nnz:>10d} {beta:17s} dask_nmf "
                f"{row['ours_ms']:8.1f} ms  sklearn {row['sklearn_ms']:8.1f} ms  "
                f"peak MB {row['ours_peak_MB']:7.1f} / {row['sklearn_peak_MB']:7.1f}"
                + (f"  dense path {row['dense_ms']:8.1f} ms, {row['dense_peak_MB']:.0f} MB"
                   if "dense_ms" in row else ""))
    log("")
    cols = ["density", "nnz", "beta_loss", "csr_MB", "ours_ms", "sklearn_ms", "ours_over_sklearn",
            "ours_peak_MB", "sklearn_peak_MB", "dense_ms", "dense_peak_MB", "sparse_over_dense"]
    log(table(rows, cols, title=f"Sparse V {m}x{n}, k={k}: per iteration and peak allocation",
              headers={"csr_MB": "V (CSR) MB", "ours_ms": "dask_nmf ms/iter",
                       "sklearn_ms": "sklearn ms/iter", "ours_over_sklearn": "/ sklearn",
                       "ours_peak_MB": "dask_nmf peak MB", "sklearn_peak_MB": "sklearn peak MB",
                       "dense_ms": "dense path ms/iter", "dense_peak_MB": "dense path peak MB",
                       "sparse_over_dense": "sparse / dense"}))
    log("")
    _plot(rows, m, n, k, args)
    return {"shape": [m, n], "k": k, "n1": n1, "n2": n2, "rows": rows}


def _plot(rows, m, n, k, args) -> None:
    import common
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for beta, style in (("frobenius", "-"), ("kullback-leibler", "--")):
        sel = [r for r in rows if r["beta_loss"] == beta]
        nnz = [r["nnz"] for r in sel]
        axes[0].loglog(nnz, [r["ours_ms"] for r in sel], "o" + style, label=f"dask_nmf {beta}")
        axes[0].loglog(nnz, [r["sklearn_ms"] for r in sel], "s" + style, label=f"scikit-learn {beta}")
        axes[1].loglog(nnz, [r["ours_peak_MB"] for r in sel], "o" + style, label=f"dask_nmf {beta}")
        axes[1].loglog(nnz, [r["sklearn_peak_MB"] for r in sel], "s" + style,
                       label=f"scikit-learn {beta}")
        for r in sel:
            if "dense_ms" in r:
                axes[0].plot([r["nnz"]], [r["dense_ms"]], "x", ms=9, color="k")
                axes[1].plot([r["nnz"]], [r["dense_peak_MB"]], "x", ms=9, color="k")
    axes[0].plot([], [], "x", color="k", label="dask_nmf on the densified V")
    axes[0].set(xlabel="non-zeros", ylabel="ms per iteration", title=f"time, V {m}x{n}, k={k}")
    axes[1].set(xlabel="non-zeros", ylabel="peak MB allocated during a fit", title="memory")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = common.RESULTS / ("sparse_quick.png" if args.quick else "sparse.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
