"""``transform``: W for new rows of V with H fixed, block by block.

Each row block solves for its rows of W on its own (the solver's
``transform_block``: scikit-learn's ``transform`` for that solver), so no
reduction runs between the blocks, apart from the one validation pass that
also gives V's mean, from which W starts, as in scikit-learn.
"""

from __future__ import annotations

import uuid
from typing import Any

import dask
import dask.array as da
import numpy as np

from .cluster import Runner, resolve_client
from .io import (
    InputError,
    block_sources,
    check_features,
    check_stats,
    default_feature_dims,
    label_results,
)
from .missing import check_input as check_missing_input
from .missing import masked_input, split_missing, stats_function
from .options import FitOptions, ReadOptions
from .passes import as_delayed, input_stats


def transform(
    V: Any,
    H: np.ndarray,
    *,
    beta_loss: str | float = "frobenius",
    solver: str = "mu",
    max_iter: int = 200,
    tol: float = 1e-4,
    alpha_W: float = 0.0,
    l1_ratio: float = 0.0,
    block_rows: int | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    array: str | None = None,
    shuffle: bool = False,
    random_state: Any = None,
    missing: Any = None,
    variable: str | None = None,
    sample_dims: Any = None,
    feature_dims: Any = None,
) -> Any:
    """W for the rows of V with H fixed: the solver on W alone, each row block on its own.

    ``shuffle`` and ``random_state``: for solvers that update coordinates in
    turn (as in :func:`factorize`).  ``missing`` as in :func:`factorize`: each
    row's W then fits its observed entries only.

    No reduction runs between the blocks (apart from the one validation pass
    that also gives the mean of V, from which W starts, as in scikit-learn).

    Parameters
    ----------
    V : str, os.PathLike, zarr.Array, dask.array.Array, numpy.ndarray or xarray object
        The rows to transform, with H's features; as in :func:`factorize`.
    H : numpy.ndarray or xarray.DataArray
        The fixed k x n factor, e.g. a fit's ``res.H`` (labelled for xarray V).
    beta_loss, solver, max_iter, tol, alpha_W, l1_ratio : optional
        The fit's settings (see :func:`factorize`); ``tol`` and ``max_iter``
        bound each block's solve.
    block_rows, client, storage_options, array : optional
        As in :func:`factorize`.
    shuffle, random_state : optional
        For solvers that update coordinates in turn (as in :func:`factorize`).
    variable, sample_dims, feature_dims : optional
        For xarray V, as in :func:`factorize`.  Given a labelled H (a fit's
        ``res.H``), ``feature_dims`` defaults to the dimensions its columns
        stand for, and V's feature coordinates must equal H's.

    Returns
    -------
    dask.array.Array or xarray.DataArray
        Lazy, m x k, chunked by V's row blocks; for xarray V (or an AnnData
        store), a DataArray labelled with V's sample coordinates.
    """
    H_labelled = H
    feature_dims = default_feature_dims(V, H, variable, sample_dims, feature_dims)
    H = np.asarray(H)
    k, n = H.shape
    # The fit's options, checked as a fit's are (H is fixed: no penalty on it).
    options = FitOptions(
        k,
        beta_loss=beta_loss,
        solver=solver,
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
        alpha_W=alpha_W,
        alpha_H=0.0,
        l1_ratio=l1_ratio,
        shuffle=shuffle,
        missing=split_missing(missing)[0],
    )
    reading = ReadOptions(
        block_rows=block_rows,
        array=array,
        dtype=H.dtype,
        storage_options=storage_options,
        variable=variable,
        sample_dims=sample_dims,
        feature_dims=feature_dims,
    )
    V, masked = masked_input(V, options.missing, split_missing(missing)[1], storage_options, array)
    runner = Runner(resolve_client(client))
    Vin = reading.open(V, runner, n_components=k, **({"array": None} if masked else {}))
    check_features(Vin.labels, H_labelled)
    if Vin.shape[1] != n:
        raise InputError(f"V has {Vin.shape[1]} columns but the model has {n} features")
    check_missing_input(Vin, options.missing)
    sources = runner.place(block_sources(Vin))
    stats = input_stats(runner, sources, stats=stats_function(options.missing))
    check_stats(stats, dtype=Vin.dtype, shape=Vin.shape, k=k)
    options.algorithm.check_stats(stats)
    solver = options.solver_for(Vin.shape, stats, H.dtype)
    w_start = float(np.sqrt(stats["sum"] / stats.get("observed", Vin.shape[0] * n) / k))
    Hd = dask.delayed(H, name=f"nmf-H-{uuid.uuid4().hex}")
    blocks = [
        da.from_delayed(
            dask.delayed(solver.transform_block, pure=False)(
                as_delayed(s), Hd, w_start, int(max_iter), float(tol)
            ),
            shape=(b - a, k),
            dtype=H.dtype,
        )
        for s, (a, b) in zip(sources, Vin.bounds)
    ]
    W = da.concatenate(blocks, axis=0)
    return label_results(W, H, Vin.labels)[0]
