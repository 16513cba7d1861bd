"""Case "roofline": this machine's GEMM GFLOP/s and bandwidths, and how close dask_nmf gets.

Per iteration the floor is ``max(bytes(V) / bandwidth, flops / peak)`` with
4 m n k flops for Frobenius and ~8 m n k for KL (two W·H products on top of the
two products the Frobenius update needs).  Two bandwidths matter:

* memory read bandwidth, when V's decoded blocks are kept in memory
  (``keep_in_memory``, the default when V fits), and
* the zarr store's read + decompress bandwidth, when V is read every iteration.

The page cache is not dropped (that would disturb the rest of this shared
machine), so "zarr" means read from the page cache + decompress; the raw file
read rate is reported next to it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import (
    best_of,
    blas_threads,
    data_dir,
    start_factors,
    store_bytes,
    synth_matrix,
    table,
    wait_quiet,
    zarr_store,
)


def gemm_rates(quick: bool, m: int, n: int, k: int, block_rows: int, sub_rows: int, log) -> list[dict]:
    """GFLOP/s of square and NMF-shaped products, 1 thread and all cores."""
    rng = np.random.default_rng(0)
    rows = []
    dtypes = [np.float64] if quick else [np.float64, np.float32]
    N = 2000 if quick else 3000
    for dtype in dtypes:
        A = rng.random((N, N)).astype(dtype)
        V = rng.random((block_rows, n)).astype(dtype)
        W = rng.random((block_rows, k)).astype(dtype)
        H = rng.random((k, n)).astype(dtype)
        Vs, Ws = V[:sub_rows], W[:sub_rows]
        shapes = [
            (f"square {N}", lambda: A @ A, 2 * N**3),
            (f"V@H.T  ({block_rows}x{n} @ {n}x{k})", lambda: V @ H.T, 2 * block_rows * n * k),
            (f"W.T@V  ({k}x{block_rows} @ {block_rows}x{n})", lambda: W.T @ V, 2 * block_rows * n * k),
            (f"W@H    ({block_rows}x{k} @ {k}x{n})", lambda: W @ H, 2 * block_rows * n * k),
            (f"Vs@H.T ({sub_rows}x{n} @ {n}x{k}) sub-block", lambda: Vs @ H.T, 2 * sub_rows * n * k),
            (f"Ws.T@Vs ({k}x{sub_rows} @ {sub_rows}x{n}) sub-block", lambda: Ws.T @ Vs, 2 * sub_rows * n * k),
            (f"Ws@H   ({sub_rows}x{k} @ {k}x{n}) sub-block", lambda: Ws @ H, 2 * sub_rows * n * k),
        ]
        for name, fn, flops in shapes:
            row = {"dtype": np.dtype(dtype).name, "product": name}
            for threads in (1, 2):
                with blas_threads(threads):
                    wait_quiet()
                    reps = 5 if "sub-block" not in name else 50
                    t = best_of(fn, repeats=3 if name.startswith("square") else reps)
                row[f"gflops_{threads}t"] = flops / t / 1e9
            rows.append(row)
            log(f"    {row['dtype']} {name:<48s} {row['gflops_1t']:6.1f} GF/s (1 thread) "
                f"{row['gflops_2t']:6.1f} GF/s (2 threads)")
    return rows


def memory_bandwidth(nbytes: int = 256 * 2**20) -> dict:
    """Streaming read GB/s of an in-memory array (np.sum), 1 thread and 2 threads."""
    a = np.random.default_rng(0).random(nbytes // 8)
    halves = np.array_split(a, 2)
    t1 = best_of(lambda: a.sum(), repeats=5)
    with ThreadPoolExecutor(2) as ex:
        t2 = best_of(lambda: list(ex.map(np.sum, halves)), repeats=5)
    return {"read_gbs_1t": a.nbytes / t1 / 1e9, "read_gbs_2t": a.nbytes / t2 / 1e9}


def zarr_bandwidth(path, threads_list=(1, 2)) -> dict:
    """Read + decompress GB/s (decoded bytes per second) of a zarr store, by row chunk."""
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    m = arr.shape[0]
    c = arr.chunks[0]
    starts = list(range(0, m, c))
    nbytes = arr.nbytes
    out = {"decoded_bytes": nbytes, "stored_bytes": store_bytes(path),
           "compression_ratio": nbytes / store_bytes(path)}

    def read(a):
        return arr[a : a + c].shape

    for threads in threads_list:
        with ThreadPoolExecutor(threads) as ex:
            wait_quiet()
            t = best_of(lambda: list(ex.map(read, starts)), repeats=3)
        out[f"read_decompress_gbs_{threads}t"] = nbytes / t / 1e9
    files = [f for f in path.rglob("*") if f.is_file()]

    def raw():
        for f in files:
            with open(f, "rb") as fh:
                fh.read()

    t = best_of(raw, repeats=3)
    out["raw_file_read_gbs_1t"] = out["stored_bytes"] / t / 1e9
    return out


def achieved_times(args, ctx, m, n, k, dtypes, log) -> list[dict]:
    """Per-iteration ms of dask_nmf (V kept in memory / re-read) and sklearn.

    Taken from the peers case of this run when it ran; measured here otherwise.
    """
    peers = ctx.get("peers")
    rows = []
    if peers and peers["shape"] == [m, n] and peers["k"] == k:
        for case in peers["cases"]:
            s = case["summary"]
            rows.append({"dtype": case["dtype"], "beta_loss": case["beta_loss"],
                         "dask_nmf_in_memory": s["dask_nmf_zarr_best"],
                         "dask_nmf_reread": s["dask_nmf_zarr_reread"],
                         "sklearn": s["sklearn_best"]})
        return rows
    from bench_peers import run_dask_nmf, run_sklearn
    from common import per_iteration

    for dtype in dtypes:
        dname = np.dtype(dtype).name
        V = synth_matrix(m, n, dtype)
        path = zarr_store(data_dir(args) / f"peers_{m}x{n}_{dname}.zarr", m, n, dtype, log=log)
        W0, H0 = start_factors(m, n, k, dtype)
        for beta in ("frobenius", "kullback-leibler"):
            n1, n2 = (1, 3) if beta == "frobenius" else (1, 2)
            row = {"dtype": dname, "beta_loss": beta}
            with blas_threads(1):
                for key, kim in (("dask_nmf_in_memory", True), ("dask_nmf_reread", False)):
                    row[key] = per_iteration(
                        lambda N, kim=kim: run_dask_nmf(str(path), W0, H0, beta, N, keep_in_memory=kim),
                        n1, n2, 1, quiet=args.quiet_wait)["ms_per_iter"]
            row["sklearn"] = per_iteration(lambda N: run_sklearn(V, W0, H0, beta, N), n1, n2, 1,
                                           quiet=args.quiet_wait)["ms_per_iter"]
            log(f"    measured {dname} {beta}: {row}")
            rows.append(row)
    return rows


def run(args, ctx) -> dict:
    log = ctx["log"]
    quick = args.quick
    m, n, k = (args.m or 16000), (args.n or 2000), (args.k or 32)
    block_rows = 4000  # dask_nmf's default for 16000 rows on 2 threads (two blocks per thread)
    dtypes = [np.float64] if quick else [np.float64, np.float32]
    log("  GEMM rates")
    gemm = gemm_rates(quick, m, n, k, block_rows, 4 * 2**20 // (n * 8), log)
    peak = {d: max(r["gflops_2t"] for r in gemm if r["dtype"] == d and r["product"].startswith("square"))
            for d in {r["dtype"] for r in gemm}}
    log("  bandwidths")
    wait_quiet(args.quiet_wait)
    mem = memory_bandwidth()
    log(f"    memory read: {mem['read_gbs_1t']:.1f} GB/s (1 thread), {mem['read_gbs_2t']:.1f} GB/s (2 threads)")
    stores = {}
    for dtype in dtypes:
        dname = np.dtype(dtype).name
        path = zarr_store(data_dir(args) / f"peers_{m}x{n}_{dname}.zarr", m, n, dtype, log=log)
        stores[dname] = zarr_bandwidth(path)
        z = stores[dname]
        log(f"    zarr {dname}: compression {z['compression_ratio']:.2f}x, read+decompress "
            f"{z['read_decompress_gbs_1t']:.2f} GB/s (1 thread), {z['read_decompress_gbs_2t']:.2f} GB/s "
            f"(2 threads); raw file read {z['raw_file_read_gbs_1t']:.2f} GB/s")

    log("  achieved per-iteration times")
    achieved = achieved_times(args, ctx, m, n, k, dtypes, log)
    rows = []
    for a in achieved:
        d = a["dtype"]
        itemsize = np.dtype(d).itemsize
        vbytes = m * n * itemsize
        flops = (4 if a["beta_loss"] == "frobenius" else 8) * m * n * k
        t_flops = 1e3 * flops / (peak[d] * 1e9)
        t_mem = 1e3 * vbytes / (mem["read_gbs_2t"] * 1e9)
        t_zarr = 1e3 * vbytes / (stores[d]["read_decompress_gbs_2t"] * 1e9)
        floor_mem = max(t_flops, t_mem)
        floor_zarr = max(t_flops, t_zarr)
        rows.append({
            "dtype": d, "beta_loss": a["beta_loss"], "gflop": flops / 1e9,
            "flops_ms": t_flops, "mem_read_ms": t_mem, "zarr_read_ms": t_zarr,
            "dask_nmf_in_memory_ms": a["dask_nmf_in_memory"],
            "x_floor_in_memory": a["dask_nmf_in_memory"] / floor_mem if a["dask_nmf_in_memory"] else None,
            "dask_nmf_reread_ms": a["dask_nmf_reread"],
            "x_floor_reread": a["dask_nmf_reread"] / floor_zarr if a["dask_nmf_reread"] else None,
            "sklearn_ms": a["sklearn"],
            "sklearn_x_floor": a["sklearn"] / floor_mem if a["sklearn"] else None,
            "achieved_gflops_in_memory": flops / (a["dask_nmf_in_memory"] / 1e3) / 1e9
            if a["dask_nmf_in_memory"] else None,
        })
    log("")
    log(table(gemm, ["dtype", "product", "gflops_1t", "gflops_2t"], title="GEMM GFLOP/s",
              headers={"gflops_1t": "1 thread", "gflops_2t": "2 threads"}))
    log("")
    log(table(rows, ["dtype", "beta_loss", "gflop", "flops_ms", "mem_read_ms", "zarr_read_ms",
                     "dask_nmf_in_memory_ms", "x_floor_in_memory", "dask_nmf_reread_ms", "x_floor_reread",
                     "sklearn_ms", "sklearn_x_floor"],
              title=f"Roofline, {m}x{n}, k={k} (floor = max(bytes/bandwidth, flops/peak); peak = "
                    + ", ".join(f"{d} {p:.0f} GF/s" for d, p in sorted(peak.items())) + ")",
              headers={"flops_ms": "flops/peak ms", "mem_read_ms": "V/mem-bw ms",
                       "zarr_read_ms": "V/zarr-bw ms", "dask_nmf_in_memory_ms": "dask_nmf (V in mem) ms",
                       "x_floor_in_memory": "x floor", "dask_nmf_reread_ms": "dask_nmf (re-read) ms",
                       "x_floor_reread": "x floor ", "sklearn_ms": "sklearn ms",
                       "sklearn_x_floor": "sklearn x floor"}))
    log("")
    return {"shape": [m, n], "k": k, "gemm": gemm, "peak_gflops": peak, "memory": mem,
            "zarr": stores, "roofline": rows}
