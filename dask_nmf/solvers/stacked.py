"""Several factorizations of one V in the same passes (for choosing k).

:func:`dask_nmf.select_rank` fits every candidate rank, and several restarts of
each, together: each block task reads V_i once and updates the W block of
every candidate.  To the engine this is one solver whose W is the candidates'
W blocks side by side (``m x K``, K the sum of the ranks) and whose H is their
H stacked (``K x n``); the partial sums are the candidates' own, each under
its candidate's index, so every candidate runs exactly its own updates.

Entries held out for validation travel *inside* V: :func:`mark_held_out` sets
the sign bit of each held-out entry (V is non-negative, so the sign carries the
mark and ``abs`` gives the value back exactly, zeros included: ``-0.0``).  The
block task derives the training mask (observed and not held out) and the
held-out one from the block itself, with no mask array read or sent, and the
choice of entries depends only on the seed and the entry's position
(a hash of its index), not on the row blocks.  Missing entries (NaN) are in
neither.

Each candidate is a masked MU solver (:mod:`dask_nmf.solvers.masked_mu`) on the
training entries.  The stacked cost is the sum of the candidates' costs, so it
never increases either; the fit stops on scikit-learn's rule applied to that
sum, or at ``max_iter``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import kernels_masked as km
from .base import PassReport, Solver

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniform_of_entries(seed: int, rows: tuple[int, int], n: int) -> np.ndarray:
    """A uniform number in [0, 1) for each entry of rows ``rows[0]:rows[1]`` of an
    ``? x n`` matrix: SplitMix64 of ``seed`` and the entry's flat index, so the
    same entry gets the same number however the rows are split into blocks."""
    r = np.arange(rows[0], rows[1], dtype=np.uint64)[:, None]
    z = r * np.uint64(n) + np.arange(n, dtype=np.uint64)[None, :]
    z += np.uint64((int(seed) + 1) * int(_GOLDEN) % 2**64)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def mark_held_out(block: np.ndarray, fraction: float, seed: int, row0: int, n: int) -> np.ndarray:
    """The block with its held-out entries negated (sign bit set) and every
    other entry's sign bit cleared; NaN (missing) entries stay NaN."""
    block = np.abs(np.asarray(block))
    held = uniform_of_entries(seed, (row0, row0 + block.shape[0]), n) < fraction
    held &= ~np.isnan(block)
    np.negative(block, out=block, where=held)
    return block


def masks_of(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(training, held_out)`` masks of a block marked by :func:`mark_held_out`."""
    V = np.asarray(V)
    present = ~np.isnan(V)
    held = present & np.signbit(V)
    return present & ~held, held


def training_stats(V: np.ndarray) -> dict:
    """The validation statistics of the training entries of a marked block."""
    train, _ = masks_of(V)
    return km.block_stats(np.where(train, V, np.nan))


class Stacked(Solver):
    """The candidates of :func:`dask_nmf.select_rank` as one solver.

    Parameters
    ----------
    members : list of Solver
        One masked solver per candidate (rank and restart), in W's column order.
    ranks : list of int
        Their ranks.
    """

    name: ClassVar[str] = "stacked"

    def __init__(self, members: list[Solver], ranks: list[int]):
        first = members[0]
        super().__init__(first.reg, first.norm_v2, first.v_sum, first.dtype, tol=first.tol)
        self.members, self.ranks = list(members), [int(k) for k in ranks]
        self.edges = np.concatenate([[0], np.cumsum(self.ranks)]).tolist()
        self.loss_name = first.loss_name
        self.beta = first.beta
        self.losses_every_pass = all(m.losses_every_pass for m in members)

    def _part(self, X: np.ndarray, r: int, axis: int) -> np.ndarray:
        sl = slice(self.edges[r], self.edges[r + 1])
        return X[sl] if axis == 0 else X[:, sl]

    @staticmethod
    def _sums_of(sums: dict, r: int) -> dict:
        return _prefixed(sums, f"{r}/")

    # -- the pass ---------------------------------------------------------------
    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        parts = tuple(
            m.start(self._part(H, r, 0), loss_unknown, t) for r, m in enumerate(self.members)
        )
        return (H, parts)

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        train, _ = masks_of(V)
        W_new = np.empty_like(W)
        partials: dict = {}
        for r, member in enumerate(self.members):
            Wr, parts = member.masked_step(V, train, self._part(W, r, 1), state[1][r], with_loss)
            W_new[:, self.edges[r] : self.edges[r + 1]] = Wr
            partials.update({f"{r}/{key}": value for key, value in parts.items()})
        return W_new, partials

    def next_state(self, state: tuple, sums: dict) -> tuple:
        parts = tuple(
            m.next_state(state[1][r], self._sums_of(sums, r)) for r, m in enumerate(self.members)
        )
        return (np.vstack([p[0] for p in parts]), parts)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        reports = [
            m.pass_report(state[1][r], state_next[1][r], self._sums_of(sums, r), with_loss)
            for r, m in enumerate(self.members)
        ]
        problems = [rep.problem for rep in reports if rep.problem is not None]
        return PassReport(
            sum(rep.before for rep in reports),
            sum(rep.after for rep in reports),
            sum(rep.penalty_before for rep in reports),
            sum(rep.penalty_after for rep in reports),
            problems[0] if problems else None,
        )

    # -- outside a pass -----------------------------------------------------------
    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        train, _ = masks_of(V)
        out: dict = {}
        for r, m in enumerate(self.members):
            terms = m.masked_loss_terms(V, train, self._part(W, r, 1), self._part(H, r, 0))
            out.update({f"{r}/{key}": value for key, value in terms.items()})
        return out

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return sum(
            m.loss_from_terms(self._sums_of(sums, r), self._part(H, r, 0))
            for r, m in enumerate(self.members)
        )

    def cost_scale(self) -> float:
        return sum(m.cost_scale() for m in self.members)

    def errors(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        """Per candidate, additive over blocks: the loss terms over the training
        entries (``train/r/...``) and over the held-out ones (``held/r/...``), and
        the counts of both (``n_train``, ``n_held``)."""
        train, held = masks_of(V)
        V = np.abs(V)  # (the held-out entries' values)
        out: dict = {"n_train": int(train.sum()), "n_held": int(held.sum())}
        for r, m in enumerate(self.members):
            Wr, Hr = self._part(W, r, 1), self._part(H, r, 0)
            for name, mask in (("train", train), ("held", held)):
                terms = m.masked_loss_terms(V, mask, Wr, Hr)
                out.update({f"{name}/{r}/{key}": value for key, value in terms.items()})
        return out

    def losses_from_errors(self, sums: dict, H: np.ndarray) -> dict:
        """``{"train": [...], "held": [...]}``: each candidate's loss on each set."""
        out = {}
        for name in ("train", "held"):
            out[name] = [
                m.loss_from_terms(_prefixed(sums, f"{name}/{r}/"), self._part(H, r, 0))
                for r, m in enumerate(self.members)
            ]
        return out

    def transform_block(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError("a stacked fit has no transform: fit the chosen rank")


def _prefixed(sums: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in sums.items() if key.startswith(prefix)}
