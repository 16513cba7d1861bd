"""Initial W and H: random, NNDSVD variants (out of core), custom.

Each function returns ``(W_blocks, H)``: one lazy source of W per row block of V
(a ``dask.delayed`` task or an array) and H as a NumPy array.  W is produced on
the workers block by block; nothing of size m travels through the client.
The formulas and scalings follow scikit-learn's ``_initialize_nmf``.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np

from . import kernels_masked
from .io import (
    BlockReader,
    InputError,
    InputMatrix,
    as_dask_array,
    check_factor,
    read_rows,
    row_bounds,
    rows_array,
)
from .missing import column_means, fill_value
from .options import INITS

#: scikit-learn zeroes NNDSVD entries below this before filling them.
_NNDSVD_EPS = 1e-6


def resolve_init(init: str | None, n_components: int, shape: tuple[int, int]) -> str:
    """scikit-learn's default: ``nndsvda`` when k <= min(m, n), else ``random``.

    Raises
    ------
    InputError
        For an unknown ``init``, or an NNDSVD variant asked for more components
        than V has singular vectors (scikit-learn's message, which users match).
    """
    if init is None:
        return "nndsvda" if n_components <= min(shape) else "random"
    if init not in INITS:
        raise InputError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init.startswith("nndsvd") and n_components > min(shape):
        # (A rank-k SVD of V needs k <= min(m, n); dask would fail deep inside.)
        raise InputError(
            f"init = '{init}' can only be used when n_components <= min(n_samples, "
            f"n_features): got n_components={n_components} for V of shape {tuple(shape)}; "
            "use init='random' or fewer components"
        )
    return init


#: Random numbers for W are drawn in fixed tiles of rows, so a row gets the same
#: numbers whatever the row blocks are (block_rows may follow the cluster's size).
_TILE_ROWS = 4096


def _tiled_normal(seed: int, start: int, stop: int, k: int) -> np.ndarray:
    """Rows ``start:stop`` of an (m x k) standard normal matrix drawn tile by tile."""
    parts = []
    for tile in range(start // _TILE_ROWS, (stop - 1) // _TILE_ROWS + 1):
        first = tile * _TILE_ROWS
        values = np.random.default_rng([seed, tile]).standard_normal((_TILE_ROWS, k))
        parts.append(values[max(start, first) - first : min(stop, first + _TILE_ROWS) - first])
    return np.concatenate(parts) if parts else np.zeros((0, k))


def _random_w_block(
    seed: int, start: int, stop: int, k: int, scale: float, dtype: str
) -> np.ndarray:
    W = scale * _tiled_normal(seed, start, stop, k).astype(dtype, copy=False)
    return np.abs(W, out=W)


def random_init(V: InputMatrix, k: int, v_mean: float, random_state: Any):
    """``|N(0, 1)| * sqrt(mean(V) / k)`` entries, like scikit-learn's ``init="random"``.

    H comes from ``random_state`` first, then one seed for W, whose rows are
    drawn in fixed tiles: the result does not depend on the row blocks.
    """
    from sklearn.utils import check_random_state  # (scikit-learn is slow to import)

    rng = check_random_state(random_state)
    avg = float(np.sqrt(v_mean / k))
    H = avg * rng.standard_normal(size=(k, V.shape[1])).astype(V.dtype, copy=False)
    np.abs(H, out=H)
    seed = int(rng.randint(0, 2**31 - 1))
    W = [
        dask.delayed(_random_w_block, pure=True)(seed, a, b, k, avg, V.dtype.str)
        for a, b in V.bounds
    ]
    return W, H


def _nndsvd_w_block(
    U: np.ndarray,
    scale: np.ndarray,
    part: np.ndarray,
    variant: str,
    avg: float,
    seed: int,
    start: int,
    dtype: str,
) -> np.ndarray:
    """W rows from the left singular vectors (a pure function of one block).

    ``part[j]`` says which part of column j to keep: 0 its absolute value,
    1 its positive part, -1 its negative part.
    """
    W = np.where(part > 0, np.maximum(U, 0), np.abs(np.minimum(U, 0)))
    W[:, part == 0] = np.abs(U[:, part == 0])
    W *= scale
    W = W.astype(dtype, copy=False)
    W[W < _NNDSVD_EPS] = 0
    if variant == "nndsvda":
        W[W == 0] = avg
    elif variant == "nndsvdar":
        noise = _tiled_normal(seed, start, start + W.shape[0], W.shape[1])
        zeros = W == 0
        W[zeros] = np.abs(avg * noise[zeros] / 100)
    return W


def _svd_input(V: InputMatrix, reader: BlockReader | None, placed: list | None = None) -> da.Array:
    """V as the randomized SVD reads it.

    Re-read from a dense zarr store, V comes in pieces of at most half a block,
    each decoded inside the task that uses it: dask's ``svd_compressed`` holds
    several pieces per worker thread at its peak (about six), so pieces smaller
    than blocks let blocks be larger for the same peak memory.  Pieces are whole
    stored chunks where a block holds two or more; otherwise they split chunks,
    which are then decoded twice, in these few passes only.  ``placed``: an
    in-memory V's blocks on the cluster (see :func:`as_dask_array`).
    """
    import zarr

    if reader is None or not isinstance(reader.array, zarr.Array):
        return as_dask_array(V, placed)
    chunk, half = reader.array.chunks[0], max(1, V.block_rows // 2)
    piece = half // chunk * chunk or half
    m, n = V.shape
    meta = np.empty((0, n), dtype=reader.dtype)
    return rows_array(partial(read_rows, reader), row_bounds(m, piece), n, reader.dtype, meta)


def nndsvd_init(
    V: InputMatrix,
    k: int,
    v_mean: float,
    variant: str,
    random_state: Any,
    runner: Any = None,
    reader: BlockReader | None = None,
    fill: tuple | None = None,
    placed: list | None = None,
):
    """NNDSVD (Boutsidis & Gallopoulos) from an out-of-core randomized SVD.

    The SVD is ``dask.array.linalg.svd_compressed`` (a few passes over V, never
    a dense SVD); the signs and norms of the singular vectors' positive and
    negative parts are reduced to k numbers each, then W is built block by block.
    ``runner`` (the driver's, with ``persist`` and ``compute``; default: dask's
    own functions) keeps the m x k left singular vectors on the cluster while
    W is made.  ``reader``: V's zarr store when V is re-read from it every
    pass, ``placed`` an in-memory V's blocks on the cluster (see :func:`_svd_input`).
    ``fill``: ``(column means, fill value or None)`` where V has missing
    entries: the SVD reads each as its column's mean.
    """
    from sklearn.utils import check_random_state  # (scikit-learn is slow to import)

    rng = check_random_state(random_state)
    Vd = _svd_input(V, reader, placed)
    if fill is not None:
        means, value = fill
        dtype = np.float64 if Vd.dtype != np.float32 else np.float32
        Vd = Vd.map_blocks(kernels_masked.fill_columns, means, value, dtype=dtype)
    if Vd.dtype != np.float64:
        # The SVD runs in float64 whatever V's dtype, block by block as it is
        # read (still out of core): float32 power iterations alone put the
        # singular vectors ~1e-4 off, so a float32 fit would start elsewhere
        # than the float64 one; rounded at the end, they agree to float32's
        # precision, as scikit-learn's initializations do.
        Vd = Vd.astype(np.float64)
    # compute=True: each product with V is computed on its own, so V is read
    # once per pass and never held between passes (as one lazy graph, the
    # passes would share V's blocks and dask would keep them until the last).
    # On a cluster the passes go to the fit's client, which need not be dask's
    # default scheduler.
    client = getattr(runner, "client", None)
    with dask.config.set(scheduler=client) if client is not None else contextlib.nullcontext():
        U, S, Vt = da.linalg.svd_compressed(
            Vd, k, n_power_iter=2, seed=int(rng.randint(0, 2**31 - 1)), compute=True
        )
    U = U.rechunk((tuple(b - a for a, b in V.bounds), (k,)))  # W's blocks
    persist = runner.persist if runner is not None else dask.persist
    compute = runner.compute if runner is not None else dask.compute
    # One persist of all three: they share the projection passes over V.
    U, S, Vt = persist(U, S, Vt)
    pos_norm = da.sqrt((da.maximum(U, 0) ** 2).sum(axis=0))
    neg_norm = da.sqrt((da.minimum(U, 0) ** 2).sum(axis=0))
    S, Vt, pos_norm, neg_norm = compute(S, Vt, pos_norm, neg_norm)

    H = np.zeros((k, V.shape[1]), dtype=np.float64)
    scale = np.zeros(k)
    part = np.ones(k, dtype=np.int8)
    part[0] = 0
    # The leading singular pair can be taken non-negative as it is.
    H[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    scale[0] = np.sqrt(S[0])
    for j in range(1, k):
        y = Vt[j]
        y_p, y_n = np.maximum(y, 0), np.abs(np.minimum(y, 0))
        y_p_nrm, y_n_nrm = np.linalg.norm(y_p), np.linalg.norm(y_n)
        m_p, m_n = pos_norm[j] * y_p_nrm, neg_norm[j] * y_n_nrm
        if m_p > m_n:
            x_nrm, v, sigma = pos_norm[j], y_p / y_p_nrm, m_p
        else:
            x_nrm, v, sigma = neg_norm[j], (y_n / y_n_nrm if y_n_nrm > 0 else y_n), m_n
            part[j] = -1
        lbd = np.sqrt(S[j] * sigma)
        H[j] = lbd * v
        scale[j] = lbd / x_nrm if x_nrm > 0 else 0.0
    H = H.astype(V.dtype)
    H[H < _NNDSVD_EPS] = 0
    avg = float(v_mean)
    if variant == "nndsvda":
        H[H == 0] = avg
    elif variant == "nndsvdar":
        zeros = H == 0
        H[zeros] = abs(avg * rng.standard_normal(size=int(zeros.sum())) / 100)
    seed = int(rng.randint(0, 2**31 - 1))
    W = [
        dask.delayed(_nndsvd_w_block, pure=True)(
            Ub, scale, part, variant, avg, seed, a, V.dtype.str
        )
        for Ub, (a, _) in zip(U.to_delayed().ravel(), V.bounds)
    ]
    # Make the W blocks now, while the persisted U they are made from is held.
    return list(persist(*W)), H


def custom_init(V: InputMatrix, k: int, W_init: Any, H_init: Any):
    """User-given W and H, validated (shape, sign, finiteness) and split into blocks."""
    m, n = V.shape
    W_init = check_factor(W_init, (m, k), "W_init")
    H_init = check_factor(H_init, (k, n), "H_init")
    H = np.asarray(H_init, dtype=V.dtype)
    if isinstance(W_init, da.Array):
        W_init = W_init.astype(V.dtype).rechunk((tuple(b - a for a, b in V.bounds), (k,)))
        W = list(W_init.to_delayed().ravel())
    else:
        W_init = np.asarray(W_init, dtype=V.dtype)
        W = [W_init[a:b] for a, b in V.bounds]
    return W, H


def plan_start(options: Any, Vin: InputMatrix, W_init: Any, H_init: Any, resume: bool):
    """The initialization a fit uses: ``(init name, custom (W, H) or None)``.

    Given W and H are checked against V's shape before V is read; given
    factors that are not used, and init="nndsvd" for a solver that cannot move
    zeros, are warned about (scikit-learn's warnings).
    """
    import warnings

    k = options.n_components
    init = resolve_init(options.init, k, Vin.shape)
    custom = None
    if init == "custom" and not resume:
        if W_init is None or H_init is None:
            raise InputError("init='custom' needs both W_init and H_init")
        custom = custom_init(Vin, k, W_init, H_init)
    elif W_init is not None or H_init is not None:
        warnings.warn(
            f"init={init!r}: the W_init/H_init given are ignored (use init='custom')",
            UserWarning,
            stacklevel=4,
        )
    if init == "nndsvd" and options.algorithm.keeps_zeros:
        warnings.warn(  # (scikit-learn's first sentence, which users filter on)
            "The multiplicative update ('mu') solver cannot update zeros present in the "
            "initialization: multiplicative updates cannot move entries that start at zero, "
            "which init='nndsvd' produces; init='nndsvda' or 'nndsvdar' usually fit better",
            UserWarning,
            stacklevel=4,
        )
    return init, custom


def initialize(init, Vin, k, stats, random_state, runner, reader=None, missing=None, placed=None):
    """``(W, H)`` of the initialization ``init`` (a resolved name, not "custom").

    With missing entries (``missing``, and ``stats`` of the observed ones): the
    mean is that of the observed entries, and the NNDSVD's SVD reads V with
    each missing entry replaced by its column's observed mean.  ``placed``: the
    handles of an in-memory V's blocks on the cluster.
    """
    mean = stats["sum"] / stats.get("observed", Vin.shape[0] * Vin.shape[1])
    if init == "random":
        return random_init(Vin, k, mean, random_state)
    fill = None
    if missing is not None and stats.get("observed", 0) < stats.get("size", 0):
        fill = (column_means(stats), fill_value(missing))
    return nndsvd_init(Vin, k, mean, init, random_state, runner, reader, fill=fill, placed=placed)
