"""Unmixing a cloudy hyperspectral cube: NMF of the observed pixels only (``missing="nan"``).

Run:  python examples/missing_values.py            (160 x 160 pixels x 100 bands, k=5)
      python examples/missing_values.py --quick    (48 x 48 x 40, k=4: a smoke test)

1. A synthetic cube: every pixel's spectrum mixes k endmember spectra (smooth,
   overlapping Gaussian bands) with smoothly varying abundances that sum to one,
   plus a little noise.  About 20 % of the pixels are under clouds: spatially
   contiguous blobs (a smooth random field above its 80th percentile), stored
   as NaN in every band, as a cloud mask applied with xarray's ``.where`` gives;
   and 2 % of single readings (a pixel in one band) are dead detector elements,
   NaN too: those pixels are fitted on the bands they have.
2. The cube is written to zarr (pixels x bands) and factorized from disk with
   ``missing="nan"``: only the observed entries are fitted, with the weighted
   multiplicative updates.  The same fit of the cloud-free cube is the yardstick.
3. The recovered endmember spectra (rows of H) are matched to the truth and
   compared by spectral angle; W's abundances are compared on the clear pixels.
4. Which k?  ``dask_nmf.select_rank`` fits k = 2 ... k + 3 (two restarts each)
   in the same passes over the cloudy store, holding out 5 % of the observed
   entries: the held-out error falls until the planted k and is flat after,
   and the components stop being stable across restarts past it.

Figures and a JSON summary go to ``--out`` (default: a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import dask_nmf  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced size (for the test suite)")
    p.add_argument("--out", type=Path, default=None, help="where figures and JSON go")
    p.add_argument("--cloud-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_cube(size: int, bands: int, k: int, cloud_fraction: float, rng):
    """``(cube, clouds, spectra, abundances)``: cube (size, size, bands) with NaN under clouds."""
    wl = np.linspace(0, 1, bands)
    centers = np.linspace(0.1, 0.9, k)
    spectra = np.stack(
        [np.exp(-((wl - c) ** 2) / 0.02) + 0.3 * np.exp(-((wl - 1 + c) ** 2) / 0.05) for c in centers]
    )
    fields = np.stack([gaussian_filter(rng.standard_normal((size, size)), size / 12) for _ in range(k)])
    fields /= fields.std(axis=(1, 2), keepdims=True)
    abund = np.exp(2 * fields) / np.exp(2 * fields).sum(axis=0)  # (k, y, x), sums to one
    cube = np.einsum("kyx,kb->yxb", abund, spectra)
    cube += 0.005 * rng.random(cube.shape)
    sky = gaussian_filter(rng.standard_normal((size, size)), size / 16)
    clouds = sky > np.quantile(sky, 1 - cloud_fraction)
    # Dead detector elements besides: 2 % of single (pixel, band) readings, so
    # many clear pixels are observed in most bands but not all.
    dead = rng.random(cube.shape) < 0.02
    return np.where(clouds[..., None] | dead, np.nan, cube), clouds, cube, spectra, abund


def spectral_angles(H: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angles (degrees) between matched rows of H and the true spectra, and the matching."""
    Hn = H / np.linalg.norm(H, axis=1, keepdims=True)
    Tn = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip(Tn @ Hn.T, -1, 1)))
    rows, cols = linear_sum_assignment(angles)
    return angles[rows, cols], cols


def main(argv=None) -> dict:
    args = parse_args(argv)
    size, bands, k, max_iter = (48, 40, 4, 300) if args.quick else (160, 100, 5, 500)
    out = args.out or Path(tempfile.mkdtemp(prefix="dask_nmf_missing_"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    cube, clouds, clear, spectra, abund = make_cube(size, bands, k, args.cloud_fraction, rng)
    V = cube.reshape(-1, bands)
    store = zarr.create_array(
        str(out / "cube.zarr"), shape=V.shape, chunks=(size * 8, bands), dtype=V.dtype
    )
    store[...] = V
    kw = dict(init="nndsvda", random_state=args.seed, max_iter=max_iter, tol=0)
    res = dask_nmf.factorize(str(out / "cube.zarr"), k, missing="nan", keep_in_memory=False, **kw)
    ref = dask_nmf.factorize(clear.reshape(-1, bands), k, **kw)
    summary = {"size": size, "bands": bands, "endmembers": k, "n_iter": res.n_iter}
    summary["cloud_fraction"] = float(clouds.mean())
    summary["missing_entries"] = float(np.isnan(V).mean())
    summary["partly_observed_pixels"] = int((np.isnan(V).any(1) & ~np.isnan(V).all(1)).sum())
    for name, fit in (("cloudy", res), ("clear", ref)):
        angles, match = spectral_angles(np.asarray(fit.H), spectra)
        W = np.asarray(fit.W)[:, match]
        # Abundances up to each endmember's scale: least squares on the clear pixels.
        seen = ~clouds.ravel()
        A = abund.reshape(k, -1).T
        scale = (W[seen] * A[seen]).sum(0) / np.maximum((W[seen] ** 2).sum(0), 1e-300)
        rmse = np.sqrt((((W * scale) - A)[seen] ** 2).mean(axis=0))
        summary[name] = {
            "spectral_angles_deg": angles.tolist(),
            "abundance_rmse": rmse.tolist(),
            "loss": fit.loss_history[-1],
        }
        if name == "cloudy":
            H_match = np.asarray(fit.H)[match]
    summary["cloudy_pixels_have_zero_abundance"] = bool(
        not np.asarray(res.W)[clouds.ravel()].any()
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].imshow(np.where(clouds, np.nan, clear[..., bands // 2]), cmap="viridis")
    axes[0].set_title(f"band {bands // 2}, {100 * clouds.mean():.0f} % of pixels under clouds")
    wl = np.arange(bands)
    for j in range(k):
        t = spectra[j] / np.linalg.norm(spectra[j])
        h = H_match[j] / np.linalg.norm(H_match[j])
        axes[1].plot(wl, t, "k-", lw=2, alpha=0.4)
        axes[1].plot(wl, h, "--", label=f"{summary['cloudy']['spectral_angles_deg'][j]:.2f}°")
    axes[1].set_title("endmember spectra: truth (grey) vs fit of the cloudy cube")
    axes[1].set_xlabel("band")
    axes[1].legend(title="spectral angle", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "missing_values_spectra.png", dpi=100)
    plt.close(fig)
    ranks = dask_nmf.select_rank(
        str(out / "cube.zarr"),
        range(2, k + 4),
        n_restarts=2,
        holdout=0.05,
        max_iter=max_iter,
        tol=1e-5,
        random_state=args.seed,
        keep_in_memory=False,
    )
    ranks.plot(out / "missing_values_rank.png")
    print(ranks.table())
    summary["rank"] = {
        "chosen_k": ranks.best_k,
        "passes": ranks.n_iter,
        "seconds": ranks.seconds,
        "rows": ranks.rows,
    }
    (out / "missing_values.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")
    return summary


if __name__ == "__main__":
    main()
