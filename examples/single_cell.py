"""A single-cell-like sparse count matrix, factorized out of core with the KL cost.

    python examples/single_cell.py [--rows 1000000] [--cols 2000] [--density 0.01]
                                   [--max-iter 50] [--out DIR]
    python examples/single_cell.py --quick     # 20000 x 500, 20 iterations (the tests)

Generates Poisson counts of a rank-k rate (each cell expresses ~1% of the genes),
stores them as CSR in zarr exactly as AnnData stores ``X``, and factorizes the
store on a LocalCluster whose workers have far less memory than the dense
matrix would need (10^6 x 2000 float32 dense is 8 GB; the CSR store ~160 MB).
The KL update computes W·H only at the non-zeros, so time and memory per
iteration follow nnz, not m·n.  Prints the loss per 10 iterations, the time
per iteration and the workers' peak memory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np
import psutil
from distributed import Client, LocalCluster

import dask_nmf
from dask_nmf.datasets import make_sparse_counts, write_csr_zarr


def _sample_rss(client, peak, stop):
    while not stop.is_set():
        try:
            rss = client.run(lambda: psutil.Process().memory_info().rss)
            peak[0] = max(peak[0], sum(rss.values()))
        except Exception:
            pass
        stop.wait(0.5)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="20000 x 500, 20 iterations (the tests)")
    ap.add_argument("--rows", type=int, default=None, help="default 1000000 (--quick 20000)")
    ap.add_argument("--cols", type=int, default=None, help="default 2000 (--quick 500)")
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=None, help="default 50 (--quick 20)")
    ap.add_argument("--memory-limit", default="1GiB", help="per worker")
    ap.add_argument(
        "--out", default=None, help="directory for the store and result (default: a temporary one)"
    )
    args = ap.parse_args(argv)
    quick = {"rows": 20_000, "cols": 500, "max_iter": 20}
    full = {"rows": 1_000_000, "cols": 2_000, "max_iter": 50}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="dask-nmf-sc-")
        args.out = tmp.name
    os.makedirs(args.out, exist_ok=True)
    store = os.path.join(args.out, "counts.zarr")
    t0 = time.perf_counter()
    X = make_sparse_counts(args.rows, args.cols, args.k, args.density, seed=0)
    write_csr_zarr(store, X, overwrite=True)
    nnz, dense_gb = X.nnz, args.rows * args.cols * 4 / 1e9
    del X
    print(
        f"{args.rows} x {args.cols} counts, nnz={nnz} ({nnz / (args.rows * args.cols):.2%}); "
        f"dense float32 would be {dense_gb:.1f} GB; written in {time.perf_counter() - t0:.0f} s"
    )
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit=args.memory_limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        peak, stop = [0], threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(client, peak, stop), daemon=True)
        sampler.start()
        stamps = []

        def progress(it, loss):
            stamps.append(time.perf_counter())
            if it % 10 == 0:
                print(f"  iteration {it:4d}  KL divergence {loss:.6g}")

        t0 = time.perf_counter()
        res = dask_nmf.factorize(
            store,
            args.k,
            beta_loss="kullback-leibler",
            init="random",
            random_state=0,
            max_iter=args.max_iter,
            tol=0,
            client=client,
            keep_in_memory=False,
            checkpoint=os.path.join(args.out, "result.zarr"),
            overwrite=True,
            callback=progress,
        )
        total = time.perf_counter() - t0
        stop.set()
        sampler.join()
    per_iter = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
    losses = np.asarray(res.loss_history)
    losses = losses[~np.isnan(losses)]  # KL's loss is evaluated every 10th iteration
    summary = {
        "shape": [args.rows, args.cols],
        "nnz": int(nnz),
        "k": args.k,
        "iterations": res.n_iter,
        "seconds_total": total,
        "seconds_per_iteration": per_iter,
        "peak_worker_rss_gb": peak[0] / 1e9,
        "dense_gb": dense_gb,
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
        "monotone": bool(np.all(np.diff(losses) <= 1e-9 * losses[0])),
    }
    print(
        f"{res.n_iter} iterations in {total:.0f} s ({per_iter:.2f} s each); peak worker memory "
        f"{summary['peak_worker_rss_gb']:.2f} GB for a {dense_gb:.1f} GB dense equivalent; "
        f"loss never increased: {summary['monotone']}"
    )
    if tmp is not None:
        tmp.cleanup()
    return summary


if __name__ == "__main__":
    main()
