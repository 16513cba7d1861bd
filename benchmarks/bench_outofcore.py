"""Case "outofcore": V on disk several times larger than the workers' memory.

A ``LocalCluster`` of 2 worker processes x 1 thread, each with a ``memory_limit``
(the whole cluster gets ``2 x memory_limit``), factorizes zarr stores of growing
size with ``keep_in_memory=False`` (V streamed from disk every iteration).  The sum
of the workers' resident memory is sampled every 50 ms (``client.run(psutil)``
from a thread) and each worker's high-water mark (``getrusage``) is read at the
end.  Peak memory is reported as a ratio to one row block of V; it must not grow
with V.

Each iteration is also compared with its roofline, measured in the same run:
``max(bytes(V) / decode rate, 4 m n k / GEMM peak)``, the decode rate being the
fastest of four ways of reading and decoding that store on 2 threads in this
process (no dask: plain zarr reads, zarr into reused buffers, dask_nmf's own
reads, the chunk files + numcodecs), the peak a square float64 GEMM on 2
threads; and with dask_nmf's per-block work run with no dask at all (two
threads, each reading and updating its share of the blocks), which splits the
distance to the roofline into what the work itself costs and what dask adds.
Blocks are dask_nmf's default for these workers (at most 1/8 of a worker's
memory).  Two sizes are run a second time: with dask's own worker malloc
settings (``dask-nmf.worker-malloc: False``) to show what the tuning buys, and
with blocks of up to 1/16 of a worker's memory (the default before) to show
what the larger blocks buy.
"""

from __future__ import annotations

import time
from pathlib import Path

import dask
import numpy as np
from common import (
    RSSSampler,
    _reset_maxrss,
    _worker_maxrss,
    _worker_rss,
    best_of,
    data_dir,
    local_cluster,
    store_bytes,
    table,
    wait_quiet,
    zarr_store,
)


def _import_worker_modules():
    import zarr  # noqa: F401

    import dask_nmf  # noqa: F401

    return True


def gemm_peak_gflops() -> float:
    """float64 GFLOP/s of a square 2000 x 2000 product on this process's BLAS threads."""
    a = np.random.default_rng(0).random((2000, 2000))
    t = best_of(lambda: a @ a, repeats=3)
    return 2 * 2000**3 / t / 1e9


def decode_rate(path, block_rows: int) -> dict:
    """GB/s of reading + decoding the store on 2 threads, by row block, four ways:
    plain zarr reads; zarr reads into one reused buffer per thread; dask_nmf's
    own reads (``io.read_rows_into``: chunks decompressed in place); and no
    zarr at all -- the chunk files read with ``open`` and decompressed by
    numcodecs into the buffer, the codec's own floor."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numcodecs
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    from dask_nmf import io

    z = zarr.open_array(str(path), mode="r")
    m, n = z.shape
    rows_per_chunk = z.chunks[0]
    assert z.chunks[1] == n and block_rows % rows_per_chunk == 0 and m % rows_per_chunk == 0
    assert [c.to_dict()["name"] for c in z.metadata.codecs] == ["bytes", "zstd"]
    starts = list(range(0, m, block_rows))
    buffers: dict = {}
    reader = io.BlockReader(z, z.dtype)

    def buffer():
        return buffers.setdefault(threading.get_ident(), np.empty((block_rows, n), z.dtype))

    def plain(a):
        return z[a : a + block_rows].shape

    def into(a):
        out = default_buffer_prototype().nd_buffer.from_numpy_array(buffer()[: min(block_rows, m - a)])
        z.get_basic_selection((slice(a, a + block_rows), slice(None)), out=out)

    def ours(a):
        io.read_rows_into(reader, a, min(a + block_rows, m))

    def files(a):
        buf, codec = buffer(), numcodecs.Zstd()
        for i in range(a // rows_per_chunk, min(a + block_rows, m) // rows_per_chunk):
            with open(Path(path) / "c" / str(i) / "0", "rb") as f:
                r = i * rows_per_chunk - a
                codec.decode(f.read(), out=buf[r : r + rows_per_chunk])

    rates = {}
    for name, read in [("plain", plain), ("into_buffer", into), ("dask_nmf", ours), ("files", files)]:
        with ThreadPoolExecutor(2) as ex:
            wait_quiet()
            t = best_of(lambda: list(ex.map(read, starts)), repeats=3)
        rates[name] = z.nbytes / t / 1e9
    io.release_read_buffers()
    return rates


def without_dask_ms(path, k: int, block_rows: int) -> float:
    """ms per pass of dask_nmf's own per-block work with no dask at all: two
    threads in this process, each reading its share of the blocks
    (``io.read_rows_into``) and running the Frobenius block step on them
    (one BLAS thread each), as the two workers do.  What the fit would take
    if the scheduler, the workers' event loops and the task hand-offs were free."""
    import threading

    import zarr
    from threadpoolctl import threadpool_limits

    from dask_nmf import io, kernels

    z = zarr.open_array(str(path), mode="r")
    m, n = z.shape
    reader = io.BlockReader(z, z.dtype)
    rng = np.random.default_rng(0)
    H = rng.random((k, n))
    HHt = H @ H.T
    W = rng.random((m, k))
    starts = list(range(0, m, block_rows))

    def share(mine):
        with threadpool_limits(1):
            for a in mine:
                b = min(a + block_rows, m)
                kernels.frobenius_block_step(io.read_rows_into(reader, a, b), W[a:b], H, HHt)

    def one_pass():
        threads = [threading.Thread(target=share, args=(starts[j::2],)) for j in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    wait_quiet()
    t = best_of(one_pass, repeats=3)
    io.release_read_buffers()
    return 1e3 * t


def one_size(path, m, n, k, block_rows, iters, n_workers, memory_limit, log) -> dict:
    import psutil
    from distributed import Client

    import dask_nmf

    itemsize = 8
    with local_cluster(n_workers, 1, memory_limit=memory_limit) as cluster, Client(cluster) as client:
        client.run(_import_worker_modules)
        time.sleep(0.5)
        idle = client.run(_worker_rss)
        hwm_reset = all(client.run(_reset_maxrss).values())
        workers_before = set(idle)
        client_rss0 = psutil.Process().memory_info().rss
        stamps = []
        wait_quiet()
        t0 = time.perf_counter()
        with RSSSampler(client, interval=0.05) as sampler:
            res = dask_nmf.factorize(
                str(path), k, init="random", random_state=0, max_iter=iters, tol=0, block_rows=block_rows,
                keep_in_memory=False, client=client,
                callback=lambda s, loss: stamps.append(time.perf_counter()),
            )
        wall = time.perf_counter() - t0
        block_rows = res.params["block_rows"]
        block_bytes = block_rows * n * itemsize
        maxrss = client.run(_worker_maxrss)
        workers_after = set(client.scheduler_info(n_workers=-1)["workers"])
        client_rss1 = psutil.Process().memory_info().rss
    diffs = np.diff(stamps) if len(stamps) > 1 else np.array([np.nan])
    peak = sampler.peak_sum
    idle_sum = sum(idle.values())
    limit_total = n_workers * memory_limit
    row = {
        "label": "",
        "rows": m, "block_rows": block_rows, "block_MiB": block_bytes / 2**20, "V_MiB": m * n * itemsize / 2**20, "V_stored_MiB": store_bytes(path) / 2**20,
        "V_over_memory_limit": m * n * itemsize / limit_total,
        "iterations": res.n_iter, "wall_s": wall,
        "ms_per_iter": 1e3 * float(np.median(diffs)),
        "read_GBs": m * n * itemsize / float(np.median(diffs)) / 1e9,
        "idle_rss_MiB": idle_sum / 2**20,
        "peak_rss_MiB": peak / 2**20,
        "peak_over_block": peak / block_bytes,
        "peak_minus_idle_over_block": (peak - idle_sum) / block_bytes,
        "peak_worker_MiB": sampler.peak_worker / 2**20,
        "maxrss_sum_MiB": sum(maxrss.values()) / 2**20,
        "maxrss_reset_before_run": hwm_reset,
        "maxrss_minus_idle_over_block": (sum(maxrss.values()) - idle_sum) / block_bytes,
        "client_rss_growth_MiB": (client_rss1 - client_rss0) / 2**20,
        "samples": len(sampler.samples),
        "workers_restarted": workers_before != workers_after,
        "loss_first_last": [res.loss_history[0], res.loss_history[-1]],
        "kept_in_memory": getattr(res, "diagnostics", {}).get("kept_in_memory"),
    }
    log(f"    {row['label']}V {row['V_MiB']:6.0f} MiB ({row['V_over_memory_limit']:.1f}x the workers' memory): "
        f"{row['ms_per_iter']:.0f} ms/iter, peak RSS {row['peak_rss_MiB']:.0f} MiB "
        f"(idle {row['idle_rss_MiB']:.0f}) = {row['peak_over_block']:.1f} blocks, "
        f"{row['peak_minus_idle_over_block']:.1f} blocks above idle")
    return row


def run(args, ctx) -> dict:
    from dask_nmf import io

    log = ctx["log"]
    quick = args.quick
    n, k = 2000, 16
    chunk_rows = 500
    n_workers = 2
    memory_limit = 320 * 2**20
    sizes = [8000, 16000, 32000] if quick else [16000, 32000, 64000, 128000]
    iters = 3 if quick else 5
    rows = []
    wait_quiet()
    peak = gemm_peak_gflops()
    log(f"  GEMM peak (float64, square, 2 threads): {peak:.0f} GFLOP/s")
    log(f"  LocalCluster {n_workers} workers x 1 thread, memory_limit {memory_limit / 2**20:.0f} MiB each; "
        f"n={n}, k={k}, float64, dask_nmf's default blocks, {iters} iterations, keep_in_memory=False")
    for m in sizes:
        path = zarr_store(data_dir(args) / f"ooc_{m}x{n}_float64.zarr", m, n, np.float64,
                          chunk_rows=chunk_rows, log=log)
        # Variants: dask's own worker malloc settings (what dask_nmf.workers buys) and
        # the default rule with blocks of up to 1/16 of a worker, not 1/8 (what the
        # larger blocks buy).
        variants = [("", {}, None)]
        if m == sizes[1]:
            variants.append(("dask's worker malloc", {"dask-nmf.worker-malloc": False}, None))
        if m == sizes[2]:
            with dask.config.set({"array.chunk-size": memory_limit // 16}):
                smaller = io.default_block_rows(m, n, np.float64, chunk_rows, n_workers)
            variants.append(("blocks of 1/16 of a worker", {}, smaller))
        size_rows = []
        for label, config, block_rows in variants:
            with dask.config.set(config):
                row = one_size(path, m, n, k, block_rows, iters, n_workers, memory_limit, log)
            row["label"] = label
            size_rows.append(row)
        block_rows = size_rows[0]["block_rows"]  # the default's
        rates = decode_rate(path, block_rows)
        bw = max(rates.values())  # the faster way is the floor
        floor_ms = 1e3 * max(m * n * 8 / (bw * 1e9), 4 * m * n * k / (peak * 1e9))
        no_dask = without_dask_ms(path, k, block_rows)
        log(f"    store decodes at {rates['plain']:.2f} GB/s (plain zarr reads) / "
            f"{rates['into_buffer']:.2f} (zarr into reused buffers) / {rates['dask_nmf']:.2f} (dask_nmf's reads) / "
            f"{rates['files']:.2f} (files + numcodecs, no zarr) on 2 threads: roofline {floor_ms:.0f} ms/iter; "
            f"the per-block work without dask {no_dask:.0f} ms/pass = {no_dask / floor_ms:.2f}x it")
        for row in size_rows:
            row.update(decode_GBs_2t=bw, decode_rates=rates, roofline_ms=floor_ms,
                       over_roofline=row["ms_per_iter"] / floor_ms, without_dask_ms=no_dask,
                       without_dask_over_roofline=no_dask / floor_ms,
                       over_without_dask=row["ms_per_iter"] / no_dask)
            log(f"      {row['label'] or 'default'}: {row['ms_per_iter']:.0f} ms/iter = "
                f"{row['over_roofline']:.2f}x the roofline, {row['over_without_dask']:.2f}x the work without dask")
        rows.extend(size_rows)
    log("")
    log(table(rows, ["label", "V_MiB", "V_over_memory_limit", "block_rows", "ms_per_iter", "read_GBs",
                     "decode_GBs_2t", "roofline_ms", "without_dask_ms", "over_roofline",
                     "without_dask_over_roofline", "over_without_dask", "idle_rss_MiB", "peak_rss_MiB",
                     "peak_worker_MiB", "peak_over_block", "peak_minus_idle_over_block",
                     "maxrss_minus_idle_over_block", "workers_restarted"],
              title=f"Out of core: {n_workers} workers x {memory_limit / 2**20:.0f} MiB, n = {n}, k = {k}, float64",
              headers={"label": "variant", "decode_GBs_2t": "store decode GB/s (2 thr)", "block_rows": "block rows",
                       "roofline_ms": "roofline ms", "without_dask_ms": "no-dask ms",
                       "over_roofline": "x roofline", "without_dask_over_roofline": "no-dask x roofline",
                       "over_without_dask": "x no-dask", "V_MiB": "V MiB", "V_over_memory_limit": "V / worker mem",
                       "ms_per_iter": "ms/iter", "read_GBs": "V GB/s", "idle_rss_MiB": "idle RSS MiB",
                       "peak_rss_MiB": "peak RSS MiB", "peak_worker_MiB": "peak worker MiB",
                       "peak_over_block": "peak / block",
                       "peak_minus_idle_over_block": "(peak-idle) / block",
                       "maxrss_minus_idle_over_block": "(maxrss-idle) / block",
                       "workers_restarted": "restarts"}))
    log("")
    return {"gemm_peak_gflops": peak, "n": n, "k": k, "chunk_rows": chunk_rows, "n_workers": n_workers,
            "memory_limit_bytes": memory_limit, "iterations": iters, "sizes": rows}
