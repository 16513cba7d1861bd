"""A NumPy V fitted on a distributed client against the same fit on dask's threads.

V is scattered to the workers once, in row blocks; before that fix the
validation and the NNDSVD's SVD passes each sent V inside their graph
("Sending large graph of size ...", about six times).  Prints both times, their
ratio and how many large-graph warnings dask gave.  About 30 s::

    python benchmarks/bench_numpy_on_client.py [--mib 229]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

import dask_nmf


def timed_fit(V, client=None):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        t = time.perf_counter()
        res = dask_nmf.factorize(V, 10, max_iter=20, tol=0, random_state=0, client=client)
        if client is not None:
            client.compute(res.W, sync=True)
        dt = time.perf_counter() - t
    return dt, sum("large graph" in str(w.message) for w in seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=229, help="size of V in MiB (float64)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 200
    m = args.mib * 2**20 // (8 * n)
    V = rng.random((m, 20)) @ rng.random((20, n))
    threads, _ = timed_fit(V)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        timed_fit(V[:1000], client)  # (workers warm)
        on_client, large = timed_fit(V, client)
    print(
        f"V {m} x {n} ({V.nbytes / 2**20:.0f} MiB), k=10, nndsvda, 20 iterations: "
        f"threads {threads:.2f} s, LocalCluster 2x1 {on_client:.2f} s "
        f"(ratio {on_client / threads:.2f}), large-graph warnings: {large}"
    )


if __name__ == "__main__":
    main()
