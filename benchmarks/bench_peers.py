"""Case "peers": per-iteration time of dask_nmf against scikit-learn and a naive dask loop.

Same matrix, same start (init="custom"), tol=0 so every run does exactly N
iterations; per-iteration time = (t(N2) - t(N1)) / (N2 - N1).

Contestants
-----------
sklearn            ``NMF(solver="mu")`` on the in-memory NumPy matrix.
dask_nmf[numpy]    ``factorize`` on the same NumPy matrix (dask's threaded scheduler).
dask_nmf[zarr]     ``factorize`` on the zarr store of that matrix (threaded scheduler);
                   ``keep_in_memory`` default (V fits, so decoded blocks stay in memory)
                   and ``keep_in_memory=False`` (V read and decoded every iteration).
naive[zarr]        the loop a user writes by hand on ``da.from_zarr`` (same row blocks)::

                       H = H * (W.T @ V) / (W.T @ W @ H);   H = H.persist()
                       W = W * (V @ H.T) / (W @ (H @ H.T)); W = W.persist()

                   (KL: the textbook updates with V / (W @ H)); reads V twice per iteration.
naive[zarr, V persisted]  the same loop with ``V = V.persist()`` first.
... @cluster       the same on a ``LocalCluster`` of 2 worker processes x 1 thread.

"BLAS=1" rows run with ``threadpoolctl.threadpool_limits(1)``; "BLAS=2" is the default
(OpenBLAS uses both cores in every call; with dask's 2 scheduler threads that is 4 busy
threads on 2 cores).  Worker processes of a LocalCluster get 1 BLAS thread from
distributed itself (OPENBLAS_NUM_THREADS=1).
"""

from __future__ import annotations

import warnings

import numpy as np
from common import (
    blas_threads,
    data_dir,
    default_blas_threads,
    local_cluster,
    per_iteration,
    start_factors,
    synth_matrix,
    table,
    zarr_store,
)

BETAS = ("frobenius", "kullback-leibler")


# --------------------------------------------------------------------------
# The contestants (each runs N iterations from W0, H0)
# --------------------------------------------------------------------------
def run_sklearn(V, W0, H0, beta, N):
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(W0.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=N, tol=0)
        W = model.fit_transform(V, W=W0.copy(), H=H0.copy())
    return W, model.components_


def run_dask_nmf(V, W0, H0, beta, N, client=None, **kw):
    import dask_nmf

    return dask_nmf.factorize(
        V, W0.shape[1], beta_loss=beta, W_init=W0, H_init=H0, max_iter=N, tol=0, client=client, **kw
    )


def run_naive(path, W0, H0, beta, N, block_rows, client=None, persist_v=False):
    """The hand-written dask loop (each half-step computed and persisted separately)."""
    import dask.array as da

    V = da.from_zarr(str(path), chunks=(block_rows, H0.shape[1]))
    if V.dtype != W0.dtype:
        V = V.astype(W0.dtype)
    W = da.from_array(W0, chunks=(block_rows, W0.shape[1]))
    H = da.from_array(H0, chunks=H0.shape)
    if client is not None:
        from distributed import wait

        def keep(x):
            (x,) = client.persist([x])
            with client.as_current():
                wait(x)
            return x
    else:
        def keep(x):
            return x.persist()
    if persist_v:
        V = keep(V)
    W, H = keep(W), keep(H)
    for _ in range(N):
        if beta == "frobenius":
            H = keep(H * (W.T @ V) / (W.T @ W @ H))
            W = keep(W * (V @ H.T) / (W @ (H @ H.T)))
        else:
            H = keep(H * (W.T @ (V / (W @ H))) / W.sum(axis=0)[:, None])
            W = keep(W * ((V / (W @ H)) @ H.T) / H.sum(axis=1)[None, :])
    return W, H


# --------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------
def configs(quick: bool, dtype) -> list[dict]:
    """Which contestants to run (name, kind, BLAS threads, options)."""
    c = [
        dict(name="sklearn", kind="sklearn", blas=None),
        dict(name="sklearn", kind="sklearn", blas=1),
        dict(name="dask_nmf[numpy]", kind="dask_nmf", input="numpy", blas=None),
        dict(name="dask_nmf[numpy]", kind="dask_nmf", input="numpy", blas=1),
        dict(name="dask_nmf[zarr]", kind="dask_nmf", input="zarr", blas=None),
        dict(name="dask_nmf[zarr]", kind="dask_nmf", input="zarr", blas=1),
        dict(name="dask_nmf[zarr, keep_in_memory=False]", kind="dask_nmf", input="zarr", blas=1,
             opts={"keep_in_memory": False}),
        dict(name="naive[zarr]", kind="naive", blas=None),
        dict(name="naive[zarr]", kind="naive", blas=1),
        dict(name="naive[zarr, V persisted]", kind="naive", blas=1, persist_v=True),
        dict(name="dask_nmf[zarr]@cluster", kind="dask_nmf", input="zarr", cluster=True),
        dict(name="naive[zarr]@cluster", kind="naive", cluster=True),
    ]
    if quick:
        keep = {("sklearn", None), ("dask_nmf[numpy]", None), ("dask_nmf[numpy]", 1),
                ("dask_nmf[zarr]", 1), ("naive[zarr]", 1)}
        c = [x for x in c if (x["name"], x.get("blas")) in keep]
    elif np.dtype(dtype) == np.float32:
        keep = {"sklearn", "dask_nmf[numpy]", "dask_nmf[zarr]", "naive[zarr]",
                "dask_nmf[zarr]@cluster"}
        c = [x for x in c if x["name"] in keep]
    return c


def default_block_rows(path, W0, H0, client=None) -> int:
    """The block_rows factorize picks by itself for this input (and client)."""
    r = run_dask_nmf(str(path), W0, H0, "frobenius", 1, client=client)
    return int(r.params["block_rows"])


def blas_label(cfg) -> str:
    if cfg.get("cluster"):
        return "1 (worker)"
    return f"{cfg['blas'] or default_blas_threads()}" + ("" if cfg["blas"] else " (default)")


def measure_case(V, path, W0, H0, beta, cfgs, n1, n2, repeats, block_rows, cluster_client,
                 quiet, log=print) -> list[dict]:
    rows = []
    for cfg in cfgs:
        client = cluster_client if cfg.get("cluster") else None
        if cfg.get("cluster") and client is None:
            continue
        if cfg["kind"] == "sklearn":
            def run(N, cfg=cfg):
                return run_sklearn(V, W0, H0, beta, N)
        elif cfg["kind"] == "dask_nmf":
            src = V if cfg["input"] == "numpy" else str(path)

            def run(N, cfg=cfg, src=src, client=client):
                return run_dask_nmf(src, W0, H0, beta, N, client=client, **cfg.get("opts", {}))
        else:
            def run(N, cfg=cfg, client=client):
                return run_naive(path, W0, H0, beta, N, block_rows, client=client,
                                 persist_v=cfg.get("persist_v", False))
        with blas_threads(cfg.get("blas")):
            res = per_iteration(run, n1, n2, repeats, quiet=quiet)
        row = {"contestant": cfg["name"], "blas_threads": blas_label(cfg), **res}
        log(f"    {cfg['name']:<40s} BLAS={row['blas_threads']:<12s} {res['ms_per_iter']:8.1f} ms/iter"
            f"  (set-up {res['setup_s']:.2f} s)")
        rows.append(row)
    return rows


def agreement(V, W0, H0, beta, N=3) -> dict:
    """Max relative difference of dask_nmf's and scikit-learn's factors after N iterations."""
    Ws, Hs = run_sklearn(V, W0, H0, beta, N)
    r = run_dask_nmf(V, W0, H0, beta, N)
    Wd = np.asarray(r.W.compute())

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    return {"iterations": N, "W_max_rel_diff": rel(Wd, Ws), "H_max_rel_diff": rel(r.H, Hs)}


def summarize(rows: list[dict]) -> dict:
    """The headline ratios: dask_nmf / sklearn and dask_nmf / naive, default and best."""
    def pick(name, blas=None, best=False):
        cand = [r for r in rows if r["contestant"] == name]
        if not cand:
            return None
        if best:
            return min(r["ms_per_iter"] for r in cand)
        for r in cand:
            if (blas is None and "default" in r["blas_threads"]) or r["blas_threads"] == str(blas):
                return r["ms_per_iter"]
        return cand[0]["ms_per_iter"]

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = {
        "sklearn_best": pick("sklearn", best=True),
        "dask_nmf_numpy_default": pick("dask_nmf[numpy]"),
        "dask_nmf_numpy_best": pick("dask_nmf[numpy]", best=True),
        "dask_nmf_zarr_default": pick("dask_nmf[zarr]"),
        "dask_nmf_zarr_best": pick("dask_nmf[zarr]", best=True),
        "dask_nmf_zarr_reread": pick("dask_nmf[zarr, keep_in_memory=False]"),
        "naive_zarr_best": pick("naive[zarr]", best=True),
        "naive_zarr_persisted": pick("naive[zarr, V persisted]"),
        "dask_nmf_cluster": pick("dask_nmf[zarr]@cluster"),
        "naive_cluster": pick("naive[zarr]@cluster"),
    }
    out["ratio_dask_nmf_over_sklearn_default"] = ratio(out["dask_nmf_numpy_default"], out["sklearn_best"])
    out["ratio_dask_nmf_over_sklearn_best"] = ratio(out["dask_nmf_numpy_best"], out["sklearn_best"])
    out["ratio_dask_nmf_over_naive_best"] = ratio(out["dask_nmf_zarr_best"], out["naive_zarr_best"])
    out["ratio_dask_nmf_reread_over_naive"] = ratio(out["dask_nmf_zarr_reread"], out["naive_zarr_best"])
    out["ratio_dask_nmf_over_naive_persisted"] = ratio(out["dask_nmf_zarr_best"], out["naive_zarr_persisted"])
    out["ratio_cluster_dask_nmf_over_naive"] = ratio(out["dask_nmf_cluster"], out["naive_cluster"])
    return out


def run(args, ctx) -> dict:
    log = ctx["log"]
    quick = args.quick
    m, n, k = (args.m or 16000), (args.n or 2000), (args.k or 32)
    dtypes = [np.float64] if quick else [np.float64, np.float32]
    repeats = 2 if quick else 3
    results = {"shape": [m, n], "k": k, "cases": []}
    cluster = client = None
    if not quick:
        from distributed import Client

        cluster = local_cluster(2, 1)
        client = Client(cluster, set_as_default=False)
        results["cluster"] = "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)"
    try:
        for dtype in dtypes:
            dname = np.dtype(dtype).name
            log(f"  V {m}x{n} {dname}, k={k}")
            V = synth_matrix(m, n, dtype)
            path = zarr_store(data_dir(args) / f"peers_{m}x{n}_{dname}.zarr", m, n, dtype, log=log)
            W0, H0 = start_factors(m, n, k, dtype)
            # dask_nmf's own default row blocks; the naive loop gets the same blocks.
            block_rows = default_block_rows(path, W0, H0)
            results.setdefault("block_rows", {})[dname] = block_rows
            log(f"   dask_nmf's default block_rows: {block_rows} ({-(-m // block_rows)} blocks); "
                "the naive loop uses the same")
            for beta in BETAS:
                # Set-up (validation passes, first-touch page faults of big arrays) varies by
                # +-0.5 s here, so N2 - N1 must be large enough to dwarf it.
                if beta == "frobenius":
                    n1, n2 = (1, 6) if quick else (2, 12)
                else:
                    n1, n2 = (1, 3) if quick else (1, 6)
                log(f"   {beta}: N1={n1}, N2={n2}, repeats={repeats}")
                cfgs = configs(quick, dtype)
                rows = measure_case(V, path, W0, H0, beta, cfgs, n1, n2, repeats, block_rows, client,
                                    args.quiet_wait, log)
                entry = {"dtype": dname, "beta_loss": beta, "rows": rows, "summary": summarize(rows)}
                if not quick:
                    entry["agreement_with_sklearn"] = agreement(V, W0, H0, beta)
                results["cases"].append(entry)
                sk = entry["summary"]["sklearn_best"]
                nv = entry["summary"]["naive_zarr_best"]
                for r in rows:
                    r["vs_sklearn"] = r["ms_per_iter"] / sk if sk else None
                    r["vs_naive"] = r["ms_per_iter"] / nv if nv else None
                log("")
                log(table(rows, ["contestant", "blas_threads", "ms_per_iter", "vs_sklearn", "vs_naive"],
                          title=f"{m}x{n} {dname}, k={k}, {beta} (ratios to the best sklearn / naive row)",
                          headers={"ms_per_iter": "ms/iter", "vs_sklearn": "/ sklearn",
                                   "vs_naive": "/ naive", "blas_threads": "BLAS threads"}))
                log("")
    finally:
        if client is not None:
            client.close()
            cluster.close()
    ctx["peers"] = results
    return results
