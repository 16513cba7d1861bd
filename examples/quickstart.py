"""Quickstart: factorize a generated matrix stored in zarr, on an embedded LocalCluster.

Run:  python examples/quickstart.py

It writes a 20000 x 500 non-negative matrix of rank ~10 (plus noise) to a
temporary zarr store, starts a two-worker LocalCluster, factorizes the store
with both of Lee & Seung's costs and prints the loss going down.
"""

from __future__ import annotations

import tempfile

import numpy as np
import zarr
from distributed import Client, LocalCluster

import dask_nmf
from dask_nmf.datasets import make_low_rank_store


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/V.zarr"
        make_low_rank_store(path, 20_000, 500, 10)
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            print(f"cluster: {client}")
            for cost in ("frobenius", "kullback-leibler"):
                print(f"\n{cost}: iteration  loss")
                res = dask_nmf.factorize(
                    path,
                    n_components=10,
                    beta_loss=cost,
                    max_iter=100,
                    random_state=0,
                    loss_every=1,  # KL's loss at every iteration, to show it never rises
                    callback=lambda it, loss: it % 10 == 0 and print(f"  {it:4d}  {loss:.6g}"),
                )
                decreasing = bool(np.all(np.diff(res.loss_history) <= 1e-9 * res.loss_history[0]))
                print(
                    f"  {res.n_iter} iterations, converged={res.converged}, "
                    f"relative error {res.reconstruction_err / np.sqrt(2 * _norm2(path) / 2):.4f}, "
                    f"loss never increased: {decreasing}"
                )


def _norm2(path: str) -> float:
    V = zarr.open_array(path, mode="r")
    return float(sum((V[s : s + 2_000] ** 2).sum() for s in range(0, V.shape[0], 2_000)))


if __name__ == "__main__":
    main()
