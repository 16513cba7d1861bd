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
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Guard used by scikit-learn for denominators and for W·H in the KL update.
EPSILON = float(np.finfo(np.float32).eps)
#: scikit-learn zeroes entries of H below this after a KL update.
H_FLOOR = float(np.finfo(np.float64).eps)

#: Bytes of V processed together inside a block; a few MiB keeps a sub-block of
#: V (and W·H for KL) in the last-level cache while both products use it.
SUB_BLOCK_BYTES = 4 * 2**20

#: Below this fraction of ||V||^2 an expanded Frobenius loss
#: ``||V||^2 - 2<V Hᵀ, W> + <WᵀW, H Hᵀ>`` has few digits left (its terms cancel;
#: their rounding is ~eps * ||V||^2), so the residual is computed directly.  By
#: the dtype's item size: ~10 digits kept in float64, ~2 in float32.
DIRECT_LOSS_BELOW = {8: 1e-6, 4: 1e-4}


def as_block(V):
    """A dense block as an ndarray; a sparse one (scipy.sparse, pydata sparse) as CSR."""
    if sp.issparse(V):
        return V.tocsr()
    if hasattr(V, "to_scipy_sparse"):  # pydata sparse COO / GCXS
        return V.to_scipy_sparse().tocsr()
    return np.asarray(V)


def _row_bytes(V, k: int = 0) -> int:
    """Bytes per row that the kernels stream (for sizing sub-blocks).

    For a sparse V, ``k`` > 0 adds the two nnz x k gathers of KL's sampled
    product W·H, which are the largest temporaries of a sparse sub-block.
    """
    if sp.issparse(V):
        per_nnz = V.dtype.itemsize + 4 + 2 * k * V.dtype.itemsize
        return max(1, V.nnz // max(1, V.shape[0])) * per_nnz
    return V.shape[1] * V.dtype.itemsize


def _sub_step(row_bytes: int, sub_bytes: int | None = None) -> int:
    return max(1, (SUB_BLOCK_BYTES if sub_bytes is None else sub_bytes) // max(row_bytes, 1))


def _sub_blocks(n_rows: int, row_bytes: int, sub_bytes: int | None = None):
    step = _sub_step(row_bytes, sub_bytes)
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


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
    numerator = V @ H.T if VHt is None else VHt.copy()
    denominator = W @ HHt
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * W
    return W * _safe_ratio(numerator, denominator)


def _kl_ratio(V, W: np.ndarray, H: np.ndarray, out: np.ndarray | None = None):
    """``V / (W H)`` with W·H floored at EPSILON (scikit-learn's guard).

    For a sparse V, W·H is computed only where V is non-zero (elsewhere the
    ratio is 0 anyway), and the result is sparse with V's pattern.  For a
    dense V the result is written to ``out`` when given: reusing one buffer
    per block saves the page faults of a fresh m_i x n array per sub-block.
    """
    if sp.issparse(V):
        rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
        # Gather rows of H^T (contiguous), not columns of H: a far faster copy.
        WH = np.einsum("ij,ij->i", W[rows], np.ascontiguousarray(H.T)[V.indices])
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
    numerator = ratio @ H.T
    denominator = np.broadcast_to(H_sum, W.shape).copy()
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * W
    return W * _safe_ratio(numerator, denominator)


# --------------------------------------------------------------------------
# One fused pass over a block: W update + partial sums for H + loss terms
# --------------------------------------------------------------------------
def _product(a, b, out: np.ndarray) -> np.ndarray:
    """``a @ b`` into ``out`` (dense), or a new array (a sparse operand)."""
    if sp.issparse(b) or out.dtype != np.result_type(a, b):
        return a @ b
    return np.matmul(a, b, out=out)


def frobenius_block_step(
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    initial_loss: bool = False,
    residual: bool = False,
) -> tuple[np.ndarray, dict]:
    """Update a W block and emit the Frobenius partial sums of the H update.

    Returns ``(W', partials)`` with ``partials["A"] = W'^T V`` (k x n) and
    ``partials["B"] = W'^T W'`` (k x k), and the column sums and sums of squares
    of W' and of the incoming W (``"w_sum"``, ``"w_sq"``, ``"w0_sum"``,
    ``"w0_sq"``: the regularization terms of the cost).  With ``initial_loss``
    the sums ``W^T V`` and ``W^T W`` of the *incoming* W (``"A0"``, ``"B0"``) are
    added.  With ``residual``, ``"r0" = ||V - W H||^2`` of the incoming state is
    computed directly (one more m_i x n x k product): near an exact fit the
    expansion ``||V||^2 - 2 <A, H> + <B, H H^T>`` cancels to rounding noise.
    """
    V = as_block(V)
    k, n = H.shape
    W_new = np.empty_like(W)
    A = np.zeros((k, n), dtype=W.dtype)
    B = np.zeros((k, k), dtype=W.dtype)
    # One k x n product buffer per block, not one per sub-block: large
    # temporaries are fresh mmaps under dask's MALLOC_TRIM_THRESHOLD_ setting.
    product = np.empty((k, n), dtype=A.dtype)
    if initial_loss:
        A0 = np.zeros((k, n), dtype=W.dtype)
        B0 = np.zeros((k, k), dtype=W.dtype)
    r0 = 0.0
    row_bytes = _row_bytes(V)
    residual_buf = None
    if residual:
        residual_buf = np.empty((min(_sub_step(row_bytes), V.shape[0]), n), np.result_type(W, H))
    for rows in _sub_blocks(V.shape[0], row_bytes):
        Vs, Ws = V[rows], W[rows]
        if residual:  # while Vs is in cache
            r0 += _residual_sumsq(Vs, Ws, H, residual_buf[: Ws.shape[0]])
        Wn = frobenius_w_update(Vs, Ws, H, HHt, l1, l2)
        W_new[rows] = Wn
        A += _product(Wn.T, Vs, product)
        B += Wn.T @ Wn
        if initial_loss:
            A0 += _product(Ws.T, Vs, product)
            B0 += Ws.T @ Ws
    partials = {"A": A, "B": B, **_w_terms(W_new, W)}
    if initial_loss:
        partials.update(A0=A0, B0=B0)
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
    flat = R.ravel()
    if flat.dtype != np.float64:
        return float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
    return float(np.dot(flat, flat))


def residual_sumsq(V, W: np.ndarray, H: np.ndarray) -> float:
    """``||V - W H||^2`` of one block, computed directly, sub-block by sub-block."""
    V = as_block(V)
    total = 0.0
    for rows in _sub_blocks(V.shape[0], max(_row_bytes(V), H.shape[1] * H.dtype.itemsize)):
        total += _residual_sumsq(V[rows], W[rows], H)
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
    A = np.zeros((k, n), dtype=W.dtype)
    product = np.empty((k, n), dtype=A.dtype)
    vlogr = v_sum = 0.0
    row_bytes = _row_bytes(V, k)
    ratio_buf = log_buf = None
    if not sp.issparse(V):  # two sub-block buffers, reused
        step = min(_sub_step(row_bytes), V.shape[0])
        dtype = np.result_type(W, H)
        ratio_buf, log_buf = np.empty((step, n), dtype), np.empty((step, n), dtype)
    for rows in _sub_blocks(V.shape[0], row_bytes):
        Vs, Ws = V[rows], W[rows]
        size = Ws.shape[0]
        ratio = _kl_ratio(Vs, Ws, H, out=None if ratio_buf is None else ratio_buf[:size])
        if with_loss:
            vlogr += _vlogr(Vs, ratio, out=None if log_buf is None else log_buf[:size])
            # V's sum as read now: the loss is then that of the V this pass saw
            # (a chunk lost since the validation pass shows as a rise).
            v_sum += float(Vs.sum(dtype=np.float64))
        Wn = kl_w_update(Vs, Ws, H, H_sum, l1, l2, ratio=ratio)
        W_new[rows] = Wn
        A += _product(Wn.T, _kl_ratio(Vs, Wn, H, out=ratio), product)
    partials = {"A": A, **_w_terms(W_new, W if with_loss else None)}
    if with_loss:
        partials.update(vlogr=vlogr, v_sum=v_sum)
    return W_new, partials


def kl_loss_terms(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
    """The per-block terms of D(V || WH) (see :func:`kl_divergence`)."""
    V = as_block(V)
    vlogr = 0.0
    for rows in _sub_blocks(V.shape[0], _row_bytes(V, H.shape[0])):
        vlogr += _vlogr(V[rows], _kl_ratio(V[rows], W[rows], H))
    return {"vlogr": vlogr, "w0_sum": W.sum(axis=0, dtype=np.float64)}


def frobenius_loss_terms(V: np.ndarray, W: np.ndarray) -> dict:
    """The per-block sums ``W^T V`` and ``W^T W`` of the Frobenius loss."""
    V = as_block(V)
    return {"A0": W.T @ V, "B0": W.T @ W}


# --------------------------------------------------------------------------
# H updates (on the reduced sums; small arrays)
# --------------------------------------------------------------------------
def frobenius_h_update(
    H: np.ndarray, A: np.ndarray, B: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``H' = H * (W^T V) / (W^T W H + l1 + l2 H)`` from ``A = W^T V``, ``B = W^T W``."""
    denominator = B @ H
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator = denominator + l2 * H
    return H * _safe_ratio(A.copy(), denominator)


def kl_h_update(
    H: np.ndarray, A: np.ndarray, w_sum: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``H' = H * (W^T (V / WH)) / (W^T 1 + l1 + l2 H)``, then tiny entries set to 0.

    ``A = W^T (V / WH)``; ``w_sum`` the column sums of W.
    """
    w_sum = np.where(w_sum == 0, 1.0, w_sum).astype(H.dtype)
    denominator = np.broadcast_to(w_sum[:, None], H.shape).copy()
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * H
    H_new = H * _safe_ratio(A.copy(), denominator)
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


def block_stats(V) -> dict:
    """Statistics of one block for validation and set-up, in one read.

    ``min``, ``max`` (of the finite values), ``finite`` (all finite), ``sum`` and
    ``sumsq`` (float64).  For a sparse block they come from the stored values
    (and the implicit zeros).
    """
    V = as_block(V)
    if V.shape[0] * V.shape[1] == 0:
        return {"min": np.inf, "max": -np.inf, "finite": True, "sum": 0.0, "sumsq": 0.0}
    values = V.data if sp.issparse(V) else V
    finite = bool(np.isfinite(values).all())
    if values.size == 0:
        vmin = vmax = 0.0
    elif finite:
        vmin, vmax = float(values.min()), float(values.max())
    else:
        vmin = float(np.nanmin(np.where(np.isfinite(values), values, np.inf)))
        vmax = float(np.nanmax(np.where(np.isfinite(values), values, -np.inf)))
    if sp.issparse(V) and V.nnz < V.shape[0] * V.shape[1]:
        vmin, vmax = min(vmin, 0.0), max(vmax, 0.0)
    v64 = values.astype(np.float64, copy=False).ravel()
    with np.errstate(over="ignore"):  # an inf sum of squares is reported, not warned of
        sumsq = float(np.dot(v64, v64)) if finite else np.nan
    return {
        "min": vmin,
        "max": vmax,
        "finite": finite,
        "sum": float(v64.sum()),
        "sumsq": sumsq,
    }


#: Additive statistics of the observed entries (:func:`dask_nmf.kernels_masked.block_stats`).
_MASKED_STATS = ("observed", "size", "col_sum", "col_count")


def merge_stats(a: dict, b: dict) -> dict:
    """Combine two :func:`block_stats` results."""
    out = {
        "min": min(a["min"], b["min"]),
        "max": max(a.get("max", np.nan), b.get("max", np.nan)),
        "finite": a["finite"] and b["finite"],
        "sum": a["sum"] + b["sum"],
        "sumsq": a["sumsq"] + b["sumsq"],
    }
    out.update({key: a[key] + b[key] for key in _MASKED_STATS if key in a})
    return out


def add_partials(a: dict, b: dict) -> dict:
    """Sum two partial-sum dictionaries key by key."""
    return {key: a[key] + b[key] for key in a}


def sum_partials(parts: list[dict]) -> dict:
    """:func:`add_partials` over a list (one node of a reduction tree)."""
    out = parts[0]
    for p in parts[1:]:
        out = add_partials(out, p)
    return out


def merge_all_stats(parts: list[dict]) -> dict:
    """:func:`merge_stats` over a list (one node of a reduction tree)."""
    out = parts[0]
    for p in parts[1:]:
        out = merge_stats(out, p)
    return out
