"""The iteration loop: passes in a row, their losses, stopping, checkpoints.

The loop submits pass t + 1 before pass t has ended where it may (on a
cluster, from in-memory or kept blocks, not from a checkpointed state), so no
client round trip separates two passes; it fetches only each pass's
:class:`~dask_nmf.solvers.base.PassReport`.  It records the losses as they
become known (a pass knows the loss of the state it started from, and
sometimes of the one it produced), stops on the solver's rule or at
``max_iter``, watches the cost (:class:`CostWatch`), calls the user's
callback, and saves every ``checkpoint_every`` iterations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import Checkpoints
from .cluster import Runner
from .passes import Pass, PassBuilder
from .solvers import Solver

#: A rise of the cost beyond this fraction of its scale (0.5 ||V||^2 or sum V, or
#: the starting cost if larger) is not rounding: MU never increases the cost.
RISE_TOLERANCE = {8: 1e-8, 4: 1e-3}


class FitError(RuntimeError):
    """The fit broke down: the cost rose, or a loss or factor became NaN, inf or zero.

    Multiplicative updates never increase their cost and keep finite, non-zero
    factors finite and non-zero, so either V changed while the fit read it or
    its scale is beyond what the dtype's arithmetic can carry.  The message
    names the iteration, what was seen and what to do.
    """


@dataclass
class Iterate:
    """Where a fit stands: W's blocks (handles), H (or a handle of the state), t, the losses."""

    W: list
    H: Any
    t: int
    losses: list = field(default_factory=list)
    converged: bool = False
    #: The solver's ``carry`` of state t where H is an array (after a checkpoint, a resume).
    carry: dict | None = None
    #: ``(t, value)`` of the last test of the stopping rule (value compared with tol).
    tested: tuple[int, float] | None = None
    #: Why the loop stopped, in words (set by :meth:`IterationLoop.run`).
    stop_reason: str = ""


class IterationLoop:
    """Runs passes from an :class:`Iterate` until the solver's rule or ``max_iter`` stops it.

    Parameters
    ----------
    passes : PassBuilder
    solver : Solver
    runner : Runner
    max_iter, tol : int, float
    loss_every : int
        Passes whose loss is optional (KL) compute it every ``loss_every``
        iterations (and wherever ``tol`` needs it).
    checkpoints : Checkpoints, optional
        Where to save; with ``checkpoint_every`` iterations between saves.
    report : callable
        ``report(iteration, loss)`` once per iteration as its loss is known.
    watch : CostWatch
    on_criterion : callable, optional
        ``on_criterion(iteration, value)`` each time the stopping rule is
        tested: the value it compares with ``tol``.
    """

    def __init__(
        self,
        passes: PassBuilder,
        solver: Solver,
        runner: Runner,
        *,
        max_iter: int,
        tol: float,
        loss_every: int,
        checkpoints: Checkpoints | None,
        checkpoint_every: int,
        report: Callable[[int, float], Any],
        watch: CostWatch,
        on_criterion: Callable[[int, float], Any] | None = None,
    ):
        self.passes, self.solver, self.runner = passes, solver, runner
        self.on_criterion = on_criterion
        self.max_iter, self.tol, self.loss_every = max_iter, tol, loss_every
        self.checkpoints, self.checkpoint_every = checkpoints, checkpoint_every
        self.report, self.watch = report, watch

    @classmethod
    def of_options(
        cls,
        passes: PassBuilder,
        solver: Solver,
        runner: Runner,
        options: Any,
        checkpoints: Checkpoints | None,
        report: Callable[[int, float], Any],
        on_criterion: Callable[[int, float], Any] | None = None,
    ) -> IterationLoop:
        """The loop a fit with :class:`~dask_nmf.options.FitOptions` ``options`` runs."""
        return cls(
            passes,
            solver,
            runner,
            max_iter=options.max_iter,
            tol=options.tol,
            loss_every=options.loss_every,
            checkpoints=checkpoints,
            checkpoint_every=options.checkpoint_every,
            report=report,
            watch=CostWatch(solver, options.alpha_W, options.alpha_H),
            on_criterion=on_criterion,
        )

    def run(self, it: Iterate) -> Iterate:
        """Iterate until done; returns the answer with H as an array."""
        self.known = len(it.losses)  # on resume, losses may include state t's
        pending = self._launch(it, it.W, it.H, it.t) if it.t < self.max_iter else None
        while pending is not None:
            ahead = None
            if self._may_run_ahead(it.t + 1):
                ahead = self._launch(it, pending.W, pending.state, it.t + 1)
            self._take(it, pending)
            pending = ahead
            if it.converged or it.t >= self.max_iter:
                break
            if self.checkpoints is not None and it.t % self.checkpoint_every == 0:
                self.settle(it)
                it.W = self.checkpoints.save(
                    it.W, it.H, it.t, it.losses, False, False, carry=it.carry
                )
            if pending is None:
                pending = self._launch(it, it.W, it.H, it.t)
        if pending is not None:  # run ahead past the answer
            self.runner.cancel(pending.handles())
        self.settle(it)
        if len(it.losses) == it.t:  # the loss of the final state is still unknown
            self._record(it, it.t, self.passes.loss_only(it.W, it.H))
            it.converged = self._test(it, it.t) or it.converged
        it.stop_reason = self.stop_reason(it)
        return it

    def _test(self, it: Iterate, t: int, value: float | None = None) -> bool:
        """Test the stopping rule at state t (``value``: the pass evaluated it)."""
        if value is None:
            value = self.solver.criterion(it.losses, t)
        if not math.isnan(value):
            it.tested = (t, value)
            if self.on_criterion is not None:
                self.on_criterion(t, value)
        return self.solver.converged(it.losses, t, self.tol)

    def stop_reason(self, it: Iterate) -> str:
        """Why the fit stopped, with what the rule last saw, and what to change."""
        name, stops, tol = self.solver.criterion_name, self.solver.criterion_stops, self.tol
        if it.converged:
            if it.tested is None:
                return f"tol met at iteration {it.t}"
            t, value = it.tested
            return f"tol met at iteration {t}: {name} = {value:.3g} {stops} tol = {tol:g}"
        if tol <= 0:
            return f"max_iter reached ({it.t} iterations; tol=0 runs them all)"
        if it.tested is None:
            seen = "the stopping rule was not tested yet"
            if self.solver.criterion_name == Solver.criterion_name:
                seen += " (it looks every 10 iterations)"
        else:
            t, value = it.tested
            seen = f"{name} = {value:.3g} at iteration {t}, not {stops} tol = {tol:g}"
        return (
            f"max_iter reached ({it.t} iterations) before tol was met: {seen}; "
            "raise max_iter to go on, or tol to stop sooner"
        )

    def _take(self, it: Iterate, pending: Pass) -> None:
        """Take the report of the pass from state t: record, check, stop or advance."""
        t, report = it.t, self.runner.value(pending.losses)
        self.watch.penalties[t] = report.penalty_before
        self.watch.penalties[t + 1] = report.penalty_after
        problem = report.problem
        if problem is not None and problem[0] == 0:
            self.watch.fail(t, problem[1])
        if len(it.losses) == t:
            # The loss of the state the pass started from, where the pass knows
            # it (NaN where it was skipped): KL's on its loss_every passes,
            # Frobenius's at the start and where its expansion had no digits left.
            self._record(it, t, report.before)
            it.converged = self._test(it, t)
        if it.converged:  # state t is the answer; the pass is dropped
            return
        if problem is not None:
            self.watch.fail(t + 1, problem[1])
        it.W, it.H, it.t = pending.W, pending.state, t + 1
        if not math.isnan(report.after):  # the loss of the state it produced
            self._record(it, it.t, report.after)
            it.converged = self._test(it, it.t)
        if not math.isnan(report.criterion):
            self._test(it, it.t, report.criterion)
        it.converged = it.converged or report.done

    def _launch(self, it: Iterate, W: list, H: Any, s: int) -> Pass:
        # State s's loss is unknown (the start, or deferred past a checkpoint):
        # the pass from it computes it (used where H is given as an array).
        first = s >= len(it.losses)
        wanted = s % self.loss_every == 0 or (self.tol > 0 and s % 10 == 0)
        with_loss = self.solver.losses_every_pass or (s >= self.known and wanted)
        return self.passes.launch(W, H, s, first, with_loss, it.carry)

    def _record(self, it: Iterate, s: int, loss: float) -> None:
        it.losses.append(loss)
        self.watch.check(s, loss)
        if s > 0:
            self.report(s, loss)

    def _may_run_ahead(self, s: int) -> bool:
        # Pass s may start before pass s - 1's report is in, except from a
        # checkpointed state (whose W blocks are replaced by their stored copies).
        return (
            self.runner.distributed
            and self.passes.may_run_ahead
            and s < self.max_iter
            and not (self.checkpoints is not None and s % self.checkpoint_every == 0)
        )

    def settle(self, it: Iterate) -> None:
        """Replace the handle of state t in ``it`` by its H, keeping the solver's carry."""
        value = self.runner.value(it.H)
        if isinstance(value, tuple):
            value, it.carry = value[0], self.solver.carry(value)
        it.H = value


class CostWatch:
    """Stops a fit whose cost rises or whose loss or factors break down.

    Lee & Seung's updates (with scikit-learn's regularization) never increase
    the regularized cost, so a rise beyond rounding means V changed under the
    fit or its arithmetic failed; either way the result would be nonsense.
    """

    def __init__(self, solver: Solver, alpha_W: Any, alpha_H: Any):
        self.dtype = solver.dtype
        self.alpha_W, self.alpha_H = alpha_W, alpha_H
        #: The loss's rounding scales with the cost's own scale (||V||^2, sum V).
        self.scale = solver.cost_scale()
        self.rtol = RISE_TOLERANCE.get(self.dtype.itemsize, RISE_TOLERANCE[4])
        self.penalties: dict[int, float] = {}  # regularization terms by iteration
        self.warned = False
        self.last: tuple[int, float] | None = None  # the last known cost
        self.first = 0.0

    def check(self, s: int, loss: float) -> None:
        if math.isnan(loss):
            return  # (a KL loss not evaluated; a broken one is the pass's problem)
        if not math.isfinite(loss):
            self.fail(s, f"the loss became {loss}")
        cost = loss + self.penalties.get(s, 0.0)
        if self.last is None:
            self.first = cost
        else:
            p, previous = self.last
            slack = self.rtol * max(self.scale, self.first)
            if cost > previous + slack:
                raise FitError(
                    f"the cost rose from {previous:.9g} (iteration {p}) to {cost:.9g} "
                    f"(iteration {s}); multiplicative updates never increase it, so V "
                    "changed while the fit read it (a chunk deleted or rewritten: V is "
                    "re-read every pass unless kept in memory) or the arithmetic lost its "
                    f"precision (V's values too large or too small for {self.dtype.name}: "
                    "rescale V, or use float64)"
                )
        self.last = (s, cost)

    def fail(self, s: int, what: str) -> None:
        """Raise :class:`FitError` for what broke at iteration ``s``.

        All-zero factors under regularization are the answer of the penalized
        problem (scikit-learn returns them too): a warning, once, not an error.
        """
        regularized = self.alpha_W > 0 or (self.alpha_H != "same" and self.alpha_H > 0)
        if what.endswith("zeros") and regularized:
            if not self.warned:
                self.warned = True
                warnings.warn(
                    f"at iteration {s} {what}: the regularization (alpha_W={self.alpha_W}, "
                    f"alpha_H={self.alpha_H}) is strong enough to zero the factors; lower it "
                    "for a non-trivial factorization",
                    UserWarning,
                    stacklevel=4,
                )
            return
        if what.startswith("V changed"):
            advice = "V must not change during a fit (keep_in_memory=True reads it once)"
        else:
            advice = (
                f"V's values may be too large or too small for {self.dtype.name} "
                "arithmetic: rescale V (e.g. divide it by its maximum) or use float64"
            )
        raise FitError(f"the fit broke down at iteration {s}: {what}; {advice}")
