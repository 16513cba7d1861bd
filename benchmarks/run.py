"""Run the dask_nmf benchmark suite.

    python benchmarks/run.py                 # everything (about 45 min on 2 cores)
    python benchmarks/run.py --quick         # reduced sizes/repeats (5-10 min)
    python benchmarks/run.py --case peers --case roofline

Before each timing a run waits up to --quiet-wait seconds (default 60; at most
--quiet-budget per case) for the machine to be idle, so on a busy machine it
takes longer: run it on a quiet one.

Cases (in this order): peers, roofline, profile, outofcore, scaling, sparse, codecs, missing, shapes.
Each prints its tables and writes ``<case>.json`` (sweeps also a PNG) to a new
``benchmarks/results/runs/<time>/`` unless ``--out`` says where (``--out
benchmarks/results`` replaces the committed results); all printed tables of the
run also go to ``report[_quick].md`` there.
Synthetic data (zarr stores) is made once under ``--data-dir`` (default
/tmp/dask_nmf_bench, or $DASK_NMF_BENCH_DATA) and reused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = {
    "peers": "bench_peers",
    "roofline": "bench_roofline",
    "profile": "bench_profile",
    "outofcore": "bench_outofcore",
    "scaling": "bench_scaling",
    "sparse": "bench_sparse",
    "codecs": "bench_codecs",
    "missing": "bench_missing",
    "shapes": "bench_shapes",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (5-10 minutes)")
    p.add_argument(
        "--case", action="append", choices=list(CASES), help="run only this case (repeatable)"
    )
    p.add_argument(
        "--m", type=int, help="rows of the main matrix (peers/roofline/profile; default 16000)"
    )
    p.add_argument("--n", type=int, help="columns of the main matrix (default 2000)")
    p.add_argument("--k", type=int, help="rank of the main case (default 32)")
    p.add_argument("--data-dir", help="where synthetic zarr stores are kept")
    p.add_argument(
        "--out",
        default=None,
        help="results directory (default: a new benchmarks/results/runs/<time>; "
        "--out benchmarks/results replaces the committed results)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="max seconds to wait for the machine to go idle before each timing (0: never, "
        "and no re-runs of disturbed timings)",
    )
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=900.0,
        help="max total seconds per case spent waiting for an idle machine",
    )
    args = p.parse_args(argv)

    import common

    if args.out is None:
        args.out = str(common.fresh_results_dir("quick" if args.quick else "full"))
    common.RESULTS = Path(args.out)
    common.QUIET_WAIT = args.quiet_wait
    common.QUIET_BUDGET = args.quiet_budget
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_lines: list[str] = []

    def log(msg: str = "") -> None:
        print(msg, flush=True)
        report_lines.append(msg)

    warnings.filterwarnings("ignore", category=UserWarning, module="distributed")
    info = common.machine_info()
    log(
        f"# dask_nmf benchmarks{' (--quick)' if args.quick else ''} — {time.strftime('%Y-%m-%d %H:%M')}"
    )
    log(
        f"machine: {info['cpu']}, {info['logical_cores']} cores, {info['ram_gib']} GiB RAM; "
        f"BLAS: {', '.join(b['internal_api'] + ' ' + str(b['version']) + ' (' + str(b['num_threads']) + ' threads)' for b in info['blas'])}"
    )
    log(
        f"numpy {info['numpy']}, scikit-learn {info['scikit-learn']}, dask {info['dask']}, "
        f"distributed {info['distributed']}, zarr {info['zarr']}, dask_nmf {info['dask_nmf']}"
    )
    src = info["dask_nmf_source"]
    log(
        f"dask_nmf measured: {src.get('path')} at commit {src.get('commit', '?')[:10]}"
        + (" (+ uncommitted changes)" if src.get("uncommitted_changes") else "")
    )
    log("")

    ctx = {"log": log, "machine": info}
    cases = args.case or list(CASES)
    t_all = time.perf_counter()
    for name in [c for c in CASES if c in cases]:
        mod = importlib.import_module(CASES[name])
        log(f"## {name}")
        t0 = time.perf_counter()
        common._QUIET_LOG.clear()
        common._WAITED[0] = 0.0
        payload = mod.run(args, ctx)
        payload = {
            "quick": args.quick,
            "machine": info,
            "elapsed_s": time.perf_counter() - t0,
            "machine_noise": common.quiet_log_summary(),
            **payload,
        }
        path = common.save_json(name if not args.quick else f"{name}_quick", payload, out_dir)
        log(f"({name}: {time.perf_counter() - t0:.0f} s; wrote {os.path.relpath(path)})")
        log("")
    log(f"total {time.perf_counter() - t_all:.0f} s")
    report = out_dir / ("report_quick.md" if args.quick else "report.md")
    if not args.case:
        report.write_text("\n".join(report_lines) + "\n")
    else:
        with open(out_dir / ("report_partial.md"), "a") as f:
            f.write("\n".join(report_lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
