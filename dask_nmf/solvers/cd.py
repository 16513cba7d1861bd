"""Coordinate descent for ``0.5 * ||V - WH||^2`` (scikit-learn's ``NMF(solver="cd")``).

Cichocki & Phan's HALS as scikit-learn runs it: per iteration, one sweep of
exact coordinate minimization over the components of W, then one over H.
For component t the whole column (row of H) moves at once:

    grad = W (H Hᵀ)[:, t] - (V Hᵀ)[:, t],    W[:, t] <- max(W[:, t] - grad / (H Hᵀ)[t, t], 0)

with the L2 penalty added to the diagonal of H Hᵀ and the L1 penalty
subtracted from V Hᵀ.  The W sweep is row-local: each row block runs it on
V_i Hᵀ inside ``block_step`` and emits A = W'ᵀV_i and B = W'ᵀW', the same
sums as Frobenius MU; ``next_state`` runs the H sweep on them (the H
problem's "H Hᵀ" is B, its "V Hᵀ" is Aᵀ).

Stopping is scikit-learn's: the *violation* (sum of |projected gradient|
seen during both sweeps) relative to the first iteration's, ``<= tol``.  The
W part is an additive per-block sum, the H part is computed in
``next_state``, and the pass reports ``done`` (:class:`PassReport`); the
initial violation lives in the state and in checkpoints (``carry``).

With ``shuffle`` the components are visited in a random order: one
``RandomState(seed).permutation(k)`` for the W sweep, then one for the H
sweep, every iteration, as scikit-learn draws them; the permutations of
iteration t are a function of (seed, t) (see :func:`permutation`), so passes
submitted ahead of their predecessor's report, resumed fits and every
worker agree on them.

The loss comes from the sums, as for Frobenius MU (whose state layout,
direct-residual fallback and report this class reuses).

With ``accelerate=True``: Gillis & Glineur's accelerated HALS.  The sweeps
reuse their fixed terms (``V_i Hᵀ`` and ``H Hᵀ`` for W, ``A`` and ``B`` for H)
for up to ``floor(1 + α ρ)`` sweeps, with ρ as for accelerated MU and the
paper's α = 0.5 for HALS, stopping once a sweep moves the factor by less than
δ = 0.1 times the first sweep did.  Every sweep is an exact minimization over
each component in turn, so the cost still never increases.  Each inner sweep
visits the components in the iteration's order; the violation the stopping
rule uses is that of the first sweep of each factor (the one scikit-learn's
rule measures: at the state the iteration started from).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .. import kernels
from .mu_frobenius import ACCEL_DELTA, FrobeniusMU, _expansion_loss, inner_updates

#: Gillis & Glineur's α for accelerated HALS (inner sweeps <= 1 + α ρ); δ is MU's.
ACCEL_ALPHA_HALS = 0.5

#: Permutations kept per stream (a pass asks for those of one iteration; a
#: run-ahead pass, or a transform block on another thread, for nearby ones).
KEEP_PERMUTATIONS = 64
#: Streams (seed, k) cached per process.
KEEP_STREAMS = 8

_streams_lock = threading.Lock()
_streams: OrderedDict[tuple[int, int], _Stream] = OrderedDict()


class _Stream:
    """The permutations ``RandomState(seed).permutation(k)`` draws, in order."""

    def __init__(self, seed: int, k: int):
        self.rng, self.k = np.random.RandomState(seed), k
        self.drawn = 0
        self.recent: dict[int, np.ndarray] = {}

    def get(self, index: int) -> np.ndarray:
        while self.drawn <= index:
            self.recent[self.drawn] = self.rng.permutation(self.k).astype(np.intp)
            self.recent.pop(self.drawn - KEEP_PERMUTATIONS, None)
            self.drawn += 1
        return self.recent[index]


def permutation(seed: int | None, k: int, index: int) -> np.ndarray:
    """The ``index``-th permutation of ``range(k)`` drawn from ``RandomState(seed)``
    (0-based), or the identity for ``seed=None`` (no shuffle).

    scikit-learn draws from one RandomState through the fit; here any task can
    ask for any draw.  Each process keeps the stream (and its last draws), so
    consecutive passes cost one or two draws each; an earlier draw than the
    stream keeps replays it from the seed (a few microseconds per draw).
    """
    if seed is None:
        return np.arange(k, dtype=np.intp)
    with _streams_lock:
        stream = _streams.get((seed, k))
        if stream is None or index < stream.drawn - KEEP_PERMUTATIONS:
            stream = _Stream(seed, k)
        _streams[(seed, k)] = stream
        _streams.move_to_end((seed, k))
        while len(_streams) > KEEP_STREAMS:
            _streams.popitem(last=False)
        return stream.get(index)


def seed_of(random_state: Any) -> int:
    """An int seed from ``random_state`` as scikit-learn's ``check_random_state``
    takes it: an int is the seed itself (so the permutations are scikit-learn's);
    None or a ``RandomState`` give one drawn from NumPy's global state or from it."""
    from ..io import InputError
    from ..options import is_int

    if is_int(random_state):
        try:
            np.random.RandomState(int(random_state))
        except ValueError as exc:
            raise InputError(f"random_state={random_state!r}: {exc}") from None
        return int(random_state)
    if random_state is None:
        random_state = np.random.mtrand._rand
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    raise InputError(
        f"random_state must be None, an int or a numpy.random.RandomState; got {random_state!r}"
    )


try:  # scikit-learn's compiled sweep: the very loop its NMF(solver="cd") runs
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast as _compiled_sweep
except ImportError:  # pragma: no cover - a private module; the NumPy sweep stands in
    _compiled_sweep = None


def sweep(F: np.ndarray, G: np.ndarray, XGt: np.ndarray, order: np.ndarray) -> float:
    """One coordinate-descent sweep over the components of ``F``, in place; its violation.

    ``F`` is the factor being updated (rows x k, C order), ``G`` the k x k Gram
    matrix of the other factor (L2 already on its diagonal), ``XGt`` the
    rows x k product of the data with the other factor (L1 already
    subtracted).  Components are visited in ``order``; each sees the ones
    updated before it.  This is scikit-learn's ``_update_cdnmf_fast`` where it
    can be imported (a compiled loop: the Python-level sweep costs more than
    the products on a small block), else :func:`numpy_sweep`, the same
    arithmetic written with whole columns.
    """
    if _compiled_sweep is not None and F.dtype == G.dtype == XGt.dtype and F.flags.c_contiguous:
        return float(_compiled_sweep(F, G, XGt, order))
    return numpy_sweep(F, G, XGt, order)


def numpy_sweep(F: np.ndarray, G: np.ndarray, XGt: np.ndarray, order: np.ndarray) -> float:
    """:func:`sweep` in NumPy, a component (a whole column of ``F``) at a time:

        grad = F G[:, t] - XGt[:, t],    F[:, t] <- max(F[:, t] - grad / G[t, t], 0)

    and the violation adds ``|grad|`` (only its negative part where
    ``F[:, t]`` is 0: the projected gradient)."""
    Ft = np.ascontiguousarray(F.T)  # a component is then a contiguous row
    XGt_t = np.ascontiguousarray(XGt.T)
    violation = 0.0
    for t in order:
        row = Ft[t]
        grad = G[t] @ Ft - XGt_t[t]
        projected = np.where(row == 0, np.minimum(grad, 0), grad)
        violation += float(np.abs(projected).sum(dtype=np.float64))
        hess = G[t, t]
        if hess != 0:
            np.maximum(row - grad / hess, 0, out=row)
    F[...] = Ft.T
    return violation


def sweeps(F: np.ndarray, G: np.ndarray, XGt: np.ndarray, order: np.ndarray, limit: int) -> float:
    """Up to ``limit`` :func:`sweep` s from the same fixed terms, in place, stopping
    once a sweep moves ``F`` by less than ``ACCEL_DELTA`` times the first one did
    (Gillis & Glineur's inner rule); the violation of the first sweep."""
    first_move = None
    violation = 0.0
    for i in range(limit):
        before = F.copy() if limit > 1 else None
        v = sweep(F, G, XGt, order)
        if i == 0:
            violation = v
        if before is None:
            break
        before -= F
        moved = float(np.linalg.norm(before))
        if first_move is None:
            first_move = moved
        elif moved < ACCEL_DELTA * first_move:
            break
    return violation


def gram(H: np.ndarray, l2: float) -> np.ndarray:
    """``H Hᵀ + l2 I``: scikit-learn's L2 penalty is an increase of the diagonal."""
    HHt = H @ H.T
    if l2 != 0:
        HHt.flat[:: HHt.shape[0] + 1] += l2
    return HHt


class CoordinateDescent(FrobeniusMU):
    """scikit-learn's coordinate descent (Frobenius only).

    The state is ``(H, H Hᵀ + l2_W I, direct, loss, t, violation_init,
    violation)``: the first four as :class:`FrobeniusMU`'s (so its report and
    direct-loss machinery apply), ``t`` the state's iteration (it selects the
    permutations of the pass from it), ``violation_init`` the first
    iteration's violation (NaN until known) and ``violation`` that of the
    iteration that produced the state.
    """

    name: ClassVar[str] = "cd"
    loss_name: ClassVar[str] = "frobenius"
    criterion_name: ClassVar[str] = "violation/first"
    criterion_stops: ClassVar[str] = "<="
    beta: ClassVar[float] = 2.0
    losses_every_pass: ClassVar[bool] = True
    accelerates: ClassVar[bool] = True
    keeps_zeros: ClassVar[bool] = False
    no_missing_values: ClassVar[str] = (
        "coordinate descent's W update is not row-separable with a mask without one "
        "k x k Gram matrix per row"
    )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # An int, pickled into the tasks; None: the identity order.
        self.random_state = seed_of(self.random_state) if self.shuffle else None

    def _order(self, index: int, k: int) -> np.ndarray:
        return permutation(self.random_state, k, index)

    def _gram(self, H: np.ndarray, l2: float) -> np.ndarray:
        return gram(H, l2)

    # -- the pass ---------------------------------------------------------------
    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        init = (carry or {}).get("violation_init")
        init = math.nan if init is None else float(init)
        return H, self._gram(H, self.reg.l2_W), bool(loss_unknown), math.nan, t, init, math.nan

    def carry(self, state: tuple) -> dict:
        init = state[5]
        return {"violation_init": None if math.isnan(init) else float(init)}

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        H, HHt, direct, _, t = state[:5]
        V = kernels.as_block(V)
        k, n = H.shape
        order = self._order(2 * t, k)  # this iteration's W sweep
        W_new = np.empty_like(W)
        A = kernels.ProductSum(k, n, W.dtype)
        B = np.zeros((k, k), dtype=W.dtype)
        violation, r0 = 0.0, 0.0
        nnz = V.nnz if sp.issparse(V) else V.shape[0] * n
        limit = 1
        if self.accelerate:  # ρ_W of this block, as for accelerated MU
            rho = 1.0 + (nnz + n * k) / (max(V.shape[0], 1) * (k + 1))
            limit = inner_updates(rho, ACCEL_ALPHA_HALS)
        # Sub-blocks of rows, as the MU kernel does: the sweep is row-local, and
        # W'ᵀV of a sub-block is formed while that part of V is in cache.
        step = kernels._product_step(V, H)
        tile = kernels._tile_cols(step, n, np.result_type(W, H).itemsize)
        residual_buf = np.empty(step * tile, np.result_type(W, H)) if direct else None
        HT = np.ascontiguousarray(H.T) if sp.issparse(V) else H.T
        for rows in kernels._slices(V.shape[0], step):
            Vs = V[rows]
            if direct:
                r0 += kernels.residual_tiles(Vs, W[rows], H, tile, residual_buf)
            Ws = W_new[rows]  # (a C-ordered view: the sweep updates it in place)
            Ws[...] = W[rows]
            XHt = np.asarray(Vs @ HT)
            if self.reg.l1_W != 0:
                XHt -= self.reg.l1_W
            violation += sweeps(Ws, HHt, XHt, order, limit)
            A.add(Ws, Vs)
            B += Ws.T @ Ws
        partials = {"A": A.total(), "B": B, **kernels._w_terms(W_new, W), "violation": violation}
        if self.accelerate:
            partials.update(rows=V.shape[0], nnz=nnz)
        if direct:
            partials["r0"] = r0
        return W_new, partials

    def next_state(self, state: tuple, sums: dict) -> tuple:
        H, t, init = state[0], state[4], state[5]
        # The H problem is the W problem transposed: its Gram matrix is B = W'ᵀW'
        # and its data product (V W')ᵀ = A.
        Ht = np.array(H.T, order="C")  # the H problem's factor, n x k (a copy: swept in place)
        B = self._gram_of(sums["B"], self.reg.l2_H)
        A = sums["A"] - self.reg.l1_H if self.reg.l1_H != 0 else sums["A"]
        k, n = H.shape
        limit = 1
        if self.accelerate:
            rho = 1.0 + (sums["nnz"] + sums["rows"] * k) / (n * (k + 1))
            limit = inner_updates(rho, ACCEL_ALPHA_HALS)
        At = np.ascontiguousarray(A.T)
        violation = sums["violation"] + sweeps(Ht, B, At, self._order(2 * t + 1, k), limit)
        H_new = np.ascontiguousarray(Ht.T)
        if math.isnan(init):  # the pass from the first state
            init = violation
        HHt = H_new @ H_new.T
        loss = _expansion_loss(self.norm_v2, sums["A"], sums["B"], H_new, HHt)
        # (Decided on the cluster, as for MU: the next pass reads it from the state.)
        direct = not 2 * loss >= self.direct_below * self.norm_v2
        HHt_w = self._gram(H_new, self.reg.l2_W)
        return H_new, HHt_w, direct, loss, t + 1, init, violation

    @staticmethod
    def _gram_of(B: np.ndarray, l2: float) -> np.ndarray:
        if l2 == 0:
            return B
        B = B.copy()
        B.flat[:: B.shape[0] + 1] += l2
        return B

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        report = super().pass_report(state, state_next, sums, with_loss)
        violation, init = state_next[6], state_next[5]
        report.done = self._done(violation, init, self.tol)
        report.criterion = 0.0 if init == 0 else violation / init
        return report

    @staticmethod
    def _done(violation: float, init: float, tol: float) -> bool:
        """scikit-learn's rule: stop when ``violation / violation_init <= tol``
        (at once when the first violation is 0: a fixed point)."""
        return init == 0 or violation / init <= tol

    def criterion(self, losses: list[float], t: int) -> float:
        return math.nan  # the violation decides (PassReport.criterion), not the losses

    def converged(self, losses: list[float], t: int, tol: float) -> bool:
        return False  # the violation decides (PassReport.done), not the loss history

    # -- transform ----------------------------------------------------------------
    def transform_block(
        self, V: Any, H: np.ndarray, w_start: float, max_iter: int, tol: float
    ) -> np.ndarray:
        """W for the rows of V with H fixed: scikit-learn's cd transform
        (``_fit_coordinate_descent(update_H=False)``) on this block.

        W starts at zero (``w_start`` is MU's start, unused); each iteration is
        one W sweep, its permutation the iteration's one draw.  The violation
        rule is applied to this block's own violation, so blocks never wait
        for each other: each block's W is scikit-learn's transform of its rows.
        """
        V = kernels.as_block(V)
        k = H.shape[0]
        W = np.zeros((V.shape[0], k), dtype=H.dtype)
        if V.shape[0] == 0:
            return W
        HHt = self._gram(H, self.reg.l2_W)
        XHt = np.ascontiguousarray(V @ H.T, dtype=H.dtype)
        if self.reg.l1_W != 0:
            XHt -= self.reg.l1_W
        init = math.nan
        for n_iter in range(1, max_iter + 1):
            violation = sweep(W, HHt, XHt, self._order(n_iter - 1, k))
            if n_iter == 1:
                init = violation
            if self._done(violation, init, tol):
                break
        return W
