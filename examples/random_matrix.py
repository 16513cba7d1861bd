"""A matrix with known factors: monotone loss, agreement with two references, recovery.

Run:  python examples/random_matrix.py           (3000 x 200, rank 6, 200 iterations; 2-4 minutes)
      python examples/random_matrix.py --quick   (a smoke test)

V is drawn as Poisson counts around W0 @ H0, with sparse non-negative W0 and H0
known.  From one random starting point (W_init, H_init), three implementations of
Lee & Seung's multiplicative updates run side by side for both costs:

* ``dask_nmf.factorize`` (one pass over V per iteration),
* a hand-written "naive" dask loop of the same rules (the W line, then the H
  line, each computed on its own, plus a pass for the loss),
* scikit-learn's ``NMF(solver="mu", init="custom")``.

Their loss curves (log scale) never go up and coincide to rounding error.  The
factors found are matched to the true ones with the Hungarian algorithm on the
correlation of H's rows, and compared.  Figures and a JSON summary go to
``--out`` (default: a new folder; examples/figures holds the committed ones); see
examples/random_matrix.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.decomposition import NMF as SkNMF  # noqa: E402

import dask_nmf  # noqa: E402

HERE = Path(__file__).resolve().parent
COSTS = ("frobenius", "kullback-leibler")
TITLES = {"frobenius": "Frobenius  ½‖V − WH‖²", "kullback-leibler": "Kullback–Leibler  D(V‖WH)"}
#: scikit-learn's guard against division by zero in MU (float32 machine epsilon).
EPS = float(np.finfo(np.float32).eps)


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
    p.add_argument("--rows", type=int, default=None, help="m (default 3000; --quick 1000)")
    p.add_argument("--cols", type=int, default=None, help="n (default 200; --quick 100)")
    p.add_argument("-k", "--n-components", type=int, default=None, help="rank (default 6)")
    p.add_argument("--iterations", type=int, default=None, help="default 200 (--quick 30)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# Data and losses
# --------------------------------------------------------------------------
def make_data(m: int, n: int, k: int, seed: int, mean_count: float = 5.0):
    """Partly sparse non-negative W0 (m x k), H0 (k x n) and V ~ Poisson(W0 @ H0).

    70% of W0's and 50% of H0's entries are non-zero (exponential): sparse enough
    for the factorization to be (nearly) unique, so recovery can be measured.
    Counts of 5 on average make the noise large: ‖V − W0H0‖ ≈ 0.3 ‖W0H0‖.
    """
    rng = np.random.default_rng(seed)
    W0 = rng.exponential(1.0, (m, k)) * (rng.random((m, k)) < 0.7)
    H0 = rng.exponential(1.0, (k, n)) * (rng.random((k, n)) < 0.5)
    # Every component is used by some rows and features.
    W0[rng.integers(0, m, k), np.arange(k)] += 1.0
    H0[np.arange(k), rng.integers(0, n, k)] += 1.0
    H0 *= mean_count / (W0 @ H0).mean()  # counts of about mean_count on average
    V = rng.poisson(W0 @ H0).astype(np.float64)
    return V, W0, H0


def loss(V: np.ndarray, W: np.ndarray, H: np.ndarray, cost: str) -> float:
    """½‖V − WH‖² or the generalized KL divergence (0 log 0 = 0), as dask_nmf and scikit-learn."""
    WH = W @ H
    if cost == "frobenius":
        return 0.5 * float(((V - WH) ** 2).sum())
    mask = V > 0
    return float((V[mask] * np.log(V[mask] / np.maximum(WH[mask], EPS))).sum() - V.sum() + WH.sum())


# --------------------------------------------------------------------------
# The three implementations, all from the same (W_init, H_init)
# --------------------------------------------------------------------------
def run_dask_nmf(V, W_init, H_init, cost, iterations):
    t0 = time.perf_counter()
    res = dask_nmf.factorize(
        V,
        W_init.shape[1],
        beta_loss=cost,
        init="custom",
        W_init=W_init,
        H_init=H_init,
        max_iter=iterations,
        tol=0,  # run every iteration: we want the whole curve
        loss_every=1,  # and KL's loss at each of them (default: every 10th)
    )
    W = res.W.compute()
    return W, res.H, np.asarray(res.loss_history), time.perf_counter() - t0


def run_naive_dask(V, W_init, H_init, cost, iterations, block_rows):
    """The MU rules written directly with dask arrays: several passes over V per iteration."""
    Vd = da.from_array(V, chunks=(block_rows, V.shape[1]))
    W = da.from_array(W_init, chunks=(block_rows, W_init.shape[1]))
    H = H_init.copy()

    def dask_loss(W, H):
        WH = W @ H
        if cost == "frobenius":
            return 0.5 * ((Vd - WH) ** 2).sum()
        ratio = da.where(Vd > 0, Vd / da.maximum(WH, EPS), 1.0)
        return (Vd * da.log(ratio)).sum() - Vd.sum() + WH.sum()

    t0 = time.perf_counter()
    losses = [float(dask_loss(W, H).compute())]
    for _ in range(iterations):
        if cost == "frobenius":
            den = W @ (H @ H.T)
            W = (W * (Vd @ H.T) / da.where(den == 0, EPS, den)).persist()
            num, den = dask.compute(W.T @ Vd, W.T @ W)
            den = den @ H
            H = H * num / np.where(den == 0, EPS, den)
        else:
            h_sum = H.sum(axis=1)
            WH = da.maximum(W @ H, EPS)
            W = (W * ((Vd / WH) @ H.T) / np.where(h_sum == 0, EPS, h_sum)).persist()
            WH = da.maximum(W @ H, EPS)
            num, w_sum = dask.compute(W.T @ (Vd / WH), W.sum(axis=0))
            w_sum[w_sum == 0] = 1.0
            H = H * num / w_sum[:, None]
            H[H < np.finfo(np.float64).eps] = 0.0
        losses.append(float(dask_loss(W, H).compute()))
    seconds = time.perf_counter() - t0
    return W.compute(), H, np.asarray(losses), seconds


def sklearn_model(cost, k, iterations):
    return SkNMF(k, solver="mu", init="custom", beta_loss=cost, max_iter=iterations, tol=0)


def run_sklearn(V, W_init, H_init, cost, iterations):
    """scikit-learn's MU; its loss after every iteration, and one timed run of all of them.

    scikit-learn keeps no loss history, so the curve is made by running it one
    iteration at a time from the previous (W, H) (``init="custom"``,
    ``max_iter=1``): MU has no state besides W and H, so these are exactly its
    iterates -- the final pair is checked against one ordinary run.
    """
    k = W_init.shape[1]
    W, H = W_init.copy(), H_init.copy()
    losses = [loss(V, W, H, cost)]
    one_step = sklearn_model(cost, k, 1)
    for _ in range(iterations):
        W = one_step.fit_transform(V, W=W, H=H)
        H = one_step.components_.copy()
        losses.append(loss(V, W, H, cost))
    t0 = time.perf_counter()
    full = sklearn_model(cost, k, iterations)
    W_full = full.fit_transform(V, W=W_init.copy(), H=H_init.copy())
    seconds = time.perf_counter() - t0
    step_gap = max(
        float(np.abs(W - W_full).max() / np.abs(W_full).max()),
        float(np.abs(H - full.components_).max() / np.abs(full.components_).max()),
    )
    return W_full, full.components_, np.asarray(losses), seconds, step_gap


# --------------------------------------------------------------------------
# Recovery of the true factors
# --------------------------------------------------------------------------
def match(W0, H0, W, H):
    """Permute and rescale (W, H) onto (W0, H0); correlations of the matched pairs.

    Components are paired by the Hungarian algorithm on the correlation of H's
    rows; each found component is then rescaled (H row by c, W column by 1/c,
    WH unchanged) so its H row has the least-squares scale of the true one.
    """
    k = H0.shape[0]
    corr_H = np.corrcoef(H0, H)[:k, k:]
    rows, cols = linear_sum_assignment(-corr_H)
    perm = cols[np.argsort(rows)]
    W, H = W[:, perm], H[perm]
    c = (H0 * H).sum(axis=1) / np.maximum((H * H).sum(axis=1), 1e-300)
    H, W = H * c[:, None], W / np.where(c == 0, 1.0, c)
    r_H = np.array([np.corrcoef(H0[j], H[j])[0, 1] for j in range(k)])
    r_W = np.array([np.corrcoef(W0[:, j], W[:, j])[0, 1] for j in range(k)])
    return W, H, r_H, r_W


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
STYLE = {
    "dask_nmf": dict(color="C0", lw=3.5, alpha=0.55),
    "naive dask": dict(color="C1", lw=1.4, ls="--"),
    "scikit-learn": dict(color="k", lw=0, marker="o", ms=3.5, mfc="none"),
}


def plot_losses(runs: dict, truth_loss: dict, path: Path) -> None:
    floor = 1e-18
    fig, axes = plt.subplots(
        2, 2, figsize=(11, 7.2), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]}
    )
    for col, cost in enumerate(COSTS):
        ax, dax = axes[0, col], axes[1, col]
        ours = runs[cost]["dask_nmf"]["losses"]
        it = np.arange(len(ours))
        for name, r in runs[cost].items():
            style = dict(STYLE[name])
            if name == "scikit-learn":
                # markers evenly spaced on the log axis (indices into it[1:])
                style["markevery"] = np.unique(np.geomspace(1, len(it) - 1, 30).astype(int)) - 1
            ax.plot(it[1:], r["losses"][1:], label=name, **style)
            if name != "dask_nmf":
                diff = np.abs(r["losses"] - ours) / ours
                zeros = int(np.sum(diff[1:] == 0))
                dstyle = {
                    "color": STYLE[name]["color"],
                    "s": 10,
                    "marker": "o" if name == "scikit-learn" else "x",
                    "lw": 0.8,
                }
                if name == "scikit-learn":
                    dstyle["facecolors"] = "none"
                    dstyle["edgecolors"] = dstyle.pop("color")
                dax.scatter(
                    it[1:],
                    np.maximum(diff[1:], floor),
                    label=f"{name} (identical at {zeros} of {len(it) - 1} iterations)",
                    **dstyle,
                )
        ax.axhline(truth_loss[cost], color="C2", lw=1, ls=":", label="loss at the true W0, H0")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(TITLES[cost])
        ax.set_ylabel("loss after t iterations (log scale)")
        increases = int(np.sum(np.diff(ours) > 0))
        ax.text(
            0.03,
            0.12,
            f"loss {ours[0]:.3g} at the start,\n{ours[-1]:.4g} after {len(ours) - 1} iterations;\n"
            f"went up at {increases} iterations",
            transform=ax.transAxes,
            ha="left",
            fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round"},
        )
        ax.legend(loc="upper right", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        dax.set_yscale("log")
        dax.set_ylim(floor / 3, 1e-8)
        dax.set_xlabel("iteration t (log scale)")
        dax.set_ylabel("|loss − dask_nmf's loss|\n/ dask_nmf's loss")
        dax.legend(
            loc="upper left",
            fontsize=8,
            title=f"identical values drawn at {floor:g}",
            title_fontsize=8,
        )
        dax.grid(alpha=0.3)
    fig.suptitle(
        "Lee & Seung's multiplicative updates from one random start: three implementations, "
        "one curve",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recovery(H0, W0, matched: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    k = H0.shape[0]
    for col, cost in enumerate(COSTS):
        W, H, r_H, r_W = matched[cost]
        for row, (true, found, r, name) in enumerate(
            [(H0, H, r_H, "H (rows: components)"), (W0.T, W.T, r_W, "W (columns: components)")]
        ):
            ax = axes[row, col]
            for j in range(k):
                ax.scatter(true[j], found[j], s=6, alpha=0.5, color=f"C{j}", label=f"{j + 1}")
            top = max(true.max(), found.max())
            ax.plot([0, top], [0, top], color="k", lw=0.8, label="y = x")
            ax.set_xlabel(f"true {name.split()[0]} entry")
            ax.set_ylabel(f"recovered {name.split()[0]} entry")
            ax.set_title(
                f"{TITLES[cost].split('  ')[0]}: {name}\n"
                f"correlation per component: min {r.min():.3f}, mean {r.mean():.3f}",
                fontsize=10,
            )
            if row == 0 and col == 0:
                ax.legend(title="component", fontsize=7, title_fontsize=8, markerscale=2, ncol=2)
    fig.suptitle(
        "True vs recovered factors, after Hungarian matching (on correlation of H's rows) "
        "and rescaling",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    m = args.rows or (1000 if args.quick else 3000)
    n = args.cols or (100 if args.quick else 200)
    k = args.n_components or (4 if args.quick else 6)
    iterations = args.iterations or (30 if args.quick else 200)
    if args.out is None:  # (never the committed figures unless asked)
        args.out = Path(tempfile.mkdtemp(prefix="dask-nmf-random-matrix-"))
        print(f"figures and numbers go to {args.out} (--out DIR to choose)")
    args.out.mkdir(parents=True, exist_ok=True)

    V, W0, H0 = make_data(m, n, k, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    scale = np.sqrt(V.mean() / k)  # scikit-learn's random init scale
    W_init = np.abs(scale * rng.standard_normal((m, k)))
    H_init = np.abs(scale * rng.standard_normal((k, n)))
    noise = float(np.linalg.norm(V - W0 @ H0) / np.linalg.norm(W0 @ H0))
    print(
        f"V: {m} x {n} Poisson counts around W0 @ H0 (rank {k}), noise ‖V − W0H0‖/‖W0H0‖ "
        f"= {noise:.3f}; {iterations} iterations from one random start"
    )

    runs, matched, summary = (
        {},
        {},
        {
            "quick": args.quick,
            "shape": [m, n],
            "n_components": k,
            "iterations": iterations,
            "noise": noise,
            "costs": {},
        },
    )
    truth_loss = {}
    for cost in COSTS:
        W, H, losses, t = run_dask_nmf(V, W_init, H_init, cost, iterations)
        Wn, Hn, losses_n, tn = run_naive_dask(V, W_init, H_init, cost, iterations, -(-m // 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            Ws, Hs, losses_s, ts, step_gap = run_sklearn(V, W_init, H_init, cost, iterations)
        runs[cost] = {
            "dask_nmf": {"losses": losses},
            "naive dask": {"losses": losses_n},
            "scikit-learn": {"losses": losses_s},
        }
        truth_loss[cost] = loss(V, W0, H0, cost)
        matched[cost] = match(W0, H0, W, H)
        Wm, Hm, r_H, r_W = matched[cost]

        def rel(a, b):
            return float(np.abs(a - b).max() / np.abs(b).max())

        s = {
            "loss_first_last": [float(losses[0]), float(losses[-1])],
            "loss_at_truth": truth_loss[cost],
            "loss_never_increased": bool(np.all(np.diff(losses) <= 0)),
            "max_rel_loss_diff_naive": float(np.max(np.abs(losses_n - losses) / losses)),
            "max_rel_loss_diff_sklearn": float(np.max(np.abs(losses_s - losses) / losses)),
            "max_rel_factor_diff_naive": max(rel(W, Wn), rel(H, Hn)),
            "max_rel_factor_diff_sklearn": max(rel(W, Ws), rel(H, Hs)),
            "sklearn_one_step_vs_full_run": step_gap,
            "corr_H_per_component": [float(x) for x in r_H],
            "corr_W_per_component": [float(x) for x in r_W],
            "corr_H_mean": float(r_H.mean()),
            "corr_W_mean": float(r_W.mean()),
            "denoising_error": float(np.linalg.norm(Wm @ Hm - W0 @ H0) / np.linalg.norm(W0 @ H0)),
            "seconds_per_iteration": {
                "dask_nmf": t / iterations,
                "naive dask (incl. its loss pass)": tn / iterations,
                "scikit-learn": ts / iterations,
            },
        }
        summary["costs"][cost] = s
        print(
            f"{cost}: loss {losses[0]:.6g} -> {losses[-1]:.6g} (at truth {truth_loss[cost]:.6g}); "
            f"never increased: {s['loss_never_increased']}; max relative loss difference vs "
            f"naive dask {s['max_rel_loss_diff_naive']:.1e}, vs scikit-learn "
            f"{s['max_rel_loss_diff_sklearn']:.1e}; factors vs scikit-learn "
            f"{s['max_rel_factor_diff_sklearn']:.1e}\n"
            f"  recovery: correlation of matched H rows min {r_H.min():.4f} mean {r_H.mean():.4f}, "
            f"W columns min {r_W.min():.4f} mean {r_W.mean():.4f}; ‖WH − W0H0‖/‖W0H0‖ = "
            f"{s['denoising_error']:.4f}"
        )

    files = {"losses": args.out / "random_losses.png", "recovery": args.out / "random_recovery.png"}
    plot_losses(runs, truth_loss, files["losses"])
    plot_recovery(H0, W0, matched, files["recovery"])
    summary["figures"] = {name: p.name for name, p in files.items()}
    (args.out / "random_matrix.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    summary["files"] = [str(p) for p in files.values()] + [str(args.out / "random_matrix.json")]
    summary["runs"] = runs
    return summary


if __name__ == "__main__":
    main()
