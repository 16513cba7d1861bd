"""select_rank: every candidate rank in the same passes over V, held-out entries,
stability across restarts -- against separate masked fits of each candidate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import counting_array, write_zarr

import dask_nmf
from dask_nmf.cli import cli
from dask_nmf.io import InputError
from dask_nmf.rank import parse_ks, stability
from dask_nmf.solvers.stacked import mark_held_out, masks_of, uniform_of_entries


def planted(seed=0, m=240, n=60, k=4, noise=0.05):
    """Rank k plus zero-mean noise, clipped at 0 (uniform noise would add a
    constant: one more component)."""
    rng = np.random.default_rng(seed)
    W = rng.random((m, k)) ** 3  # sparse-ish, well separated components
    H = rng.random((k, n)) ** 3
    return np.maximum(W @ H + noise * rng.standard_normal((m, n)), 0)


def test_held_out_entries_do_not_depend_on_the_row_blocks():
    """The mark of an entry is a function of the seed and its position only: two
    splittings of the rows mark the same entries; about the asked fraction."""
    V = planted()
    whole = mark_held_out(V, 0.1, 7, 0, V.shape[1])
    split = np.vstack(
        [mark_held_out(V[a : a + 50], 0.1, 7, a, V.shape[1]) for a in range(0, 240, 50)]
    )
    np.testing.assert_array_equal(np.signbit(whole), np.signbit(split))
    train, held = masks_of(whole)
    assert abs(held.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(np.abs(whole), V)  # the values come back exactly
    assert not (train & held).any() and (train | held).all()
    other = mark_held_out(V, 0.1, 8, 0, V.shape[1])
    assert (np.signbit(other) != np.signbit(whole)).any()  # another seed, other entries
    u = uniform_of_entries(3, (0, 1000), 100)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_zeros_nan_and_negative_zero_are_marked_soundly():
    V = np.array([[0.0, -0.0, np.nan, 1.0]] * 50)
    marked = mark_held_out(V, 0.5, 1, 0, 4)
    train, held = masks_of(marked)
    assert not train[:, 2].any() and not held[:, 2].any()  # missing: in neither
    assert held[:, :2].any() and train[:, 1].any()  # -0.0 not mistaken for held out
    assert (held | train)[:, [0, 1, 3]].all()


def reference_masked_mu(V, M, W, H, n_iter):
    """Plain NumPy weighted Frobenius MU (scikit-learn's guards)."""
    eps = np.finfo(np.float32).eps
    V0 = np.where(M, V, 0)
    for _ in range(n_iter):
        den = (M * (W @ H)) @ H.T
        den[den == 0] = eps
        W = W * (V0 @ H.T) / den
        den = W.T @ (M * (W @ H))
        den[den == 0] = eps
        H = H * (W.T @ V0) / den
    return W, H


def test_each_candidate_runs_its_own_masked_fit():
    """The stacked fit equals separate weighted-MU fits of each candidate on the
    training entries, from the same starts: held-out and training errors too."""
    V = planted()
    res = dask_nmf.select_rank(V, [2, 3], n_restarts=2, holdout=0.1, max_iter=15, tol=0)
    assert res.n_iter == 15
    marked = mark_held_out(V, 0.1, 0, 0, V.shape[1])
    train, held = masks_of(marked)
    for cand in res.candidates:
        k = cand["k"]
        H_end = res.components[k][cand["restart"]]
        assert H_end.shape == (k, V.shape[1])
    # Rebuild each candidate's start the way select_rank draws it, and compare.
    from dask_nmf.init import random_init
    from dask_nmf.io import open_input

    rng = np.random.RandomState(0)
    mean = V[train].sum() / train.sum()
    Vin = open_input(np.where(train, V, np.nan), V.shape[0])
    for cand in res.candidates:
        k = cand["k"]
        W_blocks, H0 = random_init(Vin, k, mean, int(rng.randint(0, 2**31 - 1)))
        W0 = np.vstack([np.asarray(w.compute()) for w in W_blocks])
        W, H = reference_masked_mu(V, train, W0, H0, 15)
        np.testing.assert_allclose(res.components[k][cand["restart"]], H, rtol=1e-9, atol=1e-12)
        R = V - W @ H
        assert cand["held_out_error"] == pytest.approx(
            math.sqrt((R[held] ** 2).sum() / held.sum()), rel=1e-9
        )
        assert cand["train_error"] == pytest.approx(
            math.sqrt((R[train] ** 2).sum() / train.sum()), rel=1e-9
        )


@pytest.mark.slow
@pytest.mark.parametrize("seed, k", [(1, 5), (3, 7)])
def test_picks_the_planted_rank_and_its_components_are_stable(seed, k):
    V = planted(seed=seed, m=300, n=80, k=k, noise=0.02)
    ks = range(k - 3, k + 3)
    res = dask_nmf.select_rank(V, ks, n_restarts=3, holdout=0.1, max_iter=500, tol=1e-5)
    assert res.best_k == k, res.table()
    by_k = {r["k"]: r for r in res.rows}
    assert by_k[k]["silhouette"] > 0.9 and by_k[k]["similarity"] > 0.95
    assert by_k[k]["held_out_error"] < 0.5 * by_k[k - 1]["held_out_error"]
    assert by_k[k + 2]["train_error"] < by_k[k]["train_error"]  # training error keeps falling
    assert by_k[k + 2]["silhouette"] < by_k[k]["silhouette"]
    assert "<- chosen" in res.table()


def test_reads_each_chunk_once_per_pass_for_all_ranks(tmp_path):
    """k = 2..6 with 2 restarts from a store re-read every pass: the chunk reads
    per pass are the chunks of V, not ten times them."""
    V = planted(m=120, n=40)
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(30, 20))  # 4 x 2 = 8 chunks
    reads = {}
    for n_iter in (3, 7):
        arr, store = counting_array(path)
        dask_nmf.select_rank(
            arr, "2-6", n_restarts=2, max_iter=n_iter, tol=0, block_rows=30, keep_in_memory=False
        )
        reads[n_iter] = store.chunk_reads
    assert (reads[7] - reads[3]) / 4 == 8


def test_choose_k_takes_the_first_k_on_the_plateau():
    from dask_nmf.rank import choose_k

    def row(k, err, std):
        return dict(k=k, held_out_error=err, held_out_std=std)

    rows = [row(2, 0.5, 0.01), row(3, 0.2, 0.01), row(4, 0.103, 0.01), row(5, 0.1, 0.002)]
    assert choose_k(rows) == 5  # within 0.002 of the lowest: only k = 5
    rows[-1]["held_out_std"] = 0.005
    assert choose_k(rows) == 4  # k = 4 is within one std of the lowest
    assert choose_k([row(2, 0.3, 0.0), row(3, 0.1, 0.0)]) == 3


def test_stability_of_identical_and_of_shuffled_components(rng):
    H = rng.random((4, 30))
    assert stability([H, H[[2, 0, 3, 1]], H[[1, 0, 2, 3]]])[1] == pytest.approx(1.0)
    assert stability([H, H[::-1]])[0] == pytest.approx(1.0)
    noisy = [rng.random((4, 30)) for _ in range(3)]
    assert stability(noisy)[0] < 0.5
    assert all(math.isnan(x) for x in stability([H]))


@pytest.mark.parametrize(
    "ks, expected", [("2-5", [2, 3, 4, 5]), ("3,6,4", [3, 4, 6]), (range(2, 4), [2, 3])]
)
def test_parse_ks(ks, expected):
    assert parse_ks(ks) == expected


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ks="a-b"), "expected ranks"),
        (dict(ks=[0, 2]), "positive integers"),
        (dict(holdout=0.9), "holdout"),
        (dict(n_restarts=0), "n_restarts"),
        (dict(ks=[100]), "exceed"),
        (dict(beta_loss="itakura-saito"), "missing values are not supported"),
    ],
)
def test_bad_options_are_refused_before_any_work(kw, match):
    with pytest.raises(InputError, match=match):
        dask_nmf.select_rank(planted(), **kw)


@pytest.mark.slow
def test_rank_command_and_plot(tmp_path):
    V = planted()
    path = write_zarr(tmp_path / "V.zarr", V, chunks=(60, 60))
    png, js = tmp_path / "rank.png", tmp_path / "rank.json"
    r = CliRunner().invoke(
        cli,
        [
            "rank",
            path,
            "--ks",
            "2-5",
            "--restarts",
            "2",
            "--max-iter",
            "40",
            "--plot",
            str(png),
            "--json",
            str(js),
            "--n-workers",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "held-out error" in r.output and "<- chosen" in r.output
    assert png.stat().st_size > 1000
    import json

    out = json.loads(js.read_text())
    assert out["ks"] == [2, 3, 4, 5] and len(out["candidates"]) == 8
    again = CliRunner().invoke(cli, ["rank", path, "--ks", "2-3", "--json", str(js), "--quiet"])
    assert again.exit_code != 0 and "exists; --overwrite replaces it" in again.output
    assert json.loads(js.read_text())["ks"] == [2, 3, 4, 5]  # untouched


@pytest.mark.slow
def test_on_a_cluster_numpy_v_is_scattered_once_and_results_agree(cluster_client):
    """On a LocalCluster a NumPy V goes to the workers once (no graph carries its
    values: dask's own large-graph measure), and the result is the threaded one."""
    import warnings

    import dask

    V = planted(m=4000, n=100)  # 3.2 MB
    kw = dict(n_restarts=2, max_iter=8, tol=0, block_rows=1000)
    with (
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "256KiB"}),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("error", message="Sending large graph")
        on_cluster = dask_nmf.select_rank(V, [2, 3], client=cluster_client, **kw)
    local = dask_nmf.select_rank(V, [2, 3], **kw)
    for a, b in zip(on_cluster.candidates, local.candidates):
        assert a["held_out_error"] == pytest.approx(b["held_out_error"], rel=1e-9)
