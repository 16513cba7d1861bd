"""Lee & Seung's multiplicative updates for ``0.5 * ||V - WH||^2`` (scikit-learn's
``NMF(solver="mu", beta_loss="frobenius")``).

W_i' = W_i ∘ (V_i Hᵀ) / (W_i H Hᵀ + l1 + l2 W_i), row-local; the block sums
A = W'ᵀV and B = W'ᵀW' give H' = H ∘ A / (B H + l1 + l2 H).

The loss comes from the same sums, ``||V||^2 - 2<A, H'> + <B, H'H'ᵀ>``, with
no extra work; where that expansion has too few digits left (its terms cancel
when the fit is close) the next pass computes ``||V_i - W_i H||^2`` directly,
a decision taken on the cluster and carried in the state.

With ``accelerate=True``: Gillis & Glineur's accelerated MU (Neural
Computation 24(4), 2012).  The fixed terms of an update, ``V_i Hᵀ`` and
``H Hᵀ`` for W, ``A`` and ``B`` for H, cost far more than one update from them
(``k²`` flops per row of W, per column of H), so each is used for several
updates: at most ``floor(1 + α ρ)`` with ``ρ_W = 1 + (K + n k) / (m (k + 1))``
and ``ρ_H = 1 + (K + m k) / (n (k + 1))`` (K the non-zeros of V: the cost of
the fixed terms over that of one update), stopped as soon as an update moves
the factor by less than ``δ`` times what the first one moved it (Frobenius
norm of the change).  W's inner updates run per sub-block of rows while it is
in cache (its rows are independent problems given H; ρ_W is the block's);
H's in ``next_state`` from the pass's sums.  Each inner update is an MU step
of the same cost, so the cost still never increases.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .. import kernels
from .base import PassReport, Solver

#: Below this fraction of ||V||^2 the expansion ||V||^2 - 2<W^T V, H> + <W^T W, H H^T>
#: has few digits left, so the pass from that state computes ||V - WH||^2 directly
#: (a float32 fit pays the extra product only once its relative error is below about 1%).
DIRECT_LOSS_BELOW = kernels.DIRECT_LOSS_BELOW

#: Accelerated MU's α (inner updates <= 1 + α ρ) and δ (stop when an update moves
#: the factor by less than δ times the first one did), Gillis & Glineur's values.
ACCEL_ALPHA = 2.0
ACCEL_DELTA = 0.1


class FrobeniusMU(Solver):
    """MU for the squared Euclidean distance.

    The state is ``(H, H Hᵀ, direct, loss)``: ``direct`` says the pass from it
    computes its loss directly; ``loss`` is the expansion's value.
    """

    name: ClassVar[str] = "mu"
    loss_name: ClassVar[str] = "frobenius"
    beta: ClassVar[float] = 2.0
    losses_every_pass: ClassVar[bool] = True
    accelerates: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.direct_below = DIRECT_LOSS_BELOW.get(self.dtype.itemsize, DIRECT_LOSS_BELOW[4])

    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        return H, H @ H.T, bool(loss_unknown), math.nan

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        H, HHt, direct, _ = state
        if self.accelerate:
            return accelerated_block_step(
                V, W, H, HHt, self.reg.l1_W, self.reg.l2_W, direct, ACCEL_ALPHA, ACCEL_DELTA
            )
        return kernels.frobenius_block_step(
            V, W, H, HHt, self.reg.l1_W, self.reg.l2_W, residual=direct
        )

    def next_state(self, state: tuple, sums: dict) -> tuple:
        if self.accelerate:
            H = self._accelerated_h(state[0], sums)
            HHt = H @ H.T
        else:
            H, HHt = self._h_step(state[0], sums["A"], sums["B"])
        loss = _expansion_loss(self.norm_v2, sums["A"], sums["B"], H, HHt)
        # Decided here, on the cluster: the next pass (perhaps already submitted)
        # reads it from the state.  NaN compares false: direct too.
        direct = not 2 * loss >= self.direct_below * self.norm_v2
        return H, HHt, direct, loss

    def _h_step(self, H: np.ndarray, A: np.ndarray, B: np.ndarray) -> tuple:
        """H' and H'H'ᵀ; on a wide V, in column tiles on :attr:`threads` threads.

        The H update is column by column, and while it runs every block waits
        for it: on a local scheduler the other threads would idle through it.
        """
        reg = self.reg
        H_new = np.empty_like(H)

        def tile(cols: slice) -> np.ndarray:
            out = H_new[:, cols]
            kernels.frobenius_h_update(H[:, cols], A[:, cols], B, reg.l1_H, reg.l2_H, out=out)
            return out @ out.T

        threads = self.threads if H.nbytes >= kernels.THREADED_BYTES else 1
        grams = kernels.column_tiles(tile, H.shape[1], threads)
        return H_new, sum(grams[1:], grams[0])

    def _accelerated_h(self, H: np.ndarray, sums: dict) -> np.ndarray:
        """Up to ``floor(1 + α ρ_H)`` H updates from the same ``A`` and ``B``."""
        k, n = H.shape
        rho = 1.0 + (sums["nnz"] + sums["rows"] * k) / (n * (k + 1))
        reg = self.reg

        def step(H: np.ndarray) -> np.ndarray:
            return kernels.frobenius_h_update(H, sums["A"], sums["B"], reg.l1_H, reg.l2_H)

        return repeat_until_settled(step, H, inner_updates(rho, ACCEL_ALPHA), ACCEL_DELTA)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        H, H_next = state[0], state_next[0]
        before = 0.5 * sums["r0"] if state[2] else math.nan
        expansion = state_next[3]
        after = math.nan if state_next[2] else expansion  # deferred: the next pass has it
        return PassReport(
            before,
            after,
            self.reg.penalty(sums["w0_sum"], sums["w0_sq"], H),
            self.reg.penalty(sums["w_sum"], sums["w_sq"], H_next),
            self._problem(before, bool(state[2]), expansion, H_next),
        )

    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        # Asked for only where the loss was deferred, i.e. where the expansion
        # has no digits left: computed directly.
        return {"r": kernels.residual_sumsq(V, W, H)}

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return 0.5 * float(sums["r"])

    def cost_scale(self) -> float:
        return 0.5 * self.norm_v2

    # -- transform ----------------------------------------------------------------
    def _fixed_H(self, V: Any, H: np.ndarray) -> tuple:
        return H @ H.T, V @ H.T, kernels.block_stats(V)["sumsq"]

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: tuple) -> np.ndarray:
        HHt, VHt, _ = fixed
        return kernels.frobenius_w_update(V, W, H, HHt, self.reg.l1_W, self.reg.l2_W, VHt=VHt)

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: tuple) -> float:
        if sp.issparse(V):  # never densify V: expand the square instead
            return float(np.sqrt(2 * kernels.frobenius_loss(fixed[2], W.T @ V, W.T @ W, H)))
        R = V - W @ H
        return float(np.sqrt(float(np.vdot(R, R))))


def _expansion_loss(norm_v2: float, A: np.ndarray, B: np.ndarray, H, HHt) -> float:
    """``0.5 * ||V - WH||^2`` from ``||V||^2``, ``A = WᵀV``, ``B = WᵀW`` (float64)."""
    A64, B64 = np.asarray(A, np.float64), np.asarray(B, np.float64)
    sq = norm_v2 - 2.0 * float(np.vdot(A64, H)) + float(np.vdot(B64, HHt))
    return 0.5 * sq if not sq < 0 else 0.0


def repeat_until_settled(step, X: np.ndarray, limit: int, delta: float) -> np.ndarray:
    """Apply ``step`` to X up to ``limit`` times, stopping once a step moves X by
    less than ``delta`` times the first step did (Gillis & Glineur's inner rule).
    Each step is a full MU step, so the cost never rises along the way."""
    first = None
    for _ in range(limit):
        X_new = step(X)
        moved = float(np.linalg.norm(X_new - X))
        X = X_new
        if first is None:
            first = moved
        elif moved < delta * first:
            break
    return X


def inner_updates(rho: float, alpha: float) -> int:
    """Gillis & Glineur's bound on the updates from one set of fixed terms."""
    return max(1, int(math.floor(1.0 + alpha * rho)))


def accelerated_block_step(
    V: Any,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    l1: float,
    l2: float,
    residual: bool,
    alpha: float = ACCEL_ALPHA,
    delta: float = ACCEL_DELTA,
) -> tuple[np.ndarray, dict]:
    """:func:`~dask_nmf.kernels.frobenius_block_step` with several W updates per
    sub-block from one ``V_s Hᵀ`` (see the module docstring).

    Adds ``"rows"`` and ``"nnz"`` (V's rows and non-zeros) to the partials:
    ``next_state`` needs m and K for ρ_H.
    """
    V = kernels.as_block(V)
    m = V.shape[0]
    k, n = H.shape
    nnz = V.nnz if sp.issparse(V) else m * n
    # ρ_W of this block: (computing V Hᵀ and H Hᵀ) / (one update from them).
    limit = inner_updates(1.0 + (nnz + n * k) / (max(m, 1) * (k + 1)), alpha)
    W_new = np.empty_like(W)
    A = kernels.ProductSum(k, n, W.dtype)
    B = np.zeros((k, k), dtype=W.dtype)
    r0 = 0.0
    sub = kernels._product_step(V, H)
    tile = kernels._tile_cols(sub, n, np.result_type(W, H).itemsize)
    residual_buf = np.empty(sub * tile, np.result_type(W, H)) if residual else None
    HT = np.ascontiguousarray(H.T) if sp.issparse(V) else H.T
    for rows in kernels._slices(m, sub):
        Vs, Ws = V[rows], W[rows]
        if residual:  # while Vs is in cache (a tile of it, on a wide V)
            r0 += kernels.residual_tiles(Vs, Ws, H, tile, residual_buf)
        VHt = Vs @ HT

        def step(W: np.ndarray, Vs=Vs, VHt=VHt) -> np.ndarray:
            return kernels.frobenius_w_update(Vs, W, H, HHt, l1, l2, VHt=VHt)

        Ws = repeat_until_settled(step, Ws, limit, delta)
        W_new[rows] = Ws
        A.add(Ws, Vs)
        B += Ws.T @ Ws
    partials = {"A": A.total(), "B": B, **kernels._w_terms(W_new, W), "rows": m, "nnz": nnz}
    if residual:
        partials["r0"] = r0
    return W_new, partials
