"""Shared fixtures: data, zarr stores on disk, a real multi-process cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr


def reference_mu(V, W, H, beta, n_iter, l1_W=0.0, l2_W=0.0, l1_H=0.0, l2_H=0.0):
    """Plain NumPy multiplicative updates (W then H), written from the update rules.

    Kept deliberately naive -- whole matrices, no sub-blocks -- as the
    reference the kernels and the driver are checked against.  Zero
    denominators get the same float32-eps guard as scikit-learn.
    """
    eps = np.finfo(np.float32).eps
    W, H = W.copy(), H.copy()
    losses = []
    for _ in range(n_iter):
        if beta == 2:
            num, den = V @ H.T, W @ H @ H.T + l1_W + l2_W * W
        else:
            WH = np.maximum(W @ H, eps)
            num, den = (V / WH) @ H.T, H.sum(axis=1)[None, :] + l1_W + l2_W * W
        W = W * num / np.where(den == 0, eps, den)
        if beta == 2:
            num, den = W.T @ V, W.T @ W @ H + l1_H + l2_H * H
        else:
            WH = np.maximum(W @ H, eps)
            colsum = W.sum(axis=0)
            colsum[colsum == 0] = 1.0
            num, den = W.T @ (V / WH), colsum[:, None] + l1_H + l2_H * H
        H = H * num / np.where(den == 0, eps, den)
        if beta == 1:
            H[H < np.finfo(np.float64).eps] = 0
        losses.append(reference_loss(V, W, H, beta))
    return W, H, losses


def reference_masked_mu(V, M, W, H, beta, n_iter, l1_W=0.0, l2_W=0.0, l1_H=0.0, l2_H=0.0):
    """Plain NumPy weighted multiplicative updates over the entries where M is True.

    Written from the weighted rules (whole matrices, no sub-blocks): Frobenius
    ``W * ((M∘V) Hᵀ) / ((M∘WH) Hᵀ + ...)``, KL ``W * ((M∘V/WH) Hᵀ) / (M Hᵀ + ...)``
    and their H analogues; returns the factors and each iteration's loss over
    the observed entries and its penalty.
    """
    eps = np.finfo(np.float32).eps
    V0, Mf = np.where(M, V, 0.0), M.astype(float)
    W, H = W.copy(), H.copy()
    losses, penalties = [], []
    for _ in range(n_iter):
        if beta == 2:
            num, den = V0 @ H.T, (Mf * (W @ H)) @ H.T + l1_W + l2_W * W
        else:
            num, den = (V0 / np.maximum(W @ H, eps)) @ H.T, Mf @ H.T + l1_W + l2_W * W
        W = W * num / np.where(den == 0, eps, den)
        if beta == 2:
            num, den = W.T @ V0, W.T @ (Mf * (W @ H)) + l1_H + l2_H * H
        else:
            C = W.T @ Mf
            num, den = W.T @ (V0 / np.maximum(W @ H, eps)), np.where(C == 0, 1, C) + l1_H + l2_H * H
        H = H * num / np.where(den == 0, eps, den)
        if beta == 1:
            H[H < np.finfo(np.float64).eps] = 0
        losses.append(reference_masked_loss(V, M, W, H, beta))
        penalties.append(
            l1_W * W.sum() + 0.5 * l2_W * (W**2).sum() + l1_H * H.sum() + 0.5 * l2_H * (H**2).sum()
        )
    return W, H, losses, penalties


def reference_masked_loss(V, M, W, H, beta):
    """The loss over the entries where M is True, computed directly."""
    return reference_loss(V[M], W, H, beta, mask=M)


def reference_loss(V, W, H, beta, mask=None):
    """0.5 ||V - WH||^2 or D(V || WH), computed directly (over ``mask`` when given,
    V then being the observed values ``V[mask]``)."""
    WH = W @ H if mask is None else (W @ H)[mask]
    if beta == 2:
        return 0.5 * float(((V - WH) ** 2).sum())
    # as scikit-learn: W·H floored inside the log only; 0 log 0 = 0
    safe = np.maximum(WH, np.finfo(np.float32).eps)
    mask = V > 0
    return float((V[mask] * np.log(V[mask] / safe[mask])).sum() - V.sum() + WH.sum())


#: Row blocks of V_small (157 rows) for tests that run passes by hand.
BOUNDS = [(0, 50), (50, 100), (100, 157)]


def one_pass(solver, V, W, state, with_loss=True, bounds=BOUNDS):
    """One pass as the engine runs it, by hand: ``(W', state', report)``."""
    from dask_nmf import kernels

    steps = [solver.block_step(V[a:b], W[a:b], state, with_loss) for a, b in bounds]
    sums = kernels.sum_partials([parts for _, parts in steps])
    state_next = solver.next_state(state, sums)
    return (
        np.vstack([w for w, _ in steps]),
        state_next,
        solver.pass_report(state, state_next, sums, with_loss),
    )


def fit_from(V, start, beta_loss, **kw):
    """``dask_nmf.factorize`` of V from the given ``(W0, H0)``."""
    import dask_nmf

    W0, H0 = start
    return dask_nmf.factorize(V, H0.shape[0], beta_loss=beta_loss, W_init=W0, H_init=H0, **kw)


def stop_processes(procs: list) -> None:
    """SIGTERM, then SIGKILL what has not stopped within 10 s (dask scheduler/worker processes)."""
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def make_low_rank(rng, m, n, k, noise=0.05, zeros=True):
    """A non-negative matrix near rank k, with a zero row and a zero column."""
    V = rng.random((m, k)) @ rng.random((k, n)) + noise * rng.random((m, n))
    if zeros:
        V[3] = 0.0
        V[:, 2] = 0.0
    return V


@pytest.fixture
def V_small(rng):
    return make_low_rank(rng, 157, 41, 4)


@pytest.fixture
def start(rng, V_small):
    k = 4
    return rng.random((V_small.shape[0], k)) + 0.1, rng.random((k, V_small.shape[1])) + 0.1


def write_zarr(path, V, chunks, zarr_format=3):
    arr = zarr.create_array(
        str(path), shape=V.shape, chunks=chunks, dtype=V.dtype, zarr_format=zarr_format
    )
    arr[...] = V
    return str(path)


@pytest.fixture
def zarr_V(tmp_path, V_small):
    """V_small in a zarr v3 store whose chunks do not line up with any row block."""
    return write_zarr(tmp_path / "V.zarr", V_small, chunks=(23, 17))


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster with two worker processes (no nanny restarts needed)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit="2GiB",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


class CountingStore(zarr.storage.WrapperStore):
    """A zarr store that counts the chunk reads going through it (metadata excluded)."""

    def __init__(self, store):
        super().__init__(store)
        self.chunk_reads = 0

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith((".json", ".zarray", ".zattrs", ".zgroup")):
            self.chunk_reads += 1
        return await self._store.get(key, prototype, byte_range)


def counting_array(path):
    """Open the zarr array at ``path`` read-only through a :class:`CountingStore`."""
    store = CountingStore(zarr.storage.LocalStore(str(path), read_only=True))
    return zarr.open_array(store=store, mode="r"), store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """Start moto's S3 server; yield fsspec storage options and a bucket."""
    import s3fs

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                fs = s3fs.S3FileSystem(**options)
                fs.mkdir("nmf")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the fast tier: ``pytest -m "not slow"`` ------------------------------------
#: Modules that start clusters, servers or subprocesses throughout.
SLOW_MODULES = {
    "test_cli",
    "test_cluster",
    "test_examples",
    "test_fault_tolerance",
    "test_health",
    "test_hostile_inputs",
    "test_object_storage",
    "test_sklearn_conformance",
    "test_workers",
}
#: Fixtures that start a multi-process cluster or an S3 server.
SLOW_FIXTURES = {"cluster_client", "s3"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        elif "sigkill" in item.name:
            item.add_marker(pytest.mark.slow)
