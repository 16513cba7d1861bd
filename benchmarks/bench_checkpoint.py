"""What a checkpoint costs, relative to an iteration, on the benchmark matrix.

    python benchmarks/bench_checkpoint.py [--rows 16000] [--cols 2000] [-k 32]

Fits a zarr store on a two-worker LocalCluster with ``checkpoint_every=5`` and
times each iteration (callback) and each checkpoint (``on_checkpoint``): the
checkpoint cost is the extra time of the iterations that end in a checkpoint.
Writes benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
from common import fresh_results_dir  # (benchmarks/ is on the path of a script run from it)
from distributed import Client, LocalCluster

import dask_nmf
from dask_nmf.datasets import make_low_rank_store


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=16_000)
    ap.add_argument("--cols", type=int, default=2_000)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", default=None, help="results directory (default: a new one)")
    args = ap.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/V.zarr"
        make_low_rank_store(data, args.rows, args.cols, args.k, chunk_rows=1000)
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            for beta in ("frobenius", "kullback-leibler"):
                stamps: dict[int, float] = {}
                checkpoints: list[int] = []
                dask_nmf.factorize(
                    data,
                    args.k,
                    beta_loss=beta,
                    init="random",
                    random_state=0,
                    tol=0,
                    max_iter=args.iters,
                    client=client,
                    checkpoint=f"{tmp}/ck-{beta}.zarr",
                    checkpoint_every=5,
                    callback=lambda it, loss, s=stamps: s.__setitem__(it, time.perf_counter()),
                    on_checkpoint=lambda it, path, c=checkpoints: c.append(it),
                )
                its = sorted(stamps)
                dt = {it: stamps[it] - stamps[it - 1] for it in its[1:]}
                # KL learns iteration t's loss during pass t+1, so a checkpoint after
                # iteration t shows up in the gap before callback t (Frobenius: t+1).
                shift = 1 if beta == "frobenius" else 0
                with_ck = [dt[c + shift] for c in checkpoints if (c + shift) in dt]
                plain = [v for it, v in dt.items() if it - shift not in checkpoints]
                iteration = float(np.median(plain))
                checkpoint = float(np.median(with_ck)) - iteration
                out[beta] = {
                    "iteration_s": iteration,
                    "checkpoint_s": checkpoint,
                    "checkpoint_over_iteration": checkpoint / iteration,
                }
                print(
                    f"{beta:17s} iteration {iteration * 1e3:7.1f} ms   checkpoint "
                    f"{checkpoint * 1e3:7.1f} ms   ratio {checkpoint / iteration:.2f}"
                )
    out["shape"] = [args.rows, args.cols, args.k]
    out_dir = pathlib.Path(args.out) if args.out else fresh_results_dir("checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoint.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
