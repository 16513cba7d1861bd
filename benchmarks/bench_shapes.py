"""Case "shapes": per-iteration time against scikit-learn's MU for tall, square, wide
and very wide V (dense and sparse, both costs), as a ratio in the same run.

    python benchmarks/bench_shapes.py [--quick] [--out DIR] [--no-cluster] [--shape S] [--cost C]
    python benchmarks/run.py --case shapes

Every dense shape has the same number of entries (2.5e7; 1e6 with --quick), k = 32,
float64, in memory; the sparse one is 20000 x 100000 at 0.5 % (k = 20).  Both
contestants start from the same W and H with tol=0; per iteration =
(t(N2) - t(N1)) / (N2 - N1) in the same process, dask_nmf on dask's threaded
scheduler (and, for two shapes, on a ``LocalCluster`` of 2 worker processes),
scikit-learn with its default BLAS threads.  For each dask_nmf run the table
also gives its row blocks and the bytes a pass moves between blocks in its
model: each block's k x n partial sums (summed first per worker on a cluster:
then one per worker travels) and H to each worker; and on the cluster the bytes
the workers sent each other per pass, as distributed counts them.

Writes ``shapes.json`` and ``shapes.png`` (ratio against n / m) to a fresh
folder (printed), or to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from common import per_iteration, start_factors, synth_matrix, table  # noqa: E402

COSTS = ("frobenius", "kullback-leibler")


def shapes(quick: bool) -> list[dict]:
    """The cases: name, m, n, k, sparse density (None: dense), on a cluster too."""
    if quick:
        dense = [("tall", 4000, 250), ("square", 1000, 1000), ("wide", 250, 4000),
                 ("very wide", 40, 25000)]
        sparse = [("sparse wide", 4000, 25000, 0.005)]
    else:
        dense = [("tall", 12500, 2000), ("square", 5000, 5000), ("wide", 1000, 25000),
                 ("very wide", 250, 100000)]
        sparse = [("sparse wide", 20000, 100000, 0.005)]
    out = [dict(name=a, m=m, n=n, k=32, density=None, cluster=a in ("tall", "very wide"))
           for a, m, n in dense]
    out += [dict(name=a, m=m, n=n, k=20, density=d, cluster=False) for a, m, n, d in sparse]
    return out


def make_case(case: dict):
    m, n, k = case["m"], case["n"], case["k"]
    if case["density"] is None:
        V = synth_matrix(m, n)
        W0, H0 = start_factors(m, n, k)
        return V, W0, H0
    from dask_nmf.datasets import make_sparse_counts

    V = make_sparse_counts(m, n, k, case["density"], seed=0, dtype="float64")
    W0, H0 = start_factors(m, n, k, v_mean=float(V.sum()) / (m * n))
    return V, W0, H0


def run_sklearn(V, W0, H0, beta, N):
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NMF(W0.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=N, tol=0).fit(
            V, W=W0.copy(), H=H0.copy())


def run_ours(V, W0, H0, beta, N, client=None):
    import dask_nmf

    return dask_nmf.factorize(V, W0.shape[1], beta_loss=beta, W_init=W0, H_init=H0,
                              max_iter=N, tol=0, client=client)


def moved_per_pass(m: int, n: int, k: int, block_rows: int, workers: int) -> dict:
    """The pass's k x n traffic in its model (8-byte values): the partial sums
    each block adds (summed per worker first, then one per worker travels to the
    worker of the reduction) and the new H from there to each other worker."""
    blocks = -(-m // block_rows)
    partial = k * n * 8
    return {"blocks": blocks, "partial_MB": partial / 1e6,
            "partials_added_MB": blocks * partial / 1e6,
            "moved_MB": 2 * (workers - 1) * partial / 1e6}


def measured_moved(client, run, n1: int, n2: int) -> float:
    """MB sent between the cluster's workers per pass, as the workers count it
    (distributed's ``transfer_outgoing_bytes_total``), by the difference of a
    fit of ``n2`` passes and one of ``n1``: what the client sends (the graph,
    the start) cancels out."""

    def total() -> int:
        sent = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
        return sum(sent.values())

    a = total()
    run(n1)
    b = total()
    run(n2)
    c = total()
    return ((c - b) - (b - a)) / (n2 - n1) / 1e6


def run(args, ctx) -> dict:
    log = ctx["log"]
    quick = args.quick
    repeats = getattr(args, "repeats", 1 if quick else 2)
    no_cluster = getattr(args, "no_cluster", False)
    rows = []
    cluster = client = None
    try:
        for case in shapes(quick):
            if getattr(args, "shape", None) and case["name"] not in args.shape:
                continue
            V, W0, H0 = make_case(case)
            m, n, k = case["m"], case["n"], case["k"]
            sparse = case["density"] is not None
            n1, n2 = ((2, 6) if quick else (3, 13)) if sparse else ((2, 8) if quick else (5, 25))
            for beta in getattr(args, "cost", None) or COSTS:
                sk = per_iteration(lambda N: run_sklearn(V, W0, H0, beta, N), n1, n2,
                                   repeats)["ms_per_iter"]
                targets = [("threaded", None)]
                if case["cluster"] and not no_cluster and beta == "frobenius":
                    if client is None:
                        from distributed import Client

                        cluster = common.local_cluster(2, 1)
                        # Not the default client: the threaded runs must stay threaded.
                        client = Client(cluster, set_as_default=False)
                    targets.append(("LocalCluster 2x1", client))
                for where, cl in targets:
                    ours = per_iteration(lambda N, cl=cl: run_ours(V, W0, H0, beta, N, cl),
                                         n1, n2, repeats)["ms_per_iter"]
                    block_rows = int(run_ours(V, W0, H0, beta, 1, cl).params["block_rows"])
                    measured = 0.0
                    if cl is not None:
                        measured = measured_moved(
                            cl, lambda N, cl=cl: run_ours(V, W0, H0, beta, N, cl), n1, n2
                        )
                    row = dict(shape=case["name"], m=m, n=n, k=k, n_over_m=n / m,
                               V="sparse %.1f %%" % (100 * case["density"]) if sparse else "dense",
                               beta_loss=beta, scheduler=where, sklearn_ms=sk, ours_ms=ours,
                               ratio=ours / sk, block_rows=block_rows,
                               measured_MB=measured,
                               **moved_per_pass(m, n, k, block_rows, 2 if cl is not None else 1))
                    rows.append(row)
                    log(f"    {case['name']:<12s} {m}x{n} {beta[:4]} {where:<17s} sklearn "
                        f"{sk:8.1f} ms  dask_nmf {ours:8.1f} ms  ratio {ours / sk:5.2f}  "
                        f"blocks {row['blocks']} of {block_rows} rows")
    finally:
        if client is not None:
            client.close()
            cluster.close()
    log("")
    log(table(rows, ["shape", "m", "n", "V", "beta_loss", "scheduler", "sklearn_ms", "ours_ms",
                     "ratio", "blocks", "partial_MB", "partials_added_MB", "moved_MB",
                     "measured_MB"],
              title="Per iteration against scikit-learn's MU, by shape (ratio < 1: dask_nmf faster)",
              headers={"sklearn_ms": "sklearn ms/iter", "ours_ms": "dask_nmf ms/iter",
                       "ratio": "/ sklearn", "partial_MB": "k x n MB",
                       "partials_added_MB": "partials/pass MB", "moved_MB": "moved/pass MB (model)",
                       "measured_MB": "moved/pass MB (measured)"}))
    _plot(rows, Path(args.out), quick)
    return {"rows": rows}


def _plot(rows: list[dict], out: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (V, beta, where), marker in zip(
        sorted({(r["V"] != "dense", r["beta_loss"], r["scheduler"]) for r in rows}),
        "os^vDx",
    ):
        pts = sorted((r["n_over_m"], r["ratio"]) for r in rows
                     if ((r["V"] != "dense"), r["beta_loss"], r["scheduler"]) == (V, beta, where))
        ax.plot(*zip(*pts), marker=marker, ls="-" if len(pts) > 1 else "",
                label=f"{'sparse' if V else 'dense'}, {beta}, {where}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("n / m (columns per row of V)")
    ax.set_ylabel("time per iteration / scikit-learn MU")
    ax.set_title("dask_nmf per iteration against scikit-learn, by shape of V")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / ("shapes_quick.png" if quick else "shapes.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1e6-entry shapes (about a minute)")
    p.add_argument("--out", help="results folder (default: a fresh one under /tmp)")
    p.add_argument("--repeats", type=int, default=2, help="timings of each length (min kept)")
    p.add_argument("--no-cluster", action="store_true", help="threaded scheduler only")
    p.add_argument("--shape", action="append", choices=["tall", "square", "wide", "very wide",
                                                        "sparse wide"],
                   help="only this shape (repeatable; default all)")
    p.add_argument("--cost", action="append", choices=list(COSTS),
                   help="only this cost (repeatable; default both)")
    p.add_argument("--quiet-wait", type=float, default=5.0,
                   help="max seconds to wait for an idle machine before each timing")
    args = p.parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="dask_nmf_shapes_")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    common.QUIET_WAIT = args.quiet_wait
    t0 = time.perf_counter()
    payload = run(args, {"log": lambda msg="": print(msg, flush=True)})
    payload.update(quick=args.quick, machine=common.machine_info(),
                   machine_noise=common.quiet_log_summary(), elapsed_s=time.perf_counter() - t0)
    path = common.save_json("shapes_quick" if args.quick else "shapes", payload, Path(args.out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
