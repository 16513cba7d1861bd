"""Lee & Seung's multiplicative updates for the generalized Kullback-Leibler
divergence ``D(V || WH) = sum V log(V / WH) - V + WH`` (scikit-learn's
``NMF(solver="mu", beta_loss="kullback-leibler")``).

W_i' = W_i ∘ ((V_i / W_i H) Hᵀ) / (1 Hᵀ + l1 + l2 W_i), row-local; the block
sums A = W'ᵀ(V / W'H) and the column sums of W' give
H' = H ∘ A / (W'ᵀ1 + l1 + l2 H).

The update computes V / WH anyway, so a pass can also return the divergence
of the state it *started from*, at the price of a logarithm per entry; the
engine asks for it only every ``loss_every`` passes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .. import kernels
from .base import PassReport, Solver


class KullbackLeiblerMU(Solver):
    """MU for the generalized KL divergence.  The state is ``(H,)``."""

    name: ClassVar[str] = "mu"
    loss_name: ClassVar[str] = "kullback-leibler"
    beta: ClassVar[float] = 1.0
    losses_every_pass: ClassVar[bool] = False

    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        return (H,)

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        return kernels.kl_block_step(V, W, state[0], self.reg.l1_W, self.reg.l2_W, with_loss)

    def next_state(self, state: tuple, sums: dict) -> tuple:
        H = kernels.kl_h_update(state[0], sums["A"], sums["w_sum"], self.reg.l1_H, self.reg.l2_H)
        return self.start(H)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        H, H_next = state[0], state_next[0]
        before = penalty_before = math.nan
        if with_loss:
            # The sum of V as this pass read it: the divergence from that V.
            before = kernels.kl_divergence(sums["v_sum"], sums["vlogr"], sums["w0_sum"], H)
            penalty_before = self.reg.penalty(sums["w0_sum"], sums["w0_sq"], H)
        problem = self._problem(before, with_loss, 0.0, H_next)
        if with_loss and math.isfinite(before):
            problem = self._v_changed(sums["v_sum"]) or problem
        return PassReport(
            before,
            math.nan,
            penalty_before,
            self.reg.penalty(sums["w_sum"], sums["w_sq"], H_next),
            problem,
        )

    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        return kernels.kl_loss_terms(V, W, H)

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return kernels.kl_divergence(self.v_sum, sums["vlogr"], sums["w0_sum"], H)

    def cost_scale(self) -> float:
        return self.v_sum

    # -- transform ----------------------------------------------------------------
    def _fixed_H(self, V: Any, H: np.ndarray) -> tuple:
        return H.sum(axis=1), float(V.sum(dtype=np.float64))

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: tuple) -> np.ndarray:
        return kernels.kl_w_update(V, W, H, fixed[0], self.reg.l1_W, self.reg.l2_W)

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: tuple) -> float:
        terms = kernels.kl_loss_terms(V, W, H)
        return float(
            np.sqrt(2 * kernels.kl_divergence(fixed[1], terms["vlogr"], terms["w0_sum"], H))
        )
