"""Parts of handwritten digits: NMF of scikit-learn's 8x8 digits with both of Lee & Seung's costs.

Run:  python examples/digits.py            (full size: all 1797 digits, k=16, < 1 minute)
      python examples/digits.py --quick    (500 digits, k=9, few iterations: a smoke test)

V is the 1797 x 64 matrix of digit images (one row per image, pixel values 0..16).
NMF writes every image as a non-negative sum of k non-negative "parts" (the rows
of H, shown as 8x8 images); W holds each image's weights.  The script fits
``dask_nmf.NMF`` with ``beta_loss="frobenius"`` and ``"kullback-leibler"``, draws
the parts and a few digits rebuilt from them, and measures how sparse W and H
are with Hoyer's measure.  Figures and a JSON summary go to ``--out``
(default: a new folder; examples/figures holds the committed ones); see examples/digits.md for the write-up.
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
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import dask_nmf  # noqa: E402

HERE = Path(__file__).resolve().parent
COSTS = {"frobenius": "Frobenius  ½‖V − WH‖²", "kullback-leibler": "Kullback–Leibler  D(V‖WH)"}


def hoyer(x: np.ndarray, axis: int) -> np.ndarray:
    """Hoyer's sparseness of each vector along ``axis``: 0 (all equal) ... 1 (one non-zero).

    s(x) = (sqrt(n) - ||x||_1 / ||x||_2) / (sqrt(n) - 1), Hoyer (2004), JMLR 5:1457.
    All-zero vectors (no direction at all) give NaN and are left out of means.
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    n = x.shape[axis]
    l1 = x.sum(axis=axis)
    l2 = np.sqrt((x**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1)


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
    p.add_argument("-k", "--n-components", type=int, default=None, help="rank (default 16)")
    p.add_argument("--max-iter", type=int, default=None, help="default 1000 (--quick: 60)")
    return p.parse_args(argv)


def fit(V: np.ndarray, k: int, cost: str, max_iter: int) -> dict:
    model = dask_nmf.NMF(
        n_components=k,
        beta_loss=cost,
        init="random",  # Lee & Seung start from random factors
        random_state=0,
        max_iter=max_iter,
        tol=1e-4,
        loss_every=1,  # the whole KL curve (by default KL's loss is evaluated every 10th)
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # --quick stops early on purpose
        W = model.fit_transform(V)
    seconds = time.perf_counter() - t0
    H = model.components_
    # Order the parts by how much of the data they carry (largest first).
    order = np.argsort(-(W.sum(axis=0) * H.sum(axis=1)))
    W, H = W[:, order], H[order]
    losses = np.asarray(model.loss_history_)
    return {
        "W": W,
        "H": H,
        "losses": losses,
        "n_iter": int(model.n_iter_),
        "seconds": seconds,
        "relative_error": float(np.linalg.norm(V - W @ H) / np.linalg.norm(V)),
        "loss_never_increased": bool(np.all(np.diff(losses) <= 1e-12 * losses[0])),
        "hoyer_H_parts": float(np.nanmean(hoyer(H, axis=1))),
        "hoyer_W_per_digit": float(np.nanmean(hoyer(W, axis=1))),
        "hoyer_W_per_part": float(np.nanmean(hoyer(W, axis=0))),
    }


def grid_shape(k: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(k)))
    return int(np.ceil(k / cols)), cols


def plot_parts(fits: dict, k: int, path: Path) -> None:
    rows, cols = grid_shape(k)
    fig = plt.figure(figsize=(11, 5.9), layout="constrained")
    subfigs = fig.subfigures(1, len(fits), wspace=0.04)
    for sub, (cost, f) in zip(subfigs, fits.items()):
        axes = sub.subplots(rows, cols)
        for j, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < k:
                part = f["H"][j].reshape(8, 8)
                ax.imshow(part / part.max(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_title(f"part {j + 1}", fontsize=8, pad=2)
            else:
                ax.axis("off")
        sub.suptitle(
            f"{COSTS[cost]}\nHoyer sparseness of the parts (rows of H): {f['hoyer_H_parts']:.2f}",
            fontsize=10,
        )
    fig.suptitle(
        f"The {k} parts NMF learns from {fits[cost]['W'].shape[0]} handwritten digits "
        "(each part scaled to its maximum; dark = large)",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstructions(V: np.ndarray, labels: np.ndarray, fits: dict, path: Path) -> None:
    picks = [int(np.flatnonzero(labels == d)[0]) for d in range(10) if np.any(labels == d)]
    rows = [("original", V[picks])] + [
        (f"rebuilt\n{cost}", fits[cost]["W"][picks] @ fits[cost]["H"]) for cost in fits
    ]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.1 * len(picks), 3.6), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                ax.set_title(f"digit {labels[picks[c]]}", fontsize=9)
    errs = ", ".join(f"{cost}: {f['relative_error']:.3f}" for cost, f in fits.items())
    fig.suptitle(f"Digits rebuilt as W·H (relative error ‖V − WH‖/‖V‖ — {errs})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_decomposition(V: np.ndarray, labels: np.ndarray, fits: dict, path: Path) -> None:
    """One digit written out as its weighted parts, largest first, for each cost."""
    i = int(np.flatnonzero(labels == 4)[0]) if np.any(labels == 4) else 0
    n_show = 5
    fig, axes = plt.subplots(
        len(fits), n_show + 3, figsize=(1.45 * (n_show + 3), 1.9 * len(fits)), squeeze=False
    )
    for r, (cost, f) in enumerate(fits.items()):
        w = f["W"][i]
        terms = w[:, None] * f["H"]
        top = np.argsort(-terms.sum(axis=1))[:n_show]
        share = terms[top].sum(axis=1) / terms.sum()
        panels = [("original", V[i])]
        panels += [
            (f"{w[j]:.2f} × part {j + 1}\n({100 * s:.0f}% of ink)", terms[j])
            for j, s in zip(top, share)
        ]
        rest = terms.sum(axis=0) - terms[top].sum(axis=0)
        panels += [(f"+ {f['H'].shape[0] - n_show} others", rest), ("= W·H", terms.sum(axis=0))]
        for c, (name, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(cost, fontsize=9)
    fig.suptitle(
        f"One digit ({labels[i]}) as a sum of parts: its {n_show} largest weighted parts "
        "(same grey scale as the image)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    k = args.n_components or (9 if args.quick else 16)
    max_iter = args.max_iter or (60 if args.quick else 1000)
    digits = load_digits()
    V, labels = digits.data.astype(np.float64), digits.target
    if args.quick:
        V, labels = V[:500], labels[:500]
    if args.out is None:  # (never the committed figures unless asked)
        args.out = Path(tempfile.mkdtemp(prefix="dask-nmf-digits-"))
        print(f"figures and numbers go to {args.out} (--out DIR to choose)")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"V: {V.shape[0]} digits x {V.shape[1]} pixels, k={k}, max_iter={max_iter}")

    fits = {cost: fit(V, k, cost, max_iter) for cost in COSTS}
    summary = {
        "quick": args.quick,
        "shape": list(V.shape),
        "n_components": k,
        "max_iter": max_iter,
        "hoyer_V_rows": float(np.nanmean(hoyer(V, axis=1))),
        # For contrast: PCA's k components (eigen-digits, holistic, signed; |.| taken).
        "hoyer_pca_components": float(
            np.nanmean(hoyer(PCA(k, random_state=0).fit(V).components_, axis=1))
        ),
        "costs": {},
    }
    for cost, f in fits.items():
        summary["costs"][cost] = {key: v for key, v in f.items() if key not in ("W", "H", "losses")}
        summary["costs"][cost]["loss_first_last"] = [float(f["losses"][0]), float(f["losses"][-1])]
        print(
            f"{cost:17s} {f['n_iter']:4d} iterations in {f['seconds']:5.1f} s; "
            f"relative error {f['relative_error']:.4f}; Hoyer sparseness: parts (H rows) "
            f"{f['hoyer_H_parts']:.3f}, W per digit {f['hoyer_W_per_digit']:.3f}, "
            f"W per part {f['hoyer_W_per_part']:.3f}; loss never increased: "
            f"{f['loss_never_increased']}"
        )
    print(
        f"(for comparison, Hoyer sparseness of the digit images themselves: "
        f"{summary['hoyer_V_rows']:.3f}; of PCA's {k} components: "
        f"{summary['hoyer_pca_components']:.3f})"
    )

    files = {
        "parts": args.out / "digits_parts.png",
        "reconstructions": args.out / "digits_reconstructions.png",
        "decomposition": args.out / "digits_decomposition.png",
    }
    plot_parts(fits, k, files["parts"])
    plot_reconstructions(V, labels, fits, files["reconstructions"])
    plot_decomposition(V, labels, fits, files["decomposition"])
    summary["figures"] = {name: p.name for name, p in files.items()}
    (args.out / "digits.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    summary["files"] = [str(p) for p in files.values()] + [str(args.out / "digits.json")]
    summary["fits"] = fits
    return summary


if __name__ == "__main__":
    main()
