"""Shared helpers of the benchmark suite: data, timing, tables, JSON, memory sampling.

Nothing here imports dask_nmf's internals; the benchmarks use its public
``factorize`` (and, for the kernel profile, ``dask_nmf.kernels``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
#: The committed results (what the READMEs quote); a run writes there only when
#: asked with ``--out benchmarks/results``, else to :func:`fresh_results_dir`.
RESULTS = HERE / "results"


def fresh_results_dir(name: str) -> Path:
    """A new folder ``benchmarks/results/runs/<name>-<time>`` (git-ignored) for one run."""
    path = RESULTS / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=False)
    print(f"results go to {path} (--out DIR to choose)", flush=True)
    return path

#: Mean CPU use of everything else on the machine (percent of all cores) above
#: which a measurement waits (this machine is shared with test runs).
QUIET_CPU_PERCENT = 25.0


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------
def machine_info() -> dict:
    import dask
    import distributed
    import psutil
    import scipy
    import sklearn
    import zarr
    from threadpoolctl import threadpool_info

    import dask_nmf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = [
        {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "filepath")}
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    for b in blas:
        b["filepath"] = os.path.basename(b["filepath"] or "")
    return {
        "dask_nmf_source": dask_nmf_source(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "zarr": zarr.__version__,
        "dask_nmf": dask_nmf.__version__,
        "blas": blas,
    }


def dask_nmf_source() -> dict:
    """Which dask_nmf is measured: its directory and git commit (read-only git calls)."""
    import subprocess

    import dask_nmf

    pkg = Path(dask_nmf.__file__).resolve().parent
    out = {"path": str(pkg)}
    commit_file = pkg.parent / "COMMIT"
    if commit_file.exists():
        out["commit"] = commit_file.read_text().strip()
        out["note"] = "snapshot (git archive) of this commit"
        return out
    try:
        out["commit"] = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["uncommitted_changes"] = bool(dirty)
    except Exception:
        pass
    return out


def background_cpu(interval: float = 0.5) -> float:
    """System-wide CPU use (percent of all cores) over ``interval`` while we sleep."""
    import psutil

    return float(psutil.cpu_percent(interval=interval))


_QUIET_LOG: list[float] = []
#: Set by run.py from --quiet-wait: the most seconds any one wait for an idle
#: machine may take; 0 also turns off the re-runs of disturbed timings.
QUIET_WAIT = 20.0
#: Total seconds a case may spend waiting for an idle machine (reset per case by
#: run.py); once spent, measurements go ahead and are flagged by their foreign share.
QUIET_BUDGET = 900.0
_WAITED = [0.0]


def wait_quiet(max_wait: float | None = None, threshold: float = QUIET_CPU_PERCENT) -> float:
    """Wait (up to ``max_wait`` s) until the rest of the machine is idle.

    Returns the last background CPU reading; every reading is logged so a
    result can say how noisy the machine was while it was measured.
    """
    max_wait = QUIET_WAIT if max_wait is None else min(max_wait, QUIET_WAIT)
    max_wait = min(max_wait, max(0.0, QUIET_BUDGET - _WAITED[0]))
    t0 = time.perf_counter()
    load = background_cpu(0.3)
    while load > threshold and time.perf_counter() - t0 < max_wait:
        time.sleep(0.5)
        load = background_cpu(0.5)
    _WAITED[0] += time.perf_counter() - t0
    _QUIET_LOG.append(load)
    return load


def quiet_log_summary() -> dict:
    log = [x for x in _QUIET_LOG if not math.isnan(x)]
    if not log:
        return {}
    return {
        "seconds_waited_for_idle": round(_WAITED[0], 1),
        "background_cpu_percent_max": round(max(log), 1),
        "background_cpu_percent_median": round(float(np.median(log)), 1),
        "n_readings": len(log),
        "n_busy": int(sum(x > QUIET_CPU_PERCENT for x in log)),
    }


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------
@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit BLAS threads (all BLAS libraries loaded: numpy's and scipy's OpenBLAS).

    ``None`` leaves the library default (one thread per core).  The limit is
    process-wide, so it also applies to dask's worker threads.
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def default_blas_threads() -> int:
    from threadpoolctl import threadpool_info

    nums = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(nums) if nums else 1


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def _h_true(n: int, rank: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).random((rank, n))


def synth_rows(start: int, stop: int, n: int, dtype, seed: int = 0, rank: int = 10,
               chunk: int = 1000) -> np.ndarray:
    """Rows ``start:stop`` of a non-negative low-rank-plus-noise matrix.

    Row chunk c (of ``chunk`` rows) is drawn from its own seed, so any row range
    of the same matrix can be made without the rest (for stores larger than
    memory) and in-memory and on-disk copies agree exactly.
    """
    H = _h_true(n, rank, seed)
    out = np.empty((stop - start, n), dtype=dtype)
    c0 = start // chunk
    for c in range(c0, (stop - 1) // chunk + 1):
        a, b = max(c * chunk, start), min((c + 1) * chunk, stop)
        rng = np.random.default_rng([seed, 1, c])
        Wc = rng.random((chunk, rank))
        noise = rng.random((chunk, n))
        block = Wc @ H / rank + 0.1 * noise
        out[a - start : b - start] = block[a - c * chunk : b - c * chunk]
    return out


def synth_matrix(m: int, n: int, dtype=np.float64, seed: int = 0, rank: int = 10) -> np.ndarray:
    return synth_rows(0, m, n, dtype, seed, rank)


def start_factors(m: int, n: int, k: int, dtype=np.float64, seed: int = 1, v_mean: float = 0.3):
    """W0, H0 scaled like scikit-learn's random init (``|N(0,1)| sqrt(mean(V)/k)``)."""
    rng = np.random.default_rng(seed)
    avg = math.sqrt(v_mean / k)
    W = np.abs(rng.standard_normal((m, k))) * avg
    H = np.abs(rng.standard_normal((k, n))) * avg
    return W.astype(dtype), H.astype(dtype)


def data_dir(args=None) -> Path:
    d = Path(getattr(args, "data_dir", None) or os.environ.get("DASK_NMF_BENCH_DATA", "/tmp/dask_nmf_bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def zarr_store(path: Path, m: int, n: int, dtype=np.float64, seed: int = 0, chunk_rows: int = 1000,
               rank: int = 10, log: Callable[[str], Any] = print) -> Path:
    """The synthetic matrix as a zarr store (default codecs), made once and reused."""
    import zarr

    want = {"m": m, "n": n, "dtype": np.dtype(dtype).name, "seed": seed, "chunk_rows": chunk_rows,
            "rank": rank, "version": 1}
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r")
            if arr.attrs.get("bench") == want:
                return path
        except Exception:
            pass
        import shutil

        shutil.rmtree(path)
    t0 = time.perf_counter()
    arr = zarr.create_array(store=str(path), shape=(m, n), chunks=(chunk_rows, n), dtype=dtype)
    step = max(chunk_rows, (64 * 2**20 // (n * 8)) // chunk_rows * chunk_rows)
    for a in range(0, m, step):
        b = min(a + step, m)
        arr[a:b] = synth_rows(a, b, n, dtype, seed, rank, chunk=chunk_rows)
    arr.attrs["bench"] = want
    log(f"  wrote {path.name}: {m}x{n} {np.dtype(dtype).name}, {store_bytes(path) / 2**20:.0f} MiB on disk"
        f" in {time.perf_counter() - t0:.1f} s")
    return path


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _own_cpu() -> float:
    """CPU seconds of this process and all its live descendants (LocalCluster workers)."""
    import psutil

    p = psutil.Process()
    t = p.cpu_times()
    total = t.user + t.system
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


#: A timing is rejected (and retried) when other processes used more than this
#: fraction of the machine's CPU time during it.
MAX_FOREIGN = 0.08
CLEAN_TRIES = 4


def timed_clean(fn: Callable[[], Any], quiet: float | None = None, tries: int = CLEAN_TRIES,
                max_foreign: float = MAX_FOREIGN) -> tuple[float, float]:
    """Wall time of ``fn()``, retried while other processes steal CPU.

    The share of the machine used by *other* processes during the call is the
    machine's busy CPU time minus ours (this process and its children), over
    wall time x cores.  Returns ``(seconds, foreign share)`` of the first clean
    run, or of the least disturbed one after ``tries``.
    """
    ncpu = os.cpu_count() or 1
    best = None
    if QUIET_WAIT <= 0 or _WAITED[0] >= QUIET_BUDGET:
        tries = 1
    for _ in range(tries):
        wait_quiet(quiet)
        s0, o0, t0 = _busy_cpu(), _own_cpu(), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        s1, o1 = _busy_cpu(), _own_cpu()
        foreign = max(0.0, ((s1 - s0) - (o1 - o0)) / (wall * ncpu))
        if best is None or foreign < best[1]:
            best = (wall, foreign)
        if foreign <= max_foreign:
            return wall, foreign
    return best


def per_iteration(run: Callable[[int], Any], n1: int, n2: int, repeats: int = 2,
                  quiet: float | None = None) -> dict:
    """Per-iteration time as ``(t(n2) - t(n1)) / (n2 - n1)``: set-up cancels.

    ``run(N)`` runs N iterations (tol=0) from the same start.  Each length is run
    ``repeats`` times, interleaved, and the minimum of each is used (the
    minimum is the least disturbed run on a shared machine); runs during which
    other processes took more than ``MAX_FOREIGN`` of the CPU are repeated.
    """
    t1, t2, f1, f2 = [], [], [], []
    run(n1)  # (a warm-up: first calls pay for imports, thread pools and page faults)
    for attempt in range(repeats + 2):
        w, f = timed_clean(lambda: run(n1), quiet)
        t1.append(w)
        f1.append(f)
        w, f = timed_clean(lambda: run(n2), quiet)
        t2.append(w)
        f2.append(f)
        # Timing noise larger than n2 - n1 iterations shows as t(n2) <= t(n1):
        # measure again rather than report a negative time.
        if attempt + 1 >= repeats and min(t2) > min(t1):
            break
    per = (min(t2) - min(t1)) / (n2 - n1)
    if per <= 0:
        per = float("nan")  # (not measurable at these lengths on this machine now)
    return {
        "ms_per_iter": 1e3 * per,
        "setup_s": min(t1) - n1 * per,
        "n1": n1, "n2": n2,
        "t_n1_s": [round(x, 4) for x in t1],
        "t_n2_s": [round(x, 4) for x in t2],
        "pairwise_ms_per_iter": [round(1e3 * (b - a) / (n2 - n1), 2) for a, b in zip(t1, t2)],
        "foreign_cpu_share": [round(x, 3) for x in f1 + f2],
    }


def best_of(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, min_time: float = 0.25,
            quiet: float | None = None, max_foreign: float = MAX_FOREIGN, tries: int = CLEAN_TRIES) -> float:
    """Best per-call time of ``fn()`` over ``repeats`` batches, ignoring disturbed batches.

    Each batch calls ``fn`` until ``min_time`` has passed (so the CPU accounting,
    which ticks at 10 ms, can tell whether other processes ran meanwhile); a
    batch during which other processes took more than ``max_foreign`` of the
    machine is discarded and redone (up to ``tries`` extra batches).
    """
    for _ in range(warmup):
        fn()
    ncpu = os.cpu_count() or 1
    clean, dirty = [], []
    budget = repeats + (tries if QUIET_WAIT > 0 else 0)
    wait_quiet(quiet)
    while len(clean) < repeats and budget > 0:
        budget -= 1
        if dirty:
            wait_quiet(5.0)
        s0, o0 = _busy_cpu(), _own_cpu()
        calls, t0 = 0, time.perf_counter()
        best = float("inf")
        while True:
            t = time.perf_counter()
            fn()
            now = time.perf_counter()
            best = min(best, now - t)
            calls += 1
            if now - t0 >= min_time:
                break
        wall = time.perf_counter() - t0
        foreign = max(0.0, ((_busy_cpu() - s0) - (_own_cpu() - o0)) / (wall * ncpu))
        (clean if foreign <= max_foreign else dirty).append(best)
    return min(clean) if clean else min(dirty)


# --------------------------------------------------------------------------
# Worker memory
# --------------------------------------------------------------------------
def _worker_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_maxrss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker_maxrss() -> int:
    """High-water mark of this process's resident memory (Linux VmHWM, bytes).

    (``getrusage().ru_maxrss`` is no use in a spawned worker: Linux carries the
    parent's peak across ``exec``.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RSSSampler:
    """Samples the sum of the workers' resident memory every ``interval`` s.

    Runs ``client.run(psutil...)`` from a thread; records the peak of the sum,
    the peak of any single worker and the time series.
    """

    def __init__(self, client, interval: float = 0.05):
        self.client, self.interval = client, interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        t0 = time.perf_counter()
        while not self._stop.is_set():
            try:
                rss = self.client.run(_worker_rss)
                vals = list(rss.values())
                self.samples.append((time.perf_counter() - t0, int(sum(vals)), int(max(vals))))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_sum(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def peak_worker(self) -> int:
        return max((s[2] for s in self.samples), default=0)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def fmt(x: Any, nd: int = 1) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.{nd}f}"
        return f"{x:.{nd + 1}f}"
    if x is None:
        return "-"
    return str(x)


def table(rows: list[dict], columns: list[str], title: str = "", headers: dict | None = None) -> str:
    """A Markdown table (also readable as plain text)."""
    headers = headers or {}
    names = [headers.get(c, c) for c in columns]
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(n), *(len(row[i]) for row in cells)) if cells else len(n)
              for i, n in enumerate(names)]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else round(x, 6)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def save_json(case: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("case", case)
    payload.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S"))
    path = out_dir / f"{case}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=1))
    tmp.replace(path)
    return path


def load_json(case: str, out_dir: Path = RESULTS) -> dict | None:
    path = out_dir / f"{case}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def local_cluster(n_workers: int, threads_per_worker: int, memory_limit: Any = "auto", **kw):
    """A LocalCluster in processes, quiet, no dashboard."""
    import logging

    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
        processes=True, dashboard_address=None, silence_logs=logging.ERROR, **kw,
    )
