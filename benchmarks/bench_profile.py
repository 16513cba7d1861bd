"""Case "profile": where dask_nmf's time goes, kernel by kernel and statement by statement.

1. One row block (4000 x 2000 (the default block here), k=32, 1 BLAS thread, as a dask task runs it):
   ``kernels.frobenius_block_step`` against the four raw GEMMs it needs, and against
   other sub-block sizes (``kernels.SUB_BLOCK_BYTES``; patched here, in this process only).
2. ``kernels.kl_block_step`` statement by statement (an instrumented copy of its loop),
   plus the cost of cheaper spellings of the same statements.
3. The driver: per-iteration time of ``factorize`` on the threaded scheduler against the
   time of the same two block kernels run side by side in two plain threads
   (the difference is scheduling + graph building + the H update), a ``block_rows``
   sweep, and a cProfile of the client thread.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import (
    best_of,
    blas_threads,
    per_iteration,
    start_factors,
    synth_matrix,
    table,
    wait_quiet,
)
from scipy.special import xlogy


def _block(rows, n, k, dtype, seed=0):
    V = synth_matrix(rows, n, dtype, seed=seed)
    W, H = start_factors(rows, n, k, dtype)
    return V, W, H


def _sub_blocks_patched(sub_bytes):
    from dask_nmf import kernels

    original = kernels._sub_blocks

    def patched(n_rows, row_bytes, _sub=sub_bytes):
        return original(n_rows, row_bytes, _sub)

    return original, patched


def frobenius_whole_block(V, W, H, HHt, transposed=False):
    """A candidate kernel: the same W update and partial sums, no sub-blocks.

    Two large GEMMs over the whole block (V is streamed from memory twice, but
    ``W'^T V`` gets the long inner dimension OpenBLAS is fastest with).
    ``transposed`` spells ``V H^T`` as ``(H V^T)^T``.
    """
    from dask_nmf import kernels

    num = (H @ V.T).T if transposed else V @ H.T
    den = W @ HHt
    den[den == 0] = kernels.EPSILON
    Wn = W * (num / den)
    return Wn, {"A": Wn.T @ V, "B": Wn.T @ Wn}


def frobenius_kernel(dtype, rows, n, k, quick, log) -> dict:
    from dask_nmf import kernels

    V, W, H = _block(rows, n, k, dtype)
    HHt = H @ H.T
    Wn, _ = kernels.frobenius_block_step(V, W, H, HHt)
    reps = 3 if quick else 7
    out = {"dtype": np.dtype(dtype).name, "block": [rows, n], "k": k}
    with blas_threads(1):
        wait_quiet()
        g = {
            "V@H.T": best_of(lambda: V @ H.T, reps),
            "W@HHt": best_of(lambda: W @ HHt, reps),
            "W'.T@V": best_of(lambda: Wn.T @ V, reps),
            "W'.T@W'": best_of(lambda: Wn.T @ Wn, reps),
        }
        out["raw_gemms_ms"] = {key: 1e3 * v for key, v in g.items()}
        out["raw_gemms_total_ms"] = 1e3 * sum(g.values())
        out["block_step_ms"] = 1e3 * best_of(lambda: kernels.frobenius_block_step(V, W, H, HHt), reps)
        sweep = []
        sizes = [1, 4, 16] if quick else [0.25, 0.5, 1, 2, 4, 8, 16, 64]
        original = kernels._sub_blocks
        try:
            for mib in sizes + ["whole block"]:
                sub = rows * n * V.itemsize if mib == "whole block" else int(mib * 2**20)
                _, patched = _sub_blocks_patched(sub)
                kernels._sub_blocks = patched
                t = best_of(lambda: kernels.frobenius_block_step(V, W, H, HHt), reps)
                sweep.append({"sub_block": f"{mib} MiB" if mib != "whole block" else mib,
                              "rows": min(rows, max(1, sub // (n * V.itemsize))), "ms": 1e3 * t})
        finally:
            kernels._sub_blocks = original
        out["sub_block_sweep"] = sweep
        out["candidates_ms"] = {
            "whole block, V @ H.T": 1e3 * best_of(lambda: frobenius_whole_block(V, W, H, HHt), reps),
            "whole block, (H @ V.T).T": 1e3 * best_of(lambda: frobenius_whole_block(V, W, H, HHt, True), reps),
        }
        Wc, pc = frobenius_whole_block(V, W, H, HHt, True)
        Wk, pk = kernels.frobenius_block_step(V, W, H, HHt)
        out["candidate_max_rel_diff"] = float(max(np.max(np.abs(Wc - Wk)) / np.max(np.abs(Wk)),
                                                  np.max(np.abs(pc["A"] - pk["A"])) / np.max(np.abs(pk["A"]))))
    flops = 4 * rows * n * k
    out["block_step_gflops"] = flops / out["block_step_ms"] / 1e6
    log(f"    frobenius_block_step {out['dtype']}: {out['block_step_ms']:.1f} ms vs raw GEMMs "
        f"{out['raw_gemms_total_ms']:.1f} ms ({', '.join(f'{a} {1e3 * b:.1f}' for a, b in g.items())})"
        f" -> {out['block_step_gflops']:.1f} GF/s on 1 core")
    return out


def kl_stages(V, W, H, sub_rows, variant="current"):
    """An instrumented copy of ``kernels.kl_block_step``'s loop: seconds per statement.

    ``variant="fast"`` computes the loss term as ``vdot(V, log(ratio))`` instead of
    ``xlogy(V, ratio).sum()``; ``variant="noloss"`` leaves the loss term out.
    """
    from dask_nmf import kernels

    EPS = kernels.EPSILON
    T = {}

    def tick(name, t0):
        t1 = time.perf_counter()
        T[name] = T.get(name, 0.0) + t1 - t0
        return t1

    k, n = H.shape
    H_sum = H.sum(axis=1)
    W_new = np.empty_like(W)
    A = np.zeros((k, n), dtype=W.dtype)
    vlogr = 0.0
    for start in range(0, V.shape[0], sub_rows):
        rows = slice(start, min(start + sub_rows, V.shape[0]))
        Vs, Ws = V[rows], W[rows]
        t = time.perf_counter()
        WH = Ws @ H
        t = tick("W@H (gemm)", t)
        WH[WH < EPS] = EPS
        t = tick("floor W@H at eps", t)
        np.divide(Vs, WH, out=WH)
        ratio = WH
        t = tick("V / WH", t)
        if variant == "current":
            vlogr += float(xlogy(Vs, ratio).sum(dtype=np.float64))
            t = tick("loss: xlogy(V, ratio).sum()", t)
        elif variant == "fast":
            # V log(V/WH) with 0 log 0 = 0: log(ratio) is finite wherever V > 0, and
            # where V == 0 the ratio is 0, log gives -inf; mask those (rare) entries.
            with np.errstate(divide="ignore"):
                lr = np.log(ratio)
            if (Vs == 0).any():
                lr[Vs == 0] = 0
            vlogr += float(np.vdot(Vs, lr))
            t = tick("loss: xlogy(V, ratio).sum()", t)
        # variant "noloss": skip the loss term
        num = ratio @ H.T
        t = tick("ratio@H.T (gemm)", t)
        den = np.broadcast_to(H_sum, Ws.shape).copy()
        Wn = Ws * kernels._safe_ratio(num, den)
        W_new[rows] = Wn
        t = tick("W update (small)", t)
        WH2 = Wn @ H
        t = tick("W'@H (gemm)", t)
        WH2[WH2 < EPS] = EPS
        t = tick("floor W@H at eps", t)
        np.divide(Vs, WH2, out=WH2)
        t = tick("V / WH", t)
        A += Wn.T @ WH2
        t = tick("W'.T@ratio (gemm)", t)
    return T, vlogr


def kl_kernel(dtype, rows, n, k, quick, log) -> dict:
    from dask_nmf import kernels

    V, W, H = _block(rows, n, k, dtype)
    sub_rows = max(1, kernels.SUB_BLOCK_BYTES // (n * V.itemsize))
    reps = 2 if quick else 4
    out = {"dtype": np.dtype(dtype).name, "block": [rows, n], "k": k, "sub_rows": sub_rows}
    with blas_threads(1):
        wait_quiet()
        out["block_step_ms"] = 1e3 * best_of(lambda: kernels.kl_block_step(V, W, H), reps)
        stages = {}
        totals = {}
        for variant in ("current", "fast", "noloss"):
            best = None
            for _ in range(reps):
                T, _ = kl_stages(V, W, H, sub_rows, variant)
                if best is None or sum(T.values()) < sum(best.values()):
                    best = T
            stages[variant] = {key: 1e3 * v for key, v in best.items()}
            totals[variant] = 1e3 * sum(best.values())
        # raw costs of one elementwise pass over the block, for reference
        WH = np.maximum(W @ H, kernels.EPSILON)
        R = V / WH
        out["elementwise_ms"] = {
            "xlogy(V, R).sum()": 1e3 * best_of(lambda: xlogy(V, R).sum(), reps),
            "vdot(V, log(R))": 1e3 * best_of(lambda: np.vdot(V, np.log(R)), reps),
            "log(R)": 1e3 * best_of(lambda: np.log(R), reps),
            "WH[WH<eps]=eps": 1e3 * best_of(lambda: WH.__setitem__(WH < kernels.EPSILON, kernels.EPSILON), reps),
            "maximum(WH,eps,out=WH)": 1e3 * best_of(lambda: np.maximum(WH, kernels.EPSILON, out=WH), reps),
            "V / WH": 1e3 * best_of(lambda: np.divide(V, WH), reps),
            "W@H": 1e3 * best_of(lambda: W @ H, reps),
        }
    out["stages_ms"] = stages
    out["stage_totals_ms"] = totals
    flops = 8 * rows * n * k
    out["block_step_gflops"] = flops / out["block_step_ms"] / 1e6
    log(f"    kl_block_step {out['dtype']}: {out['block_step_ms']:.0f} ms "
        f"({out['block_step_gflops']:.1f} GF/s on 1 core); instrumented: current {totals['current']:.0f} ms, "
        f"loss via vdot(V, log R) {totals['fast']:.0f} ms, without the loss term {totals['noloss']:.0f} ms")
    return out


def kernels_in_threads(beta, dtype, rows, n_blocks, n, k, reps) -> float:
    """The blocks' kernels run by two plain threads (what 2 dask threads could at best do)."""
    from dask_nmf import kernels

    blocks = [_block(rows, n, k, dtype, seed=s) for s in range(n_blocks)]
    HHt = blocks[0][2] @ blocks[0][2].T

    def one(b):
        V, W, H = b
        if beta == "frobenius":
            return kernels.frobenius_block_step(V, W, H, HHt)
        return kernels.kl_block_step(V, W, H)

    with blas_threads(1), ThreadPoolExecutor(2) as ex:
        return 1e3 * best_of(lambda: list(ex.map(one, blocks)), reps)


def driver_overhead(args, log) -> dict:
    from bench_peers import run_dask_nmf

    quick = args.quick
    m, n, k = (args.m or 16000), (args.n or 2000), (args.k or 32)
    V = synth_matrix(m, n)
    W0, H0 = start_factors(m, n, k)
    out = {}
    rows = []
    betas = ("frobenius",) if quick else ("frobenius", "kullback-leibler")
    br = int(run_dask_nmf(V, W0, H0, "frobenius", 1).params["block_rows"])
    nb = -(-m // br)
    out["default_block_rows"] = br
    for beta in betas:
        n1, n2 = (1, 3) if beta == "frobenius" else (1, 2)
        if not quick and beta == "frobenius":
            n1, n2 = 2, 8
        with blas_threads(1):
            fact = per_iteration(lambda N: run_dask_nmf(V, W0, H0, beta, N),
                                 n1, n2, 1 if quick else 2, quiet=args.quiet_wait)["ms_per_iter"]
        wait_quiet(args.quiet_wait)
        par = kernels_in_threads(beta, np.float64, br, nb, n, k, 2 if quick else 3)
        rows.append({"beta_loss": beta, "block_rows": br, "blocks": nb, "factorize_ms_per_iter": fact,
                     "kernels_in_2_threads_ms": par, "overhead_ms": fact - par})
        log(f"    {beta}: factorize {fact:.1f} ms/iter; its {nb} block kernels alone in 2 threads {par:.1f} ms"
            f" -> driver/scheduler overhead {fact - par:.1f} ms/iter")
    out["overhead"] = rows

    # Fixed cost per iteration: a matrix so small that the kernels cost nothing.
    fixed = []
    tiny_m, tiny_n, tiny_k = 6400, 20, 2
    Vt = synth_matrix(tiny_m, tiny_n)
    Wt, Ht = start_factors(tiny_m, tiny_n, tiny_k)
    cl = client = None
    try:
        if not quick:
            from common import local_cluster
            from distributed import Client

            cl = local_cluster(2, 1)
            client = Client(cl, set_as_default=False)
        for where in ("threaded",) + (("cluster",) if client is not None else ()):
            for nb in ([4, 64] if quick else [4, 16, 64, 256]):
                c = client if where == "cluster" else None
                r = per_iteration(
                    lambda N, nb=nb, c=c: run_dask_nmf(Vt, Wt, Ht, "frobenius", N, block_rows=tiny_m // nb,
                                                       client=c),
                    2, 12 if quick else 22, 1 if quick else 2, quiet=args.quiet_wait)
                fixed.append({"scheduler": where if where == "threaded" else "LocalCluster 2x1",
                              "blocks": nb, "ms_per_iter": r["ms_per_iter"],
                              "ms_per_block": r["ms_per_iter"] / nb})
                log(f"    fixed cost, {fixed[-1]['scheduler']}, {nb} blocks: {r['ms_per_iter']:.1f} ms/iter "
                    f"({r['ms_per_iter'] / nb:.2f} ms per block)")
    finally:
        if client is not None:
            client.close()
            cl.close()
    out["fixed_cost"] = fixed

    # block_rows sweep (threaded scheduler, 1 BLAS thread)
    sweep = []
    sizes = [1000, 4000, 16000] if quick else [500, 1000, 2000, 4000, 8000, 16000]
    for br in sizes:
        with blas_threads(1):
            r = per_iteration(lambda N, br=br: run_dask_nmf(V, W0, H0, "frobenius", N, block_rows=br),
                              1, 3 if quick else 5, 1, quiet=args.quiet_wait)
        sweep.append({"block_rows": br, "blocks": -(-m // br), "ms_per_iter": r["ms_per_iter"]})
        log(f"    block_rows={br:6d} ({sweep[-1]['blocks']:3d} blocks): {r['ms_per_iter']:.1f} ms/iter")
    out["block_rows_sweep"] = sweep

    # cProfile of the client thread over a few Frobenius iterations
    with blas_threads(1):
        run_dask_nmf(V, W0, H0, "frobenius", 2, block_rows=1000)
        prof = cProfile.Profile()
        prof.enable()
        t0 = time.perf_counter()
        N = 10
        run_dask_nmf(V, W0, H0, "frobenius", N, block_rows=1000)
        wall = time.perf_counter() - t0
        prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime")
    entries = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        entries.append({"function": f"{fname.split('site-packages/')[-1]}:{line}({func})",
                        "calls": nc, "tottime_s": tt, "cumtime_s": ct})
    entries.sort(key=lambda e: -e["tottime_s"])
    out["cprofile_client_thread"] = {"wall_s": wall, "iterations": N, "block_rows": 1000,
                                     "top_tottime": entries[:25]}
    return out


def run(args, ctx) -> dict:
    log = ctx["log"]
    quick = args.quick
    n, k = (args.n or 2000), (args.k or 32)
    rows = 4000
    dtypes = [np.float64] if quick else [np.float64, np.float32]
    log(f"  Frobenius block kernel (one {rows}-row block, 1 BLAS thread)")
    frob = [frobenius_kernel(d, rows, n, k, quick, log) for d in dtypes]
    log("  KL block kernel")
    kl = [kl_kernel(d, rows, n, k, quick, log) for d in dtypes]
    log("  driver")
    drv = driver_overhead(args, log)

    log("")
    t = []
    for f in frob:
        t.append({"dtype": f["dtype"], "what": "raw GEMMs " + " + ".join(f["raw_gemms_ms"]),
                  "ms": f["raw_gemms_total_ms"]})
        t.append({"dtype": f["dtype"], "what": "frobenius_block_step (current sub-blocks)",
                  "ms": f["block_step_ms"]})
        for s in f["sub_block_sweep"]:
            t.append({"dtype": f["dtype"], "what": f"  sub-block {s['sub_block']} ({s['rows']} rows)",
                      "ms": s["ms"]})
        for name, ms in f["candidates_ms"].items():
            t.append({"dtype": f["dtype"], "what": f"candidate: {name}", "ms": ms})
    log(table(t, ["dtype", "what", "ms"], title=f"Frobenius kernel on one {rows}x{n} block, k={k}, 1 thread"))
    log("")
    for f in kl:
        st = f["stages_ms"]
        keys = list(st["current"])
        trows = [{"statement": key, "current": st["current"].get(key), "loss via vdot(V, log R)": st["fast"].get(key),
                  "no loss term": st["noloss"].get(key, 0.0)} for key in keys]
        trows.append({"statement": "total (instrumented)", "current": f["stage_totals_ms"]["current"],
                      "loss via vdot(V, log R)": f["stage_totals_ms"]["fast"],
                      "no loss term": f["stage_totals_ms"]["noloss"]})
        trows.append({"statement": "kernels.kl_block_step (real)", "current": f["block_step_ms"]})
        log(table(trows, ["statement", "current", "loss via vdot(V, log R)", "no loss term"],
                  title=f"KL kernel on one {rows}x{n} {f['dtype']} block, k={k}, 1 thread: ms per statement"))
        log("")
        e = [{"operation": a, "ms": b} for a, b in f["elementwise_ms"].items()]
        log(table(e, ["operation", "ms"], title=f"single passes over the {f['dtype']} block (1 thread)"))
        log("")
    log(table(drv["overhead"], ["beta_loss", "block_rows", "blocks", "factorize_ms_per_iter",
                                "kernels_in_2_threads_ms", "overhead_ms"],
              title="factorize (default blocks, threaded, BLAS=1) vs the same block kernels in two plain threads"))
    log("")
    log(table(drv["fixed_cost"], ["scheduler", "blocks", "ms_per_iter", "ms_per_block"],
              title="Fixed cost per iteration (6400x20 matrix, k=2: the kernels cost ~nothing)"))
    log("")
    log(table(drv["block_rows_sweep"], ["block_rows", "blocks", "ms_per_iter"],
              title="block_rows sweep (Frobenius, in-memory V, threaded scheduler, BLAS=1)"))
    log("")
    cp = drv["cprofile_client_thread"]
    log(table([{"function": e["function"][-70:], "calls": e["calls"], "tottime_s": e["tottime_s"],
                "cumtime_s": e["cumtime_s"]} for e in cp["top_tottime"][:12]],
              ["function", "calls", "tottime_s", "cumtime_s"],
              title=f"cProfile, client thread, {cp['iterations']} Frobenius iterations, block_rows=1000 "
                    f"(wall {cp['wall_s']:.2f} s)"))
    log("")
    return {"frobenius_kernel": frob, "kl_kernel": kl, "driver": drv}
