"""Case "scaling": time per iteration against m, n, k and the number of workers/threads.

m, n, k sweeps: Frobenius, float64, V in memory (NumPy), dask's threaded scheduler
with 1 BLAS thread per task (dask_nmf's best configuration on this machine), with
scikit-learn (default BLAS threads) at every point for reference.  The workers sweep
runs the main case (16000 x 2000, k=32) from its zarr store on the threaded
scheduler (1 or 2 threads, BLAS 1 or 2) and on LocalClusters.  Writes
``results/scaling.png``.
"""

from __future__ import annotations

import numpy as np
from common import (
    blas_threads,
    data_dir,
    local_cluster,
    per_iteration,
    start_factors,
    synth_matrix,
    table,
    zarr_store,
)


def point(args, m, n, k, with_sklearn=True) -> dict:
    from bench_peers import run_dask_nmf, run_sklearn

    V = synth_matrix(m, n)
    W0, H0 = start_factors(m, n, k)
    n1, n2 = (1, 3) if args.quick else (2, 12)  # sklearn's set-up varies by ~0.5 s
    reps = 1 if args.quick else 2
    with blas_threads(1):
        d = per_iteration(lambda N: run_dask_nmf(V, W0, H0, "frobenius", N), n1, n2, reps,
                          quiet=args.quiet_wait)["ms_per_iter"]
    s = None
    if with_sklearn:
        s = per_iteration(lambda N: run_sklearn(V, W0, H0, "frobenius", N), n1, n2, reps,
                          quiet=args.quiet_wait)["ms_per_iter"]
    return {"m": m, "n": n, "k": k, "dask_nmf_ms": d, "sklearn_ms": s,
            "ratio": d / s if s else None, "gflops": 4 * m * n * k / (d / 1e3) / 1e9}


def workers_sweep(args, log) -> list[dict]:
    import dask
    from bench_peers import run_dask_nmf
    from distributed import Client

    m, n, k = 16000, 2000, 32
    path = zarr_store(data_dir(args) / f"peers_{m}x{n}_float64.zarr", m, n, np.float64, log=log)
    W0, H0 = start_factors(m, n, k)
    n1, n2 = (1, 3) if args.quick else (2, 6)
    reps = 1 if args.quick else 2
    rows = []
    threaded = [(1, 1), (1, 2), (2, 1), (2, 2)]
    for nw, blas in threaded:
        with dask.config.set(scheduler="threads", num_workers=nw), blas_threads(blas):
            r = per_iteration(lambda N: run_dask_nmf(str(path), W0, H0, "frobenius", N),
                              n1, n2, reps, quiet=args.quiet_wait)
        rows.append({"setup": f"threaded, {nw} thread{'s' if nw > 1 else ''}, BLAS={blas}", "cores_used": max(nw, blas),
                     "ms_per_iter": r["ms_per_iter"]})
        log(f"    {rows[-1]['setup']:<40s} {r['ms_per_iter']:.1f} ms/iter")
    clusters = [(1, 1), (1, 2), (2, 1)] if not args.quick else [(2, 1)]
    for nw, nt in clusters:
        with local_cluster(nw, nt) as cluster, Client(cluster, set_as_default=False) as client:
            r = per_iteration(lambda N: run_dask_nmf(str(path), W0, H0, "frobenius", N,
                                                     client=client),
                              n1, n2, reps, quiet=args.quiet_wait)
        rows.append({"setup": f"LocalCluster {nw} worker{'s' if nw > 1 else ''} x {nt} thread{'s' if nt > 1 else ''}",
                     "cores_used": nw * nt, "ms_per_iter": r["ms_per_iter"]})
        log(f"    {rows[-1]['setup']:<40s} {r['ms_per_iter']:.1f} ms/iter")
    base = rows[0]["ms_per_iter"]
    for r in rows:
        r["speedup_vs_1_thread"] = base / r["ms_per_iter"]
    return rows


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for ax, key, label in zip(axes.flat[:3], ("m", "n", "k"), ("m (rows)", "n (columns)", "k (rank)")):
        pts = [p for p in res[f"{key}_sweep"] if p["dask_nmf_ms"] > 0 and (p["sklearn_ms"] or 1) > 0]
        if not pts:
            continue
        x = np.array([p[key] for p in pts], dtype=float)
        d = np.array([p["dask_nmf_ms"] for p in pts])
        ax.loglog(x, d, "o-", label="dask_nmf (threaded, BLAS=1)")
        if all(p["sklearn_ms"] for p in pts):
            ax.loglog(x, [p["sklearn_ms"] for p in pts], "s--", label="scikit-learn MU")
        mid = len(x) // 2
        ax.loglog(x, d[mid] * x / x[mid], ":", color="gray", label="linear (flops model)")
        ax.set_xlabel(label)
        ax.set_ylabel("ms / iteration")
        ax.grid(True, which="both", alpha=0.3)
        fixed = {"m": "n=2000, k=32", "n": "m=16000, k=32", "k": "16000x2000"}[key]
        ax.set_title(f"Frobenius f64, {fixed}")
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    w = res["workers_sweep"]
    ax.barh(range(len(w)), [r["ms_per_iter"] for r in w], color="tab:blue")
    ax.set_yticks(range(len(w)))
    ax.set_yticklabels([r["setup"] for r in w], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms / iteration (16000x2000 f64, k=32, zarr)")
    ax.set_title("workers / threads (2-core machine)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args, ctx) -> dict:
    log = ctx["log"]
    quick = args.quick
    if quick:
        ms, ns, ks = [4000, 8000, 16000], [500, 1000, 2000], [8, 32, 64]
    else:
        ms, ns, ks = [2000, 4000, 8000, 16000, 32000], [250, 500, 1000, 2000, 4000], [4, 8, 16, 32, 64, 128]
    res = {}
    for key, values in (("m", ms), ("n", ns), ("k", ks)):
        pts = []
        for v in values:
            shape = {"m": 16000, "n": 2000, "k": 32, key: v}
            p = point(args, shape["m"], shape["n"], shape["k"])
            log(f"    {key}={v:6d}: dask_nmf {p['dask_nmf_ms']:8.1f} ms/iter, sklearn {p['sklearn_ms']:8.1f}"
                f" ms/iter, ratio {p['ratio']:.2f}, {p['gflops']:.1f} GF/s")
            pts.append(p)
        res[f"{key}_sweep"] = pts
        log("")
        log(table(pts, ["m", "n", "k", "dask_nmf_ms", "sklearn_ms", "ratio", "gflops"],
                  title=f"Scaling in {key} (Frobenius f64, in-memory, threaded BLAS=1 vs sklearn BLAS default)",
                  headers={"dask_nmf_ms": "dask_nmf ms/iter", "sklearn_ms": "sklearn ms/iter",
                           "ratio": "dask_nmf/sklearn", "gflops": "dask_nmf GF/s"}))
        log("")
    log("  workers / threads")
    res["workers_sweep"] = workers_sweep(args, log)
    log("")
    log(table(res["workers_sweep"], ["setup", "cores_used", "ms_per_iter", "speedup_vs_1_thread"],
              title="Workers/threads (16000x2000 f64, k=32, Frobenius, zarr store, V kept in memory)"))
    log("")
    import common

    png = common.RESULTS / ("scaling_quick.png" if quick else "scaling.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(res, png)
    log(f"  wrote {png}")
    res["png"] = png.name
    return res
