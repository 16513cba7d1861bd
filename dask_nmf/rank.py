"""Choosing k: :func:`select_rank` fits every candidate rank in the same passes over V.

A seeded random fraction of V's entries is held out (treated as missing by
every fit); each candidate rank is fitted ``n_restarts`` times from different
random starts, all of them in one stacked fit (:mod:`dask_nmf.solvers.stacked`):
each block task reads V_i once per pass and updates the W block of every
candidate.  For each k the result reports

- the **held-out error**: how well the fits predict the entries they never
  saw (it falls while k adds structure, and rises or flattens once the extra
  components fit noise);
- the **training error** over the entries the fits saw (it keeps falling);
- the **stability** of the components across restarts: each restart's rows
  of H are matched to the best restart's (Hungarian matching on cosine
  similarity), and the silhouette of the resulting clusters (cosine
  distance) and the mean matched similarity are reported, as NMFk does.
  Ranks past the data's structure split components differently each time:
  their stability drops.

Memory: W holds the candidates side by side, ``sum(ks) * n_restarts`` columns
per row, so a row block costs that many numbers per row besides V's: the
default row blocks shrink accordingly.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import numpy as np

from . import kernels
from .cluster import Runner, resolve_client
from .init import random_init
from .io import InputError, block_sources, check_stats
from .loop import Iterate, IterationLoop
from .options import FitOptions, ReadOptions, is_int
from .passes import PassBuilder, as_delayed, input_stats, tree_reduce
from .solvers import masked_solver_class
from .solvers.stacked import Stacked, mark_held_out, training_stats


@dataclass
class RankSelection:
    """What :func:`select_rank` found.

    Attributes
    ----------
    ks : list of int
        The candidate ranks.
    best_k : int
        The smallest rank whose held-out error is within one standard deviation
        (over the restarts) of the lowest (see :func:`choose_k`).
    rows : list of dict
        One per k: ``k``; ``held_out_error`` and ``train_error`` of the restart
        with the lowest training cost (the fit one would keep); the mean and
        standard deviation of the held-out error over the restarts
        (``held_out_mean``, ``held_out_std``); ``silhouette`` and ``similarity``
        (see :func:`stability`).
        Errors are RMSE per entry for the Frobenius cost
        (``sqrt(||M (V - WH)||^2 / count)``) and the mean divergence per entry
        for the others.
    candidates : list of dict
        One per fit: ``k``, ``restart``, ``held_out_error``, ``train_error``.
    components : dict
        ``k -> list of H`` (one ``k x n`` array per restart).
    n_iter : int
        Passes the stacked fit made (all candidates together).
    converged : bool
        Whether the stopping rule (on the summed cost) ended the fit.
    holdout, n_held_out, beta_loss, error_name, seconds
        The held-out fraction and count, the cost, what the errors measure,
        the wall time.
    """

    ks: list[int]
    best_k: int
    rows: list[dict]
    candidates: list[dict]
    components: dict = field(repr=False)
    n_iter: int = 0
    converged: bool = False
    holdout: float = 0.0
    n_held_out: int = 0
    beta_loss: str = "frobenius"
    error_name: str = "RMSE per entry"
    seconds: float = 0.0

    def table(self) -> str:
        """The rows as a plain-text table (what ``dask-nmf rank`` prints)."""
        head = f"{'k':>4} {'held-out error':>15} {'restarts ± std':>15} {'train error':>12} "
        head += f"{'silhouette':>10} {'similarity':>10}"
        lines = [head]
        for r in self.rows:
            mark = "  <- chosen" if r["k"] == self.best_k else ""
            lines.append(
                f"{r['k']:>4} {r['held_out_error']:>15.6g} {r['held_out_std']:>15.2g} "
                f"{r['train_error']:>12.6g} {r['silhouette']:>10.3f} {r['similarity']:>10.3f}{mark}"
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        out = {key: getattr(self, key) for key in ("ks", "best_k", "rows", "candidates")}
        out.update(n_iter=self.n_iter, converged=self.converged, holdout=self.holdout)
        out.update(n_held_out=self.n_held_out, beta_loss=self.beta_loss, seconds=self.seconds)
        return json.dumps(out, indent=1, allow_nan=True)

    def plot(self, path: Any = None):
        """Held-out and training error, and stability, against k (a matplotlib
        figure; written as PNG to ``path`` when given)."""
        try:
            import matplotlib

            matplotlib.use("Agg") if path is not None else None
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - matplotlib is an optional extra
            raise ImportError(
                "RankSelection.plot needs matplotlib: pip install matplotlib"
            ) from exc
        ks = [r["k"] for r in self.rows]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
        held = np.array([r["held_out_error"] for r in self.rows])
        mean = np.array([r["held_out_mean"] for r in self.rows])
        std = np.array([r["held_out_std"] for r in self.rows])
        ax1.plot(ks, held, marker="o", label="held-out (best restart)")
        ax1.errorbar(ks, mean, yerr=std, ls=":", capsize=3, label="held-out (restarts mean ± std)")
        ax1.plot(ks, [r["train_error"] for r in self.rows], marker=".", label="training")
        ax1.axvline(self.best_k, color="grey", ls=":", label=f"best k = {self.best_k}")
        ax1.set_ylabel(self.error_name)
        ax1.legend()
        ax2.plot(ks, [r["silhouette"] for r in self.rows], marker="o", label="silhouette")
        ax2.plot(ks, [r["similarity"] for r in self.rows], marker=".", label="matched similarity")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("k")
        ax2.set_ylabel("stability across restarts")
        ax2.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig


def parse_ks(ks: Any) -> list[int]:
    """Candidate ranks from a list of ints or a string such as ``"2-12"`` or ``"2,4,8"``."""
    if isinstance(ks, str):
        out: list[int] = []
        try:
            for part in ks.split(","):
                lo, _, hi = part.strip().partition("-")
                out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise InputError(f"ks {ks!r}: expected ranks such as '2-12' or '2,4,8'") from None
        ks = out
    try:
        ks = list(ks)
    except TypeError:
        raise InputError(f"ks must be a list of ranks or a range; got {ks!r}") from None
    if not ks or not all(is_int(k) and k >= 1 for k in ks):
        raise InputError(f"ks must be positive integers; got {ks!r}")
    return sorted({int(k) for k in ks})


def select_rank(
    V: Any,
    ks: Iterable[int] | str = range(2, 13),
    *,
    n_restarts: int = 3,
    holdout: float = 0.05,
    beta_loss: str | float = "frobenius",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: int | None = 0,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    block_rows: int | None = None,
    client: Any = None,
    keep_in_memory: bool | None = None,
    array: str | None = None,
    dtype: Any = None,
    storage_options: dict | None = None,
    callback: Callable[[int, float], Any] | None = None,
) -> RankSelection:
    """Fit every candidate rank (and restarts) in the same passes over V, holding
    out entries to measure how well each predicts what it did not see.

    Parameters
    ----------
    V : str, zarr.Array, dask.array.Array or numpy.ndarray
        The non-negative matrix (as for :func:`dask_nmf.factorize`); NaN entries
        are missing (fitted by none, held out by none).  Dense only.
    ks : iterable of int or str
        The candidate ranks (``"2-12"`` also works).
    n_restarts : int
        Random starts per rank (at least 2 for the stability measures).
    holdout : float
        The fraction of the observed entries held out, in (0, 0.5].
    beta_loss : {"frobenius", "kullback-leibler"}
        The cost (masked MU).
    max_iter, tol
        scikit-learn's stopping rule applied to the summed cost of all fits.
    random_state : int or None
        Seeds the held-out entries and the starts.
    alpha_W, alpha_H, l1_ratio
        Regularization, as in :func:`dask_nmf.factorize`.
    block_rows, client, keep_in_memory, array, dtype, storage_options
        As in :func:`dask_nmf.factorize`.
    callback : callable, optional
        ``callback(iteration, summed_loss)`` after each pass.

    Returns
    -------
    RankSelection
    """
    t0 = time.perf_counter()
    ks = parse_ks(ks)
    if not is_int(n_restarts) or n_restarts < 1:
        raise InputError(f"n_restarts must be a positive integer; got {n_restarts!r}")
    if not isinstance(holdout, (int, float)) or not 0 < holdout <= 0.5:
        raise InputError(f"holdout must be a fraction in (0, 0.5]; got {holdout!r}")
    seed = 0 if random_state is None else random_state
    if not is_int(seed):
        raise InputError(f"random_state must be an int or None; got {random_state!r}")
    # Validates every shared option once (the largest rank: the same checks).
    options = FitOptions(
        max(ks),
        beta_loss=beta_loss,
        solver="mu",
        init="random",
        max_iter=max_iter,
        tol=tol,
        random_state=seed,
        alpha_W=alpha_W,
        alpha_H=alpha_H,
        l1_ratio=l1_ratio,
        missing="nan",
    )
    member_class = masked_solver_class(beta_loss, "mu")
    runner = Runner(resolve_client(client))
    reading = ReadOptions(
        block_rows=block_rows, array=array, dtype=dtype, storage_options=storage_options
    )
    K = sum(ks) * n_restarts  # W's columns: every candidate side by side
    Vin = reading.open(V, runner, n_components=K)
    if Vin.sparse:
        raise InputError("select_rank takes dense V (the held-out mask would densify CSR blocks)")
    m, n = Vin.shape
    if max(ks) > min(m, n):
        raise InputError(f"ranks up to {max(ks)} exceed min(m, n) = {min(m, n)} of V {m} x {n}")
    if block_rows is None and K > 0:
        # Each row also holds K numbers of W (and as many of its update).
        rows = max(1, Vin.block_rows * n // (n + 2 * K))
        if rows < Vin.block_rows:
            Vin = reading.open(V, runner, rows, n_components=K)
    # V's blocks as the fits read them: held-out entries marked in each block's
    # task (a NumPy V is scattered once first; a store is read in that task).
    sources = [
        dask.delayed(mark_held_out, pure=True)(as_delayed(s), holdout, int(seed), a, n)
        for s, (a, _) in zip(runner.place(block_sources(Vin)), Vin.bounds)
    ]
    if keep_in_memory is None:
        keep_in_memory = Vin.nbytes <= runner.memory_budget()
    if keep_in_memory:
        sources = list(runner.persist(*sources))
    Vm = replace(Vin, array=None, local=None, zarr=None)
    stats = input_stats(runner, sources, stats=training_stats)
    check_stats(stats, dtype=Vin.dtype, shape=Vin.shape, k=max(ks))

    reg = options.regularization(Vin.shape)
    rng = np.random.RandomState(seed)
    mean = stats["sum"] / max(stats.get("observed", m * n), 1)
    members, ranks, W_parts, H_parts = [], [], [], []
    for k in ks:
        for _ in range(n_restarts):
            members.append(member_class(reg, stats["sumsq"], stats["sum"], Vin.dtype, tol=tol))
            ranks.append(k)
            W_k, H_k = random_init(Vm, k, mean, int(rng.randint(0, 2**31 - 1)))
            W_parts.append(W_k)
            H_parts.append(H_k)
    stacked = Stacked(members, ranks)
    W_src = [
        dask.delayed(np.hstack, pure=True)([parts[i] for parts in W_parts])
        for i in range(len(Vm.bounds))
    ]
    H = np.vstack(H_parts).astype(Vin.dtype, copy=False)

    with contextlib.ExitStack() as settings:
        settings.enter_context(runner.blas_limits())
        passes = PassBuilder(runner, Vm, sources, None, stacked)
        report = callback or (lambda t, loss: None)
        loop = IterationLoop.of_options(passes, stacked, runner, options, None, report)
        it = loop.run(Iterate(runner.place(W_src), H, 0))
        parts = [
            dask.delayed(stacked.errors, pure=False)(v, as_delayed(w), it.H)
            for v, w in zip(passes.sources, it.W)
        ]
        (sums,) = runner.compute(tree_reduce(parts, kernels.sum_partials))
    losses = stacked.losses_from_errors(sums, it.H)
    return _summarize(stacked, it, losses, sums, ks, n_restarts, holdout, time.perf_counter() - t0)


def _summarize(stacked, it, losses, sums, ks, n_restarts, holdout, seconds) -> RankSelection:
    name = stacked.loss_name
    candidates, components = [], {k: [] for k in ks}
    for r, (k, member) in enumerate(zip(stacked.ranks, stacked.members)):
        candidates.append(
            dict(
                k=k,
                restart=r % n_restarts,
                held_out_error=member.error_per_entry(losses["held"][r], sums["n_held"]),
                train_error=member.error_per_entry(losses["train"][r], sums["n_train"]),
            )
        )
        components[k].append(np.asarray(stacked._part(it.H, r, 0)))
    rows = []
    for k in ks:
        mine = [c for c in candidates if c["k"] == k]
        held = np.array([c["held_out_error"] for c in mine])
        train = np.array([c["train_error"] for c in mine])
        # The restart a user would keep (the lowest training cost) stands for k;
        # a restart stuck in a poorer local minimum does not blur the curve.
        best = int(np.argmin(train))
        silhouette, similarity = stability(components[k], best)
        rows.append(
            dict(
                k=k,
                held_out_error=float(held[best]),
                held_out_mean=float(held.mean()),
                held_out_std=float(held.std(ddof=1)) if len(held) > 1 else 0.0,
                train_error=float(train[best]),
                silhouette=silhouette,
                similarity=similarity,
            )
        )
    best_k = choose_k(rows)
    return RankSelection(
        ks=list(ks),
        best_k=int(best_k),
        rows=rows,
        candidates=candidates,
        components=components,
        n_iter=it.t,
        converged=it.converged,
        holdout=float(holdout),
        n_held_out=int(sums["n_held"]),
        beta_loss=name,
        error_name=stacked.members[0].error_name,
        seconds=seconds,
    )


def choose_k(rows: list[dict]) -> int:
    """The smallest k whose held-out error is within one standard deviation of
    the lowest: cross-validation's one-standard-error rule, with the spread of
    the restarts at the lowest as the error's scale.

    Past the data's rank the held-out error is flat up to the noise of the
    fits (extra components fit noise as much as they fit structure), so the
    lowest point there is chance; the rule takes the first k on that plateau.
    """
    lowest = min(rows, key=lambda r: r["held_out_error"])
    cutoff = lowest["held_out_error"] + lowest["held_out_std"]
    return int(min(r["k"] for r in rows if r["held_out_error"] <= cutoff))


def stability(Hs: list[np.ndarray], reference: int = 0) -> tuple[float, float]:
    """``(silhouette, mean matched cosine similarity)`` of the components of
    several restarts of one rank.

    Each restart's rows of H are matched one-to-one to the reference restart's
    (Hungarian matching on cosine similarity); the matched groups are the
    clusters of the silhouette (cosine distance).  NaN where undefined (one
    restart, or k = 1).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import silhouette_score

    if len(Hs) < 2:
        return math.nan, math.nan
    unit = [H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-300) for H in Hs]
    k = unit[0].shape[0]
    ref = unit[reference]
    labels, vectors, sims = [], [], []
    for i, U in enumerate(unit):
        if i == reference:
            order = np.arange(k)
        else:
            sim = U @ ref.T  # rows: this restart's components, columns: the reference's
            rows, cols = linear_sum_assignment(-sim)
            order = np.empty(k, int)
            order[rows] = cols
            sims.extend(sim[rows, cols].tolist())
        labels.extend(order.tolist())
        vectors.append(U)
    similarity = float(np.mean(sims))
    if k < 2:
        return math.nan, similarity
    X = np.vstack(vectors)
    return float(silhouette_score(X, labels, metric="cosine")), similarity
