"""Where graphs run: the cluster facade the engine submits everything through.

:class:`Runner` wraps a ``distributed.Client`` (or dask's local scheduler when
there is none): it submits pass graphs with block pinning, computes,
persists and places data, knows the cluster's capacity (threads, memory,
block size caps), and watches the cluster's health while the fit waits on it,
turning a cluster that cannot carry on into a :class:`ClusterError`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import time
from typing import Any

import dask
import numpy as np
import scipy.sparse as sp
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from . import persistence, workers
from .io import (
    InputMatrix,
    release_read_buffers,
)

#: On a cluster, a row block is at most this fraction of a worker thread's memory limit ...
BLOCK_MEMORY_FRACTION = 1 / 8
#: ... or this one when V is not a dense zarr store (see :meth:`Runner.block_size_limit`).
WHOLE_BLOCK_MEMORY_FRACTION = 1 / 16
#: Default of ``dask-nmf.no-worker-timeout``: how long a fit waits with no running worker.
NO_WORKER_TIMEOUT = "60s"
#: A worker thread holds a block and the temporaries of its update: about this many blocks.
BLOCKS_PER_THREAD = 4
#: Memory of a worker process before it holds any block (Python, NumPy, dask, zarr).
WORKER_BASE_MEMORY = 200 * 2**20


class ClusterError(RuntimeError):
    """The cluster cannot carry on with the fit.

    No worker joined, all workers were lost, workers were killed (most
    likely for memory) while running a block's task, or the scheduler was
    lost.  The message says what happened and what to do; where a checkpoint
    exists it is intact and the fit can be resumed from it.
    """


# --------------------------------------------------------------------------
# Where graphs run
# --------------------------------------------------------------------------
def resolve_client(client: Any = None):
    """The given client, else the default distributed client, else ``None``.

    ``None`` means dask's local (threaded) scheduler.  No cluster is started here.
    """
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _local_get():
    """dask's local scheduler, for a :class:`Runner` without a client.

    Not a default distributed client's ``get``: what a Runner without a client
    computes is here in memory (V's blocks checked before anything is sent),
    and a graph holding it would be shipped to the scheduler whole.
    """
    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    if get is None or type(owner).__module__.startswith("distributed"):
        return dask.threaded.get
    return get


class Runner:
    """Submits graphs to a distributed client, or runs them on dask's local scheduler.

    A *handle* is what stands for a computed block between iterations: a
    ``distributed.Future`` on a cluster (the data stays on the worker), the
    array itself on the local scheduler.
    """

    def __init__(self, client: Any = None):
        self.client = client
        # What a :class:`ClusterError` tells about the fit (see :meth:`expect_blocks`).
        self.V: InputMatrix | None = None
        self.checkpoint: Any = None
        self.storage_options: dict | None = None
        self._no_workers_since: float | None = None
        self._seen_workers: dict[str, dict] = {}
        if self.distributed:
            self._wait_for_workers()

    @property
    def distributed(self) -> bool:
        return self.client is not None

    # ----------------------------------------------------------------------
    # Cluster health: every wait on the cluster ends, with a ClusterError at worst
    # ----------------------------------------------------------------------
    @staticmethod
    def no_worker_timeout() -> float:
        """Seconds a fit waits while the cluster has no running worker (dask config
        ``dask-nmf.no-worker-timeout``, default 60 s)."""
        value = dask.config.get("dask-nmf.no-worker-timeout", NO_WORKER_TIMEOUT)
        return float(parse_timedelta(value, default="s"))

    @property
    def address(self) -> str:
        """The scheduler's address, for messages."""
        with contextlib.suppress(Exception):
            return str(self.client.scheduler.address)
        return "?"

    def _wait_for_workers(self) -> None:
        timeout = self.no_worker_timeout()
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            if self.client.status != "running":
                raise self._scheduler_lost() from None
            raise ClusterError(
                f"no dask worker joined the scheduler at {self.address} within {timeout:g} s; "
                "start workers (dask worker ADDRESS) or raise the dask config "
                "'dask-nmf.no-worker-timeout'"
            ) from None
        except OSError as exc:
            raise self._scheduler_lost() from exc

    def expect_blocks(self, V: InputMatrix, checkpoint: Any = None, storage_options=None) -> None:
        """Note V's blocks and the checkpoint (for messages); refuse blocks no worker can hold.

        A block larger than every worker's whole memory limit would only get
        its workers killed and restarted until dask gives up.
        """
        self.V, self.checkpoint, self.storage_options = V, checkpoint, storage_options
        if not self.distributed:
            return
        block = self._block_bytes()
        # (Kept for the messages: when workers die, the scheduler may know none.)
        self._seen_workers = self._workers()
        limits = [w.get("memory_limit") or 0 for w in self._seen_workers.values()]
        if limits and all(0 < limit < block for limit in limits):
            raise ClusterError(
                f"a block of V takes {format_bytes(block)} ({block} bytes), more than any "
                f"worker's memory limit (at most {format_bytes(max(limits))}); "
                + self._memory_advice()
            )

    def _block_bytes(self) -> int:
        V = self.V
        return V.nbytes // max(1, len(V.bounds)) if V is not None else 0

    def _memory_advice(self) -> str:
        """What a worker needs for the fit's blocks, and how to get there."""
        block = self._block_bytes()
        workers = {}
        if self.distributed:
            with contextlib.suppress(Exception):
                workers = self._workers()
            workers = workers or self._seen_workers
        threads = max([w.get("nthreads", 1) for w in workers.values()] or [1])
        needed = threads * BLOCKS_PER_THREAD * block + WORKER_BASE_MEMORY
        limits = [w["memory_limit"] for w in workers.values() if w.get("memory_limit")]
        advice = (
            f"a worker with {threads} thread(s) needs a memory limit of at least "
            f"~{format_bytes(needed)} for blocks of this size (a block and its temporaries "
            f"per thread, plus ~{format_bytes(WORKER_BASE_MEMORY)} for the worker itself); "
            "give the workers more memory (--memory-limit) or use smaller blocks"
        )
        if self.V is not None and limits and block > 0:
            row_bytes = block / max(1, self.V.block_rows)
            rows = int(min(limits) / threads * BLOCK_MEMORY_FRACTION // max(1.0, row_bytes))
            advice += f" (--block-rows / block_rows= {max(1, rows)} fits these workers)"
        return advice + self._resume_hint()

    def _resume_hint(self) -> str:
        """Where the fit can continue from, if anywhere."""
        if self.checkpoint is None:
            return ""
        with contextlib.suppress(Exception):
            meta = persistence.read_meta(self.checkpoint, self.storage_options)
            state = meta.get("state") or {}
            if state:
                return (
                    f"; the last checkpoint in {self.checkpoint} (iteration "
                    f"{state.get('iteration')}) is intact: continue with --resume (resume=True)"
                )
        return ""

    def _scheduler_lost(self) -> ClusterError:
        return ClusterError(
            f"lost the connection to the dask scheduler at {self.address}"
            + (self._resume_hint() or "; start it again and rerun the fit")
        )

    def _cluster_error(self, exc: BaseException) -> ClusterError | None:
        """The :class:`ClusterError` that ``exc`` (from a wait on the cluster) stands for, if any."""
        from distributed import KilledWorker

        if isinstance(exc, ClusterError):
            return exc
        if isinstance(exc, KilledWorker):
            task = getattr(exc, "task", None)
            block = self._block_bytes()
            return ClusterError(
                f"dask workers died while running a task of the fit ({task}), most likely "
                f"for lack of memory: a block of V takes {format_bytes(block)} ({block} bytes) "
                f"and the smallest worker memory limit is {self._smallest_limit()}; "
                + self._memory_advice()
            )
        # A task may raise OSError or TimeoutError itself: only a client that has
        # lost its scheduler makes them (and cancelled futures) the cluster's fault.
        if self.client.status != "running" and isinstance(
            exc, (OSError, TimeoutError, concurrent.futures.CancelledError)
        ):
            return self._scheduler_lost()
        if "scheduler-connection-lost" in str(exc):
            return self._scheduler_lost()
        return None

    def _smallest_limit(self) -> str:
        workers = self._seen_workers
        with contextlib.suppress(Exception):
            workers = self._workers() or workers
        limits = [w["memory_limit"] for w in workers.values() if w.get("memory_limit")]
        return format_bytes(min(limits)) if limits else "unknown"

    def _check_health(self) -> None:
        """Raise :class:`ClusterError` when the scheduler is gone, or no worker has
        been running for longer than ``dask-nmf.no-worker-timeout``."""
        if self.client.status != "running":
            raise self._scheduler_lost()
        try:
            workers = self._workers()
        except (OSError, TimeoutError) as exc:
            raise self._scheduler_lost() from exc
        running = [w for w in workers.values() if w.get("status", "running") == "running"]
        now = time.monotonic()
        if running:
            self._no_workers_since = None
            return
        if self._no_workers_since is None:
            self._no_workers_since = now
        waited = now - self._no_workers_since
        if waited <= self.no_worker_timeout():
            return
        if workers:  # all paused: their memory is full and nothing frees it
            what = (
                f"all {len(workers)} dask workers have been paused (memory full) for "
                f"{waited:.0f} s; " + self._memory_advice()
            )
        else:
            what = (
                f"the dask cluster at {self.address} has had no workers for {waited:.0f} s "
                "(all lost); start workers (dask worker ADDRESS) and rerun the fit"
                + self._resume_hint()
            )
        raise ClusterError(what)

    def _await(self, futures: list) -> None:
        """Wait for ``futures`` to end, checking on the cluster while they do not."""
        from distributed import wait

        poll = min(1.0, max(0.05, self.no_worker_timeout() / 4))
        while not all(f.done() for f in futures):
            try:
                with self.client.as_current():
                    wait(futures, timeout=poll)
            except TimeoutError:
                self._check_health()
            except Exception as exc:
                error = self._cluster_error(exc)
                if error is None:
                    raise
                raise error from exc

    def _results(self, futures: list) -> list:
        """The values of ``futures``: a task's error as it is, a cluster's as a ClusterError."""
        self._await(futures)
        try:
            return self.client.gather(futures)
        except Exception as exc:
            error = self._cluster_error(exc)
            if error is None:
                raise
            raise error from exc

    def run(self, blocks: list, reduced: Any = None) -> tuple[list, Any]:
        """Compute ``blocks`` (kept as handles) and ``reduced`` (returned) in one graph."""
        objs = list(blocks) + ([reduced] if reduced is not None else [])
        if self.distributed:
            futures = self.client.compute(objs)
            value = self._results(futures[-1:])[0] if reduced is not None else None
            handles = futures[: len(blocks)]
            if reduced is None:  # wait without fetching the blocks
                self._await(handles)
                failed = [f for f in handles if f.status != "finished"]
                if failed:
                    self._results(failed[:1])  # raises the task's error
        else:
            values = dask.compute(*objs, scheduler=_local_get())
            value = values[-1] if reduced is not None else None
            handles = list(values[: len(blocks)])
        return handles, value

    def submit_graph(self, dsk: dict, keys: list, owners: Any = None) -> list:
        """Start the plain task graph ``dsk`` (the per-iteration hot path).

        On a cluster this returns at once with a future per key (see
        :meth:`value`); on the local scheduler it computes and returns the
        values.  ``owners`` (a :class:`BlockOwners`) pins tasks to workers, loosely.
        """
        if self.distributed:
            pin = (
                dask.annotate(workers=owners, allow_other_workers=True)
                if owners is not None
                else contextlib.nullcontext()
            )
            with pin:
                # fifo_timeout=0: every pass is a new "generation", so the tail of
                # pass t (its sums, H, losses) runs before pass t + 1's blocks.
                return list(self.client.get(dsk, keys, sync=False, fifo_timeout=0))
        return list(_local_get()(dsk, keys))

    def value(self, x: Any) -> Any:
        """The value behind a handle from :meth:`submit_graph` (waits for a future)."""
        if self.distributed and hasattr(x, "result") and callable(x.result):
            return self._results([x])[0]
        return x.result() if hasattr(x, "result") and callable(x.result) else x

    def cancel(self, handles: list) -> None:
        """Stop computing what ``handles`` stand for (a pass that turned out not to be needed)."""
        if self.distributed:
            self.client.cancel([h for h in handles if hasattr(h, "key")])

    def compute(self, *objs):
        if self.distributed:
            return tuple(self._results(self.client.compute(list(objs))))
        return dask.compute(*objs, scheduler=_local_get())

    def persist(self, *collections):
        if self.distributed:
            return tuple(self.client.persist(list(collections)))
        return dask.persist(*collections, scheduler=_local_get())

    def place(self, arrays: list) -> list:
        """Handles for in-memory arrays (scattered once to the cluster)."""
        if self.distributed and arrays and in_memory(arrays[0]):
            try:  # (scatter waits for a worker, with no end of its own)
                return self.client.scatter(arrays, hash=False, timeout=self.no_worker_timeout())
            except TimeoutError:
                self._no_workers_since = -math.inf  # i.e. long enough
                self._check_health()
                raise
        return arrays

    def holders(self, handles: list) -> list[str] | None:
        """The worker holding each of ``handles`` (futures of :meth:`place`), or None
        (the local scheduler; arrays; a handle no worker holds)."""
        if not self.distributed or not handles:
            return None
        from distributed import Future

        if not all(isinstance(h, Future) for h in handles):
            return None
        who_has = self.client.who_has(handles)
        holders = [sorted(who_has.get(h.key, ()))[:1] for h in handles]
        return [h[0] for h in holders] if all(holders) else None

    @property
    def parallelism(self) -> int:
        """Worker threads that can run blocks at once."""
        if self.distributed:
            return max(1, sum(self.client.nthreads().values()))
        return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))

    def blas_limits(self):
        """A context in which BLAS uses cores / dask threads threads (local scheduler).

        dask's threads each call BLAS; with BLAS's own threads on top the cores
        are oversubscribed, several times slower than either alone.  Set
        once around the whole fit, because the limit is process-wide and per-task
        limits would race.  Workers of a distributed cluster already run BLAS on
        one thread (dask's nanny sets OMP/OPENBLAS/MKL_NUM_THREADS=1).
        """
        if self.distributed or self.parallelism <= 1:
            return contextlib.nullcontext()
        from threadpoolctl import ThreadpoolController

        per_task = max(1, (os.cpu_count() or 1) // self.parallelism)
        return ThreadpoolController().limit(limits=per_task, user_api="blas")

    def release_read_buffers(self) -> None:
        """Drop the fused reads' block buffers, here and on every worker."""
        release_read_buffers()
        if self.distributed:
            workers.run_briefly(self.client, release_read_buffers)

    def block_owners(self, n_blocks: int) -> list[str] | None:
        """A worker for each of ``n_blocks`` blocks, spread in proportion to threads."""
        if not self.distributed:
            return None
        slots = [
            addr
            for addr, info in sorted(self._workers().items())
            for _ in range(max(1, info.get("nthreads", 1)))
        ]
        return [slots[i % len(slots)] for i in range(n_blocks)] if slots else None

    def _workers(self) -> dict[str, dict]:
        """The scheduler's description of each worker, by address (a cluster only)."""
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def block_bytes(self, whole_blocks: bool) -> int:
        """The most bytes a block of V may hold here: dask's ``array.chunk-size``,
        capped on a cluster by the workers' memory.

        Reading V out of core, a worker thread holds little more than the block
        it reads and updates (decoded in place, one stored chunk's bytes at a
        time), and the NNDSVD initializations' randomized SVD reads a dense
        zarr V in pieces of at most half a block, of which it holds about six
        per thread at its peak.  Blocks of such a V get at most 1/8 of a
        worker's memory limit per thread: fewer, larger blocks mean fewer tasks
        per iteration, and a worker's peak (a block, its temporaries, the SVD's
        pieces) stays below dask's 60 % memory target.  ``whole_blocks``: V is
        another lazy input (a dask array, xarray, a sparse store), which the
        SVD reads in whole blocks: those get 1/16.
        """
        current = parse_bytes(dask.config.get("array.chunk-size"))
        if not self.distributed:
            return current
        fraction = WHOLE_BLOCK_MEMORY_FRACTION if whole_blocks else BLOCK_MEMORY_FRACTION
        per_thread = [
            w["memory_limit"] / max(1, w.get("nthreads", 1))
            for w in self._workers().values()
            if w.get("memory_limit")
        ]
        if not per_thread:
            return current
        return max(1, min(current, int(min(per_thread) * fraction)))

    def memory_budget(self) -> float:
        """Bytes of V worth keeping in memory: half the workers' memory limits."""
        if self.distributed:
            limits = [w.get("memory_limit") or 0 for w in self._workers().values()]
            return 0.5 * float(sum(limits))
        import psutil

        return 0.25 * float(psutil.virtual_memory().available)


def in_memory(x: Any) -> bool:
    """Whether x is data in this process (NumPy or SciPy sparse), not a handle."""
    return isinstance(x, np.ndarray) or sp.issparse(x)


class BlockOwners:
    """``dask.annotate(workers=...)`` for the keys ``<prefix><i>``: block i's worker.

    Evaluated by the scheduler for each key of a graph; other keys get no
    restriction.
    """

    def __init__(self, prefix: str, owners: list[str]):
        self.prefix, self.owners = prefix, owners

    def __call__(self, key: Any) -> list[str]:
        if isinstance(key, str) and key.startswith(self.prefix):
            tail = key[len(self.prefix) :]
            if tail.isdigit() and int(tail) < len(self.owners):
                return [self.owners[int(tail)]]
        return []
