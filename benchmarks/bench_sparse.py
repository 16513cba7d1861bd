"""Sparse V: time and memory per iteration against density, vs scikit-learn and the dense path.

    python benchmarks/bench_sparse.py [--quick]

At a fixed shape, V is a synthetic count matrix at several densities (SciPy
CSR in memory).  For each density and cost: dask_nmf's per-iteration time on
the sparse matrix, scikit-learn's ``NMF(solver="mu")`` on the same sparse
matrix from the same start, and dask_nmf on the densified matrix; plus the
peak resident memory each fit added to this process.  Per-iteration time is
(t(N2) - t(N1)) / (N2 - N1) so set-up cancels.  Writes
benchmarks/results/sparse.json and sparse.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import threading
import time
import warnings
from functools import partial

import numpy as np
import psutil

import dask_nmf
from dask_nmf.datasets import make_sparse_counts

RESULTS = pathlib.Path(__file__).parent / "results"


class PeakRSS:
    """Peak resident memory of this process above its level at entry (sampled)."""

    def __enter__(self):
        gc.collect()
        self.base = psutil.Process().memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.added = self.peak - self.base


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


def per_iteration(fit, n1, n2):
    times = {}
    for n in (n1, n2):
        t = time.perf_counter()
        fit(n)
        times[n] = time.perf_counter() - t
    return (times[n2] - times[n1]) / (n2 - n1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    m, n, k = (20_000, 1_000, 8) if args.quick else (100_000, 2_000, 16)
    densities = [0.002, 0.01, 0.05] if args.quick else [0.001, 0.003, 0.01, 0.03]
    n1, n2 = (2, 6) if args.quick else (3, 11)
    rows = []
    for density in densities:
        X = make_sparse_counts(m, n, k, density, seed=0, dtype="float64")
        rng = np.random.default_rng(0)
        W0, H0 = rng.random((m, k)), rng.random((k, n))
        block_rows = m // 4
        for beta in ("frobenius", "kullback-leibler"):
            ours = partial(fit_ours, X, k, beta, W0, H0, block_rows)
            sklearn = partial(fit_sklearn, X, k, beta, W0, H0)
            row = {"density": density, "nnz": int(X.nnz), "beta_loss": beta}
            row["ours_s"] = per_iteration(ours, n1, n2)
            row["sklearn_s"] = per_iteration(sklearn, n1, n2)
            with PeakRSS() as mem_ours:
                ours(n1)
            with PeakRSS() as mem_sk:
                sklearn(n1)
            row["ours_peak_mb"] = mem_ours.added / 1e6
            row["sklearn_peak_mb"] = mem_sk.added / 1e6
            if density == densities[-1] or args.quick:
                D = X.toarray()
                row["ours_dense_s"] = per_iteration(
                    partial(fit_ours, D, k, beta, W0, H0, block_rows), n1, n2
                )
                del D
            rows.append(row)
            print(
                f"density {density:6.3f} nnz {X.nnz:>9d} {beta:17s} ours {row['ours_s'] * 1e3:8.1f} ms"
                f"  sklearn {row['sklearn_s'] * 1e3:8.1f} ms  ratio {row['ours_s'] / row['sklearn_s']:.2f}"
                f"  peak MB ours {row['ours_peak_mb']:7.1f} sklearn {row['sklearn_peak_mb']:7.1f}"
                + (
                    f"  dense path {row['ours_dense_s'] * 1e3:8.1f} ms"
                    if "ours_dense_s" in row
                    else ""
                )
            )
    out = {"shape": [m, n], "k": k, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    name = "sparse_quick" if args.quick else "sparse"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for beta, style in (("frobenius", "-"), ("kullback-leibler", "--")):
            sel = [r for r in rows if r["beta_loss"] == beta]
            nnz = [r["nnz"] for r in sel]
            axes[0].loglog(nnz, [r["ours_s"] for r in sel], "o" + style, label=f"dask_nmf {beta}")
            axes[0].loglog(
                nnz, [r["sklearn_s"] for r in sel], "s" + style, label=f"scikit-learn {beta}"
            )
            axes[1].loglog(
                nnz,
                [max(r["ours_peak_mb"], 0.1) for r in sel],
                "o" + style,
                label=f"dask_nmf {beta}",
            )
            axes[1].loglog(
                nnz,
                [max(r["sklearn_peak_mb"], 0.1) for r in sel],
                "s" + style,
                label=f"scikit-learn {beta}",
            )
        axes[0].set(
            xlabel="non-zeros", ylabel="seconds per iteration", title=f"time, V {m}x{n}, k={k}"
        )
        axes[1].set(xlabel="non-zeros", ylabel="peak memory added (MB)", title="memory")
        for ax in axes:
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=110)
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    main()
