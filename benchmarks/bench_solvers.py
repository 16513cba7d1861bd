"""Passes and time to a target error: our cd and MU against scikit-learn's cd and mu.

The target is scikit-learn ``NMF(solver="cd")``'s error at its default
``tol=1e-4``.  Every method starts from the same NNDSVDa factors (their time
is added to every row: "init included") and runs until its error is at or
below the target (or ``--cap`` iterations).  Ours run in memory on dask's
local scheduler.  Our cd and MU take scikit-learn's iterates (to rounding),
so the iterations each needs are found once from our loss history and
scikit-learn's runs are timed with exactly that ``max_iter``.

Cases: (a) an 8000 x 500 planted rank-20 matrix plus noise; (b) Poisson
counts around a rank-20 matrix.  Then the time per pass of cd and MU over a
zarr store re-read every pass (``keep_in_memory=False``).

    python benchmarks/bench_solvers.py [--m 8000] [--n 500] [--k 20] [--cap 2000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _initialize_nmf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_json, table  # noqa: E402

import dask_nmf  # noqa: E402


def planted(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((m, k)) @ rng.random((k, n)) + 0.1 * rng.random((m, n))


def poisson(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 1.0, (m, k)) @ rng.gamma(0.5, 1.0, (k, n))
    return rng.poisson(rate * (2.0 / rate.mean())).astype(np.float64)


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def iterations_to(losses: list, target: float) -> int | None:
    """The first iteration whose error sqrt(2 loss) is at or below ``target``."""
    for t, loss in enumerate(losses):
        if math.sqrt(2 * loss) <= target * (1 + 1e-12):
            return t
    return None


def race(name: str, V: np.ndarray, k: int, cap: int) -> list[dict]:
    (W0, H0), t_init = timed(lambda: _initialize_nmf(V, k, init="nndsvda"))
    quiet(SkNMF(k, solver="cd", init="custom", max_iter=2).fit, V, W=W0.copy(), H=H0.copy())
    sk_cd, t_sk_cd = timed(
        lambda: quiet(
            SkNMF(k, solver="cd", init="custom", max_iter=cap).fit, V, W=W0.copy(), H=H0.copy()
        )
    )
    target = sk_cd.reconstruction_err_
    rows = [
        dict(case=name, method="sklearn cd", iters=sk_cd.n_iter_, seconds=t_init + t_sk_cd,
             error=f"{target:.6g}")
    ]
    for solver in ("cd", "mu"):
        res = dask_nmf.factorize(
            V, k, solver=solver, init="custom", W_init=W0, H_init=H0, max_iter=cap, tol=0
        )
        need = iterations_to(res.loss_history, target)
        n = need if need is not None else cap
        ours, t_ours = timed(
            lambda: dask_nmf.factorize(
                V, k, solver=solver, init="custom", W_init=W0, H_init=H0, max_iter=n, tol=0
            )
        )
        err = math.sqrt(2 * ours.loss_history[-1])
        note = "" if need is not None else f" (not reached in {cap})"
        # Passes over V: the validation pass plus one per iteration.
        rows.append(dict(case=name, method=f"ours {solver}", iters=n, passes=n + 1,
                         seconds=t_init + t_ours, error=f"{err:.6g}", note=note))
        if solver == "cd":
            continue  # (scikit-learn's cd run is the first row: the same iterations)
        theirs, t_theirs = timed(
            lambda: quiet(
                SkNMF(k, solver=solver, init="custom", max_iter=n, tol=0).fit,
                V, W=W0.copy(), H=H0.copy(),
            )
        )
        rows.append(dict(case=name, method=f"sklearn {solver} (same iters)", iters=n,
                         seconds=t_init + t_theirs, error=f"{theirs.reconstruction_err_:.6g}", note=note))
    return rows


def per_pass_on_zarr(V: np.ndarray, k: int, n1: int = 5, n2: int = 25) -> list[dict]:
    import zarr

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "V.zarr")
        arr = zarr.create_array(path, shape=V.shape, chunks=(1000, V.shape[1]), dtype=V.dtype)
        arr[...] = V
        W0, H0 = _initialize_nmf(V, k, init="nndsvda")
        for solver in ("cd", "mu"):
            times = []
            for n in (n1, n2):
                _, t = timed(
                    lambda n=n: dask_nmf.factorize(
                        path, k, solver=solver, init="custom", W_init=W0, H_init=H0,
                        max_iter=n, tol=0, keep_in_memory=False,
                    )
                )
                times.append(t)
            rows.append(dict(method=f"ours {solver}", ms_per_pass=1e3 * (times[1] - times[0]) / (n2 - n1)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=8000)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--cap", type=int, default=2000)
    a = p.parse_args()
    rows = race("(a) planted+noise", planted(a.m, a.n, a.k), a.k, a.cap)
    rows += race("(b) Poisson counts", poisson(a.m, a.n, a.k), a.k, a.cap)
    cols = ["case", "method", "iters", "passes", "seconds", "error", "note"]
    print(table(rows, cols, title=f"To scikit-learn cd's error at tol=1e-4 ({a.m} x {a.n}, k={a.k}, init included)"))
    zrows = per_pass_on_zarr(planted(a.m, a.n, a.k), a.k)
    print(table(zrows, ["method", "ms_per_pass"], title="Per pass, zarr store re-read every pass"))
    save_json("solvers", {"race": rows, "zarr_per_pass": zrows, "args": vars(a)})


if __name__ == "__main__":
    main()
