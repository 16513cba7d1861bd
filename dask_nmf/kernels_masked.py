"""Per-block NumPy kernels of the multiplicative updates weighted by a mask.

Only the observed entries of V are fitted: with a boolean mask ``M`` (True =
observed) the costs are ``0.5 * ||M ∘ (V - WH)||^2`` and
``sum_M V log(V / WH) - V + WH``.  Every function here takes the mask of its
block explicitly, so callers may build it however they like (NaN or a fill
value in V, a separate mask array, entries held out for validation).  V may
hold anything (NaN, a fill value) where ``M`` is False: it is never read there.

Like :mod:`dask_nmf.kernels` these are pure functions of one row block (no
dask, no I/O), processed in cache-sized sub-blocks, with scikit-learn's guards
(zero denominators become EPSILON; W·H floored at EPSILON inside KL's ratio).
A row (column) with no observed entry gets a zero numerator and an EPSILON
denominator: its row of W (column of H) becomes zero and stays finite.

Frobenius::

    W' = W ∘ ((M∘V) Hᵀ) / ((M∘WH) Hᵀ + l1 + l2 W)
    A = W'ᵀ (M∘V),  D = W'ᵀ (M∘W'H)            (k x n, additive)
    H' = H ∘ A / (D + l1 + l2 H)

Kullback-Leibler::

    W' = W ∘ ((M∘V / WH) Hᵀ) / (M Hᵀ + l1 + l2 W)
    A = W'ᵀ (M∘V / W'H),  C = W'ᵀ M            (k x n, additive)
    H' = H ∘ A / (C + l1 + l2 H)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .kernels import (
    DIRECT_LOSS_BELOW,
    EPSILON,
    H_FLOOR,
    _mu_step,
    _row_bytes,
    _sub_blocks,
    _vlogr,
    _w_terms,
)

#: Above this fraction of unobserved entries a sub-block forms M∘WH densely
#: (Frobenius): the sparse correction's gathers cost more per entry than a GEMM
#: does, and its differences lose the digits of the unobserved share.
DENSE_ABOVE = 0.3
#: Rows and columns with more than this fraction unobserved get their products
#: formed directly on the sparse path (a difference would cancel).
DIRECT_ABOVE = 0.5
#: Below this fraction of unobserved entries the sparse path gathers W·H at them
#: (2k reads each); above it one dense W·H is cheaper (measured: 0.07-0.1).
GATHER_BELOW = 0.08
_GATHER_CHUNK = 4096


def mask(V, fill: float | None = None) -> np.ndarray:
    """The observed entries of a dense block: not NaN, and not equal to ``fill``
    when one is given."""
    V = np.asarray(V)
    M = ~np.isnan(V) if V.dtype.kind == "f" else np.ones(V.shape, dtype=bool)
    if fill is not None:
        M &= V != fill
    return M


def observed(V, fill: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(V0, M)``: :func:`mask` and V with its missing entries set to 0."""
    M = mask(V, fill)
    return np.where(M, V, 0), M


def _zeroed(V, M: np.ndarray, dtype) -> np.ndarray:
    """V with 0 where ``M`` is False, in ``dtype`` (V's NaN never reach a product)."""
    return np.where(M, V, 0).astype(dtype, copy=False)


# --------------------------------------------------------------------------
# W updates (row-local)
# --------------------------------------------------------------------------
def frobenius_w_update(
    V, M: np.ndarray, W: np.ndarray, H: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One weighted Frobenius MU step for the rows ``W`` (a new array)."""
    V0 = _zeroed(V, M, W.dtype)
    numerator = V0 @ H.T
    return _mu_step(W, numerator, (M * (W @ H)) @ H.T, l1, l2)


def _kl_ratio(V0: np.ndarray, M: np.ndarray, W: np.ndarray, H: np.ndarray):
    """``(M∘V / WH, sum M∘WH)`` with W·H floored at EPSILON in the ratio only."""
    WH = W @ H
    wh_sum = float(np.sum(WH, where=M, dtype=np.float64))
    np.maximum(WH, EPSILON, out=WH)
    np.divide(V0, WH, out=WH)  # (0 where M is False: V0 is)
    return WH, wh_sum


def kl_w_update(
    V, M: np.ndarray, W: np.ndarray, H: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """One weighted KL MU step for the rows ``W`` (a new array)."""
    ratio, _ = _kl_ratio(_zeroed(V, M, W.dtype), M, W, H)
    return _kl_w_from_ratio(ratio, M, W, H, l1, l2)


def _kl_w_from_ratio(ratio, M, W, H, l1, l2):
    return _mu_step(W, ratio @ H.T, M.astype(W.dtype) @ H.T, l1, l2)


# --------------------------------------------------------------------------
# Fused block steps: W update + the H update's partial sums + loss terms
# --------------------------------------------------------------------------
def frobenius_block_step(
    V,
    M: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    path: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Update a W block; emit ``A = W'ᵀ(M∘V)``, ``D = W'ᵀ(M∘W'H)`` and the loss
    ``"r0" = ||M∘(V - WH)||^2`` of the *incoming* state, with W's penalty terms
    (``w_sum``, ``w_sq``, ``w0_sum``, ``w0_sq``).

    ``path`` says how each sub-block forms the products with ``M∘WH``:
    ``"dense"`` forms it (twice: for W and for W'); ``"sparse"`` subtracts the
    unobserved entries' share from the unmasked products (see
    :class:`_SparseSums`); ``"auto"`` takes the sparse path where at most
    :data:`DENSE_ABOVE` of the sub-block's entries are unobserved.  Both give
    the same numbers to rounding.
    """
    if path not in ("auto", "dense", "sparse"):
        raise ValueError(f"path must be 'auto', 'dense' or 'sparse', not {path!r}")
    V = np.asarray(V)
    m = V.shape[0]
    k, n = H.shape
    W_new = np.empty_like(W)
    A = np.zeros((k, n), dtype=W.dtype)
    D = np.zeros((k, n), dtype=W.dtype)  # (the dense sub-blocks' share)
    sparse = None
    r0 = 0.0
    for rows in _sub_blocks(m, _row_bytes(V)):
        Ms, Ws = M[rows], W[rows]
        unobserved = Ms.size - np.count_nonzero(Ms)
        if path == "dense" or (path == "auto" and unobserved > DENSE_ABOVE * Ms.size):
            Vs = _zeroed(V[rows], Ms, W.dtype)
            Wn, rs = _dense_sub_step(Vs, Ms, Ws, H, l1, l2, D)
        else:
            if sparse is None:
                sparse = _SparseSums(M, H, W.dtype, rows.stop - rows.start)
            Vs, Wn, rs = sparse.sub_step(V[rows], Ms, Ws, unobserved, l1, l2)
        r0 += rs
        W_new[rows] = Wn
        A += Wn.T @ Vs
    if sparse is not None:
        D = sparse.total(D)
    return W_new, {"A": A, "D": D, "r0": r0, **_w_terms(W_new, W)}


def _dense_sub_step(Vs, Ms, Ws, H, l1, l2, D):
    """W' of a sub-block with ``M∘WH`` formed densely; adds ``W'ᵀ(M∘W'H)`` to D.
    Returns ``(W', ||M∘(V - WH)||^2)``."""
    WH = Ws @ H
    np.multiply(WH, Ms, out=WH)
    R = (Vs - WH).ravel()
    r0 = float(np.dot(R, R))
    Wn = _mu_step(Ws, Vs @ H.T, WH @ H.T, l1, l2)
    D += Wn.T @ (Ms * (Wn @ H))
    return Wn, r0


class _SparseSums:
    """The sparse path of :func:`frobenius_block_step`: the products with ``M∘WH``
    as the unmasked ones less the unobserved entries' share, U = ~M::

        (M∘WH) Hᵀ      = W (H Hᵀ) - (U∘WH) Hᵀ
        W'ᵀ (M∘W'H)    = (W'ᵀW') H - W'ᵀ (U∘W'H)

    ``U∘WH`` is sparse: W·H at the unobserved entries only, gathered (nnz(U) x k
    flops) where they are few, else taken from one dense W·H (still one GEMM
    fewer, and no masking pass, per product than the dense path).  ``B = Σ W'ᵀW'``
    and ``C = Σ W'ᵀ(U∘W'H)`` are summed over the block's sparse sub-blocks and
    ``B H - C`` formed once at the end.  A difference keeps the digits of the
    observed share only: rows and columns mostly unobserved (above
    :data:`DIRECT_ABOVE`) have their sums formed directly over the observed
    entries, so a nearly empty one is not rounding noise (an empty one gives a
    zero factor either way: its numerator is exactly zero).
    """

    def __init__(self, M: np.ndarray, H: np.ndarray, dtype, max_rows: int):
        k, n = H.shape
        self.H, self.HT, self.HHt = H, np.ascontiguousarray(H.T), H @ H.T
        self.ones = np.ones(k, dtype=dtype)
        self.B = np.zeros((k, k), dtype=dtype)
        self.CT = np.zeros((n, k), dtype=dtype)  # Cᵀ: (U∘W'H)ᵀ W' is n x k
        unobserved = M.shape[0] - np.count_nonzero(M, axis=0)
        self.cols = np.flatnonzero(unobserved > DIRECT_ABOVE * M.shape[0])
        self.H_cols = H[:, self.cols]
        self.D_cols = np.zeros((k, self.cols.size), dtype=dtype)
        self.loss_below = DIRECT_LOSS_BELOW.get(np.dtype(dtype).itemsize, DIRECT_LOSS_BELOW[4])
        # Sub-block buffers, reused: fresh large temporaries cost page faults.
        self.V0 = np.empty((max_rows, n), dtype=dtype)
        self.WH = None

    def _sampled(self, W, flat, ri, ci):
        """W·H at the unobserved entries (``flat``: their flat indices)."""
        if flat.size <= GATHER_BELOW * W.shape[0] * self.H.shape[1]:
            values = np.empty(flat.size, dtype=W.dtype)
            for s in range(0, flat.size, _GATHER_CHUNK):  # (temporaries kept in cache)
                e = s + _GATHER_CHUNK
                G = W.take(ri[s:e], axis=0)
                G *= self.HT.take(ci[s:e], axis=0)
                np.matmul(G, self.ones, out=values[s:e])
            return values
        if self.WH is None:
            self.WH = np.empty_like(self.V0)
        return np.matmul(W, self.H, out=self.WH[: W.shape[0]]).ravel().take(flat)

    def sub_step(self, Vs, Ms, Ws, unobserved, l1, l2):
        """V0 and W' of a sub-block, adding its share to B, C (and the direct
        columns).  Returns ``(V0, W', ||M∘(V - WH)||^2)``."""
        H, HT = self.H, self.HT
        r, n = Ms.shape
        V0 = self.V0[:r]
        np.copyto(V0, Vs, casting="unsafe")
        if unobserved:
            flat = np.flatnonzero(~Ms)
            V0.ravel()[flat] = 0
            ri, ci = np.divmod(flat, n)
            indptr = np.zeros(r + 1, dtype=flat.dtype)
            np.cumsum(np.bincount(ri, minlength=r), out=indptr[1:])
            S = sp.csr_matrix((self._sampled(Ws, flat, ri, ci), ci, indptr), shape=(r, n))
        VHt = V0 @ HT
        denominator = Ws @ self.HHt
        r0 = self._loss(V0, Ms, Ws, VHt, S.data if unobserved else None)
        if unobserved:
            denominator -= S @ HT
            heavy = np.flatnonzero(np.diff(indptr) > DIRECT_ABOVE * n)
            if heavy.size:
                denominator[heavy] = (Ms[heavy] * (Ws[heavy] @ H)) @ HT
            np.maximum(denominator, 0, out=denominator)  # (a difference: never below 0)
        Wn = _mu_step(Ws, VHt, denominator, l1, l2)
        self.B += Wn.T @ Wn
        if unobserved:
            S.data = self._sampled(Wn, flat, ri, ci)  # (U∘W'H: the same pattern)
            self.CT += S.T @ Wn
        if self.cols.size:
            self.D_cols += Wn.T @ (Ms[:, self.cols] * (Wn @ self.H_cols))
        return V0, Wn, r0

    def _loss(self, V0, Ms, Ws, VHt, sampled) -> float:
        """``||M∘(V - WH)||^2`` as ``||V0||^2 - 2<V0Hᵀ, W> + <WᵀW, HHᵀ> - Σ_U (WH)^2``
        (float64), computed directly where those terms cancel (a close fit)."""
        v = V0.ravel()
        v2 = float(np.dot(v, v)) if v.dtype == np.float64 else _sq64(v)
        r0 = (
            v2
            - 2.0 * float(np.vdot(VHt.astype(np.float64, copy=False), Ws))
            + float(np.vdot((Ws.T @ Ws).astype(np.float64, copy=False), self.HHt))
        )
        if sampled is not None:
            r0 -= _sq64(sampled)
        if not r0 >= self.loss_below * v2:
            R = (V0 - Ms * (Ws @ self.H)).ravel()
            r0 = _sq64(R)
        return r0

    def total(self, D: np.ndarray) -> np.ndarray:
        """``D + B H - C``, with the direct columns' own sums (the dense sub-blocks'
        share is in D already)."""
        out = D + self.B @ self.H
        out -= self.CT.T
        np.maximum(out, 0, out=out)
        if self.cols.size:
            out[:, self.cols] = D[:, self.cols] + self.D_cols
        return out


def _sq64(x: np.ndarray) -> float:
    """``Σ x^2`` in float64."""
    x = x.astype(np.float64, copy=False)
    return float(np.dot(x, x))


def frobenius_h_update(
    H: np.ndarray, A: np.ndarray, D: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``H' = H ∘ A / (D + l1 + l2 H)`` from the summed ``A`` and ``D``."""
    return _mu_step(H, A.copy(), D.copy(), l1, l2)


def kl_block_step(
    V,
    M: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    with_loss: bool = True,
) -> tuple[np.ndarray, dict]:
    """Update a W block; emit ``A = W'ᵀ(M∘V / W'H)``, ``C = W'ᵀM`` and W's penalty
    terms, and with ``with_loss`` the loss terms of the incoming state over the
    observed entries: ``vlogr``, ``v_sum``, ``wh_sum`` (= Σ M∘WH)."""
    V = np.asarray(V)
    k, n = H.shape
    W_new = np.empty_like(W)
    A = np.zeros((k, n), dtype=W.dtype)
    C = np.zeros((k, n), dtype=W.dtype)
    vlogr = v_sum = wh_sum = 0.0
    for rows in _sub_blocks(V.shape[0], _row_bytes(V, k)):
        Ms, Ws = M[rows], W[rows]
        Vs = _zeroed(V[rows], Ms, W.dtype)
        ratio, sum_wh = _kl_ratio(Vs, Ms, Ws, H)
        if with_loss:
            vlogr += _vlogr(Vs, ratio)
            v_sum += float(Vs.sum(dtype=np.float64))
            wh_sum += sum_wh
        Wn = _kl_w_from_ratio(ratio, Ms, Ws, H, l1, l2)
        W_new[rows] = Wn
        A += Wn.T @ _kl_ratio(Vs, Ms, Wn, H)[0]
        C += Wn.T @ Ms.astype(W.dtype)
    partials = {"A": A, "C": C, **_w_terms(W_new, W if with_loss else None)}
    if with_loss:
        partials.update(vlogr=vlogr, v_sum=v_sum, wh_sum=wh_sum)
    return W_new, partials


def kl_h_update(
    H: np.ndarray, A: np.ndarray, C: np.ndarray, l1: float = 0.0, l2: float = 0.0
) -> np.ndarray:
    """``H' = H ∘ A / (C + l1 + l2 H)``, then tiny entries set to 0 (as unmasked KL:
    a zero entry of ``C`` counts as 1)."""
    H_new = _mu_step(H, A.copy(), np.where(C == 0, 1.0, C).astype(H.dtype), l1, l2)
    H_new[H_new < H_FLOOR] = 0.0
    return H_new


# --------------------------------------------------------------------------
# Losses over the observed entries
# --------------------------------------------------------------------------
def frobenius_residual(V, M: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
    """``||M∘(V - WH)||^2`` of one block."""
    V = np.asarray(V)
    total = 0.0
    for rows in _sub_blocks(V.shape[0], _row_bytes(V)):
        Ms = M[rows]
        R = (_zeroed(V[rows], Ms, W.dtype) - Ms * (W[rows] @ H)).ravel()
        total += float(np.dot(R, R))
    return total


def kl_loss_terms(V, M: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
    """``vlogr``, ``v_sum``, ``wh_sum`` of D(M∘V || M∘WH) for one block."""
    V = np.asarray(V)
    out = {"vlogr": 0.0, "v_sum": 0.0, "wh_sum": 0.0}
    for rows in _sub_blocks(V.shape[0], _row_bytes(V, H.shape[0])):
        Ms = M[rows]
        Vs = _zeroed(V[rows], Ms, W.dtype)
        ratio, wh_sum = _kl_ratio(Vs, Ms, W[rows], H)
        out["vlogr"] += _vlogr(Vs, ratio)
        out["v_sum"] += float(Vs.sum(dtype=np.float64))
        out["wh_sum"] += wh_sum
    return out


def kl_divergence(terms: dict) -> float:
    """``sum_M V log(V / WH) - V + WH`` from :func:`kl_loss_terms`-style sums."""
    return max(terms["vlogr"] - terms["v_sum"] + terms["wh_sum"], 0.0)


# --------------------------------------------------------------------------
# Statistics of the observed entries
# --------------------------------------------------------------------------
def block_stats(V, fill: float | None = None) -> dict:
    """:func:`dask_nmf.kernels.block_stats` over the observed entries of a dense block.

    Adds ``observed`` (their count), ``size`` (the block's entries) and, for
    filling V where the initialization needs all of it, ``col_sum`` and
    ``col_count`` (per column, float64).  ``finite``: every observed entry is
    finite (an infinite value is not a missing one).
    """
    if hasattr(V, "tocsr") or hasattr(V, "to_scipy_sparse"):
        raise TypeError("masked statistics take dense blocks")
    V0, M = observed(V, fill)
    n = V0.shape[1] if V0.ndim == 2 else 0
    count = int(M.sum())
    out = {
        "observed": count,
        "size": int(M.size),
        "col_sum": np.zeros(n),
        "col_count": M.sum(axis=0, dtype=np.float64) if M.size else np.zeros(n),
    }
    if count == 0:
        return dict(out, min=np.inf, max=-np.inf, finite=True, sum=0.0, sumsq=0.0)
    values = V0[M]
    finite = bool(np.isfinite(values).all())
    kept = values[np.isfinite(values)] if not finite else values
    v64 = values.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        sumsq = float(np.dot(v64, v64)) if finite else np.nan
        out["col_sum"] = V0.sum(axis=0, dtype=np.float64)
    return dict(
        out,
        min=float(kept.min()) if kept.size else np.inf,
        max=float(kept.max()) if kept.size else -np.inf,
        finite=finite,
        sum=float(v64.sum()),
        sumsq=sumsq,
    )


def fill_columns(V, col_means: np.ndarray, fill: float | None = None) -> np.ndarray:
    """V with each missing entry replaced by its column's mean (for the NNDSVD's SVD)."""
    V0, M = observed(V, fill)
    return np.where(M, V0, np.asarray(col_means, dtype=V0.dtype)[None, :])
