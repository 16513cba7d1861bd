"""Unmixing a hyperspectral cube larger than the workers' memory, with the ``dask-nmf`` command.

Run:  python examples/hyperspectral.py                # 2000 x 2000 pixels x 200 bands, 3.2 GB
      python examples/hyperspectral.py --size 1000    # a quarter of that
      python examples/hyperspectral.py --quick        # 128 x 128 x 64: a smoke test

1. A synthetic cube is written to zarr strip by strip (never whole in memory):
   every pixel's spectrum is a mixture of k endmember spectra (smooth,
   overlapping Gaussian bands) with abundances that are non-negative, sum to one
   and vary smoothly over the image (a softmax of smooth random fields), plus
   Gaussian noise.  Stored as a (pixels x bands) matrix V, chunked by strips of
   image rows -- band-interleaved-by-pixel, as many sensors write it.
2. ``dask-nmf fit`` factorizes V ~ W H on an embedded LocalCluster whose workers
   each get far less memory than the cube takes (``--memory-limit``), with a
   progress bar and a checkpoint every 10 iterations.  Meanwhile this script
   samples the memory (RSS) of the command's worker processes.
3. The rows of H are the recovered endmember spectra; W's columns, rescaled so
   that each pixel's abundances sum to one on average (a least-squares fit:
   no knowledge of the truth is used), are the abundance maps.  Both are
   compared with the truth: spectral angle per endmember, abundance RMSE.

Figures and a JSON summary go to ``--out`` (default: a new folder, printed); the
cube and the result go to ``--workdir`` (default: a temporary directory,
removed at the end).  See examples/hyperspectral.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import zarr  # noqa: E402
from dask.utils import format_bytes, parse_bytes  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import dask_nmf  # noqa: E402
from dask_nmf.datasets import fast_compressors  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced size (for the test suite)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where figures go (default: a new folder, printed; examples/figures holds the "
        "committed ones)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="where the cube and result go")
    p.add_argument("--size", type=int, default=None, help="pixels per side (2000; --quick 128)")
    p.add_argument("--bands", type=int, default=None, help="spectral bands (200; --quick 64)")
    p.add_argument("-k", "--endmembers", type=int, default=5)
    p.add_argument("--max-iter", type=int, default=None, help="iterations (default 40; --quick 30)")
    p.add_argument("--memory-limit", default="1GiB", help="memory limit of each of 2 workers")
    p.add_argument("--noise", type=float, default=0.01, help="noise standard deviation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="redo only the evaluation and figures from an earlier run's --workdir",
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# The synthetic scene
# --------------------------------------------------------------------------
def wavelengths(bands: int) -> np.ndarray:
    return np.linspace(400.0, 2500.0, bands)  # nm, a VNIR-SWIR sensor


def endmember_spectra(k: int, bands: int, seed: int) -> np.ndarray:
    """k smooth spectra (k x bands): one Gaussian band each, neighbours overlapping."""
    rng = np.random.default_rng([seed, 0])
    wl = wavelengths(bands)
    spacing = (2300.0 - 600.0) / max(k - 1, 1)
    centers = np.linspace(600.0, 2300.0, k) + rng.uniform(-0.15, 0.15, k) * spacing
    widths = 0.35 * spacing * rng.uniform(0.8, 1.2, k)
    heights = rng.uniform(0.4, 0.8, k)
    E = heights[:, None] * np.exp(-0.5 * ((wl[None, :] - centers[:, None]) / widths[:, None]) ** 2)
    return E + 0.01  # a small flat floor (reflectance is never exactly zero)


def field_parameters(k: int, seed: int, waves: int = 16):
    """Random low-frequency plane waves (periods of 1/6 to 2 image widths), per endmember."""
    rng = np.random.default_rng([seed, 1])
    freq = rng.uniform(0.5, 6.0, (k, waves))  # cycles per image width
    angle = rng.uniform(0.0, 2 * np.pi, (k, waves))
    phase = rng.uniform(0.0, 2 * np.pi, (k, waves))
    return freq * np.cos(angle), freq * np.sin(angle), phase


def abundances(rows: np.ndarray, cols: np.ndarray, size: int, params, sharpness=5.0):
    """Abundances (len(rows)*len(cols) x k) at the given pixel coordinates.

    A softmax of k smooth Gaussian-like random fields (sums of plane waves): every
    pixel's abundances are >= 0 and sum to one, they vary smoothly, and the
    sharpness leaves patches of nearly pure pixels.  A pure function of the
    coordinates, so any strip of the image can be made on its own.
    """
    fx, fy, phase = params
    k, waves = fx.shape
    y, x = 2 * np.pi * rows[:, None] / size, 2 * np.pi * cols[:, None] / size
    F = np.empty((len(rows), len(cols), k))
    for j in range(k):
        # cos(x fx + y fy + phase), summed over the waves, as two small matrix products
        ay, ax = y * fy[j] + phase[j], x * fx[j]
        F[:, :, j] = np.cos(ay) @ np.cos(ax).T - np.sin(ay) @ np.sin(ax).T
    F = F.reshape(-1, k)
    F *= sharpness / np.sqrt(waves / 2)  # unit variance, times the sharpness
    F -= F.max(axis=1, keepdims=True)
    A = np.exp(F)
    return A / A.sum(axis=1, keepdims=True)


def _strip(block_id, *, size, strip, E, params, noise, seed):
    """Rows of V (pixels x bands) for one strip of ``strip`` image rows."""
    i = block_id[0]
    rows = np.arange(i * strip, min((i + 1) * strip, size))
    A = abundances(rows, np.arange(size), size, params)
    rng = np.random.default_rng([seed, 2, i])
    V = (A @ E).astype(np.float32)
    V += np.float32(noise) * rng.standard_normal(V.shape, dtype=np.float32)
    return np.maximum(V, 0.0, out=V)


def write_cube(path: Path | None, size: int, bands: int, k: int, noise: float, seed: int) -> dict:
    """Write V (size*size x bands, float32) to zarr, one strip of image rows per chunk.

    dask makes and writes the chunks a few at a time (two threads), so the cube is
    never in memory whole.
    """
    E = endmember_spectra(k, bands, seed)
    params = field_parameters(k, seed)
    strip = max(1, min(size, (32 * 2**20) // (size * bands * 4)))  # ~32 MiB chunks
    truth = {"E": E, "params": params, "strip": strip, "chunk_rows": strip * size}
    if path is None:  # only the truth, no cube
        return truth
    n_strips = -(-size // strip)
    chunks = (tuple(min(strip, size - s * strip) * size for s in range(n_strips)), (bands,))
    V = da.map_blocks(
        _strip,
        dtype=np.float32,
        chunks=chunks,
        size=size,
        strip=strip,
        E=E,
        params=params,
        noise=noise,
        seed=seed,
        meta=np.empty((0, 0), dtype=np.float32),
    )
    target = zarr.create_array(
        str(path),
        shape=V.shape,
        chunks=(strip * size, bands),
        dtype="float32",
        compressors=fast_compressors(),  # Blosc-LZ4: decodes 2x faster than the default zstd
        overwrite=True,
    )
    target.attrs.update(
        {"height": size, "width": size, "wavelength_nm": wavelengths(bands).tolist()}
    )
    with dask.config.set(scheduler="threads", num_workers=2):
        da.store(V, target, lock=False)
    return truth


# --------------------------------------------------------------------------
# Memory of the command's processes
# --------------------------------------------------------------------------
class MemorySampler(threading.Thread):
    """Samples the RSS of a process and its descendants every ``interval`` seconds.

    The dask workers of the command's LocalCluster are its child processes
    started by multiprocessing (``spawn_main`` in their command line); the
    command itself holds the client and the scheduler.
    """

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, float, dict]] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                main_rss = self.root.memory_info().rss
                workers = {}
                for child in self.root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "spawn_main" in " ".join(child.cmdline()):
                            workers[child.pid] = child.memory_info().rss
                self.samples.append((time.perf_counter() - self.t0, main_rss, workers))
            self.stop.wait(self.interval)

    def summary(self) -> dict:
        per_worker: dict[int, float] = {}
        for _, _, workers in self.samples:
            for pid, rss in workers.items():
                per_worker[pid] = max(per_worker.get(pid, 0), rss)
        return {
            "samples": len(self.samples),
            "peak_worker_rss": max(per_worker.values(), default=0),
            "peak_worker_rss_each": sorted(per_worker.values(), reverse=True),
            "peak_workers_total_rss": max((sum(w.values()) for _, _, w in self.samples), default=0),
            "peak_client_scheduler_rss": max((m for _, m, _ in self.samples), default=0),
        }


def dask_nmf_command() -> list[str]:
    """The ``dask-nmf`` script of this Python environment (else the module behind it)."""
    here = Path(sys.executable).parent / "dask-nmf"
    exe = str(here) if here.exists() else shutil.which("dask-nmf")
    return [exe] if exe else [sys.executable, "-m", "dask_nmf.cli"]


def run_fit(cube: Path, result: Path, args, max_iter: int, quiet: bool):
    cmd = dask_nmf_command() + [
        "fit",
        str(cube),
        "-k",
        str(args.endmembers),
        "-o",
        str(result),
        "--max-iter",
        str(max_iter),
        "--tol",
        "1e-5",
        "--init",
        "nndsvda",
        "--seed",
        str(args.seed),
        "--n-workers",
        "2",
        "--threads-per-worker",
        "1",
        "--memory-limit",
        args.memory_limit,
        "--checkpoint-every",
        "10",
        "--overwrite",
    ]
    print("$ " + " ".join(["dask-nmf"] + cmd[len(dask_nmf_command()) :]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = MemorySampler(proc.pid)
    sampler.t0 = t0
    sampler.start()
    # Pass the command's output (progress bar included) through, and note when the
    # first iteration starts and when each checkpoint is written.
    output, events = bytearray(), {"first_iteration": None, "checkpoints": []}
    while chunk := os.read(proc.stdout.fileno(), 4096):
        now = time.perf_counter() - t0
        if not quiet:
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        before = output.decode(errors="replace")
        output += chunk
        text = output.decode(errors="replace")
        if events["first_iteration"] is None and ("it/s" in text or "s/it" in text):
            events["first_iteration"] = now
        new = text[max(0, len(before) - 40) :]
        for it in re.findall(r"checkpoint: iteration (\d+)", new):
            if int(it) not in [c[1] for c in events["checkpoints"]]:
                events["checkpoints"].append((now, int(it)))
    proc.wait()
    sampler.stop.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dask-nmf fit failed ({proc.returncode}):\n{output.decode()}")
    mem = sampler.summary()
    mem["fit_seconds"] = seconds
    return mem, sampler.samples, events


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
def spectral_angles(E: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Angles (degrees) between every true spectrum (rows of E) and every found one."""
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    Hn = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-300)
    return np.degrees(np.arccos(np.clip(En @ Hn.T, -1.0, 1.0)))


def evaluate(result: Path, truth: dict, size: int, step: int) -> dict:
    res = dask_nmf.load(str(result))
    W = res.W  # lazy, from the result store
    H = np.asarray(res.H, dtype=np.float64)
    E = truth["E"]
    angles = spectral_angles(E, H)
    rows, perm = linear_sum_assignment(angles)
    perm = perm[np.argsort(rows)]
    # Sum-to-one scaling from the data alone: c = argmin ||W c - 1||^2 (a k x k system).
    WtW, Wt1 = dask.compute(W.T @ W, W.sum(axis=0))
    c = np.linalg.solve(np.asarray(WtW, dtype=np.float64), np.asarray(Wt1, dtype=np.float64))
    # Abundances and truth on a grid of every step-th pixel (for maps and errors).
    grid = np.arange(0, size, step)
    idx = (grid[:, None] * size + grid[None, :]).ravel()
    A_hat = np.asarray(W[idx].compute(), dtype=np.float64)
    A_hat = (A_hat * c)[:, perm]
    A_true = abundances(grid, grid, size, truth["params"])
    spectra = (H / c[:, None])[perm]
    return {
        "angles": angles[np.arange(len(perm)), perm],
        "spectra": spectra,
        "A_hat": A_hat.reshape(len(grid), len(grid), -1),
        "A_true": A_true.reshape(len(grid), len(grid), -1),
        "rmse": np.sqrt(((A_hat - A_true) ** 2).mean(axis=0)),
        "sum_to_one_mean": float(A_hat.sum(axis=1).mean()),
        "loss_history": np.asarray(res.loss_history),
        "n_iter": res.n_iter,
        "converged": res.converged,
        "block_rows": int(res.params.get("block_rows", 0)),
    }


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
def plot_spectra(truth, ev, bands, path):
    wl = wavelengths(bands)
    fig, ax = plt.subplots(figsize=(9, 4.6))
    for j, (e, h, a) in enumerate(zip(truth["E"], ev["spectra"], ev["angles"])):
        ax.plot(wl, e, color=f"C{j}", lw=4, alpha=0.35)
        ax.plot(wl, h, color=f"C{j}", lw=1.3, label=f"endmember {j + 1}: angle {a:.2f}°")
    ax.plot([], [], color="gray", lw=4, alpha=0.35, label="true spectra (wide, pale)")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("reflectance")
    ax.set_title(
        "Endmember spectra: truth (wide, pale) and rows of H found by dask-nmf (thin)\n"
        "H rescaled by the sum-to-one fit; the spectral angle is scale-free",
        fontsize=10,
    )
    top = max(truth["E"].max(), ev["spectra"].max())
    ax.set_ylim(-0.02 * top, 1.32 * top)  # room for the legend above the peaks
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_abundances(ev, size, step, path):
    k = ev["A_true"].shape[2]
    fig, axes = plt.subplots(
        3, k, figsize=(2.2 * k + 0.8, 7.0), squeeze=False, layout="constrained"
    )
    extent = (0, size, size, 0)
    for j in range(k):
        true, found = ev["A_true"][:, :, j], ev["A_hat"][:, :, j]
        for r, (img, cmap, lim) in enumerate(
            [(true, "viridis", (0, 1)), (found, "viridis", (0, 1)), (found - true, "RdBu_r", None)]
        ):
            ax = axes[r, j]
            vmin, vmax = lim if lim else (-0.15, 0.15)
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"endmember {j + 1}", fontsize=10)
            if r == 2:
                ax.set_xlabel(f"RMSE {ev['rmse'][j]:.3f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(["true", "recovered", "recovered − true"][r], fontsize=10)
            if j == k - 1:
                fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.9, pad=0.01)
    shown = "all pixels" if step == 1 else f"every {step}th pixel in each direction"
    fig.suptitle(
        f"Abundance maps, {size} × {size} pixels ({shown}): truth, rescaled columns of W, "
        "and their difference",
        fontsize=11,
    )
    fig.savefig(path, dpi=85)
    plt.close(fig)


def plot_memory(samples, events, ev, info, path):
    fig, (ax, lax) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.6, 1]})
    t = np.array([s[0] for s in samples])
    # The workers' memory swings with every block they read; draw, per window of
    # about 1/150 of the run, the highest and lowest sample.
    edges = np.linspace(0, t[-1] + 1e-9, min(150, len(t)) + 1)
    which = np.digitize(t, edges) - 1
    mid = 0.5 * (edges[1:] + edges[:-1])
    pids = sorted({pid for _, _, w in samples for pid in w})
    for i, pid in enumerate(pids):
        rss = np.array([s[2].get(pid, np.nan) for s in samples]) / 2**20
        windows = [rss[(which == b) & np.isfinite(rss)] for b in range(len(mid))]
        hi = np.array([w.max() if w.size else np.nan for w in windows])
        lo = np.array([w.min() if w.size else np.nan for w in windows])
        ax.fill_between(mid, lo, hi, color=f"C{i}", alpha=0.25, lw=0)
        ax.plot(
            mid, hi, color=f"C{i}", lw=1, label=f"worker {i + 1} (peak {np.nanmax(rss):.0f} MiB)"
        )
    main_rss = np.array([s[1] for s in samples]) / 2**20
    ax.plot(
        t,
        main_rss,
        lw=1,
        color="gray",
        label=f"the dask-nmf process: client + scheduler (peak {main_rss.max():.0f} MiB)",
    )
    if events.get("first_iteration"):
        ax.axvline(events["first_iteration"], color="k", lw=1, label="first iteration done")
    for i, (when, _) in enumerate(events.get("checkpoints", [])):
        ax.axvline(
            when, color="k", lw=0.8, ls=(0, (1, 3)), label="checkpoint written" if i == 0 else None
        )
    limit = parse_bytes(info["memory_limit"]) / 2**20
    ax.axhline(
        limit, color="C3", ls="--", lw=1, label=f"each worker's memory limit ({limit:.0f} MiB)"
    )
    ax.axhline(
        info["block_bytes"] / 2**20,
        color="C2",
        ls="-.",
        lw=1,
        label=f"one row block of V ({info['block_bytes'] / 2**20:.0f} MiB)",
    )
    ax.set_xlabel("seconds since `dask-nmf fit` started")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, 1.15 * max(limit, np.nanmax([s[1] for s in samples]) / 2**20))
    ax.set_title(
        f"Memory while factorizing a {format_bytes(info['cube_bytes'])} cube: RSS sampled every "
        "0.25 s\n(line: highest, band: lowest to highest sample in each window)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3)
    losses = ev["loss_history"]
    lax.plot(np.arange(len(losses)), losses, color="C0")
    lax.set_yscale("log")
    lax.set_xlabel("iteration")
    lax.set_ylabel("½‖V − WH‖²  (log scale)")
    lax.set_title(
        f"Loss, {ev['n_iter']} iterations (never increases: {bool(np.all(np.diff(losses) <= 0))})",
        fontsize=10,
    )
    lax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = args.size or (128 if args.quick else 2000)
    bands = args.bands or (64 if args.quick else 200)
    max_iter = args.max_iter or (30 if args.quick else 40)
    step = max(1, size // 250)  # maps and abundance errors on at most ~250 x 250 pixels
    if args.out is None:  # (never the committed figures unless asked)
        args.out = Path(tempfile.mkdtemp(prefix="dask-nmf-hyperspectral-"))
        print(f"figures and numbers go to {args.out} (--out DIR to choose)")
    args.out.mkdir(parents=True, exist_ok=True)
    cube_bytes = size * size * bands * 4
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hsi-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        cube, result = workdir / "cube.zarr", workdir / "unmixing.zarr"

        run_file = workdir / "run.json"
        if args.reuse:
            if args.workdir is None or not run_file.exists():
                raise SystemExit("--reuse needs the --workdir of an earlier complete run")
            run = json.loads(run_file.read_text())
            truth = write_cube(None, size, bands, args.endmembers, args.noise, args.seed)
        else:
            print(
                f"writing a {size} x {size} pixel x {bands} band cube "
                f"({format_bytes(cube_bytes)}, float32) of {args.endmembers} endmembers "
                f"to {cube} ...",
                flush=True,
            )
            t0 = time.perf_counter()
            truth = write_cube(cube, size, bands, args.endmembers, args.noise, args.seed)
            gen_seconds = time.perf_counter() - t0
            stored = sum(f.stat().st_size for f in cube.rglob("*") if f.is_file())
            print(
                f"  {gen_seconds:.1f} s; {format_bytes(stored)} on disk, chunks of "
                f"{truth['chunk_rows']} pixels ({truth['strip']} image rows)",
                flush=True,
            )
            mem, samples, events = run_fit(cube, result, args, max_iter, quiet=args.quick)
            run = {"generate_seconds": gen_seconds, "stored_bytes": stored, "memory": mem}
            run["events"] = events
            run["samples"] = [[t, m, {str(p): r for p, r in w.items()}] for t, m, w in samples]
            run_file.write_text(json.dumps(run))
        mem, samples, gen_seconds = run["memory"], run["samples"], run["generate_seconds"]
        events = run.get("events", {"first_iteration": None, "checkpoints": []})
        stored = run["stored_bytes"]
        if not args.quick:
            subprocess.run(dask_nmf_command() + ["info", str(result)], check=True)
        ev = evaluate(result, truth, size, step)

    block_bytes = ev["block_rows"] * bands * 4
    info = {
        "quick": args.quick,
        "size": size,
        "bands": bands,
        "endmembers": args.endmembers,
        "noise": args.noise,
        "cube_bytes": cube_bytes,
        "stored_bytes": stored,
        "chunk_rows": truth["chunk_rows"],
        "block_rows": ev["block_rows"],
        "block_bytes": block_bytes,
        "memory_limit": args.memory_limit,
        "workers": 2,
        "generate_seconds": gen_seconds,
        "fit_seconds": mem["fit_seconds"],
        "n_iter": ev["n_iter"],
        "converged": ev["converged"],
        "loss_first_last": [float(ev["loss_history"][0]), float(ev["loss_history"][-1])],
        "loss_never_increased": bool(np.all(np.diff(ev["loss_history"]) <= 0)),
        "spectral_angles_deg": [float(a) for a in ev["angles"]],
        "abundance_rmse": [float(r) for r in ev["rmse"]],
        "abundance_sum_mean": ev["sum_to_one_mean"],
        "memory": mem,
        "events": events,
    }
    print(
        f"{ev['n_iter']} iterations in {mem['fit_seconds']:.1f} s (including start-up, "
        f"validation pass and nndsvda init); spectral angles (degrees): "
        + ", ".join(f"{a:.2f}" for a in ev["angles"])
        + "; abundance RMSE: "
        + ", ".join(f"{r:.3f}" for r in ev["rmse"])
        + f"\npeak RSS: worker {format_bytes(mem['peak_worker_rss'])} (limit "
        f"{args.memory_limit}), both workers {format_bytes(mem['peak_workers_total_rss'])}, "
        f"client+scheduler {format_bytes(mem['peak_client_scheduler_rss'])}; cube "
        f"{format_bytes(cube_bytes)}, one row block {format_bytes(block_bytes)}"
    )
    files = {
        "spectra": args.out / "hyperspectral_spectra.png",
        "abundances": args.out / "hyperspectral_abundances.png",
        "memory": args.out / "hyperspectral_memory.png",
    }
    plot_spectra(truth, ev, bands, files["spectra"])
    plot_abundances(ev, size, step, files["abundances"])
    plot_memory(samples, events, ev, info, files["memory"])
    info["figures"] = {name: p.name for name, p in files.items()}
    (args.out / "hyperspectral.json").write_text(json.dumps(info, indent=2) + "\n")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    info["files"] = [str(p) for p in files.values()] + [str(args.out / "hyperspectral.json")]
    info["loss_history"] = ev["loss_history"]
    return info


if __name__ == "__main__":
    main()
