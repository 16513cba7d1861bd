"""factorize() on a real LocalCluster with two worker processes, V in zarr on disk."""

from __future__ import annotations

import glob
import tempfile
import warnings

import dask
import numpy as np
import pytest
from conftest import make_low_rank, write_zarr
from distributed import Client, Future
from sklearn.decomposition import NMF as SkNMF

import dask_nmf
from dask_nmf.passes import describe_key

COSTS = ["frobenius", "kullback-leibler"]


def scheduler_tasks(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def passes_at_scheduler(dask_scheduler) -> set[int]:
    """(On the scheduler) the iterations t whose block steps or new W blocks it
    holds.  (A pass that has already finished keeps only its W blocks, which
    the client holds.)"""
    from dask_nmf.passes import describe_key

    roles = [describe_key(key) for key in dask_scheduler.tasks]
    return {r["pass"] for r in roles if r and r["role"] in ("step", "W")}


@pytest.mark.parametrize("beta_loss", COSTS)
@pytest.mark.parametrize(
    "chunks",
    [(23, 17), (20, 41)],  # read by zarr; whole-row chunks decoded in place, blocks across chunks
)
def test_matches_sklearn_on_a_cluster(cluster_client, tmp_path, V_small, start, beta_loss, chunks):
    W0, H0 = start
    path = write_zarr(tmp_path / "V.zarr", V_small, chunks=chunks)
    model = SkNMF(4, solver="mu", init="custom", beta_loss=beta_loss, max_iter=300, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_sk = model.fit_transform(V_small, W=W0.copy(), H=H0.copy())
    res = dask_nmf.factorize(
        path,
        4,
        beta_loss=beta_loss,
        W_init=W0,
        H_init=H0,
        max_iter=300,
        tol=1e-3,
        block_rows=46,
        client=cluster_client,
        keep_in_memory=False,
    )
    assert res.n_iter == model.n_iter_ < 300
    np.testing.assert_allclose(res.H, model.components_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        cluster_client.compute(res.W, sync=True), W_sk, rtol=1e-9, atol=1e-12
    )


def test_scheduler_state_stays_bounded(cluster_client, V_small):
    """The lineage cut keeps the scheduler's task table from growing with t."""
    counts = {}

    def record(it, loss):
        counts[it] = scheduler_tasks(cluster_client)

    res = dask_nmf.factorize(
        V_small,
        3,
        init="random",
        max_iter=50,
        tol=0,
        block_rows=40,
        client=cluster_client,
        checkpoint_every=10,
        callback=record,
    )
    graph = res.diagnostics["graph_tasks"]
    assert graph[1] == graph[49]  # iteration 2 and iteration 50 submit the same graph
    # The scheduler forgets released keys asynchronously: allow a few in flight.
    assert max(counts[t] for t in range(31, 51)) <= max(counts[t] for t in range(11, 31)) + 10

    # Without the cut (no checkpoint within the run) the table grows with t:
    # this is the effect the cut exists to stop.
    counts.clear()
    dask_nmf.factorize(
        V_small,
        3,
        init="random",
        max_iter=50,
        tol=0,
        block_rows=40,
        client=cluster_client,
        checkpoint_every=1000,
        callback=record,
    )
    assert counts[50] > counts[20] + 4 * 15


def test_W_stays_on_the_workers(cluster_client, V_small, monkeypatch):
    gathered = []
    real = Client._gather

    async def spy(self, futures, *args, **kwargs):
        gathered.extend(f.key for f in futures)
        return await real(self, futures, *args, **kwargs)

    monkeypatch.setattr(Client, "_gather", spy)
    res = dask_nmf.factorize(
        V_small,
        3,
        init="random",
        max_iter=12,
        tol=0,
        block_rows=40,
        client=cluster_client,
    )
    monkeypatch.setattr(Client, "_gather", real)
    # one small reduced result per iteration (plus set-up), never a W block
    roles = [r["role"] for r in map(describe_key, gathered) if r]
    assert roles.count("report") == 12 and set(roles) <= {"report", "next-state"}, gathered
    assert not any("read_w_block" in str(k) for k in gathered), gathered
    assert len(gathered) <= 12 + 3
    futures = [v for v in dict(res.W.__dask_graph__()).values() if isinstance(v, Future)]
    assert len(futures) == 4
    who_has = cluster_client.who_has(futures)
    assert all(len(who_has[f.key]) >= 1 for f in futures)


def test_cluster_and_threaded_agree(cluster_client, V_small):
    kw = dict(init="nndsvda", random_state=5, max_iter=20, tol=0, block_rows=40)
    on_cluster = dask_nmf.factorize(V_small, 3, client=cluster_client, **kw)
    local = dask_nmf.factorize(V_small, 3, **kw)
    np.testing.assert_allclose(on_cluster.H, local.H, rtol=1e-8)
    np.testing.assert_allclose(
        cluster_client.compute(on_cluster.W, sync=True), local.W.compute(), rtol=1e-8
    )


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_numpy_V_is_scattered_once_not_sent_in_graphs(cluster_client, rng, init):
    """A NumPy V goes to the workers once, in row blocks: no graph (validation,
    the NNDSVD's SVD passes, the iterations, the estimator's transform) carries
    its values.  dask's own measure of each graph's pickled size says so."""
    V = make_low_rank(rng, 4000, 100, 5)  # 3.2 MB, blocks of 0.8 MB
    kw = dict(init=init, random_state=0, max_iter=12, tol=0, block_rows=1000)
    with (
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "256KiB"}),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("error", message="Sending large graph")
        on_cluster = dask_nmf.factorize(V, 5, client=cluster_client, **kw)
        W_cluster = cluster_client.compute(on_cluster.W, sync=True)
        with cluster_client.as_current():
            est = dask_nmf.NMF(5, **kw)
            W_est = est.fit_transform(V)
            W_new = est.transform(V[:1500])
    local = dask_nmf.factorize(V, 5, **kw)
    np.testing.assert_allclose(on_cluster.H, local.H, rtol=1e-8)
    np.testing.assert_allclose(W_cluster, local.W.compute(), rtol=1e-8)
    np.testing.assert_allclose(W_est, W_cluster, rtol=1e-8)
    assert W_new.shape == (1500, 5) and np.isfinite(W_new).all()


def test_default_client_is_used_and_temp_store_removed(cluster_client, V_small):
    before = set(glob.glob(f"{tempfile.gettempdir()}/dask-nmf-*"))
    with cluster_client.as_current():
        res = dask_nmf.factorize(V_small, 3, init="random", max_iter=15, tol=0, block_rows=40)
    values = dict(res.W.__dask_graph__()).values()
    assert any(isinstance(v, Future) for v in values)  # W lives on the cluster
    assert set(glob.glob(f"{tempfile.gettempdir()}/dask-nmf-*")) == before
    assert np.isfinite(cluster_client.compute(res.W, sync=True)).all()


@pytest.mark.parametrize("source", ["zarr", "dask"])
def test_default_blocks_follow_worker_memory(tmp_path, source):
    """Blocks of a dense zarr store get at most 1/8 of a worker thread's memory
    limit (here 512 MiB / 2 / 8), any other lazy V 1/16: the NNDSVD's SVD reads
    only a zarr store in half blocks."""
    import dask.array as da
    from distributed import LocalCluster

    V = da.ones((200_000, 100), chunks=(1000, 100))  # 160 MB, never in memory whole
    if source == "zarr":
        V.to_zarr(str(tmp_path / "V.zarr"))
        V = str(tmp_path / "V.zarr")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, memory_limit="512MiB", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        res = dask_nmf.factorize(
            V, 2, init="random", max_iter=1, tol=0, client=client, keep_in_memory=False
        )
    fraction = 8 if source == "zarr" else 16
    assert res.params["block_rows"] * 100 * 8 <= 2**29 // 2 // fraction
    # At most 41 (20) whole 1000-row chunks, at least 4 blocks, shared evenly by 2 threads.
    assert res.params["block_rows"] == (34_000 if source == "zarr" else 20_000)
    # Without a cluster the same V gets dask's 128 MiB chunk-size cap, split for 2 threads.
    local = dask_nmf.factorize(V, 2, init="random", max_iter=1, tol=0, keep_in_memory=False)
    assert local.params["block_rows"] == 50_000


def test_out_of_core_blocks_stay_on_balanced_workers(cluster_client, zarr_V):
    """V re-read from zarr: each block's step runs on one worker, the same every
    iteration, and the blocks are shared evenly; no block of V is a task result."""
    from distributed import get_task_stream

    with get_task_stream(cluster_client) as stream:
        dask_nmf.factorize(
            zarr_V,
            3,
            init="random",
            max_iter=4,
            tol=0,
            block_rows=20,  # 8 blocks
            client=cluster_client,
            keep_in_memory=False,
        )
    where: dict[int, set] = {}
    for task in stream.data:
        role = describe_key(task["key"])
        if role and role["role"] == "step" and role["pass"] >= 1:
            where.setdefault(role["block"], set()).add(task["worker"])
    # V's blocks are never task results, in the validation/statistics pass neither
    assert not any("from-zarr" in str(t["key"]) for t in stream.data)
    assert sum(str(t["key"]).startswith("_stats_of_rows") for t in stream.data) == 8
    assert sorted(where) == list(range(8))
    assert all(len(w) == 1 for w in where.values()), where
    per_worker = [sum(w == {addr} for w in where.values()) for addr in cluster_client.nthreads()]
    assert per_worker == [4, 4]


@pytest.mark.parametrize("beta_loss", COSTS)
def test_next_pass_is_submitted_before_the_client_sees_the_loss(cluster_client, V_small, beta_loss):
    """No round trip through the client between passes: when iteration t's loss
    reaches the client, the pass from state t is already at the scheduler
    (except from a checkpointed state, where W is swapped for its stored copy)."""

    seen = {}

    def record(t, loss):
        seen[t] = cluster_client.run_on_scheduler(passes_at_scheduler)

    max_iter = 14
    res = dask_nmf.factorize(
        V_small,
        3,
        beta_loss=beta_loss,
        init="random",
        max_iter=max_iter,
        tol=0,
        block_rows=40,
        client=cluster_client,
        checkpoint_every=5,
        loss_every=1,
        callback=record,
    )
    assert res.n_iter == max_iter
    # Frobenius reports t after pass t - 1; KL reports t with pass t itself.
    ahead = [t if beta_loss == "frobenius" else t + 1 for t in seen]
    expected = [s for s in ahead if s < max_iter and s % 5 != 0]
    assert expected
    assert all(s in seen[t] for t, s in zip(seen, ahead) if s in expected), seen


def test_no_pass_runs_ahead_when_it_would_read_V_early(cluster_client, V_small):
    """V as a dask array re-read every pass: its read tasks have no inputs and would
    run as soon as the next pass is submitted, so passes are not submitted ahead."""
    import dask.array as da

    seen = {}
    res = dask_nmf.factorize(
        da.from_array(V_small, chunks=(40, 41)),
        3,
        init="random",
        max_iter=8,
        tol=0,
        block_rows=40,
        client=cluster_client,
        keep_in_memory=False,
        callback=lambda t, loss: seen.update(
            {t: cluster_client.run_on_scheduler(passes_at_scheduler)}
        ),
    )
    assert res.n_iter == 8 and len(seen) == 8
    assert all(t not in passes for t, passes in seen.items()), seen


def test_a_numpy_v_stays_put_and_only_sums_and_H_travel(cluster_client):
    """A NumPy V is scattered once; each block's step runs where its block is
    (V and W never move), and a pass sends between the workers only one
    worker's partial sums and the new state: 2 (workers - 1) k x n numbers."""
    rng = np.random.default_rng(0)
    m, n, k = 40, 6_000, 4
    V = make_low_rank(rng, m, n, k)
    cluster_client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
    dask_nmf.factorize(V, k, init="random", max_iter=6, tol=0, client=cluster_client)
    sent = cluster_client.run(
        lambda dask_worker: [
            (key, d["total"]) for d in dask_worker.transfer_outgoing_log for key in d["keys"]
        ]
    )
    moved = [
        (describe_key(key) or {"role": key}, size) for log in sent.values() for key, size in log
    ]
    roles = {r["role"] for r, _ in moved}
    # (The start's W blocks, made on some worker, join their V blocks once.)
    assert not roles & {"step", "W", "W-in", "V"}, roles
    assert not any(str(role).startswith("ndarray-") for role in roles), roles  # V's blocks
    per_pass = [size for r, size in moved if r["role"] in ("partials", "next-state")]
    assert 6 <= len(per_pass) <= 2 * 6  # one partial (and one state) per pass, no more
    assert max(per_pass) < 1.2 * k * n * 8
