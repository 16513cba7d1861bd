"""The pass graph: one plain dask graph per pass over V.

For every row block one task reads V_i (or uses the kept block), calls the
solver's ``block_step`` and emits its partial sums; a tree of small tasks adds
the sums up (first per worker, then across workers) and one more task turns
them into the next state with the solver's ``next_state``, one more into its
:class:`~dask_nmf.solvers.base.PassReport`.  The graph's size depends on the
number of blocks only, never on the iteration.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.core import literal
from dask.delayed import Delayed

from . import kernels
from .cluster import BlockOwners, Runner, in_memory
from .io import (
    BlockReader,
    InputMatrix,
    read_rows_into,
)
from .solvers import Solver

#: Fan-in of the reduction tree over the blocks' partial sums.
SPLIT_EVERY = 8


def as_delayed(x: Any, name: str | None = None):
    """A Delayed standing for a handle, a Delayed or an array (no hashing of data)."""
    if isinstance(x, Delayed):
        return x
    if in_memory(x):
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
    if in_memory(x):
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


def describe_key(key: Any) -> dict | None:
    """What a key of a pass graph stands for, or None for other keys.

    ``{"role": "step" | "W" | "W-in" | "partials" | "V" | "sum" | "state"
    | "next-state" | "report", "pass": t, "block": i}`` (``block`` for per-block keys only).
    A diagnostics hook for tests and for reading the dashboard: the key format
    itself is not an interface.
    """
    parts = str(key).split("-")
    if len(parts) < 3 or parts[0] != "nmf":
        return None
    role, rest = parts[1], parts[2:]
    if role == "V" and len(rest) == 2:  # nmf-V-<token>-<i>: a block of V kept in a graph
        return {"role": "V", "block": int(rest[1])}
    if len(rest) < 2 or not rest[1].isdigit():
        return None
    out = {"pass": int(rest[1])}
    if role in ("step", "Wnew", "W", "part") and len(rest) == 3:
        roles = {"step": "step", "Wnew": "W", "W": "W-in", "part": "partials"}
        return dict(out, role=roles[role], block=int(rest[2]))
    if role == "state":
        return dict(out, role="next-state" if rest[2:] == ["next"] else "state")
    if role in ("sum", "losses"):
        return dict(out, role="sum" if role == "sum" else "report")
    return None


def input_stats(
    runner: Runner,
    sources: list,
    reader: BlockReader | None = None,
    bounds: list | None = None,
    stats: Callable[[Any], dict] = kernels.block_stats,
) -> dict:
    """One pass over V: its minimum, finiteness, sum and sum of squares
    (``stats`` of each block: over the observed entries where some may be missing).

    When V is to be re-read from its zarr store every pass (a ``reader`` of it
    and the row ``bounds``), this pass reads it the way the iterations will,
    each block decoded inside the task that takes its statistics: no block of
    V becomes a task result.
    """
    if reader is not None:
        parts = [dask.delayed(_stats_of_rows, pure=False)(reader, a, b, stats) for a, b in bounds]
    else:
        parts = [dask.delayed(stats, pure=False)(as_delayed(s)) for s in sources]
    total = tree_reduce(parts, kernels.merge_all_stats)
    (result,) = runner.compute(total)
    return result


def _stats_of_rows(reader: BlockReader, start: int, stop: int, stats: Callable) -> dict:
    return stats(read_rows_into(reader, start, stop))


# --------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------
class PassBuilder:
    """State of one factorization: handles of V and W, H, the loss history."""

    def __init__(self, runner, V: InputMatrix, sources, reader, solver: Solver):
        self.runner, self.V, self.sources = runner, V, [as_delayed(s) for s in sources]
        self.solver = solver
        self.token = uuid.uuid4().hex[:8]
        self.graph_tasks: list[int] = []
        # The iteration graph is a plain dict: dask.delayed's per-call overhead,
        # paid per block and iteration, would be a sizeable part of a pass.
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
            # In-memory or kept blocks of V: each step runs where its V block is
            # (pinned there where the blocks were scattered: dask alone would
            # rather move a block once than the state every pass, and run every
            # block on one worker).
            self.source_refs = [
                _graph_ref(s, f"nmf-V-{self.token}-{i}", self.source_graph, runner.client)
                for i, s in enumerate(sources)
            ]
            self.owners = runner.holders(sources)
        # A pass may be submitted before the previous one ends only if it has no
        # task that could run early: a read task would fetch V's blocks for the
        # next pass while this one still holds its own (memory, not speed).
        self.may_run_ahead = all(in_memory(v) for v in self.source_graph.values())

    def launch(self, *pass_args: Any, **pass_kwargs: Any) -> Pass:
        """Submit a pass (the arguments are :meth:`build`'s); returns its handles."""
        dsk, keys, owners = self.build(*pass_args, **pass_kwargs)
        self.graph_tasks.append(len(dsk))
        handles = self.runner.submit_graph(dsk, keys, owners)
        return Pass(W=handles[:-2], state=handles[-2], losses=handles[-1])

    def build(
        self,
        W: list,
        state: Any,
        t: int,
        first: bool,
        with_loss: bool,
        carry: dict | None = None,
    ) -> tuple:
        """The graph of pass t from state t: W's blocks and ``state``, H or a handle
        of the previous pass's state (see :class:`~dask_nmf.solvers.base.Solver`).

        Returns ``(graph, keys, owners)``: the plain dask graph; its output keys
        (the new W blocks, the next state, the report); the block pinning (or
        None).

        ``first``: state t is given as H and its loss is not known yet (the
        start, a checkpoint or resume whose loss was deferred), so the pass
        computes it.  From a previous pass's state, the state itself says what
        the pass computes (decided on the cluster).  ``carry``: the solver's
        :meth:`~dask_nmf.solvers.base.Solver.carry` of state t where it is
        given as H (after a checkpoint or a resume).

        Everything, the H update included, is one graph, so on a cluster the
        next pass can be submitted before this one finishes: no round trip
        through the client between passes.  Tasks on the path from the last
        block to the next pass's first are few (each costs a scheduler hop).
        """
        tag = f"{self.token}-{t}"
        dsk = dict(self.source_graph)
        if isinstance(state, tuple):  # a computed state (local scheduler): used as it is,
            # as a cluster uses its handle (start() would recompute H Hᵀ and the like)
            dsk[f"nmf-state-{tag}"] = (literal(state),)  # (a tuple in a graph is a task)
            state = f"nmf-state-{tag}"
        if in_memory(state):
            dsk[f"nmf-state-{tag}"] = (self.solver.start, state, first, t, carry)
            state = f"nmf-state-{tag}"
        w_keys, steps, parts = [], [], []
        for i, (v, w) in enumerate(zip(self.source_refs, W)):
            w = _graph_ref(w, f"nmf-W-{tag}-{i}", dsk, self.runner.client)
            task = (self.solver.block_step, v, w, state, with_loss)
            steps.append(f"nmf-step-{tag}-{i}")
            dsk[steps[-1]] = task
            w_keys.append(f"nmf-Wnew-{tag}-{i}")
            dsk[w_keys[-1]] = (operator.getitem, steps[-1], 0)
            # (Only the partial sums leave the block's worker, not its W.)
            parts.append(f"nmf-part-{tag}-{i}")
            dsk[parts[-1]] = (operator.getitem, steps[-1], 1)
        # First sums over blocks of one worker (no transfers), then across workers.
        if self.owners:
            parts.sort(key=lambda key: self.owners[int(key.rsplit("-", 1)[1])])
        firsts = []
        # (A single first sum is the whole reduction: every block waits for it.)
        threads = self.solver.threads if len(parts) <= SPLIT_EVERY else 1
        for j in range(0, len(parts), SPLIT_EVERY):
            firsts.append(f"nmf-sum-{tag}-s-{j}")
            dsk[firsts[-1]] = (kernels.sum_partials, parts[j : j + SPLIT_EVERY], threads)
        total = _tree_reduce_keys(dsk, firsts, kernels.sum_partials, f"nmf-sum-{tag}")
        state_next = f"nmf-state-{tag}-next"
        dsk[state_next] = (self.solver.next_state, state, total)
        losses = f"nmf-losses-{tag}"
        dsk[losses] = (self.solver.pass_report, state, state_next, total, with_loss)
        owners = BlockOwners(f"nmf-step-{tag}-", self.owners) if self.owners else None
        return dsk, [*w_keys, state_next, losses], owners

    def loss_only(self, W: list, H: np.ndarray) -> float:
        """The loss at (W, H) by a separate pass (where no pass gave it: the end of a
        KL fit, or a final Frobenius state whose loss was deferred)."""
        parts = [
            dask.delayed(self.solver.loss_terms, pure=False)(v, w, H)
            for v, w in zip(self.sources, [as_delayed(w) for w in W])
        ]
        (sums,) = self.runner.compute(tree_reduce(parts, kernels.sum_partials))
        return self.solver.loss_from_terms(sums, H)


@dataclass
class Pass:
    """One submitted MU pass: handles of W's blocks and of ``(H, H H^T)`` of the
    state it produces, and ``(loss of the state it started from, loss of the
    state it produced)``, NaN where the pass does not compute one."""

    W: list
    state: Any
    losses: Any

    def handles(self) -> list:
        return [*self.W, self.state, self.losses]
