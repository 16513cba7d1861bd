"""What the engine knows of an NMF algorithm: the :class:`Solver` interface.

The engine (:mod:`dask_nmf.passes`, :mod:`dask_nmf.driver`) runs passes over V.
In a pass every row block i calls, where its W block lives::

    W_i', partials_i = solver.block_step(V_i, W_i, state, with_loss)

``partials_i`` is a dict of arrays and numbers that are *added up* over the
blocks (in any order, in a tree).  From the sums the solver makes the next
broadcast state and tells the engine what the pass learnt::

    state' = solver.next_state(state, sums)
    report = solver.pass_report(state, state', sums, with_loss)

A *state* is a tuple whose first item is H; the rest is whatever the block
steps need of it (H Hᵀ, flags decided on the cluster).  ``start(H)`` makes one
from H.  Where the engine holds only H of a state (the local scheduler between
passes, after a checkpoint, on resume) it also passes ``start`` the
iteration t of that state and the solver's ``carry(state)``: a small
JSON-able dict of what must outlive H (coordinate descent's initial
violation), kept with checkpoints.  The solver also computes a loss by itself when the engine asks for
one outside a pass (:meth:`loss_terms`, :meth:`loss_from_terms`) and solves
for W with H fixed (:meth:`transform_block`, for ``transform``).

Solvers are small picklable objects (a few floats): the engine puts their
bound methods into the task graph.  Adding one is a module in this package
and a line in :data:`dask_nmf.solvers.SOLVERS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import kernels


@dataclass(frozen=True)
class Regularization:
    """scikit-learn's penalties, already scaled: W's by n (features), H's by m (samples)."""

    l1_W: float = 0.0
    l2_W: float = 0.0
    l1_H: float = 0.0
    l2_H: float = 0.0

    def penalty(self, w_sum: Any, w_sq: float, H: np.ndarray) -> float:
        """``l1_W sum W + l2_W/2 ||W||^2 + l1_H sum H + l2_H/2 ||H||^2`` (the part of the
        cost MU decreases that is not the loss), from W's column sums and sum of squares."""
        out = self.l1_W * float(np.sum(w_sum)) + 0.5 * self.l2_W * float(w_sq)
        if self.l1_H == 0 and self.l2_H == 0:
            return out  # (H is k x n: on a wide V, reading it costs as much as the H update)
        H64 = np.asarray(H, np.float64)
        return out + self.l1_H * float(H64.sum()) + 0.5 * self.l2_H * float(np.vdot(H64, H64))


@dataclass
class PassReport:
    """What the client learns of a pass.

    ``before`` and ``after`` are the losses of the state the pass started from
    and of the one it produced (NaN where the pass did not compute them);
    ``penalty_before``/``penalty_after`` their regularization terms;
    ``problem`` what broke, or None: ``(0 or 1, text)``, 0 for the state the
    pass started from, 1 for the one it produced; ``done``: the solver's own
    stopping rule, evaluated in the pass, says the state it produced is the
    answer (for rules that are not on the loss history, see
    :meth:`Solver.converged`), and ``criterion`` is the value that rule
    compared with ``tol``.
    """

    before: float
    after: float
    penalty_before: float
    penalty_after: float
    problem: tuple[int, str] | None = None
    done: bool = False
    #: What a stopping rule evaluated in the pass compared with ``tol`` (NaN: none).
    criterion: float = math.nan


class Solver:
    """One algorithm for one cost, on the engine's passes (see the module docstring).

    Parameters
    ----------
    reg : Regularization
    norm_v2, v_sum : float
        ``||V||^2`` and ``sum V`` from the validation pass.
    dtype : numpy dtype
        The dtype the fit computes in.
    tol, shuffle, random_state
        The fit's stopping tolerance, and for solvers that update coordinates
        in turn, whether to randomize their order and the seed.
    accelerate : bool
        For solvers that can (:attr:`accelerates`): several updates of W per
        block and of H per pass from the same fixed terms (Gillis & Glineur).
    """

    #: The ``solver=`` name and the cost's name and beta.
    name: ClassVar[str] = ""
    loss_name: ClassVar[str] = ""
    beta: ClassVar[float] = math.nan
    #: Whether every pass computes its losses from its sums (no option to skip them).
    losses_every_pass: ClassVar[bool] = False
    #: Whether ``accelerate=True`` is implemented.
    accelerates: ClassVar[bool] = False
    #: Why this solver has no version for missing values (see ``MASKED_SOLVERS``).
    no_missing_values: ClassVar[str] = (
        "weighted updates are implemented for MU with beta_loss 'frobenius' and 'kullback-leibler'"
    )
    #: Whether entries of W or H that start at zero stay zero (multiplicative
    #: updates: the driver warns about init="nndsvd", as scikit-learn does for MU).
    keeps_zeros: ClassVar[bool] = True
    #: What the stopping rule compares with ``tol``, named for progress bars and
    #: stop reasons, and the comparison that stops the fit.
    criterion_name: ClassVar[str] = "decrease/err0"
    criterion_stops: ClassVar[str] = "<"

    def __init__(
        self,
        reg: Regularization,
        norm_v2: float,
        v_sum: float,
        dtype: Any,
        *,
        tol: float = 0.0,
        shuffle: bool = False,
        random_state: Any = None,
        accelerate: bool = False,
    ):
        self.reg, self.norm_v2, self.v_sum = reg, float(norm_v2), float(v_sum)
        self.dtype = np.dtype(dtype)
        self.tol, self.shuffle, self.random_state = float(tol), bool(shuffle), random_state
        self.accelerate = bool(accelerate)
        #: Threads a task of this solver may use for work no other task runs
        #: beside (set by the driver: the local scheduler's threads; 1 on a cluster,
        #: whose worker threads are the tasks').
        self.threads = 1

    @classmethod
    def check_stats(cls, stats: dict) -> None:
        """Refuse, with :class:`~dask_nmf.io.InputError`, a V this solver cannot fit,
        from the validation pass's statistics (``min``, ``max``, ``sum``, ...)."""

    # -- the pass ---------------------------------------------------------------
    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        """The state a pass needs from H (``loss_unknown``: the pass must compute
        the loss of this state, as at the start or after a resume; ``t``: the
        iteration of this state; ``carry``: what :meth:`carry` kept of it, None
        at the start of a fit)."""
        raise NotImplementedError

    def carry(self, state: tuple) -> dict:
        """What of ``state`` besides H and its iteration the next passes need:
        a small JSON-able dict, saved with checkpoints and given back to
        :meth:`start` (none for the multiplicative updates)."""
        return {}

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        """``(W', partials)`` of one row block."""
        raise NotImplementedError

    def next_state(self, state: tuple, sums: dict) -> tuple:
        """The next state from the summed partials."""
        raise NotImplementedError

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        """A :class:`PassReport` of the pass from ``state`` to ``state_next``."""
        raise NotImplementedError

    def criterion(self, losses: list[float], t: int) -> float:
        """The value the stopping rule compares with ``tol`` at state t, from the
        loss history (NaN where the rule does not look: see :meth:`converged`).

        scikit-learn's rule for MU looks every 10 iterations at the decrease of
        the error ``sqrt(2 * loss)`` over the last 10, relative to the initial
        error (not at the decrease over the last iteration).
        """
        if t % 10 != 0 or t < 10:
            return math.nan
        err0 = math.sqrt(2 * losses[0])
        if err0 == 0:
            return 0.0
        return (math.sqrt(2 * losses[t - 10]) - math.sqrt(2 * losses[t])) / err0

    def converged(self, losses: list[float], t: int, tol: float) -> bool:
        """Whether state t is the answer, from the loss history (``losses[t]`` is
        state t's loss; NaN where it was not evaluated).

        scikit-learn's rule for MU: every 10 iterations, stop when the decrease
        of ``sqrt(2 * loss)`` over the last 10, relative to its initial value,
        is below ``tol`` (:meth:`criterion`).
        """
        return tol > 0 and self.criterion(losses, t) < tol  # (NaN: not tested)

    # -- outside a pass -----------------------------------------------------------
    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        """Additive per-block terms of the loss at (W, H)."""
        raise NotImplementedError

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        """The loss at (W, H) from the summed :meth:`loss_terms`."""
        raise NotImplementedError

    def error_per_entry(self, loss: float, count: int) -> float:
        """A loss over ``count`` entries as an error per entry: the RMSE
        ``sqrt(2 loss / count)`` for the Frobenius cost, the mean divergence
        otherwise (NaN over no entry)."""
        if count == 0:
            return math.nan
        return math.sqrt(2 * loss / count) if self.beta == 2 else loss / count

    @property
    def error_name(self) -> str:
        """What :meth:`error_per_entry` measures."""
        return "RMSE per entry" if self.beta == 2 else "divergence per entry"

    def cost_scale(self) -> float:
        """The size against which a rise of the cost is judged rounding or not."""
        raise NotImplementedError

    def transform_block(
        self, V: Any, H: np.ndarray, w_start: float, max_iter: int, tol: float
    ) -> np.ndarray:
        """W for the rows of V with H fixed, inside one block.

        W starts at the constant ``w_start`` (scikit-learn: ``sqrt(mean(V) / k)``);
        the stopping rule is scikit-learn's, checked every 10 iterations on this
        block's own error, so blocks never wait for each other.
        """
        V = kernels.as_block(V)
        W = np.full((V.shape[0], H.shape[0]), w_start, dtype=H.dtype)
        if V.shape[0] == 0:
            return W
        fixed = self._fixed_H(V, H)
        error_at_init = previous = self._block_error(V, W, H, fixed) if tol > 0 else 0.0
        for n_iter in range(1, max_iter + 1):
            W = self._w_step(V, W, H, fixed)
            if tol > 0 and n_iter % 10 == 0:
                err = self._block_error(V, W, H, fixed)
                if error_at_init == 0 or (previous - err) / error_at_init < tol:
                    break
                previous = err
        return W

    def _fixed_H(self, V: Any, H: np.ndarray) -> Any:
        """What the W steps of :meth:`transform_block` reuse while H is fixed."""
        raise NotImplementedError

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: Any) -> np.ndarray:
        raise NotImplementedError

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: Any) -> float:
        """``sqrt(2 * loss)`` of one block (scikit-learn's error)."""
        raise NotImplementedError

    # -- shared checks ----------------------------------------------------------------
    def _v_changed(self, v_sum: float, what: str = "its sum") -> tuple[int, str] | None:
        """A problem if the sum of V this pass read differs from the validation
        pass's (V changed while the fit read it), else None."""
        if abs(v_sum - self.v_sum) > 1e-8 * abs(self.v_sum):
            return (
                0,
                f"V changed while the fit read it: {what} is now {v_sum:.9g}, "
                f"{self.v_sum:.9g} when the fit started",
            )
        return None

    @staticmethod
    def _problem(before: float, before_known: bool, after: float, H_next: np.ndarray):
        """What broke in a pass, if anything (see :class:`PassReport`)."""
        if before_known and not math.isfinite(before):
            return (0, f"the loss became {before}")
        if not math.isfinite(after):
            return (1, f"the loss became {after}")
        # One read of H (k x n) for both checks: H >= 0, so its sum is finite and
        # positive unless an entry is NaN or infinite, or all are 0.
        total = float(H_next.sum(dtype=np.float64))
        if not math.isfinite(total) and not np.isfinite(H_next).all():
            return (1, "H has NaN or infinite entries")
        if total == 0 and not H_next.any():
            return (1, "H is all zeros")
        return None
