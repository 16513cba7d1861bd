"""Time to solution per solver: passes over V and wall time to a target error.

    python benchmarks/bench_time_to_solution.py [--quick] [--part memory --part zarr --part beta --part outofcore]

Replaces the first ``bench_solvers.py`` and supersedes ``bench_beta_accel.py`` (same matrices, one run).
Every method starts from the same NNDSVDa factors; their time is added to every
row ("init included").  Our fits are traced with ``callback``: the wall time at
which each iteration's error is known, from the call of ``factorize``.  A
"pass" is one iteration (each solver reads V once per iteration); on top of
those every fit of ours makes one validation pass, and ``init="nndsvda"`` on a
store makes the passes of its randomized SVD (the same for every solver).

1. ``memory``: (a) an 8000 x 500 planted rank-20 matrix plus noise, (b) Poisson
   counts around a rank-20 matrix, k = 20, dask's local scheduler.  Targets:
   scikit-learn ``NMF(solver="cd")``'s error at its default ``tol`` and our MU's
   error after 200 passes.  Ours: MU, accelerated MU, cd, accelerated cd, ANLS; scikit-learn: cd
   and mu (whose iterates ours reproduce, so their iteration counts are ours and
   their runs are timed with exactly that ``max_iter``).
2. ``zarr``: the same from a zarr store re-read every pass (``keep_in_memory=False``).
3. ``beta``: β = 0 (matrix (a) only: β <= 0 refuses zeros) and β = 1, MU, ours
   against scikit-learn's ``solver="mu"``, both with their defaults
   (``tol=1e-4``, ``max_iter=200``, the same stopping rule).
4. ``outofcore``: a float32 store larger than a 2-worker LocalCluster's memory,
   ``init="nndsvda"`` (ours, out of core), MU for ``--oc-mu-passes`` passes (the
   target is its final error; default 200), accelerated MU, cd and accelerated cd until they reach it.
   (With 384 MiB workers the 150000 x 2000 store stalled: a worker of a Python
   with scikit-learn, pydata sparse and numba loaded idles at ~190 MiB and
   pauses at 80 % of its limit; hence 512 MiB.)

Writes ``results/time_to_solution[_quick].json`` and two PNGs (error against
passes and against time); ``--replot`` redraws the PNGs from the JSON.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import (  # noqa: E402
    RSSSampler,
    local_cluster,
    machine_info,
    save_json,
    table,
    wait_quiet,
    zarr_store,
)

import dask_nmf  # noqa: E402

# (scikit-learn is imported where it is used: the LocalCluster's workers import
# this module as their __main__, and a worker of 320 MiB has no room for it.)

OURS = {
    "MU": dict(solver="mu"),
    "MU accelerated": dict(solver="mu", accelerate=True),
    "cd": dict(solver="cd"),
    "cd accelerated": dict(solver="cd", accelerate=True),
    "ANLS": dict(solver="anls"),
}


def planted(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Planted rank-k matrix plus uniform noise."""
    rng = np.random.default_rng(seed)
    return rng.random((m, k)) @ rng.random((k, n)) + 0.1 * rng.random((m, n))


def poisson(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Poisson counts (mean 2) around a rank-k gamma product."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 1.0, (m, k)) @ rng.gamma(0.5, 1.0, (k, n))
    return rng.poisson(rate * (2.0 / rate.mean())).astype(np.float64)


def _sk():
    from sklearn.decomposition import NMF
    from sklearn.decomposition._nmf import _initialize_nmf

    return NMF, _initialize_nmf


class _Reached(Exception):
    """Raised from the callback to end a traced fit once it reached its target."""


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def trace(V, k: int, stop_below: float | None = None, **kw) -> dict:
    """One fit of ours (``tol=0``): iteration, seconds since the call, error.

    With ``stop_below`` the fit is ended (by an exception from the callback)
    at the first iteration whose error is at or below it.
    """
    its, ts, errs = [], [], []
    wait_quiet(10.0)
    t0 = time.perf_counter()

    def cb(s: int, loss: float) -> None:
        if math.isnan(loss):
            return
        its.append(s)
        ts.append(time.perf_counter() - t0)
        errs.append(math.sqrt(2 * loss))
        if stop_below is not None and errs[-1] <= stop_below * (1 + 1e-12):
            raise _Reached

    try:
        quiet(dask_nmf.factorize, V, k, tol=0, callback=cb, **kw)
        stopped = False
    except _Reached:
        stopped = True
    return {"iter": its, "seconds": ts, "error": errs, "stopped_at_target": stopped}


def first_reaching(tr: dict, target: float) -> tuple[int | None, float | None]:
    for s, t, e in zip(tr["iter"], tr["seconds"], tr["error"]):
        if e <= target * (1 + 1e-12):
            return s, t
    return None, None


def error_at(tr: dict, it: int) -> float:
    return tr["error"][tr["iter"].index(it)]


def sk_fit(V, k: int, W0, H0, **kw):
    """scikit-learn's NMF from the custom start: (estimator, seconds)."""
    SkNMF = _sk()[0]
    wait_quiet(10.0)
    return timed(lambda: quiet(SkNMF(k, init="custom", **kw).fit, V, W=W0.copy(), H=H0.copy()))


def ratio(a, b):
    return None if a is None or b is None or not b else a / b


# --------------------------------------------------------------------------
# 1. In memory
# --------------------------------------------------------------------------
def memory_case(name: str, V: np.ndarray, k: int, cap: int, mu_ref: int, log) -> dict:
    SkNMF, _initialize_nmf = _sk()
    (W0, H0), t_init = timed(lambda: _initialize_nmf(V, k, init="nndsvda"))
    quiet(SkNMF(k, solver="cd", init="custom", max_iter=2).fit, V, W=W0.copy(), H=H0.copy())  # warm-up
    sk_cd, t_sk_cd = sk_fit(V, k, W0, H0, solver="cd")  # defaults: tol=1e-4, max_iter=200
    targets = {"sklearn cd @ tol=1e-4": sk_cd.reconstruction_err_}
    traces = {"MU": trace(V, k, init="custom", W_init=W0, H_init=H0, max_iter=cap, solver="mu")}
    targets[f"MU @ {mu_ref} passes"] = error_at(traces["MU"], mu_ref)
    low = min(targets.values())
    for meth in ("MU accelerated", "cd", "cd accelerated", "ANLS"):
        traces[meth] = trace(V, k, stop_below=low, init="custom", W_init=W0, H_init=H0, max_iter=cap,
                             **OURS[meth])
    rows = []
    for tname, target in targets.items():
        need = {}
        for meth, tr in traces.items():
            s, t = first_reaching(tr, target)
            need[meth] = s
            rows.append(dict(matrix=name, target=tname, method=f"ours {meth}", passes=s if s is not None
                             else f">{tr['iter'][-1]}", seconds=None if t is None else t_init + t))
        # scikit-learn: cd and mu, run for the iterations ours needed (the same iterates).
        if tname.startswith("sklearn cd"):
            rows.append(dict(matrix=name, target=tname, method="sklearn cd", passes=sk_cd.n_iter_,
                             seconds=t_init + t_sk_cd))
        elif need["cd"] is not None:
            est, t = sk_fit(V, k, W0, H0, solver="cd", max_iter=need["cd"], tol=0)
            rows.append(dict(matrix=name, target=tname, method="sklearn cd", passes=need["cd"],
                             seconds=t_init + t))
        if need["MU"] is not None:
            est, t = sk_fit(V, k, W0, H0, solver="mu", max_iter=need["MU"], tol=0)
            rows.append(dict(matrix=name, target=tname, method="sklearn mu", passes=need["MU"],
                             seconds=t_init + t, note=f"error {est.reconstruction_err_:.6g}"))
        else:
            rows.append(dict(matrix=name, target=tname, method="sklearn mu", passes=f">{cap}",
                             note="not run: same iterates as ours"))
        ref = next(r["seconds"] for r in rows if r["target"] == tname and r["method"] == "sklearn cd")
        for r in rows:
            if r["target"] == tname:
                r["target_error"] = f"{target:.6g}"
                r["/ sklearn cd"] = ratio(r.get("seconds"), ref)
    log(table(rows, ["matrix", "target", "target_error", "method", "passes", "seconds", "/ sklearn cd", "note"],
              title=f"{name}, in memory ({V.shape[0]} x {V.shape[1]}, k={k}; NNDSVDa {t_init:.2f} s included)"))
    return {"rows": rows, "traces": traces, "targets": targets, "init_seconds": t_init,
            "sklearn_cd": {"n_iter": sk_cd.n_iter_, "seconds": t_sk_cd, "error": sk_cd.reconstruction_err_},
            "W0": W0, "H0": H0}


# --------------------------------------------------------------------------
# 2. From a zarr store re-read every pass
# --------------------------------------------------------------------------
def zarr_case(name: str, V: np.ndarray, k: int, mem: dict, cap: int, log) -> dict:
    import zarr

    W0, H0, t_init, targets = mem["W0"], mem["H0"], mem["init_seconds"], mem["targets"]
    rows, traces = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "V.zarr")
        arr = zarr.create_array(path, shape=V.shape, chunks=(1000, V.shape[1]), dtype=V.dtype)
        arr[...] = V
        for meth, tr_mem in mem["traces"].items():
            # The iterates are those of the in-memory fit: run just past the last target it reached.
            needs = [first_reaching(tr_mem, t)[0] for t in targets.values()]
            n = max([s for s in needs if s is not None], default=cap) + 1
            reached = [t for t, s in zip(targets.values(), needs) if s is not None]
            traces[meth] = trace(path, k, stop_below=min(reached) if reached else None, init="custom",
                                 W_init=W0, H_init=H0, max_iter=n, keep_in_memory=False, **OURS[meth])
    for tname, target in targets.items():
        for meth, tr in traces.items():
            s, t = first_reaching(tr, target)
            its, ts = tr["iter"], tr["seconds"]
            per = (ts[-1] - ts[0]) / (its[-1] - its[0]) if len(its) > 1 else None
            rows.append(dict(matrix=name, target=tname, method=f"ours {meth}",
                             passes=s if s is not None else f">{its[-1]}",
                             seconds=None if t is None else t_init + t,
                             ms_per_pass=None if per is None else 1e3 * per))
        ref = next(r["seconds"] for r in rows if r["target"] == tname and r["method"] == "ours MU")
        for r in rows:
            if r["target"] == tname:
                r["/ MU"] = ratio(r["seconds"], ref)
    log(table(rows, ["matrix", "target", "method", "passes", "seconds", "/ MU", "ms_per_pass"],
              title=f"{name}, zarr store re-read every pass (local scheduler; NNDSVDa in memory, "
                    f"{t_init:.2f} s, included)"))
    return {"rows": rows, "traces": traces}


# --------------------------------------------------------------------------
# 3. Other β, MU only
# --------------------------------------------------------------------------
def beta_case(name: str, V: np.ndarray, k: int, betas, log) -> list[dict]:
    _initialize_nmf = _sk()[1]
    (W0, H0), t_init = timed(lambda: _initialize_nmf(V, k, init="nndsvda"))
    rows = []
    for beta in betas:
        sk, t_sk = sk_fit(V, k, W0, H0, solver="mu", beta_loss=beta)
        wait_quiet(10.0)
        res, t_ours = timed(lambda beta=beta: quiet(dask_nmf.factorize, V, k, beta_loss=beta, init="custom",
                                                    W_init=W0, H_init=H0, max_iter=200, tol=1e-4))
        err = math.sqrt(2 * res.loss_history[-1])
        rows.append(dict(matrix=name, beta=beta, method="sklearn mu", passes=sk.n_iter_,
                         seconds=t_init + t_sk, error=f"{sk.reconstruction_err_:.6g}"))
        rows.append(dict(matrix=name, beta=beta, method="ours MU", passes=res.n_iter,
                         seconds=t_init + t_ours, error=f"{err:.6g}",
                         ratio=(t_init + t_ours) / (t_init + t_sk)))
    log(table(rows, ["matrix", "beta", "method", "passes", "seconds", "ratio", "error"],
              title=f"{name}: β-divergence MU, both with tol=1e-4, max_iter=200 (NNDSVDa {t_init:.2f} s "
                    "included; ratio = ours / scikit-learn)"))
    return rows


# --------------------------------------------------------------------------
# 4. Out of core on a LocalCluster
# --------------------------------------------------------------------------
def outofcore_case(args, k: int, log) -> dict:
    from distributed import Client

    m, n = args.oc_m, args.oc_n
    path = zarr_store(common.data_dir(args) / f"tts_{m}x{n}_float32.zarr", m, n, np.float32, seed=3,
                      chunk_rows=500, rank=k, log=log)
    v_mib = m * n * 4 / 2**20
    log(f"  V {m} x {n} float32 = {v_mib:.0f} MiB; LocalCluster 2 workers x 1 thread x {args.oc_memory}, "
        f"blocks of {args.oc_block_rows} rows, V re-read every pass")
    traces, peaks, target = {}, {}, None
    kw = dict(init="nndsvda", random_state=0, keep_in_memory=False, block_rows=args.oc_block_rows)
    with local_cluster(2, 1, memory_limit=args.oc_memory) as cluster, Client(cluster) as client:
        for meth in ("MU", "MU accelerated", "cd", "cd accelerated", "ANLS"):
            cap = args.oc_mu_passes if meth == "MU" else args.oc_cap
            with RSSSampler(client, interval=0.5) as rss:
                traces[meth] = trace(str(path), k, stop_below=target, max_iter=cap, client=client,
                                     **kw, **OURS[meth])
            peaks[meth] = rss.peak_worker / 2**20
            if meth == "MU":
                target = traces["MU"]["error"][-1]
    rows = []
    for meth, tr in traces.items():
        s, t = first_reaching(tr, target)
        its, ts = tr["iter"], tr["seconds"]
        per = (ts[-1] - ts[0]) / (its[-1] - its[0]) if len(its) > 1 else None
        rows.append(dict(method=f"ours {meth}", passes=s if s is not None else f">{its[-1]}",
                         seconds=t, start_s=ts[0] - (per or 0) * its[0],
                         ms_per_pass=None if per is None else 1e3 * per, peak_worker_mib=peaks[meth]))
    ref = rows[0]["seconds"]
    for r in rows:
        r["/ MU"] = ratio(r["seconds"], ref)
    log(table(rows, ["method", "passes", "seconds", "/ MU", "ms_per_pass", "start_s", "peak_worker_mib"],
              title=f"Out of core: to MU's {args.oc_mu_passes}-pass error {target:.6g} ({m} x {n} float32, "
                    f"{v_mib:.0f} MiB, k={k}, 2 workers x {args.oc_memory}, blocks of {args.oc_block_rows} rows; "
                    "init='nndsvda' out of core, "
                    "included; start_s = validation + init, extrapolated)"))
    return {"rows": rows, "traces": traces, "target": target, "m": m, "n": n, "v_mib": v_mib,
            "memory_limit": args.oc_memory}


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------
def plots(panels: list[tuple[str, dict, dict, dict]], out_dir: Path) -> list[Path]:
    """``panels``: (title, traces, targets, scikit-learn points {label: (seconds, error)}, init seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    colors = {"MU": "C0", "MU accelerated": "C1", "cd": "C2", "cd accelerated": "C3", "ANLS": "C4"}
    paths = []
    for xkey, xlabel, fname in (("iter", "passes over V (iterations)", "time_to_solution_passes.png"),
                                ("seconds", "wall time (s, init included)", "time_to_solution_time.png")):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (title, traces, targets, sk, t0) in zip(axes[0], panels):
            floor = min(min(tr["error"]) for tr in traces.values())
            floor = min([floor, *targets.values()]) * (1 - 1e-3)  # (the lowest point at 1e-3)
            for meth, tr in traces.items():
                x = np.asarray(tr[xkey], dtype=float) + (t0 if xkey == "seconds" else 0)
                y = np.asarray(tr["error"]) / floor - 1
                ax.plot(x, y, color=colors[meth], label=f"ours {meth}")
            for i, (tname, target) in enumerate(targets.items()):
                ax.axhline(target / floor - 1, color="0.5", ls=("--", ":")[i % 2], lw=1, label=f"target: {tname}")
            if xkey == "seconds":
                for j, (lab, (t, e)) in enumerate(sk.items()):
                    ax.plot([t], [e / floor - 1], marker="os^v"[j % 4], ls="", color="k", label=lab)
            ax.set_xscale("log")
            ax.set_yscale("log")
            # (a log axis spanning less than a decade labels its minor ticks: they overlap)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("error / (lowest error seen − 0.1 %) − 1")
            ax.legend(fontsize=6)
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def panels_of(out: dict) -> list:
    panels = []
    for name, d in out.get("memory", {}).items():
        sk = {"sklearn cd (tol=1e-4)": (d["init_seconds"] + d["sklearn_cd"]["seconds"], d["sklearn_cd"]["error"])}
        for r in d["rows"]:
            if r["method"] == "sklearn mu" and r.get("seconds") is not None:
                sk[f"sklearn mu ({r['passes']} it)"] = (r["seconds"], float(r["note"].split()[-1]))
        m, n = (2000, 300) if out["args"]["quick"] else (8000, 500)
        panels.append((f"{name}, {m} x {n}, in memory", d["traces"], d["targets"], sk, d["init_seconds"]))
    oc = out.get("outofcore")
    if oc:
        panels.append((f"out of core, {oc['m']} x {oc['n']} float32 ({oc['v_mib']:.0f} MiB), "
                       f"2 x {oc['memory_limit']}", oc["traces"],
                       {f"MU @ {out['args']['oc_mu_passes']} passes": oc["target"]}, {}, 0.0))
    return panels


def replot(out_dir: Path, quick: bool) -> None:
    import json

    out = json.loads((out_dir / f"time_to_solution{'_quick' if quick else ''}.json").read_text())
    for path in plots(panels_of(out), out_dir):
        print("wrote", path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--part", action="append", choices=["memory", "zarr", "beta", "outofcore"])
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--cap", type=int, default=1000, help="most passes of a fit in memory")
    p.add_argument("--oc-m", type=int, default=150_000)
    p.add_argument("--oc-n", type=int, default=2000)
    p.add_argument("--oc-memory", default="512MiB", help="memory limit of each of the 2 workers")
    p.add_argument("--oc-block-rows", type=int, default=2500,
                   help="rows per block out of core (a worker of this Python idles at ~190 MiB: "
                        "the default 1/8 of its limit would pause it)")
    p.add_argument("--oc-mu-passes", type=int, default=200,
                   help="MU's passes out of core, whose final error is the target (~1 s each on 2 cores)")
    p.add_argument("--oc-cap", type=int, default=200, help="most passes of accelerated MU and cd out of core")
    p.add_argument("--data-dir")
    p.add_argument("--out", default=None,
                   help="results directory (default: a new one; --out benchmarks/results replaces "
                        "the committed results)")
    p.add_argument("--replot", action="store_true", help="only redraw the PNGs from the JSON in --out")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = str(common.RESULTS if a.replot else common.fresh_results_dir("time_to_solution"))
    if a.replot:
        replot(Path(a.out), a.quick)
        return
    m, n = (2000, 300) if a.quick else (8000, 500)
    if a.quick:
        a.cap, a.oc_m, a.oc_n, a.oc_mu_passes, a.oc_cap, a.oc_block_rows = 300, 20_000, 500, 30, 30, 2000
    parts = a.part or ["memory", "zarr", "beta", "outofcore"]
    out_dir = Path(a.out)
    lines: list[str] = []

    def log(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    k, mu_ref = a.k, (60 if a.quick else 200)
    mats = {"(a) planted+noise": planted(m, n, k), "(b) Poisson counts": poisson(m, n, k)}
    out: dict = {"machine": machine_info(), "args": vars(a)}
    mem = {}
    if "memory" in parts or "zarr" in parts:
        for name, V in mats.items():
            mem[name] = memory_case(name, V, k, a.cap, mu_ref, log)
        out["memory"] = {nm: {kk: v for kk, v in d.items() if kk not in ("W0", "H0")} for nm, d in mem.items()}
    if "zarr" in parts:
        out["zarr"] = {name: zarr_case(name, V, k, mem[name], a.cap, log) for name, V in mats.items()}
    if "beta" in parts:
        out["beta"] = beta_case("(a) planted+noise", mats["(a) planted+noise"], k, [0.0, 1.0], log)
        out["beta"] += beta_case("(b) Poisson counts", mats["(b) Poisson counts"], k, [1.0], log)
    suffix = "_quick" if a.quick else ""

    def save() -> None:  # after every part: a later part that fails loses nothing
        out["summary"] = common.quiet_log_summary()
        out["report"] = lines
        save_json("time_to_solution" + suffix, out, out_dir)
        if "memory" in out or "outofcore" in out:
            for path in plots(panels_of(out), out_dir):
                print("wrote", path)

    save()
    if "outofcore" in parts:
        out["outofcore"] = outofcore_case(a, k, log)
        save()


if __name__ == "__main__":
    main()
