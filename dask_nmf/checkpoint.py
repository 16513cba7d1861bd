"""Writing a fit's states to its result/checkpoint group, and reading them back.

:class:`Checkpoints` is the one writer of states: the iteration loop saves
through it every ``checkpoint_every`` iterations and at the end, and
``NMFResult.to_zarr`` writes a finished result through the same
:func:`write_state`.  The layout and the slot protocol (a state is complete
only once ``state.slot`` names it) are in :mod:`dask_nmf.persistence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from . import outputs, persistence
from .cluster import Runner
from .passes import as_delayed


def state_record(
    t: int, losses: list, converged: bool, finished: bool, carry: dict | None = None
) -> dict:
    """The ``state`` attribute of a saved state (iteration, loss history, flags,
    and the solver's ``carry`` where it has one)."""
    record = {
        "iteration": int(t),
        "n_iter": int(t),
        "loss_history": [float(x) for x in losses],
        "converged": bool(converged),
        "finished": bool(finished),
    }
    if carry:
        record["solver_state"] = dict(carry)
    return record


def write_state(
    store: Any, write_W: Callable[[str], Any], H: np.ndarray, state: dict, storage_options=None
) -> str:
    """Write a state into the spare slot of ``store`` and switch to it; returns the slot.

    ``write_W(slot)`` stores every block of W into ``slot`` (on the workers)
    before H and the attribute that makes the slot current are written.  A
    write that fails (a full disk, a store gone read-only) leaves the previous
    state current and raises an error saying so.
    """
    slot = persistence.next_slot(persistence.read_meta(store, storage_options))
    try:
        write_W(slot)
        persistence.commit_state(store, slot, H, state, storage_options)
    except OSError as exc:
        raise outputs.write_failed(store, state["iteration"], exc, storage_options) from exc
    return slot


class Checkpoints:
    """The states of one fit in one store.

    Parameters
    ----------
    store : str or URL
        The result/checkpoint group (the user's, or a temporary one that only
        cuts the lineage on a cluster).
    runner : Runner
    bounds : list of (start, stop)
        V's row blocks, which W's blocks follow.
    storage_options : dict, optional
    on_saved : callable, optional
        ``on_saved(iteration, store)`` after each complete state.
    """

    def __init__(
        self,
        store: Any,
        runner: Runner,
        bounds: list,
        storage_options: dict | None = None,
        on_saved: Callable[[int, Any], Any] | None = None,
    ):
        self.store, self.runner, self.bounds = store, runner, bounds
        self.storage_options, self.on_saved = storage_options, on_saved

    def create(self, shape: tuple, k: int, dtype: Any, meta: dict) -> None:
        """Allocate the group (both slots) with its attributes."""
        block_rows = self.bounds[0][1] - self.bounds[0][0]
        persistence.create_store(
            self.store, shape, k, dtype, block_rows, meta, storage_options=self.storage_options
        )

    def save(
        self,
        W: list,
        H: np.ndarray,
        t: int,
        losses: list,
        converged: bool,
        finished: bool,
        carry: dict | None = None,
    ) -> list:
        """Save state t (with the solver's ``carry``); returns W's blocks to carry on with.

        On a cluster these are read back from the store: blocks with no
        history, which cut the task lineage here.
        """
        so = self.storage_options

        def write_W(slot: str) -> None:
            self.runner.run(
                [
                    dask.delayed(persistence.write_w_block, pure=False)(
                        self.store, slot, a, as_delayed(w), so
                    )
                    for w, (a, _) in zip(W, self.bounds)
                ]
            )

        record = state_record(t, losses, converged, finished, carry)
        slot = write_state(self.store, write_W, H, record, so)
        if self.on_saved is not None:
            self.on_saved(t, self.store)
        if not self.runner.distributed:
            return W
        return self._read_W(slot)

    def restore(self, meta: dict) -> tuple[list, np.ndarray, list, int, dict]:
        """W's blocks (read lazily), H, the loss history, the iteration and the
        solver's carry of the current state described by ``meta`` (the group's
        ``dask_nmf`` attribute)."""
        state = meta["state"]
        _, H, _ = persistence.read_state(self.store, self.storage_options)
        W = self._read_W(state["slot"])
        carry = dict(state.get("solver_state") or {})
        return W, H, list(state["loss_history"]), int(state["iteration"]), carry

    def _read_W(self, slot: str) -> list:
        return [
            dask.delayed(persistence.read_w_block, pure=False)(
                self.store, slot, a, b, self.storage_options
            )
            for a, b in self.bounds
        ]


def lineage_store(runner: Runner) -> tuple[str, str]:
    """A temporary store for the lineage cuts of a fit with no checkpoint of its
    own: ``(folder to remove at the end, store path)``.  Every worker must see
    it (the workers of a multi-machine cluster do not share this machine's
    temporary directory: then the fit needs ``checkpoint=``)."""
    import os
    import tempfile

    from .io import InputError

    folder = tempfile.mkdtemp(prefix="dask-nmf-")
    seen = runner.client.run(os.path.isdir, folder)
    if not all(seen.values()):
        os.rmdir(folder)
        raise InputError(
            "the workers cannot see this machine's temporary directory; pass "
            "checkpoint= a location all workers can reach (shared disk or object store)"
        )
    return folder, os.path.join(folder, "state.zarr")
