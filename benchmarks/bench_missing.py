"""Missing values: per-pass time of the masked Frobenius MU against the unmasked one.

    python benchmarks/run.py --case missing [--quick]

On one synthetic V in memory (``common.synth_matrix``, float64), k = 20, on the
threaded scheduler: dask_nmf's per-iteration time (``(t(N2) - t(N1)) / (N2 -
N1)``, set-up cancels; all contestants of a shape timed in turn, the fastest
of each kept) with no entry missing (the plain Frobenius MU) and with a
fraction of the entries set to NaN at random (``missing="nan"``: the masked MU).
Each masked fit is timed twice in the same run: with the block kernel that
corrects the unmasked products by the unobserved entries' share (``path="auto"``,
the default) and with the kernel that forms ``M∘WH`` densely for every
sub-block (``path="dense"``, the kernel before the sparse correction).  The
ratios are to the unmasked fit of the same V, measured in the same run, of the
process's CPU time (the work, robust on this shared machine) and of the wall
clock; BLAS runs one thread per dask task.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from common import blas_threads, start_factors, synth_matrix, table

import dask_nmf
from dask_nmf.solvers.masked_mu import MaskedFrobeniusMU

K = 20
FRACTIONS = (0.0, 0.01, 0.05, 0.2, 0.5)


def fit(V, W0, H0, n_iter, path="auto"):
    """``n_iter`` passes of Frobenius MU from (W0, H0), the masked kernel on ``path``."""
    MaskedFrobeniusMU.path = path  # (a class attribute: the threaded scheduler shares it)
    try:
        dask_nmf.factorize(V, K, W_init=W0, H_init=H0, max_iter=n_iter, tol=0, missing="nan")
    finally:
        MaskedFrobeniusMU.path = "auto"


def with_missing(V: np.ndarray, fraction: float, seed: int = 3) -> np.ndarray:
    """V with ``fraction`` of its entries (chosen at random) set to NaN."""
    out = V.copy()
    out[np.random.default_rng(seed).random(V.shape) < fraction] = np.nan
    return out


def interleaved(runs: dict, n1: int, n2: int, repeats: int) -> dict:
    """Per iteration of each ``runs[name](N)``: ``(min t(n2) - min t(n1)) / (n2 - n1)``
    in ms, of the wall clock (``"wall"``) and of this process's CPU time
    (``"cpu"``, all threads), the runs taken in turn ``repeats`` times.

    Taking turns spreads a busy spell of this shared machine over every
    contestant; the CPU time counts the work done, not the waiting for a core
    another process holds (BLAS runs one thread per task here, so no thread
    spins while it waits)."""
    out = {}
    for clock, timer in (("wall", time.perf_counter), ("cpu", time.process_time)):
        out[clock] = {name: ([], []) for name in runs}
    for fn in runs.values():
        fn(n1)  # (warm-up)
    for _ in range(repeats):
        for name, fn in runs.items():
            for i, n in enumerate((n1, n2)):
                w, c = time.perf_counter(), time.process_time()
                fn(n)
                out["wall"][name][i].append(time.perf_counter() - w)
                out["cpu"][name][i].append(time.process_time() - c)
    return {
        clock: {name: 1e3 * (min(t[1]) - min(t[0])) / (n2 - n1) for name, t in times.items()}
        for clock, times in out.items()
    }


def run(args, ctx) -> dict:
    log = ctx["log"]
    shapes = [(8_000, 1_000), (800, 10_000)] if args.quick else [(20_000, 1_000), (2_000, 10_000)]
    n1, n2 = (1, 5) if args.quick else (2, 8)
    repeats = 2 if args.quick else 4
    log(f"  V float64 in memory, k={K}, threaded scheduler, default blocks; N1={n1}, N2={n2}, "
        f"{repeats} interleaved repeats")
    rows = []
    for m, n in shapes:
        V = synth_matrix(m, n)
        W0, H0 = start_factors(m, n, K)
        runs = {"unmasked": partial(fit, V, W0, H0)}
        for fraction in FRACTIONS:
            Vf = with_missing(V, fraction)
            runs[(fraction, "auto")] = partial(fit, Vf, W0, H0, path="auto")
            if fraction > 0:  # (nothing missing: the plain solver either way)
                runs[(fraction, "dense")] = partial(fit, Vf, W0, H0, path="dense")
        with blas_threads(1):
            ms = interleaved(runs, n1, n2, repeats)
        for clock in ("cpu", "wall"):
            plain = ms[clock]["unmasked"]
            for fraction in FRACTIONS:
                row = {"clock": clock, "shape": f"{m}x{n}", "missing": fraction,
                       "unmasked_ms": plain}
                for path in ("dense", "auto"):
                    if (fraction, path) in ms[clock]:
                        row[f"{path}_ms"] = ms[clock][(fraction, path)]
                        row[f"{path}_ratio"] = ms[clock][(fraction, path)] / plain
                if "dense_ms" in row:
                    row["speedup"] = row["dense_ms"] / row["auto_ms"]
                rows.append(row)
        log(f"  {m}x{n}: done")
        del V, runs
    log("")
    for clock, what in (("cpu", "CPU time (all threads)"), ("wall", "wall clock")):
        log(table([r for r in rows if r["clock"] == clock],
                  ["shape", "missing", "unmasked_ms", "dense_ms", "dense_ratio", "auto_ms",
                   "auto_ratio", "speedup"],
                  title=f"Masked Frobenius MU per pass against the unmasked one, k={K}, {what}",
                  headers={"unmasked_ms": "unmasked ms/iter", "dense_ms": "before ms/iter",
                           "dense_ratio": "before / unmasked", "auto_ms": "after ms/iter",
                           "auto_ratio": "after / unmasked", "speedup": "before / after"}))
        log("")
    log("(missing 0: the plain solver is used, so 'after' there is the unmasked fit timed "
        "again: the run's noise.)")
    log("")
    return {"k": K, "n1": n1, "n2": n2, "repeats": repeats, "rows": rows}
