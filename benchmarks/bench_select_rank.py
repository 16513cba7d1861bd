"""Choosing k: ``select_rank`` over k = 2..12 in one stacked fit, against 11 separate fits.

    python benchmarks/bench_select_rank.py [--quick] [--out DIR]

A planted rank-6 float32 zarr store is re-read from disk every pass
(``keep_in_memory=False``) on a 2-worker LocalCluster (1 thread each).  Both
sides fit the same candidates with the same held-out entries, the same number
of passes (``tol=0``), one restart each:

- *stacked*: ``select_rank(store, ks=2..12)``: every candidate in the same passes;
- *separate*: ``select_rank(store, ks=[k])`` for each k in turn: 11 fits, each
  reading V every pass (what choosing k costs without the stacked fit).

Reported: wall time of each, the ratio stacked / sum of separate, the passes,
and the chosen k of both.  Writes ``select_rank[_quick].json`` to a fresh
folder (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
from distributed import Client

import dask_nmf


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--m", type=int, default=200_000)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--memory", default="1GiB", help="memory limit of each of the 2 workers")
    p.add_argument("--data-dir")
    p.add_argument("--out")
    a = p.parse_args(argv)
    m, n, passes = (20_000, 200, 5) if a.quick else (a.m, a.n, a.passes)
    out = Path(a.out) if a.out else common.fresh_results_dir("select_rank")
    path = common.zarr_store(
        common.data_dir(a) / f"rank_{m}x{n}_float32.zarr", m, n, "float32", seed=5, chunk_rows=2000,
        rank=6,
    )
    ks = list(range(2, 13))
    kw = dict(n_restarts=1, holdout=0.05, max_iter=passes, tol=0, random_state=0,
              keep_in_memory=False, block_rows=4000)
    rows = []
    with common.local_cluster(2, 1, memory_limit=a.memory) as cluster, Client(cluster) as client:
        dask_nmf.select_rank(str(path), [2], client=client, **dict(kw, max_iter=1))  # warm-up
        common.wait_quiet(60)
        t0 = time.perf_counter()
        stacked = dask_nmf.select_rank(str(path), ks, client=client, **kw)
        t_stacked = time.perf_counter() - t0
        separate, t_separate = {}, {}
        for k in ks:
            common.wait_quiet(30)
            t0 = time.perf_counter()
            separate[k] = dask_nmf.select_rank(str(path), [k], client=client, **kw)
            t_separate[k] = time.perf_counter() - t0
    total = sum(t_separate.values())
    for k in ks:
        mine = next(r for r in stacked.rows if r["k"] == k)
        alone = separate[k].rows[0]
        rows.append(dict(k=k, separate_s=t_separate[k],
                         held_out_stacked=f"{mine['held_out_error']:.6g}",
                         held_out_separate=f"{alone['held_out_error']:.6g}"))
    print(common.table(rows, ["k", "separate_s", "held_out_stacked", "held_out_separate"],
                       title=f"V {m} x {n} float32 from zarr, {passes} passes, 2 workers x 1 thread"))
    summary = dict(
        m=m, n=n, passes=passes, ks=ks, stacked_s=t_stacked, separate_total_s=total,
        ratio=t_stacked / total, chosen_k_stacked=stacked.best_k,
        store_mib=common.store_bytes(path) / 2**20, rows=rows,
        background_cpu=common.quiet_log_summary(),
    )
    print(f"stacked {t_stacked:.1f} s, 11 separate fits {total:.1f} s: ratio {summary['ratio']:.2f}; "
          f"chosen k {stacked.best_k}")
    common.save_json("select_rank_quick" if a.quick else "select_rank", summary, out)
    return summary


if __name__ == "__main__":
    main()
