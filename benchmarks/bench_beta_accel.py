"""Accelerated MU against plain MU, and β = 0.5 MU against scikit-learn's.

    python benchmarks/bench_beta_accel.py [--quick]

1. Passes over V and wall time for ``accelerate=True`` (Frobenius) to reach the
   error plain MU has after 200 passes, from the same start, in memory, on
   (a) an 8000 x 500 planted rank-20 matrix plus uniform noise and
   (b) Poisson counts around a rank-20 matrix.
2. Time per pass of β = 0.5 MU, dask_nmf (local threaded scheduler) against
   scikit-learn's ``NMF(solver="mu", beta_loss=0.5)`` on matrix (a):
   ``(t(N2) - t(N1)) / (N2 - N1)`` so that set-up cancels.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from sklearn.decomposition import NMF as SkNMF

import dask_nmf

M, N, K = 8000, 500, 20


def planted(rng: np.random.Generator, m: int, n: int, k: int) -> np.ndarray:
    return rng.random((m, k)) @ rng.random((k, n)) + 0.1 * rng.random((m, n))


def poisson(rng: np.random.Generator, m: int, n: int, k: int) -> np.ndarray:
    mean = rng.gamma(0.5, 1.0, (m, k)) @ rng.gamma(0.5, 1.0, (k, n))
    return rng.poisson(mean).astype(np.float64)


def fit_timed(V, W0, H0, max_iter: int, accelerate: bool) -> tuple[list, list]:
    """Loss history and the wall time at which each iteration's loss was known."""
    times: list[float] = [0.0]
    t0 = time.perf_counter()

    def mark(t: int, loss: float) -> None:
        times.append(time.perf_counter() - t0)

    res = dask_nmf.factorize(
        V, W0.shape[1], W_init=W0, H_init=H0, max_iter=max_iter, tol=0,
        accelerate=accelerate, callback=mark,
    )  # fmt: skip
    return res.loss_history, times


def accel_rows(name: str, V: np.ndarray, rng: np.random.Generator, plain_iter: int) -> list:
    m, n = V.shape
    scale = np.sqrt(V.mean() / K)
    W0, H0 = scale * rng.random((m, K)), scale * rng.random((K, n))
    plain, t_plain = fit_timed(V, W0, H0, plain_iter, False)
    target = plain[-1]
    fast, t_fast = fit_timed(V, W0, H0, plain_iter, True)
    reached = next((t for t, loss in enumerate(fast) if loss <= target), None)
    rows = [(name, "MU", plain_iter, t_plain[-1], np.sqrt(2 * target))]
    if reached is None:
        rows.append((name, "accelerated MU", f">{plain_iter}", t_fast[-1], np.sqrt(2 * fast[-1])))
    else:
        rows.append((name, "accelerated MU", reached, t_fast[reached], np.sqrt(2 * fast[reached])))
    monotone = all(b <= a * (1 + 1e-12) for a, b in zip(fast, fast[1:]))
    rows.append((name, f"  (accelerated, {plain_iter} passes; monotone={monotone})",
                 plain_iter, t_fast[-1], np.sqrt(2 * fast[-1])))  # fmt: skip
    return rows


def per_pass(fit, n1: int, n2: int) -> float:
    t = []
    for n in (n1, n2):
        start = time.perf_counter()
        fit(n)
        t.append(time.perf_counter() - start)
    return (t[1] - t[0]) / (n2 - n1)


def main(quick: bool = False) -> None:
    rng = np.random.default_rng(0)
    plain_iter = 60 if quick else 200
    m = M // 4 if quick else M
    Va, Vb = planted(rng, m, N, K), poisson(rng, m, N, K)
    rows = accel_rows("(a) planted+noise", Va, rng, plain_iter)
    rows += accel_rows("(b) Poisson counts", Vb, rng, plain_iter)
    print(f"\nFrobenius: passes / wall time to reach plain MU's {plain_iter}-pass error "
          f"({m} x {N}, k = {K}, in memory)")  # fmt: skip
    print(f"{'matrix':<20} {'solver':<48} {'passes':>7} {'wall s':>8} {'error':>12}")
    for r in rows:
        print(f"{r[0]:<20} {r[1]:<48} {r[2]!s:>7} {r[3]:>8.2f} {r[4]:>12.6g}")

    # β = 0.5: time per pass, dask_nmf vs scikit-learn, same matrix and start.
    scale = np.sqrt(Va.mean() / K)
    W0, H0 = scale * rng.random((m, K)), scale * rng.random((K, N))

    def ours(n: int) -> None:
        dask_nmf.factorize(Va, K, beta_loss=0.5, W_init=W0, H_init=H0, max_iter=n, tol=0)

    def theirs(n: int) -> None:
        est = SkNMF(K, solver="mu", beta_loss=0.5, init="custom", max_iter=n, tol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit_transform(Va, W=W0.copy(), H=H0.copy())

    n1, n2 = (2, 6) if quick else (5, 25)
    t_ours, t_theirs = per_pass(ours, n1, n2), per_pass(theirs, n1, n2)
    print(f"\nβ = 0.5 MU, time per pass ({m} x {N}, k = {K})")
    print(f"{'dask_nmf':<20} {t_ours * 1e3:8.1f} ms")
    print(f"{'scikit-learn':<20} {t_theirs * 1e3:8.1f} ms   ({t_theirs / t_ours:.2f}x ours)")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
