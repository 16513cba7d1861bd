"""The examples run (in reduced size) and show what their write-ups say they show.

Each example's ``main()`` is imported from examples/ and run with ``--quick`` and an
output folder under ``tmp_path``; the cluster script runs as a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    pytest.importorskip("matplotlib")  # the examples' one extra dependency
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_figures(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.is_file(), f"{name} was not written"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{name} is not a PNG"
        assert len(data) > 10_000, f"{name} looks empty ({len(data)} bytes)"


def test_digits(tmp_path):
    out = load_example("digits").main(["--quick", "--out", str(tmp_path)])
    check_figures(
        tmp_path,
        ["digits_parts.png", "digits_reconstructions.png", "digits_decomposition.png"],
    )
    summary = json.loads((tmp_path / "digits.json").read_text())
    assert set(summary["costs"]) == {"frobenius", "kullback-leibler"}
    for cost, s in summary["costs"].items():
        losses = out["fits"][cost]["losses"]
        assert np.all(np.diff(losses) <= 0), cost  # MU never increases its cost
        assert s["loss_never_increased"]
        assert s["relative_error"] < 0.45, (cost, s["relative_error"])
        for key in ("hoyer_H_parts", "hoyer_W_per_digit", "hoyer_W_per_part"):
            assert 0 < s[key] < 1, (cost, key, s[key])
        # The parts are sparser than the digits they are learned from: a parts-based code.
        assert s["hoyer_H_parts"] > summary["hoyer_V_rows"], cost
        W, H = out["fits"][cost]["W"], out["fits"][cost]["H"]
        assert W.min() >= 0 and H.min() >= 0
        assert H.shape == (summary["n_components"], 64)


def test_random_matrix(tmp_path):
    out = load_example("random_matrix").main(["--quick", "--out", str(tmp_path)])
    check_figures(tmp_path, ["random_losses.png", "random_recovery.png"])
    summary = json.loads((tmp_path / "random_matrix.json").read_text())
    for cost, s in summary["costs"].items():
        ours = out["runs"][cost]["dask_nmf"]["losses"]
        assert len(ours) == summary["iterations"] + 1
        assert np.all(np.diff(ours) <= 0), cost
        # The three implementations follow one trajectory, to rounding error.
        assert s["max_rel_loss_diff_naive"] < 1e-10, s
        assert s["max_rel_loss_diff_sklearn"] < 1e-10, s
        assert s["max_rel_factor_diff_naive"] < 1e-8, s
        assert s["max_rel_factor_diff_sklearn"] < 1e-8, s
        assert s["sklearn_one_step_vs_full_run"] < 1e-10, s
        # The planted factors are found (after matching and rescaling).
        assert min(s["corr_H_per_component"]) > 0.98, s["corr_H_per_component"]
        assert min(s["corr_W_per_component"]) > 0.95, s["corr_W_per_component"]
        assert s["denoising_error"] < summary["noise"], s


def test_hyperspectral(tmp_path):
    fig, work = tmp_path / "figures", tmp_path / "work"
    out = load_example("hyperspectral").main(["--quick", "--out", str(fig), "--workdir", str(work)])
    check_figures(
        fig,
        ["hyperspectral_spectra.png", "hyperspectral_abundances.png", "hyperspectral_memory.png"],
    )
    summary = json.loads((fig / "hyperspectral.json").read_text())
    assert summary["n_iter"] > 0
    assert np.all(np.diff(out["loss_history"]) <= 0)
    # Every endmember is found: small spectral angles, abundance maps close to the truth.
    assert len(summary["spectral_angles_deg"]) == summary["endmembers"]
    assert max(summary["spectral_angles_deg"]) < 6.0, summary["spectral_angles_deg"]
    assert max(summary["abundance_rmse"]) < 0.08, summary["abundance_rmse"]
    assert abs(summary["abundance_sum_mean"] - 1) < 0.05
    # The command ran on worker processes that were measured, within their limit.
    mem = summary["memory"]
    assert mem["samples"] > 0 and len(mem["peak_worker_rss_each"]) == 2
    assert 0 < mem["peak_worker_rss"] < 1024**3
    # The cube was written to zarr in strips and the result is a complete dask-nmf store.
    assert (work / "cube.zarr").is_dir()
    import dask_nmf

    res = dask_nmf.load(str(work / "unmixing.zarr"))
    assert res.n_iter == summary["n_iter"]
    assert res.W.shape == (summary["size"] ** 2, summary["endmembers"])


def test_missing_values(tmp_path):
    """A cube with 20 % of its pixels under clouds unmixes about as well as the clear cube."""
    summary = load_example("missing_values").main(["--quick", "--out", str(tmp_path)])
    check_figures(tmp_path, ["missing_values_spectra.png", "missing_values_rank.png"])
    assert summary["rank"]["chosen_k"] == summary["endmembers"]
    assert abs(summary["cloud_fraction"] - 0.2) < 0.01
    assert summary["partly_observed_pixels"] > 0.3 * summary["size"] ** 2  # dead elements
    cloudy, clear = summary["cloudy"], summary["clear"]
    assert max(cloudy["spectral_angles_deg"]) < max(clear["spectral_angles_deg"]) + 2.0
    assert max(cloudy["abundance_rmse"]) < max(clear["abundance_rmse"]) + 0.02
    assert summary["cloudy_pixels_have_zero_abundance"]


def test_single_cell(tmp_path):
    summary = load_example("single_cell").main(["--quick", "--out", str(tmp_path)])
    assert summary["shape"] == [20_000, 500] and summary["iterations"] == 20
    assert summary["monotone"] and summary["loss_last"] < summary["loss_first"]
    assert 0 < summary["peak_worker_rss_gb"] < 2 * 1.0737  # two workers x 1 GiB
    # The stored result's KL divergence, computed here at the non-zeros of the
    # CSR store (sum WH from the factors' sums), is the last loss reported.
    import scipy.sparse as sp

    import dask_nmf

    res = dask_nmf.load(str(tmp_path / "result.zarr"))
    W, H = res.W.compute(), res.H
    g = zarr.open_group(str(tmp_path / "counts.zarr"), mode="r")
    X = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(20_000, 500))
    rows, cols = X.nonzero()
    wh = np.einsum("ij,ji->i", W[rows], H[:, cols]).astype(np.float64)
    v = np.asarray(X[rows, cols]).ravel().astype(np.float64)
    kl = float(np.sum(v * np.log(v / wh)) - v.sum() + W.sum(axis=0) @ H.sum(axis=1))
    assert kl == pytest.approx(summary["loss_last"], rel=1e-4)


def _port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(shutil.which("dask") is None, reason="needs the `dask` command")
def test_cluster_script(tmp_path):
    # The `dask` and `dask-nmf` commands of this environment come first on PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, QUICK="1", PYTHON=sys.executable, PATH=path)
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "cluster.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "2 workers joined" in output
    assert re.search(r"iterations: \d+ \(finished", output), output
    for store in ("V.zarr", "result.zarr", "W_transform.zarr"):
        assert (tmp_path / store).is_dir(), store
    # The scheduler the script started is gone afterwards.
    port = int(re.search(r"scheduler at tcp://127\.0\.0\.1:(\d+)", output).group(1))
    assert not _port_is_open(port)
    W = zarr.open_array(str(tmp_path / "W_transform.zarr"), mode="r")
    assert W.shape == (6000, 5) and float(np.min(W[:])) >= 0


def test_default_output_is_a_new_folder(capsys):
    """Without --out, an example leaves the committed figures alone."""
    committed = EXAMPLES / "figures"
    before = {p.name: p.read_bytes() for p in committed.iterdir()}
    load_example("digits").main(["--quick", "--max-iter", "5"])
    printed = re.search(r"figures and numbers go to (\S+)", capsys.readouterr().out)
    assert printed, "the example did not say where its output went"
    out = Path(printed.group(1))
    try:
        assert out.resolve() != committed.resolve()
        assert (out / "digits.json").is_file()
        assert {p.name: p.read_bytes() for p in committed.iterdir()} == before
    finally:
        shutil.rmtree(out, ignore_errors=True)
