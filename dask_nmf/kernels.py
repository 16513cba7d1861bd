"""Per-block NumPy kernels of Lee & Seung's multiplicative updates.

Everything here is a pure function of arrays: no dask, no I/O.  A *block* is a
set of whole rows of V (``V_i``, shape ``m_i x n``) together with the matching
rows of W (``W_i``, ``m_i x k``).  The W update is row-local, so a block can
update its W rows on its own and emit the small partial sums (``k x n`` and
``k x k``) from which the driver builds the H update.

The guards against zero denominators and the order of operations follow
scikit-learn's ``NMF(solver="mu")`` (``sklearn/decomposition/_nmf.py``), so that
the same start gives the same factors to rounding error.

Inside a block the rows are processed in cache-sized *sub-blocks*: the W update
of a sub-block and its contribution to ``W'^T V`` are computed while that
sub-block of V is still in cache, so V is streamed from memory once per
iteration instead of twice.

Every sub-block also reads H and adds to the ``k x n`` partial sums, traffic
that does not shrink with the sub-block: on a wide V (few rows fill the cache)
it would dwarf V's own.  So a sub-block holds at least ``PARTIAL_REUSE`` times
the partial's bytes, even where that is more than the cache holds; its
element-wise work (KL's ``V / WH``, the direct residual) then runs in *column
tiles* of the sub-block that do fit, and only the products stream V twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .reductions import (  # noqa: F401  (re-exported: the per-block math in one namespace)
    THREADED_BYTES,
    ProductSum,
    add_partials,
    as_block,
    block_stats,
    column_tiles,
    merge_all_stats,
    merge_stats,
    sum_partials,
)

#: Guard used by scikit-learn for denominators and for W·H in the KL update.
EPSILON = float(np.finfo(np.float32).eps)
#: scikit-learn zeroes entries of H below this after a KL update.
H_FLOOR = float(np.finfo(np.float64).eps)

#: Bytes of V processed together inside a block; a few MiB keeps a sub-block of
#: V (and W·H for KL) in the last-level cache while both products use it.
SUB_BLOCK_BYTES = 4 * 2**20


def _cache_per_core(level: int = 3) -> int:
    """Bytes of the level-``level`` cache per core that shares it, as Linux reports
    it (0 where it does not)."""
    try:
        for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (index / "level").read_text().strip() != str(level):
                continue
            size = (index / "size").read_text().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
            nbytes = int(size.rstrip("KMG")) * scale
            shared = (index / "shared_cpu_list").read_text().strip()
            cores = sum(
                int(b) - int(a) + 1 if "-" in part else 1
                for part in shared.split(",")
                for a, _, b in [part.partition("-")]
            )
            return nbytes // max(1, cores)
    except (OSError, ValueError):
        pass
    return 0


#: Bytes of V whose two products (``V Hᵀ`` for the W update, then ``W'ᵀ V``)
#: are formed together, so that V is still in cache for the second: half of
#: a core's share of the last-level cache, at least SUB_BLOCK_BYTES.  Where
#: that share is large, a whole block at once is fastest: the products are
#: then two large GEMMs (benchmarks/README.md, section 10).
PRODUCT_BLOCK_BYTES = max(SUB_BLOCK_BYTES, _cache_per_core(3) // 2, _cache_per_core(2) // 2)

#: Below this fraction of ||V||^2 an expanded Frobenius loss
#: ``||V||^2 - 2<V Hᵀ, W> + <WᵀW, H Hᵀ>`` has few digits left (its terms cancel;
#: their rounding is ~eps * ||V||^2), so the residual is computed directly.  By
#: the dtype's item size: ~10 digits kept in float64, ~2 in float32.
DIRECT_LOSS_BELOW = {8: 1e-6, 4: 1e-4}
#: A sub-block streams at least this many times the bytes of the k x n partial
#: sums it adds to (and of H, which it reads): below that, re-reading H and the
#: sums per sub-block would cost more than reading V twice (benchmarks/bench_shapes.py).
PARTIAL_REUSE = 4
#: The narrowest column tile: narrower ones make the products inefficient.
MIN_TILE_COLS = 256


def _row_bytes(V, k: int = 0) -> int:
    """Bytes per row that the kernels stream (for sizing sub-blocks).

    For a sparse V, ``k`` > 0 adds the two nnz x k gathers of KL's sampled
    product W·H, which are the largest temporaries of a sparse sub-block.
    """
    if sp.issparse(V):
        per_nnz = V.dtype.itemsize + 4 + 2 * k * V.dtype.itemsize
        return max(1, V.nnz // max(1, V.shape[0])) * per_nnz
    return V.shape[1] * V.dtype.itemsize


def _sub_step(row_bytes: int, sub_bytes: int | None = None, partial_bytes: int = 0) -> int:
    """Rows per sub-block: ``sub_bytes`` (default SUB_BLOCK_BYTES) of rows, and at
    least ``PARTIAL_REUSE * partial_bytes`` (the k x n sums each sub-block adds to)."""
    budget = max(SUB_BLOCK_BYTES if sub_bytes is None else sub_bytes, PARTIAL_REUSE * partial_bytes)
    return max(1, budget // max(row_bytes, 1))


def _product_step(V, H: np.ndarray) -> int:
    """Rows per sub-block of the kernels that form ``V Hᵀ`` and ``W'ᵀ V`` of the
    same rows (PRODUCT_BLOCK_BYTES of them; at most the block's rows)."""
    step = _sub_step(_row_bytes(V), PRODUCT_BLOCK_BYTES, _partial_bytes(H))
    return min(step, max(1, V.shape[0]))


def _sub_blocks(n_rows: int, row_bytes: int, sub_bytes: int | None = None, partial_bytes: int = 0):
    step = _sub_step(row_bytes, sub_bytes, partial_bytes)
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _tile_cols(rows: int, n_cols: int, itemsize: int) -> int:
    """Columns per tile of a ``rows``-row sub-block: the tile fits SUB_BLOCK_BYTES
    (all columns where the sub-block itself does, as on a tall V)."""
    cols = max(MIN_TILE_COLS, SUB_BLOCK_BYTES // max(1, rows * itemsize))
    return max(1, min(n_cols, cols))


def _slices(length: int, step: int):
    """Consecutive slices of ``step`` (rows of sub-blocks, columns of tiles)."""
    for start in range(0, length, step):
        yield slice(start, min(start + step, length))


def _buffer(flat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A contiguous ``rows x cols`` view at the start of a flat buffer."""
    return flat[: rows * cols].reshape(rows, cols)


def _partial_bytes(H: np.ndarray) -> int:
    return H.shape[0] * H.shape[1] * H.dtype.itemsize


def _mu_step(X: np.ndarray, numerator, denominator: np.ndarray, l1: float, l2: float):
    """``X * numerator / (denominator + l1 + l2 X)``: one multiplicative step with
    scikit-learn's penalties and zero guard (both arrays given are overwritten)."""
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * X
    return X * _safe_ratio(numerator, denominator)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with zero denominators replaced by EPSILON."""
    denominator[denominator == 0] = EPSILON
    numerator /= denominator
    return numerator


# --------------------------------------------------------------------------
# W updates (row-local)
# --------------------------------------------------------------------------
def frobenius_w_update(
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    VHt: np.ndarray | None = None,
) -> np.ndarray:
    """One Frobenius MU step for the rows ``W`` of V (a new array; inputs untouched).

    ``W' = W * (V H^T) / (W H H^T + l1 + l2 W)``; ``VHt`` may pass ``V H^T``
    when H does not change between steps.
    """
    return _frobenius_w(W, V @ H.T if VHt is None else VHt.copy(), HHt, l1, l2)


def _frobenius_w(
    W: np.ndarray, numerator: np.ndarray, HHt: np.ndarray, l1: float, l2: float
) -> np.ndarray:
    """``W * numerator / (W HHt + l1 + l2 W)`` (``numerator`` is overwritten)."""
    return _mu_step(W, numerator, W @ HHt, l1, l2)


def _kl_ratio(V, W: np.ndarray, H: np.ndarray, out: np.ndarray | None = None, HT=None):
    """``V / (W H)`` with W·H floored at EPSILON (scikit-learn's guard).

    For a sparse V, W·H is computed only where V is non-zero (elsewhere the
    ratio is 0 anyway), and the result is sparse with V's pattern.  For a
    dense V the result is written to ``out`` when given: reusing one buffer
    per block saves the page faults of a fresh m_i x n array per sub-block.
    """
    if sp.issparse(V):
        if HT is None:
            HT = np.ascontiguousarray(H.T)
        WH = np.empty(V.nnz, np.result_type(W, H))
        # Rows of H^T (contiguous), not columns of H: a far faster gather; in
        # pieces of rows, so the two nnz x k gathers stay within SUB_BLOCK_BYTES.
        per_row = max(1, V.nnz // max(1, V.shape[0])) * 2 * H.shape[0] * WH.itemsize
        for rows in _sub_blocks(V.shape[0], per_row):
            a, b = V.indptr[rows.start], V.indptr[rows.stop]
            at = np.repeat(
                np.arange(rows.start, rows.stop), np.diff(V.indptr[rows.start : rows.stop + 1])
            )
            np.einsum("ij,ij->i", W[at], HT[V.indices[a:b]], out=WH[a:b])
        WH[WH < EPSILON] = EPSILON
        return sp.csr_matrix((V.data / WH, V.indices, V.indptr), shape=V.shape)
    WH = np.matmul(W, H, out=out)
    np.maximum(WH, EPSILON, out=WH)
    np.divide(V, WH, out=WH)
    return WH


def _vlogr(V, ratio, out: np.ndarray | None = None) -> float:
    """``sum V log(V / WH)`` given ``ratio = V / WH`` (0 log 0 = 0).

    ``ratio`` is 0 exactly where V is (W·H is floored above 0); there the log
    is taken of the smallest normal number instead, a finite value that V = 0
    multiplies away.  A log and a dot product, several times faster than
    ``scipy.special.xlogy``; ``out`` is an optional buffer for the logs.
    """
    if sp.issparse(V):
        V, ratio = V.data, ratio.data
        out = None
    logs = np.maximum(ratio, np.finfo(ratio.dtype).tiny, out=out)
    np.log(logs, out=logs)
    return float(np.dot(V.ravel(), logs.ravel()))


def kl_w_update(
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    H_sum: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    ratio: np.ndarray | None = None,
) -> np.ndarray:
    """One KL MU step for the rows ``W`` of V (a new array; inputs untouched).

    ``W' = W * ((V / WH) H^T) / (1 H^T + l1 + l2 W)``.  ``ratio`` may pass a
    precomputed ``V / WH``.
    """
    if ratio is None:
        ratio = _kl_ratio(V, W, H)
    return _kl_w(W, ratio @ H.T, H_sum, l1, l2)


def _kl_w(W: np.ndarray, numerator: np.ndarray, H_sum, l1: float, l2: float) -> np.ndarray:
    """``W * numerator / (1 H^T + l1 + l2 W)`` (``numerator`` is overwritten)."""
    return _mu_step(W, numerator, np.broadcast_to(H_sum, W.shape).copy(), l1, l2)


# --------------------------------------------------------------------------
# One fused pass over a block: W update + partial sums for H + loss terms
# --------------------------------------------------------------------------
def frobenius_block_step(
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    residual: bool = False,
) -> tuple[np.ndarray, dict]:
    """Update a W block and emit the Frobenius partial sums of the H update.

    Returns ``(W', partials)`` with ``partials["A"] = W'^T V`` (k x n) and
    ``partials["B"] = W'^T W'`` (k x k), and the column sums and sums of squares
    of W' and of the incoming W (``"w_sum"``, ``"w_sq"``, ``"w0_sum"``,
    ``"w0_sq"``: the regularization terms of the cost).  With ``residual``, ``"r0" = ||V - W H||^2`` of the incoming state is
    computed directly (one more m_i x n x k product): near an exact fit the
    expansion ``||V||^2 - 2 <A, H> + <B, H H^T>`` cancels to rounding noise.
    """
    V = as_block(V)
    k, n = H.shape
    W_new = np.empty_like(W)
    sums = ProductSum(k, n, W.dtype)
    B = np.zeros((k, k), dtype=W.dtype)
    r0 = 0.0
    step = _product_step(V, H)
    tile = _tile_cols(step, n, np.result_type(W, H).itemsize)
    residual_buf = np.empty(step * tile, np.result_type(W, H)) if residual else None
    HT = np.ascontiguousarray(H.T) if sp.issparse(V) else H.T
    for rows in _slices(V.shape[0], step):
        Vs, Ws = V[rows], W[rows]
        if residual:  # while Vs is in cache (a tile of it, on a wide V)
            r0 += residual_tiles(Vs, Ws, H, tile, residual_buf)
        Wn = _frobenius_w(Ws, Vs @ HT, HHt, l1, l2)
        W_new[rows] = Wn
        sums.add(Wn, Vs)
        B += Wn.T @ Wn
    partials = {"A": sums.total(), "B": B, **_w_terms(W_new, W)}
    if residual:
        partials["r0"] = r0
    return W_new, partials


def _w_terms(W_new: np.ndarray, W: np.ndarray | None) -> dict:
    """Column sums and sum of squares of W' (and of W): the penalties of the cost."""
    out = {
        "w_sum": W_new.sum(axis=0, dtype=np.float64),
        "w_sq": float(np.vdot(W_new, W_new)),
    }
    if W is not None:
        out.update(w0_sum=W.sum(axis=0, dtype=np.float64), w0_sq=float(np.vdot(W, W)))
    return out


def _residual_sumsq(V, W: np.ndarray, H: np.ndarray, out: np.ndarray | None = None) -> float:
    """``||V - W H||^2`` computed entry by entry (in float64 sums), never densifying V.

    For a sparse V the product W H of the sub-block is formed densely (cost
    m_i x n x k, as for a dense V) and V's stored values are subtracted from it.
    """
    R = np.matmul(W, H, out=out) if out is not None else W @ H
    if sp.issparse(V):
        if not V.has_canonical_format:
            V = V.copy()
            V.sum_duplicates()
        rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
        R[rows, V.indices] -= V.data
    else:
        np.subtract(R, V, out=R)
    return _sumsq(R)


def _sumsq(R: np.ndarray) -> float:
    """The sum of squares of a contiguous array, in float64."""
    flat = R.ravel()
    if flat.dtype != np.float64:
        return float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
    return float(np.dot(flat, flat))


def residual_tiles(Vs, Ws: np.ndarray, H: np.ndarray, tile: int, buf: np.ndarray) -> float:
    """``||Vs - Ws H||^2`` of a sub-block, a column tile at a time, each tile's
    ``Ws H`` formed in ``buf`` (a flat buffer of at least rows x tile)."""
    n = H.shape[1]
    if tile >= n:
        return _residual_sumsq(Vs, Ws, H, _buffer(buf, Ws.shape[0], n))
    if sp.issparse(Vs):  # by columns: a tile's entries are one slice of CSC
        Vs = Vs.tocsc()
        Vs.sum_duplicates()
    total = 0.0
    for cols in _slices(n, tile):
        width = cols.stop - cols.start
        R = np.matmul(Ws, H[:, cols], out=_buffer(buf, Ws.shape[0], width))
        if sp.issparse(Vs):
            ptr = Vs.indptr[cols.start : cols.stop + 1]
            at = np.repeat(np.arange(width), np.diff(ptr))
            R[Vs.indices[ptr[0] : ptr[-1]], at] -= Vs.data[ptr[0] : ptr[-1]]
        else:
            np.subtract(R, Vs[:, cols], out=R)
        total += _sumsq(R)
    return total


def residual_sumsq(V, W: np.ndarray, H: np.ndarray) -> float:
    """``||V - W H||^2`` of one block, computed directly, sub-block by sub-block."""
    V = as_block(V)
    n = H.shape[1]
    step = _sub_step(_row_bytes(V), partial_bytes=_partial_bytes(H))
    step = min(step, max(1, V.shape[0]))
    tile = _tile_cols(step, n, np.result_type(W, H).itemsize)
    buf = np.empty(step * tile, np.result_type(W, H))
    total = 0.0
    for rows in _slices(V.shape[0], step):
        total += residual_tiles(V[rows], W[rows], H, tile, buf)
    return total


def kl_block_step(
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    with_loss: bool = True,
) -> tuple[np.ndarray, dict]:
    """Update a W block and emit the KL partial sums of the H update.

    Returns ``(W', partials)`` with ``partials["A"] = W'^T (V / W'H)`` (k x n),
    ``partials["w_sum"]`` the column sums of W', ``"w_sq"`` its sum of squares,
    and, if ``with_loss``, the loss terms of the *incoming* state (W, H):
    ``"vlogr"`` = sum V log(V / WH), ``"v_sum"`` = sum V (as read by this step),
    ``"w0_sum"``, ``"w0_sq"`` the column sums and sum of squares of W.  The KL update needs V / WH anyway, so
    the loss of the state this step starts from needs no extra product, but
    its logarithm per entry costs about as much as the update itself.
    """
    V = as_block(V)
    k, n = H.shape
    H_sum = H.sum(axis=1)
    W_new = np.empty_like(W)
    sums = ProductSum(k, n, W.dtype)
    vlogr = v_sum = 0.0
    step = _sub_step(_row_bytes(V, k), partial_bytes=_partial_bytes(H))
    step = min(step, max(1, V.shape[0]))
    dtype = np.result_type(W, H)
    tile = n if sp.issparse(V) else _tile_cols(step, n, dtype.itemsize)
    HT = np.ascontiguousarray(H.T) if sp.issparse(V) else None
    # Two tile buffers, reused (a fresh array per tile would be page faults).
    ratio_buf = log_buf = None
    if not sp.issparse(V):
        ratio_buf, log_buf = np.empty(step * tile, dtype), np.empty(step * tile, dtype)
    for rows in _slices(V.shape[0], step):
        Vs, Ws = V[rows], W[rows]
        size = Ws.shape[0]
        numerator = None
        # The W update's V / WH tile by tile (all columns at once on a tall V).
        for cols in _slices(n, tile):
            Vc, Hc = Vs[:, cols], H[:, cols]
            out = None if ratio_buf is None else _buffer(ratio_buf, size, Vc.shape[1])
            ratio = _kl_ratio(Vc, Ws, Hc, out=out, HT=HT)
            if with_loss:
                logs = None if log_buf is None else _buffer(log_buf, size, Vc.shape[1])
                vlogr += _vlogr(Vc, ratio, out=logs)
            part = ratio @ (HT if HT is not None else Hc.T)
            if numerator is None:
                numerator = part
            else:
                numerator += part
        if with_loss:
            # V's sum as read now: the loss is then that of the V this pass saw
            # (a chunk lost since the validation pass shows as a rise).
            v_sum += float(Vs.sum(dtype=np.float64))
        Wn = _kl_w(Ws, numerator, H_sum, l1, l2)
        W_new[rows] = Wn
        # ... and the H update's W'^T (V / W'H), tile by tile again.
        for cols in _slices(n, tile):
            Vc, Hc = Vs[:, cols], H[:, cols]
            out = None if ratio_buf is None else _buffer(ratio_buf, size, Vc.shape[1])
            sums.add(Wn, _kl_ratio(Vc, Wn, Hc, out=out, HT=HT), None if tile >= n else cols)
    partials = {"A": sums.total(), **_w_terms(W_new, W if with_loss else None)}
    if with_loss:
        partials.update(vlogr=vlogr, v_sum=v_sum)
    return W_new, partials


def kl_loss_terms(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
    """The per-block terms of D(V || WH) (see :func:`kl_divergence`)."""
    V = as_block(V)
    vlogr = 0.0
    n = H.shape[1]
    step = min(
        _sub_step(_row_bytes(V, H.shape[0]), partial_bytes=_partial_bytes(H)), max(1, V.shape[0])
    )
    tile = n if sp.issparse(V) else _tile_cols(step, n, np.result_type(W, H).itemsize)
    for rows in _slices(V.shape[0], step):
        for cols in _slices(n, tile):
            Vc = V[rows][:, cols] if tile < n else V[rows]
            vlogr += _vlogr(Vc, _kl_ratio(Vc, W[rows], H[:, cols]))
    return {"vlogr": vlogr, "w0_sum": W.sum(axis=0, dtype=np.float64)}


# --------------------------------------------------------------------------
# H updates (on the reduced sums; small arrays)
# --------------------------------------------------------------------------
def frobenius_h_update(
    H: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``H' = H * (W^T V) / (W^T W H + l1 + l2 H)`` from ``A = W^T V``, ``B = W^T W``
    (written to ``out`` where given: columns of a larger H', say)."""
    denominator = np.matmul(B, H, out=out)
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * H
    # In place in the one k x n array made here: H * (A / denominator).
    denominator[denominator == 0] = EPSILON
    np.divide(A, denominator, out=denominator)
    denominator *= H
    return denominator


def kl_h_update(
    H: np.ndarray, A: np.ndarray, w_sum: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``H' = H * (W^T (V / WH)) / (W^T 1 + l1 + l2 H)``, then tiny entries set to 0.

    ``A = W^T (V / WH)``; ``w_sum`` the column sums of W.
    """
    w_sum = np.where(w_sum == 0, 1.0, w_sum).astype(H.dtype)
    # Without l2, one value per row of H: no k x n denominator.
    denominator = w_sum[:, None] + l1 if l1 > 0 else w_sum[:, None]
    if l2 > 0:
        denominator = denominator + l2 * H
    denominator[denominator == 0] = EPSILON
    H_new = np.divide(A, denominator)
    H_new *= H
    H_new[H_new < H_FLOOR] = 0.0
    return H_new


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------
def frobenius_loss(norm_v2: float, A: np.ndarray, B: np.ndarray, H: np.ndarray) -> float:
    """``0.5 * ||V - W H||^2`` from ``||V||^2``, ``A = W^T V`` and ``B = W^T W``.

    ``||V - WH||^2 = ||V||^2 - 2 <A, H> + <B, H H^T>``; evaluated in float64.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    sq = norm_v2 - 2.0 * float(np.vdot(A, H)) + float(np.vdot(B, H @ H.T))
    return 0.5 * max(sq, 0.0)


def kl_divergence(v_sum: float, vlogr: float, w_sum: np.ndarray, H: np.ndarray) -> float:
    """Generalized KL divergence ``sum(V log(V/WH) - V + WH)`` from reduced terms.

    ``vlogr = sum V log(V / WH)``, ``v_sum = sum V``; ``sum WH`` is the product
    of W's column sums and H's row sums.
    """
    wh_sum = float(np.dot(np.asarray(w_sum, np.float64), H.sum(axis=1, dtype=np.float64)))
    return max(vlogr - v_sum + wh_sum, 0.0)
