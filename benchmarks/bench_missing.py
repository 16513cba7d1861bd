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
ratios are to the unmasked fit of the same V, measured in the same run.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from common import start_factors, synth_matrix, table, timed

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
    """ms per iteration of each ``runs[name](N)``, ``(min t(n2) - min t(n1)) / (n2 - n1)``,
    the runs taken in turn ``repeats`` times: a busy spell on this shared machine
    then slows every contestant's worst run, not one contestant."""
    t1 = {name: [] for name in runs}
    t2 = {name: [] for name in runs}
    for fn in runs.values():
        fn(n1)  # (warm-up)
    for _ in range(repeats):
        for name, fn in runs.items():
            t1[name].append(timed(lambda fn=fn: fn(n1)))
            t2[name].append(timed(lambda fn=fn: fn(n2)))
    return {name: 1e3 * (min(t2[name]) - min(t1[name])) / (n2 - n1) for name in runs}


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
        ms = interleaved(runs, n1, n2, repeats)
        plain = ms["unmasked"]
        for fraction in FRACTIONS:
            row = {"shape": f"{m}x{n}", "missing": fraction, "unmasked_ms": plain}
            for path in ("dense", "auto"):
                if (fraction, path) in ms:
                    row[f"{path}_ms"] = ms[(fraction, path)]
                    row[f"{path}_ratio"] = ms[(fraction, path)] / plain
            if "dense_ms" in row:
                row["speedup"] = row["dense_ms"] / row["auto_ms"]
            rows.append(row)
        log(f"  {m}x{n}: done")
        del V, runs
    log("")
    log(table(rows, ["shape", "missing", "unmasked_ms", "dense_ms", "dense_ratio", "auto_ms",
                     "auto_ratio", "speedup"],
              title=f"Masked Frobenius MU per pass against the unmasked one, k={K}",
              headers={"unmasked_ms": "unmasked ms/iter", "dense_ms": "before ms/iter",
                       "dense_ratio": "before / unmasked", "auto_ms": "after ms/iter",
                       "auto_ratio": "after / unmasked", "speedup": "before / after"}))
    log("(missing 0: the plain solver is used, so 'after' there is the unmasked fit timed "
        "again: the run's noise.)")
    log("")
    return {"k": K, "n1": n1, "n2": n2, "repeats": repeats, "rows": rows}
