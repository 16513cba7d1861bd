"""Multiplicative updates over the observed entries of V only (missing values).

Each block's mask M (True = observed) is made inside its block task from the
block itself: NaN, or entries equal to the fill value ``fill``, are missing.
The updates are Lee & Seung's with every entry of the cost weighted by
``w_ij ∈ {0, 1}`` (see :mod:`dask_nmf.kernels_masked`): the cost is a sum of
per-entry terms, each multiplied by its weight; the auxiliary function of the
unweighted update majorizes each term separately, so with the weights it
still majorizes the weighted sum, touching it at the current point, and each
update still does not increase the cost.

The W update stays row-local (M_i enters it directly) and the H update still
comes from additive k x n sums over the blocks, so the engine runs these
exactly as the unmasked solvers.  The mask breaks the factorization
``(WH)Hᵀ = W(HHᵀ)``; Frobenius restores it where few entries are missing by
subtracting the unobserved entries' share, W·H sampled there only (see
:func:`dask_nmf.kernels_masked.frobenius_block_step`), and forms ``M∘WH`` and
``M∘W'H`` densely where many are.  KL's ratio ``V / WH`` is needed at every
observed entry, so it forms W·H densely as the unmasked KL does.

scikit-learn's regularization enters exactly as in the unmasked MU (scaled by
V's shape, not by the observed count).  The loss is over the observed entries;
the Frobenius loss of the state a pass starts from comes with the pass (from
the products the update forms anyway, or directly where their terms cancel).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .. import kernels_masked as km
from .base import PassReport, Solver


def mask_of(V: Any, fill: float | None) -> np.ndarray:
    """The observed entries of a dense block: not NaN and not equal to ``fill``."""
    return km.mask(V, fill)


class _Masked(Solver):
    """What the masked solvers share: the fill value and the state ``(H,)``."""

    #: Missing entries are made in the block task; V arrives as read.
    masked: ClassVar[bool] = True

    def __init__(self, *args: Any, fill: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fill = None if fill is None else float(fill)

    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        return (H,)

    def _fixed_H(self, V: Any, H: np.ndarray) -> np.ndarray:
        return mask_of(V, self.fill)

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        return self.masked_step(V, mask_of(V, self.fill), W, state, with_loss)

    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        return self.masked_loss_terms(V, mask_of(V, self.fill), W, H)

    def masked_step(
        self, V: Any, M: np.ndarray, W: np.ndarray, state: tuple, with_loss: bool
    ) -> tuple:
        """:meth:`block_step` with the block's mask given (True = fitted): what
        :mod:`dask_nmf.solvers.stacked` calls with its held-out entries removed."""
        raise NotImplementedError

    def masked_loss_terms(self, V: Any, M: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
        """:meth:`loss_terms` over the entries ``M`` selects."""
        raise NotImplementedError


class MaskedFrobeniusMU(_Masked):
    """Weighted MU for ``0.5 * ||M ∘ (V - WH)||^2``."""

    name: ClassVar[str] = "mu"
    loss_name: ClassVar[str] = "frobenius"
    beta: ClassVar[float] = 2.0
    losses_every_pass: ClassVar[bool] = True
    #: The block kernel's ``path`` ("auto"; "dense" is the kernel before the
    #: sparse correction, which benchmarks/bench_missing.py compares against).
    path: ClassVar[str] = "auto"

    def masked_step(
        self, V: Any, M: np.ndarray, W: np.ndarray, state: tuple, with_loss: bool
    ) -> tuple:
        reg = self.reg
        return km.frobenius_block_step(V, M, W, state[0], reg.l1_W, reg.l2_W, self.path)

    def next_state(self, state: tuple, sums: dict) -> tuple:
        reg = self.reg
        return (km.frobenius_h_update(state[0], sums["A"], sums["D"], reg.l1_H, reg.l2_H),)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        H, H_next = state[0], state_next[0]
        before = 0.5 * float(sums["r0"])
        return PassReport(
            before,
            math.nan,  # (the next pass has it)
            self.reg.penalty(sums["w0_sum"], sums["w0_sq"], H),
            self.reg.penalty(sums["w_sum"], sums["w_sq"], H_next),
            self._problem(before, True, 0.0, H_next),
        )

    def masked_loss_terms(self, V: Any, M: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
        return {"r": km.frobenius_residual(V, M, W, H)}

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return 0.5 * float(sums["r"])

    def cost_scale(self) -> float:
        return 0.5 * self.norm_v2

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, M: np.ndarray) -> np.ndarray:
        return km.frobenius_w_update(V, M, W, H, self.reg.l1_W, self.reg.l2_W)

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, M: np.ndarray) -> float:
        return math.sqrt(km.frobenius_residual(V, M, W, H))


class MaskedKullbackLeiblerMU(_Masked):
    """Weighted MU for the generalized KL divergence over the observed entries."""

    name: ClassVar[str] = "mu"
    loss_name: ClassVar[str] = "kullback-leibler"
    beta: ClassVar[float] = 1.0
    losses_every_pass: ClassVar[bool] = False

    def masked_step(
        self, V: Any, M: np.ndarray, W: np.ndarray, state: tuple, with_loss: bool
    ) -> tuple:
        return km.kl_block_step(V, M, W, state[0], self.reg.l1_W, self.reg.l2_W, with_loss)

    def next_state(self, state: tuple, sums: dict) -> tuple:
        reg = self.reg
        return (km.kl_h_update(state[0], sums["A"], sums["C"], reg.l1_H, reg.l2_H),)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        H, H_next = state[0], state_next[0]
        before = penalty_before = math.nan
        if with_loss:
            before = km.kl_divergence(sums)
            penalty_before = self.reg.penalty(sums["w0_sum"], sums["w0_sq"], H)
        problem = self._problem(before, with_loss, 0.0, H_next)
        if with_loss and math.isfinite(before):
            problem = self._v_changed(sums["v_sum"], "the sum of its observed entries") or problem
        return PassReport(
            before,
            math.nan,
            penalty_before,
            self.reg.penalty(sums["w_sum"], sums["w_sq"], H_next),
            problem,
        )

    def masked_loss_terms(self, V: Any, M: np.ndarray, W: np.ndarray, H: np.ndarray) -> dict:
        return km.kl_loss_terms(V, M, W, H)

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return km.kl_divergence(sums)

    def cost_scale(self) -> float:
        return self.v_sum

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, M: np.ndarray) -> np.ndarray:
        return km.kl_w_update(V, M, W, H, self.reg.l1_W, self.reg.l2_W)

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, M: np.ndarray) -> float:
        return math.sqrt(2 * km.kl_divergence(km.kl_loss_terms(V, M, W, H)))
