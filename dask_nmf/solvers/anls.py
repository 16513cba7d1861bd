"""Alternating non-negative least squares by block principal pivoting
(``solver="anls"``, Frobenius only; Kim & Park, "Fast nonnegative matrix
factorization: an active-set-like method and comparisons", SIAM J. Sci.
Comput. 33(6), 2011).

Each iteration solves each factor's problem *exactly* with the other fixed:

    W_i' = argmin_{W >= 0} ||V_i - W H||^2      (row-local: needs V_i Hᵀ and H Hᵀ)
    H'   = argmin_{H >= 0} ||V - W' H||^2       (needs A = W'ᵀV and B = W'ᵀW')

so a pass needs the same sums as Frobenius MU and cd, and the cost never
increases (each half-step is a minimization over one factor).  The
non-negative least-squares problems, one per row of W and per column of H,
share their Gram matrix; :func:`nnls_bpp` solves them together, grouping the
right-hand sides whose passive sets agree, and starts from the previous
iterate's support (which after a few iterations is nearly right, so one or
two pivoting steps suffice).

scikit-learn's penalties enter as in cd: L2 on the Gram matrix's diagonal,
L1 subtracted from the data product.  The loss comes from the sums, as for
Frobenius MU (whose state, direct-residual fallback and report this reuses).
Stopping: every iteration, the decrease of ``sqrt(2 * loss)`` over that one
iteration, relative to the initial error, below ``tol`` (each iteration
does far more than an MU step, so the rule is checked every iteration, not
every 10).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .. import kernels
from .cd import gram
from .mu_frobenius import FrobeniusMU, _expansion_loss

#: Kim & Park's backup rule: full exchanges allowed without progress before
#: single-variable exchanges (which cannot cycle) take over.
BACKUP_EXCHANGES = 3


def _solve_on(G: np.ndarray, R: np.ndarray, F: np.ndarray, cols: np.ndarray, X: np.ndarray):
    """X[:, cols] = the least-squares solutions on their passive sets F[:, cols]
    (zero elsewhere); columns with the same passive set share one factorization."""
    X[:, cols] = 0
    patterns, inverse = np.unique(F[:, cols].T, axis=0, return_inverse=True)
    inverse = np.ravel(inverse)
    for g, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        c = cols[inverse == g]
        Gp = G[np.ix_(pattern, pattern)]
        Rp = R[np.ix_(pattern, c)]
        try:
            X[np.ix_(pattern, c)] = np.linalg.solve(Gp, Rp)
        except np.linalg.LinAlgError:  # a singular Gram matrix: the least-norm solution
            X[np.ix_(pattern, c)] = np.linalg.lstsq(Gp, Rp, rcond=None)[0]


def nnls_bpp(
    G: np.ndarray, R: np.ndarray, passive: np.ndarray | None = None, max_iter: int | None = None
) -> np.ndarray:
    """Solve ``min_{X >= 0} ||C X - B||^2`` column by column from ``G = CᵀC`` and ``R = CᵀB``.

    Block principal pivoting (Kim & Park 2011) for many right-hand sides.

    Parameters
    ----------
    G : ndarray of shape (k, k)
        The Gram matrix (symmetric positive semi-definite).
    R : ndarray of shape (k, p)
        The data products, one column per problem.
    passive : ndarray of bool, shape (k, p), optional
        Where to start the passive (free) sets, e.g. ``X_previous > 0``.
    max_iter : int, optional
        Pivoting steps at most (default ``5 k + 10``; the method ends far sooner).

    Returns
    -------
    ndarray of shape (k, p)
        The non-negative solutions (KKT: ``X >= 0``, ``G X - R >= 0`` where
        ``X == 0``, ``= 0`` where ``X > 0``).
    """
    G = np.asarray(G, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    k, p = R.shape
    F = np.zeros((k, p), bool) if passive is None else np.array(passive, dtype=bool)
    X = np.zeros((k, p))
    everything = np.arange(p)
    _solve_on(G, R, F, everything, X)
    Y = G @ X - R
    Y[F] = 0
    best = np.full(p, k + 1)
    backup = np.full(p, BACKUP_EXCHANGES)
    for _ in range(5 * k + 10 if max_iter is None else max_iter):
        wrong = (F & (X < 0)) | (~F & (Y < 0))
        counts = wrong.sum(axis=0)
        todo = counts > 0
        if not todo.any():
            break
        progress = todo & (counts < best)
        best[progress] = counts[progress]
        backup[progress] = BACKUP_EXCHANGES
        patience = todo & ~progress & (backup >= 1)
        backup[patience] -= 1
        single = todo & ~progress & ~patience
        exchange = wrong & (progress | patience)[None, :]
        if single.any():
            # Only the last wrong variable of each stuck column: this cannot cycle.
            cols = np.flatnonzero(single)
            last = k - 1 - np.argmax(wrong[::-1, cols], axis=0)
            exchange[last, cols] = True
        F ^= exchange
        cols = np.flatnonzero(todo)
        _solve_on(G, R, F, cols, X)
        Y[:, cols] = G @ X[:, cols] - R[:, cols]
        Y[F] = 0
    np.maximum(X, 0, out=X)  # (rounding at the boundary; exact when the loop ended)
    return X


class AlternatingNNLS(FrobeniusMU):
    """ANLS by block principal pivoting (Frobenius only).

    The state is ``(H, H Hᵀ + l2_W I, direct, loss)``, laid out as
    :class:`FrobeniusMU`'s so its report and direct-loss machinery apply.
    """

    name: ClassVar[str] = "anls"
    criterion_name: ClassVar[str] = "decrease/err0 (last iteration)"
    loss_name: ClassVar[str] = "frobenius"
    beta: ClassVar[float] = 2.0
    losses_every_pass: ClassVar[bool] = True
    accelerates: ClassVar[bool] = False
    keeps_zeros: ClassVar[bool] = False
    no_missing_values: ClassVar[str] = (
        "with a mask each row's least-squares problem has a Gram matrix of its own "
        "(its observed columns), which block principal pivoting does not share"
    )

    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        return H, gram(H, self.reg.l2_W), bool(loss_unknown), math.nan

    def _w_rows(self, V: Any, W: np.ndarray | None, H: np.ndarray, G: np.ndarray) -> np.ndarray:
        """The exact W rows for the rows of V given H (warm-started from W's support)."""
        R = np.asarray((V @ H.T).T, dtype=np.float64)
        if self.reg.l1_W != 0:
            R -= self.reg.l1_W
        passive = None if W is None else W.T > 0
        return nnls_bpp(G, R, passive).T.astype(H.dtype)

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        H, G, direct, _ = state
        V = kernels.as_block(V)
        k, n = H.shape
        W_new = np.empty_like(W)
        A = kernels.ProductSum(k, n, W.dtype)
        B = np.zeros((k, k), dtype=W.dtype)
        r0 = 0.0
        # Sub-blocks of rows sized as the MU kernel's (the k x n partial counted).
        step = kernels._product_step(V, H)
        tile = kernels._tile_cols(step, n, np.result_type(W, H).itemsize)
        residual_buf = np.empty(step * tile, np.result_type(W, H)) if direct else None
        for rows in kernels._slices(V.shape[0], step):
            Vs = V[rows]
            if direct:
                r0 += kernels.residual_tiles(Vs, W[rows], H, tile, residual_buf)
            Ws = self._w_rows(Vs, W[rows], H, G)
            W_new[rows] = Ws
            A.add(Ws, Vs)
            B += Ws.T @ Ws
        partials = {"A": A.total(), "B": B, **kernels._w_terms(W_new, W)}
        if direct:
            partials["r0"] = r0
        return W_new, partials

    def next_state(self, state: tuple, sums: dict) -> tuple:
        H = state[0]
        G = np.array(sums["B"], dtype=np.float64)
        if self.reg.l2_H != 0:
            G.flat[:: G.shape[0] + 1] += self.reg.l2_H
        R = np.asarray(sums["A"], dtype=np.float64)
        if self.reg.l1_H != 0:
            R = R - self.reg.l1_H
        H_new = nnls_bpp(G, R, H > 0).astype(H.dtype)
        HHt = H_new @ H_new.T
        loss = _expansion_loss(self.norm_v2, sums["A"], sums["B"], H_new, HHt)
        direct = not 2 * loss >= self.direct_below * self.norm_v2
        return H_new, gram(H_new, self.reg.l2_W), direct, loss

    def criterion(self, losses: list[float], t: int) -> float:
        """The decrease of ``sqrt(2 * loss)`` over iteration t, relative to the
        initial error (checked every iteration; :meth:`converged` compares it
        with ``tol``)."""
        if t < 1 or math.isnan(losses[t]) or math.isnan(losses[t - 1]):
            return math.nan
        err0 = math.sqrt(2 * losses[0])
        if err0 == 0:
            return 0.0
        return (math.sqrt(2 * losses[t - 1]) - math.sqrt(2 * losses[t])) / err0

    # -- transform ----------------------------------------------------------------
    def transform_block(
        self, V: Any, H: np.ndarray, w_start: float, max_iter: int, tol: float
    ) -> np.ndarray:
        """W for the rows of V with H fixed: the exact non-negative least squares
        (one solve; ``w_start``, ``max_iter`` and ``tol`` do not apply)."""
        V = kernels.as_block(V)
        if V.shape[0] == 0:
            return np.zeros((0, H.shape[0]), dtype=H.dtype)
        if sp.issparse(V):
            V = V.tocsr()
        return self._w_rows(V, None, H, gram(H, self.reg.l2_W))
