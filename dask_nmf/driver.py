"""The iteration driver: one dask graph, and one pass over V, per MU iteration.

Each iteration submits a graph of fixed size: for every row block, one task
reads V_i, updates W_i and emits the partial sums of the H update; a tree of
small tasks adds the partials up and one more turns them into the new H (a
``k x n`` array) and the two loss numbers the client fetches.  On a cluster
the next iteration's graph is submitted before this one ends and refers to
the new H by its future, so no client round trip separates two passes.  W's
blocks stay where they were computed (futures on a distributed cluster,
arrays in this process on dask's local scheduler).

On a distributed cluster the scheduler keeps the recipe of every task that a
held result depends on, so W_t's lineage would reach back to W_0.  Every
``checkpoint_every`` iterations W is written to a zarr store and read back
from there, which gives the next W blocks no history: lineage (and the
scheduler's task table) stays bounded, and a lost worker costs at most the
iterations since the last checkpoint, replayed by dask itself.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from dask.delayed import Delayed
from dask.utils import parse_bytes

from . import kernels, outputs, persistence, workers
from .init import custom_init, nndsvd_init, random_init, resolve_init
from .io import (
    BlockReader,
    InputError,
    InputMatrix,
    block_sources,
    check_stats,
    label_results,
    open_input,
    read_rows_into,
    release_read_buffers,
)
from .persistence import NMFResult

#: Accepted spellings of the two costs, mapped to the beta of the beta-divergence.
BETA_LOSSES = {"frobenius": 2, "kullback-leibler": 1, 2: 2, 1: 1}
BETA_NAMES = {2: "frobenius", 1: "kullback-leibler"}
#: On a cluster, a row block is at most this fraction of a worker thread's memory limit ...
BLOCK_MEMORY_FRACTION = 1 / 8
#: ... or this one when V is not a dense zarr store (see :meth:`Runner.block_size_limit`).
WHOLE_BLOCK_MEMORY_FRACTION = 1 / 16
#: Fan-in of the reduction tree over the blocks' partial sums.
SPLIT_EVERY = 8


# --------------------------------------------------------------------------
# Parameter checks (all before any data is read)
# --------------------------------------------------------------------------
def check_beta_loss(beta_loss: Any) -> int:
    """Map a ``beta_loss`` value to 2 (Frobenius) or 1 (KL), or raise."""
    key = beta_loss
    if isinstance(beta_loss, (int, float, np.number)) and not isinstance(beta_loss, bool):
        key = int(beta_loss) if float(beta_loss) in (1.0, 2.0) else beta_loss
    if isinstance(key, str) or isinstance(key, int):
        if key in BETA_LOSSES:
            return BETA_LOSSES[key]
    raise InputError(
        f"unknown beta_loss {beta_loss!r}; choose 'frobenius' (2) or 'kullback-leibler' (1)"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_params(
    n_components: Any,
    max_iter: Any,
    tol: Any,
    alpha_W: Any,
    alpha_H: Any,
    l1_ratio: Any,
    n_features: int | None = None,
) -> None:
    """Raise :class:`InputError` naming the first bad option."""
    if not _is_int(n_components) or n_components < 1:
        raise InputError(f"n_components must be a positive integer; got {n_components!r}")
    if not _is_int(max_iter) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer; got {max_iter!r}")
    if not _is_real(tol) or not tol >= 0:
        raise InputError(f"tol must be a number >= 0; got {tol!r}")
    if not _is_real(alpha_W) or not alpha_W >= 0:
        raise InputError(f"alpha_W must be a number >= 0; got {alpha_W!r}")
    if not (alpha_H == "same" or (_is_real(alpha_H) and alpha_H >= 0)):
        raise InputError(f"alpha_H must be 'same' or a number >= 0; got {alpha_H!r}")
    if not _is_real(l1_ratio) or not 0 <= l1_ratio <= 1:
        raise InputError(f"l1_ratio must be a number in [0, 1]; got {l1_ratio!r}")


def regularization(
    shape: tuple[int, int], alpha_W: float, alpha_H: Any, l1_ratio: float
) -> tuple[float, float, float, float]:
    """scikit-learn's scaling: ``(l1_W, l2_W, l1_H, l2_H)``.

    The W terms are scaled by n (features), the H terms by m (samples).
    """
    m, n = shape
    alpha_H = alpha_W if alpha_H == "same" else alpha_H
    return (
        n * alpha_W * l1_ratio,
        n * alpha_W * (1.0 - l1_ratio),
        m * alpha_H * l1_ratio,
        m * alpha_H * (1.0 - l1_ratio),
    )


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


class Runner:
    """Submits graphs to a distributed client, or runs them on dask's local scheduler.

    A *handle* is what stands for a computed block between iterations: a
    ``distributed.Future`` on a cluster (the data stays on the worker), the
    array itself on the local scheduler.
    """

    def __init__(self, client: Any = None):
        self.client = client

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def run(self, blocks: list, reduced: Any = None) -> tuple[list, Any]:
        """Compute ``blocks`` (kept as handles) and ``reduced`` (returned) in one graph."""
        objs = list(blocks) + ([reduced] if reduced is not None else [])
        if self.distributed:
            from distributed import wait

            futures = self.client.compute(objs)
            value = futures[-1].result() if reduced is not None else None
            handles = futures[: len(blocks)]
            if reduced is None:  # wait without fetching the blocks
                with self.client.as_current():
                    wait(handles)
                for f in handles:
                    if f.status != "finished":
                        f.result()  # raises the task's error
        else:
            values = dask.compute(*objs)
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
        get = dask.base.get_scheduler() or dask.threaded.get
        return list(get(dsk, keys))

    @staticmethod
    def value(x: Any) -> Any:
        """The value behind a handle from :meth:`submit_graph` (waits for a future)."""
        return x.result() if hasattr(x, "result") and callable(x.result) else x

    def cancel(self, handles: list) -> None:
        """Stop computing what ``handles`` stand for (a pass that turned out not to be needed)."""
        if self.distributed:
            self.client.cancel([h for h in handles if hasattr(h, "key")])

    def compute(self, *objs):
        if self.distributed:
            return tuple(self.client.compute(list(objs), sync=True))
        return dask.compute(*objs)

    def persist(self, *collections):
        if self.distributed:
            return tuple(self.client.persist(list(collections)))
        return dask.persist(*collections)

    def place(self, arrays: list) -> list:
        """Handles for in-memory arrays (scattered once to the cluster)."""
        if self.distributed and arrays and _in_memory(arrays[0]):
            return self.client.scatter(arrays, hash=False)
        return arrays

    @property
    def parallelism(self) -> int:
        """Worker threads that can run blocks at once."""
        if self.distributed:
            return max(1, sum(self.client.nthreads().values()))
        return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))

    def blas_limits(self):
        """A context in which BLAS uses cores / dask threads threads (local scheduler).

        dask's threads each call BLAS; with BLAS's own threads on top the cores
        are oversubscribed (2 x 2 threads on 2 cores ran 5-10x slower here).  Set
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

    def block_size_limit(self, fraction: float = BLOCK_MEMORY_FRACTION):
        """A context capping dask's ``array.chunk-size`` (the default block size) by memory.

        Reading V out of core, a worker thread holds little more than the block
        it reads and updates (decoded in place, one stored chunk's bytes at a
        time), and the NNDSVD initializations' randomized SVD reads a dense
        zarr V in pieces of at most half a block, of which it holds about six
        per thread at its peak.  Blocks of such a V get at most ``fraction``
        (1/8) of a worker's memory limit per thread: fewer, larger blocks mean
        fewer tasks per iteration (with 1/16, iterations out of core took ~10 %
        longer on 2 x 320 MiB workers), and workers stay below dask's 60 %
        memory target (the hyperspectral example: 593 MiB of a 1 GiB worker at
        its peak; 799 MiB when the SVD read whole blocks of this size).  Any
        other lazy V (a dask array, xarray, a sparse store) is read by the SVD
        in whole blocks, which get 1/16.
        """
        if not self.distributed:
            return contextlib.nullcontext()
        per_thread = [
            w["memory_limit"] / max(1, w.get("nthreads", 1))
            for w in self._workers().values()
            if w.get("memory_limit")
        ]
        current = parse_bytes(dask.config.get("array.chunk-size"))
        if not per_thread or min(per_thread) * fraction >= current:
            return contextlib.nullcontext()
        cap = min(per_thread) * fraction
        return dask.config.set({"array.chunk-size": max(1, int(cap))})

    def memory_budget(self) -> float:
        """Bytes of V worth keeping in memory: half the workers' memory limits."""
        if self.distributed:
            limits = [w.get("memory_limit") or 0 for w in self._workers().values()]
            return 0.5 * float(sum(limits))
        import psutil

        return 0.25 * float(psutil.virtual_memory().available)


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


def _in_memory(x: Any) -> bool:
    return isinstance(x, np.ndarray) or sp.issparse(x)


def _delayed(x: Any, name: str | None = None):
    """A Delayed standing for a handle, a Delayed or an array (no hashing of data)."""
    if isinstance(x, Delayed):
        return x
    if _in_memory(x):
        return dask.delayed(x, name=name or f"nmf-data-{uuid.uuid4().hex}")
    return dask.delayed(x)


def _reduction_tree(parts: list, node: Callable, split_every: int = SPLIT_EVERY) -> Any:
    """Reduce ``parts`` in a tree of fan-in ``split_every``; ``node(group, level, i)``
    makes the node combining ``group`` (the ``i``-th slice at depth ``level``)."""
    level = 0
    while len(parts) > 1:
        parts = [
            node(parts[i : i + split_every], level, i) for i in range(0, len(parts), split_every)
        ]
        level += 1
    return parts[0]


def tree_reduce(parts: list, combine: Callable, split_every: int = SPLIT_EVERY):
    """Combine delayed values in a tree of fan-in ``split_every``."""
    return _reduction_tree(
        parts, lambda group, *_: dask.delayed(combine, pure=False)(group), split_every
    )


def _graph_ref(x: Any, name: str, dsk: dict, client: Any = None) -> Any:
    """A task argument standing for ``x`` in the plain graph ``dsk`` (adding what it needs)."""
    if isinstance(x, Delayed):
        graph = x.__dask_graph__()
        if x.key not in graph and client is not None:
            from distributed import Future

            return Future(x.key, client)  # a block of a collection persisted on the cluster
        dsk.update(graph)
        return x.key
    if _in_memory(x):
        dsk[name] = x
        return name
    return x  # a distributed Future: the scheduler resolves it


def _tree_reduce_keys(dsk: dict, keys: list, combine: Callable, prefix: str) -> Any:
    """:func:`tree_reduce` for a plain graph: adds the combine tasks, returns the root key."""

    def node(group: list, level: int, i: int) -> str:
        key = f"{prefix}-{level}-{i}"
        dsk[key] = (combine, group)
        return key

    return _reduction_tree(keys, node)


def input_stats(
    runner: Runner, sources: list, reader: BlockReader | None = None, bounds: list | None = None
) -> dict:
    """One pass over V: its minimum, finiteness, sum and sum of squares.

    When V is to be re-read from its zarr store every pass (a ``reader`` of it
    and the row ``bounds``), this pass reads it the way the iterations will,
    each block decoded inside the task that takes its statistics: no block of
    V becomes a task result.
    """
    if reader is not None:
        parts = [dask.delayed(_stats_of_rows, pure=False)(reader, a, b) for a, b in bounds]
    else:
        parts = [dask.delayed(kernels.block_stats, pure=False)(_delayed(s)) for s in sources]
    total = tree_reduce(parts, kernels.merge_all_stats)
    (stats,) = runner.compute(total)
    return stats


def _stats_of_rows(reader: BlockReader, start: int, stop: int) -> dict:
    return kernels.block_stats(read_rows_into(reader, start, stop))


# --------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------
class _Fit:
    """State of one factorization: handles of V and W, H, the loss history."""

    def __init__(self, runner, V: InputMatrix, sources, reader, beta, k, reg, norm_v2, v_sum):
        self.runner, self.V, self.sources = runner, V, [_delayed(s) for s in sources]
        self.beta, self.k = beta, k
        self.l1_W, self.l2_W, self.l1_H, self.l2_H = reg
        self.norm_v2, self.v_sum = norm_v2, v_sum
        self.token = uuid.uuid4().hex[:8]
        self.graph_tasks: list[int] = []
        # The iteration graph is a plain dict: building it through dask.delayed
        # cost ~3 ms per block and iteration here, a quarter of a Frobenius pass.
        self.source_graph: dict = {}
        if reader is not None:
            # V's blocks are read inside the tasks that update them: no block of V
            # is ever a task's result (held by a worker, moved to another), and
            # each step runs where its W block already is.
            self.source_refs = [(read_rows_into, reader, a, b) for a, b in V.bounds]
            # ... and each block stays on one worker, a balanced share per worker
            # (dask would otherwise keep whatever imbalance the first placement had).
            self.owners = runner.block_owners(len(V.bounds))
        else:
            # In-memory or kept blocks of V: each step runs where its V block is.
            self.source_refs = [
                _graph_ref(s, f"nmf-V-{self.token}-{i}", self.source_graph, runner.client)
                for i, s in enumerate(sources)
            ]
            self.owners = None
        # A pass may be submitted before the previous one ends only if it has no
        # task that could run early: a read task would fetch V's blocks for the
        # next pass while this one still holds its own (memory, not speed).
        self.may_run_ahead = all(_in_memory(v) for v in self.source_graph.values())

    def launch(self, W: list, state: Any, t: int, first: bool, with_loss: bool) -> _Pass:
        """Start MU pass t from state t: W's blocks and ``state``, H or a handle of
        ``(H, H H^T)`` from the previous pass.

        Everything, the H update included, is one graph, so on a cluster the
        next pass can be submitted before this one finishes: no round trip
        through the client between passes.  Tasks on the path from the last
        block to the next pass's first are few (each costs a scheduler hop).
        """
        tag = f"{self.token}-{t}"
        dsk = dict(self.source_graph)
        if isinstance(state, tuple):  # a computed state (local scheduler): start from its H
            state = state[0]
        if _in_memory(state):
            dsk[f"nmf-state-{tag}"] = (_state, self.beta, state)
            state = f"nmf-state-{tag}"
        h = (operator.getitem, state, 0)  # taken apart inside the tasks that use it
        hht = (operator.getitem, state, 1)
        w_keys, steps = [], []
        for i, (v, w) in enumerate(zip(self.source_refs, W)):
            w = _graph_ref(w, f"nmf-W-{tag}-{i}", dsk, self.runner.client)
            if self.beta == 2:
                task = (kernels.frobenius_block_step, v, w, h, hht, self.l1_W, self.l2_W, first)
            else:
                task = (kernels.kl_block_step, v, w, h, self.l1_W, self.l2_W, with_loss)
            steps.append(f"nmf-step-{tag}-{i}")
            dsk[steps[-1]] = task
            w_keys.append(f"nmf-Wnew-{tag}-{i}")
            dsk[w_keys[-1]] = (operator.getitem, steps[-1], 0)
        # First sums over blocks of one worker (no transfers), then across workers.
        if self.owners:
            steps.sort(key=lambda key: self.owners[int(key.rsplit("-", 1)[1])])
        firsts = []
        for j in range(0, len(steps), SPLIT_EVERY):
            firsts.append(f"nmf-sum-{tag}-s-{j}")
            dsk[firsts[-1]] = (_sum_of_steps, steps[j : j + SPLIT_EVERY])
        total = _tree_reduce_keys(dsk, firsts, kernels.sum_partials, f"nmf-sum-{tag}")
        state_next = f"nmf-state-{tag}-next"
        dsk[state_next] = (_next_state, self.beta, state, total, self.l1_H, self.l2_H)
        losses = f"nmf-losses-{tag}"
        dsk[losses] = (
            _pass_losses,
            self.beta,
            self.norm_v2,
            self.v_sum,
            state,
            state_next,
            total,
            first,
            with_loss,
        )
        self.graph_tasks.append(len(dsk))
        owners = BlockOwners(f"nmf-step-{tag}-", self.owners) if self.owners else None
        handles = self.runner.submit_graph(dsk, [*w_keys, state_next, losses], owners)
        return _Pass(W=handles[:-2], state=handles[-2], losses=handles[-1])

    def loss_only(self, W: list, H: np.ndarray) -> float:
        """The loss at (W, H) by a separate pass (needed only at the very end for KL)."""
        Wd = [_delayed(w) for w in W]
        if self.beta == 2:
            parts = [
                dask.delayed(kernels.frobenius_loss_terms, pure=False)(v, w)
                for v, w in zip(self.sources, Wd)
            ]
            (s,) = self.runner.compute(tree_reduce(parts, kernels.sum_partials))
            return kernels.frobenius_loss(self.norm_v2, s["A0"], s["B0"], H)
        parts = [
            dask.delayed(kernels.kl_loss_terms, pure=False)(v, w, H)
            for v, w in zip(self.sources, Wd)
        ]
        (s,) = self.runner.compute(tree_reduce(parts, kernels.sum_partials))
        return kernels.kl_divergence(self.v_sum, s["vlogr"], s["w0_sum"], H)


@dataclass
class _Pass:
    """One submitted MU pass: handles of W's blocks and of ``(H, H H^T)`` of the
    state it produces, and ``(loss of the state it started from, loss of the
    state it produced)``, NaN where the pass does not compute one."""

    W: list
    state: Any
    losses: Any

    def handles(self) -> list:
        return [*self.W, self.state, self.losses]


def _state(beta: int, H: np.ndarray) -> tuple:
    """What a pass needs of H: H, and H H^T for the Frobenius W update."""
    return H, (H @ H.T if beta == 2 else None)


def _next_state(beta: int, state: tuple, s: dict, l1: float, l2: float) -> tuple:
    H = state[0]
    if beta == 2:
        return _state(beta, kernels.frobenius_h_update(H, s["A"], s["B"], l1, l2))
    return _state(beta, kernels.kl_h_update(H, s["A"], s["w_sum"], l1, l2))


def _sum_of_steps(steps: list) -> dict:
    """Sum the partial sums of block steps (each step returns ``(W block, partials)``)."""
    return kernels.sum_partials([step[1] for step in steps])


def _pass_losses(beta, norm_v2, v_sum, state, state_next, s, first, with_loss) -> tuple:
    """The losses a pass knows from its partial sums (see :class:`_Pass`)."""
    H, H_next = state[0], state_next[0]
    if beta == 2:
        before = kernels.frobenius_loss(norm_v2, s["A0"], s["B0"], H) if first else math.nan
        return before, kernels.frobenius_loss(norm_v2, s["A"], s["B"], H_next)
    before = kernels.kl_divergence(v_sum, s["vlogr"], s["w0_sum"], H) if with_loss else math.nan
    return before, math.nan


def _value_of_H(runner: Runner, H: Any) -> np.ndarray:
    """H itself, from H or a pass's handle of ``(H, H H^T)``."""
    value = runner.value(H)
    return value[0] if isinstance(value, tuple) else value


def _converged(losses: list[float], t: int, tol: float) -> bool:
    """scikit-learn's test, made at every 10th iteration t on ``sqrt(2 * loss)``."""
    if tol <= 0 or t % 10 != 0 or t < 10:
        return False
    err0 = math.sqrt(2 * losses[0])
    if err0 == 0:
        return True
    previous = math.sqrt(2 * losses[t - 10])
    return (previous - math.sqrt(2 * losses[t])) / err0 < tol


def factorize(
    V: Any,
    n_components: int,
    *,
    beta_loss: str | int = "frobenius",
    init: str | None = None,
    W_init: Any = None,
    H_init: Any = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: Any = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    block_rows: int | None = None,
    client: Any = None,
    callback: Callable[[int, float], Any] | None = None,
    verbose: bool = False,
    checkpoint: Any = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    overwrite: bool = False,
    keep_in_memory: bool | None = None,
    array: str | None = None,
    dtype: Any = None,
    storage_options: dict | None = None,
    on_checkpoint: Callable[[int, Any], Any] | None = None,
    variable: str | None = None,
    sample_dims: Any = None,
    feature_dims: Any = None,
    loss_every: int | None = None,
) -> NMFResult:
    """Factorize a non-negative matrix V ~= W H with Lee & Seung's multiplicative updates.

    Parameters
    ----------
    V : str, os.PathLike, zarr.Array, dask.array.Array or numpy.ndarray
        The m x n non-negative matrix: a zarr store (path or fsspec URL), a
        zarr array, a dask array or a NumPy array.  It is read in row blocks
        and never modified.
    n_components : int
        The rank k.
    beta_loss : {"frobenius", "kullback-leibler", 2, 1}
        The cost: ``0.5 * ||V - WH||^2`` or the generalized KL divergence.
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
        Like scikit-learn's; None means "nndsvda" if k <= min(m, n), else
        "random".  "custom" takes ``W_init`` and ``H_init``.
    W_init, H_init : array-like, optional
        Starting factors for ``init="custom"`` (given both, init defaults to it).
    max_iter : int
        Maximum number of iterations.
    tol : float
        scikit-learn's stopping rule: every 10 iterations, stop when the
        decrease of ``sqrt(2 * loss)`` over the last 10 iterations, relative to
        its initial value, is below ``tol``.  0 runs ``max_iter`` iterations.
    random_state : int, numpy.random.RandomState or None
        Seed for the initialization; the same seed and ``block_rows`` give the
        same result.
    alpha_W, alpha_H, l1_ratio : float
        Regularization, scaled as in scikit-learn (W terms by n, H terms by m).
    block_rows : int, optional
        Rows of V per block (and per W block).  Default: from dask's
        ``array.chunk-size`` (on a cluster at most 1/8 of a worker thread's
        memory limit for a dense zarr store, 1/16 for other lazy inputs), at
        least two blocks per worker thread, sized for an even share between
        the threads, in whole store row chunks where there are enough.
    client : distributed.Client, optional
        Where to run; default: the current default client if there is one,
        else dask's local threaded scheduler.  No cluster is started here.
    callback : callable, optional
        ``callback(iteration, loss)`` once per iteration, when its loss is
        known (for KL that is during the next pass); ``loss`` is NaN for the
        iterations whose loss ``loss_every`` skips.
    verbose : bool
        Print the loss every 10 iterations.
    checkpoint : str or os.PathLike, optional
        A zarr group to write the state to every ``checkpoint_every``
        iterations and at the end (see :mod:`dask_nmf.persistence`).
    checkpoint_every : int
        Iterations between checkpoints (also the lineage cut on a cluster).
    resume : bool
        Continue from the last complete state in ``checkpoint``.
    overwrite : bool
        Replace an existing ``checkpoint`` store instead of refusing to.
    keep_in_memory : bool, optional
        Keep V's decoded blocks in memory after the first read.  Default:
        when V takes at most half the workers' memory (a quarter of this
        machine's free memory on the local scheduler).
    array : str, optional
        The array's name when V is a zarr group.
    dtype : {None, "float32", "float64"}
        Compute in this dtype (default: float32 for float32 V, else float64).
    storage_options : dict, optional
        fsspec options for URLs of V and of the checkpoint.
    on_checkpoint : callable, optional
        ``on_checkpoint(iteration, path)`` after each complete checkpoint.
    variable, sample_dims, feature_dims : optional
        For xarray input (a DataArray, a Dataset, or a zarr store opened with
        xarray when one of these is given): the variable, and the dimensions
        stacked into samples (rows) and features (columns).  W and H then come
        back as DataArrays with V's coordinates and a ``component`` dimension.
    loss_every : int, optional
        KL only: evaluate the loss every ``loss_every`` iterations (and at the
        last one, and wherever ``tol`` needs it); the others are NaN in
        ``loss_history``.  The KL loss takes a logarithm per entry of V, which
        costs about as much as the update itself, so the default is 10, the
        iterations scikit-learn's stopping rule looks at.  1 gives every
        iteration's loss.  The Frobenius loss comes from the update's own
        partial sums and is always known at every iteration.

    Returns
    -------
    NMFResult
        ``W`` (dask array, row blocks aligned with V's), ``H`` (NumPy),
        ``loss_history``, ``n_iter``, ``converged``.
    """
    t_start = time.perf_counter()
    beta = check_beta_loss(beta_loss)
    check_params(n_components, max_iter, tol, alpha_W, alpha_H, l1_ratio)
    if not _is_int(checkpoint_every) or checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be a positive integer; got {checkpoint_every!r}")
    if loss_every is None:
        loss_every = 10
    if not _is_int(loss_every) or loss_every < 1:
        raise InputError(f"loss_every must be a positive integer; got {loss_every!r}")
    if init is None and W_init is not None and H_init is not None:
        init = "custom"
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint= naming the store to resume from")

    runner = Runner(resolve_client(client))
    if resume and block_rows is None and checkpoint is not None:
        # Continue with the checkpoint's row blocks (W is stored in them).
        with contextlib.suppress(FileNotFoundError, ValueError):
            block_rows = persistence.read_meta(checkpoint, storage_options)["params"]["block_rows"]
    opening = dict(
        array=array,
        dtype=dtype,
        storage_options=storage_options,
        parallelism=runner.parallelism,
        variable=variable,
        sample_dims=sample_dims,
        feature_dims=feature_dims,
    )
    with runner.block_size_limit():
        Vin = open_input(V, block_rows, **opening)
    whole_blocks = Vin.array is not None and not isinstance(Vin.zarr, zarr.Array)
    if block_rows is None and runner.distributed and whole_blocks:
        # Only a dense zarr store is read by the NNDSVD's SVD in half blocks; from
        # any other lazy source it holds whole blocks (about six per thread).
        with runner.block_size_limit(WHOLE_BLOCK_MEMORY_FRACTION):
            Vin = open_input(V, None, **opening)
    m, n = Vin.shape
    k = int(n_components)
    init = resolve_init(init, k, Vin.shape)
    custom = None
    if init == "custom" and not resume:
        if W_init is None or H_init is None:
            raise InputError("init='custom' needs both W_init and H_init")
        custom = custom_init(Vin, k, W_init, H_init)  # validated before V is read
    elif W_init is not None or H_init is not None:
        warnings.warn(
            f"init={init!r}: the W_init/H_init given are ignored (use init='custom')",
            UserWarning,
            stacklevel=2,
        )
    if init == "nndsvd":
        warnings.warn(  # (scikit-learn's first sentence, which users filter on)
            "The multiplicative update ('mu') solver cannot update zeros present in the "
            "initialization: multiplicative updates cannot move entries that start at zero, "
            "which init='nndsvd' produces; init='nndsvda' or 'nndsvdar' usually fit better",
            UserWarning,
            stacklevel=2,
        )
    reg = regularization(Vin.shape, alpha_W, alpha_H, l1_ratio)
    params = {
        "n_components": k,
        "beta_loss": BETA_NAMES[beta],
        "init": init,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "random_state": random_state if _is_int(random_state) else None,
        "alpha_W": float(alpha_W),
        "alpha_H": alpha_H if alpha_H == "same" else float(alpha_H),
        "l1_ratio": float(l1_ratio),
        "block_rows": Vin.block_rows,
        "dtype": Vin.dtype.name,
        "checkpoint_every": int(checkpoint_every),
    }

    # The output is taken before V is read: refused unless it is absent or ours,
    # and locked against other runs until this one ends.
    resume_meta, V_places, claim = None, outputs.input_locations(V, storage_options), None
    note = None  # about a finished run being resumed
    temp_store = None
    if checkpoint is not None:
        claim = outputs.claim_output(
            checkpoint,
            overwrite=overwrite,
            resume=resume,
            inputs=V_places,
            storage_options=storage_options,
            what="checkpoint",
        )
    # What the fit holds or changes for its duration (the output's lock, BLAS
    # threads, the workers' malloc, read buffers), undone in the ``finally`` below.
    settings = contextlib.ExitStack()
    if claim is not None:
        settings.callback(claim.release)  # (last of all)
    try:
        if resume:
            resume_meta = claim.marker
            _check_resumable(resume_meta, params, Vin, V_places)
            done, note = finished_run(resume_meta, max_iter)
            if done:
                warnings.warn(f"{checkpoint!r}: {note}", ResumeNote, stacklevel=2)
                return persistence.load(checkpoint, storage_options)

        # Keep V's decoded blocks in memory when they fit: every pass after the first
        # is then a memory-bound one.
        if Vin.array is not None:
            if keep_in_memory is None:
                keep_in_memory = Vin.nbytes <= runner.memory_budget()
            if keep_in_memory:
                (Vin.array,) = runner.persist(Vin.array)
                Vin.zarr = None  # the iterations use the kept blocks, not the store
        sources = runner.place(block_sources(Vin))
        # Re-read from a zarr store: every pass reads V's blocks inside its own tasks.
        reader = BlockReader(Vin.zarr, Vin.dtype) if Vin.zarr is not None else None

        try:
            stats = input_stats(runner, sources, reader, Vin.bounds)  # validation and statistics
            check_stats(stats)
            fingerprint = _fingerprint(stats, V_places)
            if resume_meta is not None:
                _check_fingerprint(resume_meta, fingerprint)
                if note is not None:
                    warnings.warn(f"{checkpoint!r}: {note}", ResumeNote, stacklevel=2)
        except BaseException:
            runner.release_read_buffers()  # (on success, released when the fit ends)
            raise
        fit = _Fit(runner, Vin, sources, reader, beta, k, reg, stats["sumsq"], stats["sum"])

        store = checkpoint
        if store is None and runner.distributed:
            # The lineage cut needs a store every worker can read.
            temp_store = store = tempfile.mkdtemp(prefix="dask-nmf-")
            store = os.path.join(store, "state.zarr")
            seen = runner.client.run(os.path.isdir, temp_store)
            if not all(seen.values()):
                os.rmdir(temp_store)
                raise InputError(
                    "the workers cannot see this machine's temporary directory; pass "
                    "checkpoint= a location all workers can reach (shared disk or object store)"
                )
        meta = {
            "params": params,
            "input": dict(Vin.source, fingerprint=fingerprint),
            "beta_loss": BETA_NAMES[beta],
        }
        settings.enter_context(runner.blas_limits())
        settings.enter_context(
            workers.tuned_for_blocks(runner.client, Vin.nbytes // len(Vin.bounds))
        )
        # (Exits run last in, first out: the buffers go before malloc is trimmed.)
        settings.callback(runner.release_read_buffers)
        if resume_meta is not None:
            W_h, H, losses, t = _restore(checkpoint, resume_meta, Vin, storage_options)
        else:
            W_src, H = custom or _initialize(init, Vin, k, stats, random_state, runner, reader)
            W_h, losses, t = runner.place(W_src), [], 0
            if store is not None:
                if claim is not None:
                    claim.clear()  # an earlier result, replaced only now (overwrite=True)
                persistence.create_store(
                    store,
                    Vin.shape,
                    k,
                    Vin.dtype,
                    Vin.block_rows,
                    meta,
                    storage_options=storage_options,
                )
        H = np.asarray(H, dtype=Vin.dtype)

        def loss_wanted(s: int) -> bool:
            return s % loss_every == 0 or (tol > 0 and s % 10 == 0)

        def report(s: int, loss: float) -> None:
            if verbose and (s % 10 == 0 or s == max_iter) and not math.isnan(loss):
                print(
                    f"Epoch {s:02d} reached after {time.perf_counter() - t_start:.3f} seconds, "
                    f"error: {math.sqrt(2 * loss):f}"
                )
            if callback is not None:
                callback(s, loss)

        def save(W_h, H, t, losses, converged, finished):
            """Write W (from the workers) and H to the spare slot, then switch to it."""
            slot = persistence.next_slot(persistence.read_meta(store, storage_options))
            writes = [
                dask.delayed(persistence.write_w_block, pure=False)(
                    store, slot, a, _delayed(w), storage_options
                )
                for w, (a, _) in zip(W_h, Vin.bounds)
            ]
            state = {
                "iteration": t,
                "n_iter": t,
                "loss_history": [float(x) for x in losses],
                "converged": bool(converged),
                "finished": bool(finished),
            }
            try:
                runner.run(writes)
                persistence.commit_state(store, slot, H, state, storage_options)
            except OSError as exc:  # a full disk, a store gone read-only, ...
                raise outputs.write_failed(store, t, exc, storage_options) from exc
            if store == checkpoint:
                if verbose:
                    print(f"checkpoint: iteration {t} written to {store}")
                if on_checkpoint is not None:
                    on_checkpoint(t, store)
            if not runner.distributed:
                return W_h
            # Read W back: blocks with no history cut the lineage here.
            return [
                dask.delayed(persistence.read_w_block, pure=False)(
                    store, slot, a, b, storage_options
                )
                for a, b in Vin.bounds
            ]

        if checkpoint is not None and resume_meta is None:
            # State 0 at once: an interrupted run is resumable from the start.
            W_h = save(W_h, H, 0, losses, False, False)
        converged = False
        t_begin, known = t, len(losses)  # on resume, losses may include state t's

        def launch(W_h, H, s: int) -> _Pass:
            first = s == t_begin and known == 0  # the start's loss comes from pass 0
            with_loss = beta == 2 or (s >= known and loss_wanted(s))
            return fit.launch(W_h, H, s, first, with_loss)

        def may_run_ahead(s: int) -> bool:
            # Pass s may start before pass s - 1's losses are in, except from a
            # checkpointed state (whose W blocks are replaced by their stored copies).
            return (
                runner.distributed
                and fit.may_run_ahead
                and s < max_iter
                and not (store is not None and s % checkpoint_every == 0)
            )

        pending = launch(W_h, H, t) if t < max_iter else None
        while pending is not None:
            ahead = launch(pending.W, pending.state, t + 1) if may_run_ahead(t + 1) else None
            before, after = runner.value(pending.losses)
            if beta == 2:
                if len(losses) == t:  # the first pass of a fresh run
                    losses.append(before)
                W_h, H, t = pending.W, pending.state, t + 1
                losses.append(after)
                report(t, losses[t])
                converged = _converged(losses, t, tol)
            else:
                # The KL pass returns the loss of the state it started from.
                if len(losses) == t:
                    losses.append(before)  # NaN where loss_every skips it
                    if t > 0:
                        report(t, losses[t])
                converged = _converged(losses, t, tol)
                if not converged:  # else state t is the answer; the pass is dropped
                    W_h, H, t = pending.W, pending.state, t + 1
            pending = ahead
            if converged or t >= max_iter:
                break
            if store is not None and t % checkpoint_every == 0:
                H = _value_of_H(runner, H)
                W_h = save(W_h, H, t, losses, False, False)
            if pending is None:
                pending = launch(W_h, H, t)
        if pending is not None:  # run ahead past the answer
            runner.cancel(pending.handles())
        H = _value_of_H(runner, H)
        if len(losses) == t:  # the KL loss of the final state is still unknown
            losses.append(fit.loss_only(W_h, H))
            report(t, losses[t])
            converged = converged or _converged(losses, t, tol)
        if checkpoint is not None:
            W_h = save(W_h, H, t, losses, converged, True)
        if runner.distributed:
            # The result's blocks must not depend on the temporary store.
            W_h, _ = runner.run([_delayed(w) for w in W_h])
    except BaseException:
        if claim is not None:
            claim.abandon()  # a store this run created, with nothing complete in it
        raise
    finally:
        settings.close()
        if temp_store is not None:
            shutil.rmtree(temp_store, ignore_errors=True)

    W = da.concatenate(
        [
            da.from_delayed(_delayed(w), shape=(b - a, k), dtype=Vin.dtype)
            for w, (a, b) in zip(W_h, Vin.bounds)
        ],
        axis=0,
    )
    W, H_out = label_results(W, H, Vin.labels)
    result = NMFResult(
        W=W,
        H=H_out,
        loss_history=[float(x) for x in losses],
        n_iter=t,
        converged=converged,
        beta_loss=BETA_NAMES[beta],
        params=params,
        source=Vin.source,
    )
    result.diagnostics = {"graph_tasks": fit.graph_tasks, "kept_in_memory": bool(keep_in_memory)}
    return result


def _initialize(init, Vin, k, stats, random_state, runner, reader=None):
    mean = stats["sum"] / (Vin.shape[0] * Vin.shape[1])
    if init == "random":
        return random_init(Vin, k, mean, random_state)
    return nndsvd_init(Vin, k, mean, init, random_state, runner, reader)


def _check_resumable(meta: dict, params: dict, Vin: InputMatrix, V_places: list) -> None:
    """Refuse a resume from a checkpoint made with another V or other settings."""
    if not meta.get("state"):
        raise InputError("cannot resume: the checkpoint holds no complete state yet")
    shape = meta.get("input", {}).get("shape")
    if shape is not None and tuple(shape) != tuple(Vin.shape):
        raise InputError(
            f"cannot resume: the checkpoint is for V of shape {tuple(shape)}, not {Vin.shape}"
        )
    old = meta.get("params", {})
    for key in (
        "n_components",
        "beta_loss",
        "block_rows",
        "alpha_W",
        "alpha_H",
        "l1_ratio",
        "dtype",
    ):
        if key in old and old[key] != params[key]:
            raise InputError(
                f"cannot resume: the checkpoint was made with {key}={old[key]!r}, not {params[key]!r}"
            )
    old_dtype = meta.get("input", {}).get("dtype")
    if old_dtype is not None and old_dtype != str(Vin.source.get("dtype", old_dtype)):
        raise InputError(
            f"cannot resume: the checkpoint is for V of dtype {old_dtype}, "
            f"not {Vin.source.get('dtype')}"
        )
    where = meta.get("input", {}).get("fingerprint", {}).get("location")
    here = str(V_places[0]) if V_places else None
    if where is not None and here is not None and where != here:
        raise InputError(
            f"cannot resume: the checkpoint was made from V at {where!r}, not {here!r}"
        )


class ResumeNote(UserWarning):
    """What resuming a finished run did (see :func:`finished_run`)."""


def finished_run(meta: dict, max_iter: int) -> tuple[bool, str | None]:
    """What resuming a checkpoint does when it holds a finished run.

    A finished run is reported, not continued, unless it stopped at its
    ``max_iter`` (not by ``tol``) and ``max_iter`` now asks for more.

    Returns
    -------
    (bool, str or None)
        Whether there is nothing to run, and what to tell the user (None when
        the checkpoint is not a finished run).
    """
    state = meta.get("state") or {}
    if not state.get("finished"):
        return False, None
    ran, converged = int(state["n_iter"]), bool(state.get("converged"))
    if converged:
        return True, f"it holds a finished run ({ran} iterations, converged): nothing to run"
    if max_iter <= ran:
        return True, (
            f"it holds a finished run ({ran} iterations, stopped at max_iter={ran}): nothing "
            f"to run; a max_iter above {ran} continues it"
        )
    return (
        False,
        f"it holds a run finished at iteration {ran}; continuing it to max_iter={max_iter}",
    )


def _fingerprint(stats: dict, V_places: list) -> dict:
    """What identifies V in a checkpoint: its sum and ‖V‖², and where it is stored."""
    return {
        "sum": float(stats["sum"]),
        "sumsq": float(stats["sumsq"]),
        "location": str(V_places[0]) if V_places else None,
    }


def _check_fingerprint(meta: dict, fingerprint: dict) -> None:
    old = meta.get("input", {}).get("fingerprint")
    if not old:
        return  # (a checkpoint written before fingerprints existed)
    for key in ("sum", "sumsq"):
        # The same blocks summed again: equal but for the order of a tree reduction.
        if not math.isclose(old[key], fingerprint[key], rel_tol=1e-6, abs_tol=1e-300):
            raise InputError(
                f"cannot resume: V is not the data the checkpoint was made from "
                f"(its {'sum' if key == 'sum' else 'sum of squares'} is {fingerprint[key]:.10g}, "
                f"the checkpoint's V had {old[key]:.10g})"
            )


def _restore(path, meta, Vin, storage_options):
    state = meta["state"]
    slot = state["slot"]
    W_h = [
        dask.delayed(persistence.read_w_block, pure=False)(path, slot, a, b, storage_options)
        for a, b in Vin.bounds
    ]
    _, H, _ = persistence.read_state(path, storage_options)
    return W_h, H, list(state["loss_history"]), int(state["iteration"])


def input_matrix(V: Any, block_rows: int | None = None, **kw) -> InputMatrix:
    """Open V as the driver would (exposed for the estimator and the CLI)."""
    return open_input(V, block_rows, parallelism=Runner(resolve_client(None)).parallelism, **kw)


def transform(
    V: Any,
    H: np.ndarray,
    *,
    beta_loss: str | int = "frobenius",
    max_iter: int = 200,
    tol: float = 1e-4,
    alpha_W: float = 0.0,
    l1_ratio: float = 0.0,
    block_rows: int | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    array: str | None = None,
) -> da.Array:
    """W for the rows of V with H fixed: MU on W alone, each row block on its own.

    No reduction runs between the blocks (apart from the one validation pass
    that also gives the mean of V, from which W starts, as in scikit-learn).

    Returns
    -------
    dask.array.Array
        Lazy, m x k, chunked by V's row blocks.
    """
    beta = check_beta_loss(beta_loss)
    H = np.asarray(H)
    k, n = H.shape
    check_params(k, max_iter, tol, alpha_W, 0.0, l1_ratio)
    runner = Runner(resolve_client(client))
    Vin = open_input(
        V,
        block_rows,
        array=array,
        dtype=H.dtype,
        storage_options=storage_options,
        parallelism=runner.parallelism,
    )
    if Vin.shape[1] != n:
        raise InputError(f"V has {Vin.shape[1]} columns but the model has {n} features")
    sources = runner.place(block_sources(Vin))
    stats = input_stats(runner, sources)
    check_stats(stats)
    l1, l2, _, _ = regularization(Vin.shape, alpha_W, 0.0, l1_ratio)
    w_start = float(np.sqrt(stats["sum"] / (Vin.shape[0] * n) / k))
    Hd = dask.delayed(H, name=f"nmf-H-{uuid.uuid4().hex}")
    blocks = [
        da.from_delayed(
            dask.delayed(kernels.transform_block, pure=False)(
                _delayed(s), Hd, w_start, beta, l1, l2, int(max_iter), float(tol)
            ),
            shape=(b - a, k),
            dtype=H.dtype,
        )
        for s, (a, b) in zip(sources, Vin.bounds)
    ]
    W = da.concatenate(blocks, axis=0)
    return label_results(W, H, Vin.labels)[0]
