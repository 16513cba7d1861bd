"""Results and checkpoints in zarr groups.

Layout of a result/checkpoint group (zarr v3)::

    OUT.zarr/
      zarr.json            attributes["dask_nmf"]: parameters, input, state
      state0/W  state0/H   one complete (W, H) pair
      state1/W  state1/H   the other one

W is chunked by V's row blocks and written by the workers, block by block;
H is small and written by the client.  The two slots are written in turn and
the attribute ``state.slot`` names the one that is complete: a new state is
written into the *other* slot, and only after all its chunks are stored is the
attribute switched (one small atomic write).  A crash at any moment therefore
leaves the previous complete (W, H, iteration) readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

SLOTS = ("state0", "state1")
FORMAT = 1


def _version() -> str:
    from . import __version__

    return __version__


def create_store(
    path: Any,
    shape: tuple[int, int],
    n_components: int,
    dtype: Any,
    block_rows: int,
    meta: dict,
    *,
    storage_options: dict | None = None,
) -> zarr.Group:
    """Create an empty result/checkpoint group with both slots allocated.

    Nothing is ever replaced here: the location must be free (see
    :mod:`dask_nmf.outputs`, which decides what may be written where and
    clears an earlier result first).  The ``dask_nmf`` marker is part of the
    group's first metadata document, so the group is recognisably ours from
    its first byte.
    """
    m, n = shape
    attrs = dict(meta, format=FORMAT, version=_version(), state=None)
    group = zarr.create_group(path, attributes={"dask_nmf": attrs}, storage_options=storage_options)
    for slot in SLOTS:
        group.create_array(
            f"{slot}/W", shape=(m, n_components), chunks=(block_rows, n_components), dtype=dtype
        )
        group.create_array(
            f"{slot}/H", shape=(n_components, n), chunks=(n_components, n), dtype=dtype
        )
    return group


def read_meta(path: Any, storage_options: dict | None = None) -> dict:
    """The ``dask_nmf`` attributes of a result/checkpoint group."""
    from .io import InputError

    try:
        group = zarr.open_group(path, mode="r", storage_options=storage_options)
    except zarr.errors.BaseZarrError as exc:  # (zarr's "not found" is a FileNotFoundError too)
        raise InputError(f"{path!r} is not a dask_nmf result or checkpoint ({exc})") from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no dask_nmf result or checkpoint at {path!r}") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path!r} is not a dask_nmf result or checkpoint ({exc})") from exc
    meta = group.attrs.get("dask_nmf")
    if not isinstance(meta, dict) or "params" not in meta:
        raise InputError(f"{path!r} is a zarr group but not a dask_nmf result or checkpoint")
    return dict(meta)


def next_slot(meta: dict) -> str:
    """The slot that does not hold the current complete state."""
    state = meta.get("state")
    if not state:
        return SLOTS[0]
    return SLOTS[1] if state["slot"] == SLOTS[0] else SLOTS[0]


def write_w_block(
    path: Any, slot: str, start: int, W_block: np.ndarray, storage_options: dict | None = None
) -> int:
    """Write one row block of W into ``slot`` (runs on a worker); returns its row count."""
    arr = zarr.open_array(path, path=f"{slot}/W", mode="r+", storage_options=storage_options)
    arr[start : start + W_block.shape[0]] = W_block
    return int(W_block.shape[0])


def read_w_block(
    path: Any, slot: str, start: int, stop: int, storage_options: dict | None = None
) -> np.ndarray:
    """Read one row block of W from ``slot`` (runs on a worker)."""
    arr = zarr.open_array(path, path=f"{slot}/W", mode="r", storage_options=storage_options)
    return arr[start:stop]


def commit_state(
    path: Any, slot: str, H: np.ndarray, state: dict, storage_options: dict | None = None
) -> None:
    """Store H in ``slot`` and then mark ``slot`` as the current complete state.

    Call only after every W block of this state has been written to ``slot``.
    """
    group = zarr.open_group(path, mode="r+", storage_options=storage_options)
    group[f"{slot}/H"][...] = H
    meta = dict(group.attrs["dask_nmf"])
    meta["state"] = dict(state, slot=slot)
    # The attribute write is the marker: zarr writes the metadata document in
    # one piece (atomically on local disk, one PUT on object stores).
    group.attrs.update({"dask_nmf": meta})


def read_state(path: Any, storage_options: dict | None = None) -> tuple[da.Array, np.ndarray, dict]:
    """W (lazy), H and the attributes of the last complete state in a group."""
    meta = read_meta(path, storage_options)
    state = meta.get("state")
    if not state:
        from .io import InputError

        raise InputError(
            f"{path!r} holds no complete state yet (a run that stopped before its first checkpoint)"
        )
    group = zarr.open_group(path, mode="r", storage_options=storage_options)
    W = da.from_zarr(group[f"{state['slot']}/W"])
    H = group[f"{state['slot']}/H"][...]
    return W, H, meta


@dataclass
class NMFResult:
    """The outcome of :func:`dask_nmf.factorize`.

    Attributes
    ----------
    W : dask.array.Array, shape (m, k)
        Row blocks aligned with V's; held on the cluster (or in memory).
    H : numpy.ndarray, shape (k, n)
    loss_history : list of float
        The cost after each iteration, starting with the initial point:
        ``0.5 * ||V - WH||^2`` (Frobenius) or ``D(V || WH)`` (KL).
        ``len(loss_history) == n_iter + 1``.  For KL, iterations whose loss
        was not evaluated (see ``loss_every``) are NaN.
    n_iter : int
        Iterations run.
    converged : bool
        Whether the ``tol`` criterion stopped the run before ``max_iter``.
    beta_loss : str
    params : dict
        The settings of the run.
    source : dict
        Where V came from.
    origin : str, optional
        The store W is read from lazily (a result given by :func:`load`).
    stop_reason : str, optional
        Why the fit stopped, in words: ``tol`` met at which iteration, or
        ``max_iter`` reached with the last value the stopping rule saw and what
        to change (None for a result read by :func:`load`).
    """

    W: da.Array
    H: np.ndarray
    loss_history: list[float]
    n_iter: int
    converged: bool
    beta_loss: str
    params: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    origin: str | None = field(default=None, repr=False)
    stop_reason: str | None = None

    @property
    def reconstruction_err(self) -> float:
        """scikit-learn's ``reconstruction_err_``: ``sqrt(2 * final loss)``."""
        return float(np.sqrt(2.0 * self.loss_history[-1]))

    def to_zarr(
        self, path: Any, *, overwrite: bool = False, storage_options: dict | None = None
    ) -> None:
        """Write W, H and the attributes to a zarr group (see the module docstring).

        W is stored from the workers block by block, never gathered here.

        Parameters
        ----------
        path : str or os.PathLike
            A local path or fsspec URL: absent, or a dask_nmf result to replace.
        overwrite : bool
            Replace a dask_nmf result at ``path``.  Nothing else is ever
            replaced (see :mod:`dask_nmf.outputs`); ``path`` may not be the
            input V, nor the store this result's W is read from.
        """
        from .checkpoint import state_record, write_state
        from .outputs import claim_output, locate

        inputs = [locate(p) for p in (self.source.get("path"), self.origin) if p is not None]
        W_raw, H_raw = _unlabelled(self.W), np.asarray(self.H)
        block_rows = int(W_raw.chunks[0][0])
        meta = {"params": self.params, "input": self.source, "beta_loss": self.beta_loss}
        with claim_output(
            path, overwrite=overwrite, inputs=inputs, storage_options=storage_options
        ) as claim:
            claim.clear()
            create_store(
                path,
                (W_raw.shape[0], H_raw.shape[1]),
                H_raw.shape[0],
                H_raw.dtype,
                block_rows,
                meta,
                storage_options=storage_options,
            )
            W = W_raw.rechunk((block_rows, W_raw.shape[1]))

            def write_W(slot: str) -> None:
                target = zarr.open_array(
                    path, path=f"{slot}/W", mode="r+", storage_options=storage_options
                )
                da.store(W, target, lock=False)

            record = state_record(self.n_iter, self.loss_history, self.converged, True)
            write_state(path, write_W, H_raw, record, storage_options)


def _unlabelled(x: Any) -> Any:
    """The array inside an xarray DataArray (or x itself)."""
    return x.data if type(x).__module__.startswith("xarray.") else x


def load(path: Any, storage_options: dict | None = None) -> NMFResult:
    """Read a result or checkpoint group written by dask_nmf.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or fsspec URL.

    Returns
    -------
    NMFResult
        W is a lazy dask array over the store.
    """
    W, H, meta = read_state(path, storage_options)
    state = meta["state"]
    return NMFResult(
        W=W,
        H=H,
        loss_history=list(state["loss_history"]),
        n_iter=int(state["n_iter"]),
        converged=bool(state["converged"]),
        beta_loss=meta.get("beta_loss", meta.get("params", {}).get("beta_loss", "frobenius")),
        params=dict(meta.get("params", {})),
        source=dict(meta.get("input", {})),
        origin=str(path),
    )
