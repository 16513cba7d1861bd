"""Results and checkpoints in zarr: round trips, consistency under SIGKILL, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from conftest import make_low_rank

import dask_nmf
from dask_nmf import persistence

COSTS = ["frobenius", "kullback-leibler"]


def test_result_round_trip(tmp_path, V_small):
    res = dask_nmf.factorize(V_small, 3, init="random", random_state=0, max_iter=12, block_rows=40)
    res.to_zarr(tmp_path / "r.zarr")
    back = dask_nmf.load(tmp_path / "r.zarr")
    np.testing.assert_array_equal(back.W.compute(), res.W.compute())
    np.testing.assert_array_equal(back.H, res.H)
    assert back.loss_history == res.loss_history
    assert (back.n_iter, back.converged, back.beta_loss) == (12, res.converged, "frobenius")
    meta = persistence.read_meta(tmp_path / "r.zarr")
    assert meta["version"] == dask_nmf.__version__
    assert meta["params"]["n_components"] == 3 and meta["params"]["block_rows"] == 40
    assert meta["input"]["kind"] == "ndarray"
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert group[f"{meta['state']['slot']}/W"].chunks == (40, 3)  # row blocks of V
    with pytest.raises(dask_nmf.InputError, match="overwrite=True"):  # never silently
        res.to_zarr(tmp_path / "r.zarr")
    res.to_zarr(tmp_path / "r.zarr", overwrite=True)


def test_estimator_save_and_load(tmp_path, V_small):
    est = dask_nmf.NMF(3, beta_loss="kullback-leibler", max_iter=15, tol=0, random_state=1)
    est.fit(V_small)
    est.save(tmp_path / "model.zarr")
    back = dask_nmf.NMF.load(tmp_path / "model.zarr")
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.components_, est.components_)
    np.testing.assert_allclose(back.transform(V_small), est.transform(V_small))


def test_load_refuses_what_is_not_ours(tmp_path):
    with pytest.raises(FileNotFoundError):
        dask_nmf.load(tmp_path / "none.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a dask_nmf result"):
        dask_nmf.load(tmp_path / "g.zarr")


@pytest.mark.parametrize("beta_loss", COSTS)
def test_every_checkpoint_is_the_state_of_its_iteration(tmp_path, V_small, beta_loss):
    kw = dict(beta_loss=beta_loss, init="random", random_state=3, tol=0, block_rows=40)
    seen = []

    def check(iteration, path):
        ck = dask_nmf.load(path)
        assert ck.n_iter == iteration
        seen.append((iteration, ck.W.compute(), ck.H))

    res = dask_nmf.factorize(
        V_small,
        3,
        max_iter=23,
        checkpoint=tmp_path / "ck.zarr",
        checkpoint_every=5,
        on_checkpoint=check,
        **kw,
    )
    assert [it for it, _, _ in seen] == [0, 5, 10, 15, 20, 23]
    for it, W, H in seen[1:]:
        ref = dask_nmf.factorize(V_small, 3, max_iter=it, **kw)
        np.testing.assert_allclose(W, ref.W.compute(), rtol=1e-12)
        np.testing.assert_allclose(H, ref.H, rtol=1e-12)
    final = dask_nmf.load(tmp_path / "ck.zarr")
    assert persistence.read_meta(tmp_path / "ck.zarr")["state"]["finished"]
    np.testing.assert_array_equal(final.H, res.H)


@pytest.mark.parametrize("beta_loss", COSTS)
def test_resume_equals_an_uninterrupted_run(tmp_path, V_small, beta_loss):
    kw = dict(beta_loss=beta_loss, init="nndsvda", random_state=0, tol=1e-3, block_rows=40)
    straight = dask_nmf.factorize(V_small, 4, max_iter=400, **kw)
    assert 20 < straight.n_iter < 400  # tol stops it, after the break point below
    path = tmp_path / "ck.zarr"
    first = dask_nmf.factorize(V_small, 4, max_iter=17, checkpoint=path, checkpoint_every=5, **kw)
    assert first.n_iter == 17
    resumed = dask_nmf.factorize(V_small, 4, max_iter=400, checkpoint=path, resume=True, **kw)
    assert resumed.n_iter == straight.n_iter
    np.testing.assert_allclose(resumed.H, straight.H, rtol=1e-6)
    np.testing.assert_allclose(resumed.W.compute(), straight.W.compute(), rtol=1e-6)
    a, b = np.array(resumed.loss_history), np.array(straight.loss_history)
    # KL: the first run also evaluated the loss of its last state (17), which
    # the straight run skipped (loss_every); every loss both know is the same.
    assert not np.isnan(a[~np.isnan(b)]).any()
    both = ~np.isnan(a) & ~np.isnan(b)
    np.testing.assert_allclose(a[both], b[both], rtol=1e-9)


def test_resume_refuses_a_different_problem(tmp_path, V_small):
    path = tmp_path / "ck.zarr"
    dask_nmf.factorize(V_small, 3, init="random", max_iter=5, checkpoint=path)
    with pytest.raises(ValueError, match="n_components=3"):
        dask_nmf.factorize(V_small, 4, max_iter=9, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="shape"):
        dask_nmf.factorize(V_small[:100], 3, max_iter=9, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="already exists"):
        dask_nmf.factorize(V_small, 3, max_iter=9, checkpoint=path)
    with pytest.raises(ValueError, match="no checkpoint"):
        dask_nmf.factorize(V_small, 3, max_iter=9, checkpoint=tmp_path / "x.zarr", resume=True)


CHILD = textwrap.dedent(
    """
    import sys, numpy as np, dask_nmf
    rng = np.random.default_rng(7)
    V = rng.random((4000, 8)) @ rng.random((8, 300)) + 0.01 * rng.random((4000, 300))
    def ready(it, path):  # the first checkpoint is on disk: from now on, kill at any moment
        if it == 0:
            print("ready", flush=True)
    dask_nmf.factorize(V, 8, beta_loss=sys.argv[2], init="random", random_state=1, max_iter=100000,
                       tol=0, block_rows=500, checkpoint=sys.argv[1], checkpoint_every=1,
                       on_checkpoint=ready)
    """
)


def _child_V():
    rng = np.random.default_rng(7)
    return rng.random((4000, 8)) @ rng.random((8, 300)) + 0.01 * rng.random((4000, 300))


@pytest.mark.parametrize("beta_loss", COSTS)
def test_sigkill_at_random_moments_leaves_a_consistent_checkpoint(tmp_path, beta_loss):
    """Kill the writer at random points; the checkpoint is always one whole iteration."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    V = _child_V()
    rng = np.random.default_rng(0)
    kw = dict(beta_loss=beta_loss, init="random", random_state=1, tol=0, block_rows=500)
    for trial in range(3):
        path = tmp_path / f"ck{trial}.zarr"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), beta_loss], stdout=subprocess.PIPE
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.5 + 2.0 * rng.random())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ck = dask_nmf.load(path)  # readable, whatever moment the kill hit
        assert ck.n_iter >= 1, "the run should have got past its first checkpoints"
        ref = dask_nmf.factorize(V, 8, max_iter=ck.n_iter, **kw)
        np.testing.assert_allclose(ck.H, ref.H, rtol=1e-12)
        np.testing.assert_allclose(ck.W.compute(), ref.W.compute(), rtol=1e-12)
    # and the last one resumes to the uninterrupted answer
    target = ck.n_iter + 7
    resumed = dask_nmf.factorize(V, 8, max_iter=target, checkpoint=path, resume=True, **kw)
    straight = dask_nmf.factorize(V, 8, max_iter=target, **kw)
    np.testing.assert_allclose(resumed.H, straight.H, rtol=1e-9)


def test_state_slots_alternate(tmp_path, V_small):
    path = tmp_path / "ck.zarr"
    slots = []
    dask_nmf.factorize(
        make_low_rank(np.random.default_rng(0), 50, 20, 2),
        2,
        init="random",
        max_iter=4,
        checkpoint=path,
        checkpoint_every=1,
        on_checkpoint=lambda it, p: slots.append(persistence.read_meta(p)["state"]["slot"]),
    )
    assert slots == ["state0", "state1", "state0", "state1", "state0"]  # iterations 0..4
