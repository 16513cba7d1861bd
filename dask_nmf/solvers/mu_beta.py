"""Multiplicative updates for the β-divergence, any real β other than 1 and 2
(scikit-learn's ``NMF(solver="mu", beta_loss=β)``; β = 0 is Itakura-Saito).

Févotte & Idier's majorization-minimization updates, with scikit-learn's
exponent γ(β) and zero guards.  Per row block, with ``Λ = W_i H``::

    W_i' = W_i ∘ [ ((V_i ∘ Λ^(β-2)) Hᵀ) / (Λ^(β-1) Hᵀ + l1 + l2 W_i) ]^γ

(row-local), then, with ``Λ' = W_i' H``, the additive k x n sums
``A = W_i'ᵀ (V_i ∘ Λ'^(β-2))`` and ``B = W_i'ᵀ Λ'^(β-1)`` from which
``next_state`` makes ``H' = H ∘ [A / (B + l1 + l2 H)]^γ``.

The divergence of the state a pass starts from needs ``W_i H``, which the W
update forms anyway, but also a power per entry more; like KL's logarithm, it
is computed only on the passes the engine asks it for (``loss_every``).

Guards (scikit-learn's): ``Λ`` is floored at EPSILON in ``Λ^(β-2)`` when
β < 2 and in ``Λ^(β-1)`` when β < 1 (no negative power of 0); zero
denominators become EPSILON; after the W update entries of W below float64's
eps are zeroed when β < 1, after the H update those of H when β <= 1.  The
loss counts only the entries of V above EPSILON in its V terms (there
``0 ** (β - 1)`` is 0, not infinite) with ``Λ`` floored there, and
``Σ Λ^β`` over all entries.  β <= 0 with zeros in V is refused, as
scikit-learn refuses it (the updates may diverge).
"""

from __future__ import annotations

import math
import struct
from functools import cache
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .. import kernels
from ..kernels import EPSILON
from .base import PassReport, Solver

#: Entries of W (β < 1) and H (β <= 1) below this are set to 0 (scikit-learn's
#: "necessary for stability").
ZERO_BELOW = float(np.finfo(np.float64).eps)

#: scikit-learn's message for β <= 0 and zeros in V (users match on it).
ZEROS_REFUSED = (
    "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add small "
    "values to X, or use a positive beta_loss."
)


def gamma(beta: float) -> float:
    """The exponent γ(β) of the MM update (Févotte & Idier 2011), in (0, 1]:
    ``1 / (2 - β)`` for β < 1, ``1 / (β - 1)`` for β > 2, else 1."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def power(x: np.ndarray, p: float) -> np.ndarray:
    """``x ** p`` in place, by products, reciprocals and one square root where
    ``2p`` is a small integer (several times faster than ``np.power``)."""
    twice = 2 * p
    if twice != round(twice) or abs(p) > 4:
        return np.power(x, p, out=x)
    whole, half = divmod(abs(p), 1.0)
    base = np.sqrt(x) if half else None  # x ** 0.5 before x is overwritten
    if whole == 0:
        x[...] = 1.0 if base is None else base
    else:
        original = x.copy() if whole > 1 else None
        for _ in range(int(whole) - 1):
            x *= original
        if base is not None:
            x *= base
    if p < 0:
        np.reciprocal(x, out=x)
    return x


def _powers(WH: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(Λ_f^(β-2), Λ_g^(β-1))`` of the product ``Λ = WH`` (which is consumed),
    each with scikit-learn's floor: at EPSILON for the first when β < 2, for
    the second when β < 1.  One power per entry: the second is the first times
    Λ where the floors agree."""
    raw = WH.copy() if 1 <= beta < 2 else None  # Λ^(β-1) unfloored where Λ < EPSILON
    if beta < 2:
        np.maximum(WH, EPSILON, out=WH)
    P = power(WH.copy(), beta - 2)
    D = np.multiply(P, WH, out=WH)
    if raw is not None:
        low = raw < EPSILON
        if low.any():
            D[low] = raw[low] ** (beta - 1)
    return P, D


def _numerator_factor(V: Any, P: np.ndarray) -> Any:
    """``V ∘ P`` (dense), or sparse with V's pattern (P read at V's non-zeros)."""
    if sp.issparse(V):
        rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
        return sp.csr_matrix((V.data * P[rows, V.indices], V.indices, V.indptr), shape=V.shape)
    return np.multiply(V, P, out=P)


def _apply(X: np.ndarray, numerator, denominator, l1: float, l2: float, g: float):
    """``X ∘ [numerator / (denominator + l1 + l2 X)]^g`` with zero denominators at EPSILON."""
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator = denominator + l2 * X
    ratio = kernels._safe_ratio(numerator, denominator)
    if g != 1:
        ratio **= g
    return X * ratio


def loss_terms_of(V: Any, WH: np.ndarray, beta: float) -> dict:
    """The additive terms of the β-divergence of one sub-block (``WH`` untouched).

    β = 0: ``"div" = Σ V/Λ``, ``"logdiv" = Σ log(V/Λ)`` and ``"count"`` the
    number of entries; other β: ``"vb" = Σ V^β``, ``"vl" = Σ V Λ^(β-1)``,
    ``"lb" = Σ Λ^β``.  V terms over the entries where V > EPSILON, with Λ
    floored at EPSILON there; ``Σ Λ^β`` over all entries (scikit-learn).
    """
    if sp.issparse(V):
        rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
        v, lam = V.data, WH[rows, V.indices]
    else:
        v, lam = V.ravel(), WH.ravel()
    keep = v > EPSILON
    if not keep.all():
        v, lam = v[keep], lam[keep]
    lam = np.maximum(lam, EPSILON)
    v64, lam64 = v.astype(np.float64, copy=False), lam.astype(np.float64, copy=False)
    if beta == 0:
        div = v64 / lam64
        return {
            "div": float(div.sum()),
            "logdiv": float(np.log(div).sum()),
            "count": float(WH.size),
        }
    with np.errstate(divide="ignore", over="ignore"):  # (Λ = 0 with β < 0: inf, as sklearn)
        lb = float(power(WH.astype(np.float64), beta).sum())
    return {
        "vb": float(power(v64.copy(), beta).sum()),
        "vl": float(np.dot(v64, power(lam64.copy(), beta - 1))),
        "lb": lb,
    }


def divergence(terms: dict, beta: float) -> float:
    """The β-divergence from the summed :func:`loss_terms_of` (clipped at 0: rounding)."""
    if beta == 0:
        value = terms["div"] - terms["count"] - terms["logdiv"]
    else:
        value = (terms["vb"] - beta * terms["vl"] + (beta - 1) * terms["lb"]) / (beta * (beta - 1))
    return max(value, 0.0) if not math.isnan(value) else value


def w_update(V: Any, W: np.ndarray, H: np.ndarray, beta: float, l1, l2, with_loss: bool = False):
    """One β-divergence MU step for the rows W of V (a sub-block): ``(W', terms)``
    with the loss terms of (W, H) when ``with_loss`` (else an empty dict)."""
    WH = W @ H
    terms = loss_terms_of(V, WH, beta) if with_loss else {}
    P, D = _powers(WH, beta)
    numerator = _numerator_factor(V, P) @ H.T
    W_new = _apply(W, numerator, D @ H.T, l1, l2, gamma(beta))
    if beta < 1:
        W_new[W_new < ZERO_BELOW] = 0.0
    return W_new, terms


def h_sums(V: Any, W: np.ndarray, H: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(Wᵀ(V ∘ Λ^(β-2)), Wᵀ Λ^(β-1))`` of one sub-block, ``Λ = W H``."""
    P, D = _powers(W @ H, beta)
    return W.T @ _numerator_factor(V, P), W.T @ D


def _add(total: dict, terms: dict) -> None:
    for key, value in terms.items():
        total[key] = total.get(key, 0.0) + value


class BetaDivergenceMU(Solver):
    """MU for the β-divergence, one class per β (see :meth:`for_beta`).  The state is ``(H,)``."""

    name: ClassVar[str] = "mu"
    loss_name: ClassVar[Any] = ""
    beta: ClassVar[float] = math.nan
    losses_every_pass: ClassVar[bool] = False

    @classmethod
    def for_beta(cls, beta: float) -> type[BetaDivergenceMU]:
        """The solver class of one β (made once per β, importable by name, so that
        its instances pickle by reference like any other solver's)."""
        return _class_for(float(beta))

    @classmethod
    def check_stats(cls, stats: dict) -> None:
        from ..io import InputError

        if cls.beta <= 0 and stats["min"] == 0:
            raise InputError(f"V contains zeros and beta_loss={cls.loss_name!r}. {ZEROS_REFUSED}")

    # -- the pass ---------------------------------------------------------------
    def start(
        self, H: np.ndarray, loss_unknown: bool = False, t: int = 0, carry: dict | None = None
    ) -> tuple:
        return (H,)

    def block_step(self, V: Any, W: np.ndarray, state: tuple, with_loss: bool) -> tuple:
        V = kernels.as_block(V)
        H = state[0]
        k, n = H.shape
        W_new = np.empty_like(W)
        A, B = np.zeros((k, n), W.dtype), np.zeros((k, n), W.dtype)
        terms: dict = {}
        # Four m_s x n temporaries per sub-block (Λ, its two powers, V ∘ Λ^(β-2)).
        row_bytes = max(kernels._row_bytes(V), n * W.dtype.itemsize)
        partial = kernels._partial_bytes(H)
        for rows in kernels._sub_blocks(V.shape[0], 4 * row_bytes, partial_bytes=partial):
            Vs = V[rows]
            Wn, sub_terms = w_update(
                Vs, W[rows], H, self.beta, self.reg.l1_W, self.reg.l2_W, with_loss
            )
            _add(terms, sub_terms)
            W_new[rows] = Wn
            a, b = h_sums(Vs, Wn, H, self.beta)
            A += a
            B += b
        partials = {"A": A, "B": B, **kernels._w_terms(W_new, W if with_loss else None)}
        if with_loss:
            partials.update(self._zero_terms() if not terms else terms)
        return W_new, partials

    def next_state(self, state: tuple, sums: dict) -> tuple:
        H = state[0]
        H_new = _apply(
            H, sums["A"].copy(), sums["B"].copy(), self.reg.l1_H, self.reg.l2_H, gamma(self.beta)
        )
        if self.beta <= 1:
            H_new[H_new < ZERO_BELOW] = 0.0
        return (H_new,)

    def pass_report(self, state: tuple, state_next: tuple, sums: dict, with_loss: bool):
        H, H_next = state[0], state_next[0]
        before = penalty_before = math.nan
        if with_loss:
            before = divergence(sums, self.beta)
            penalty_before = self.reg.penalty(sums["w0_sum"], sums["w0_sq"], H)
        return PassReport(
            before,
            math.nan,
            penalty_before,
            self.reg.penalty(sums["w_sum"], sums["w_sq"], H_next),
            self._problem(before, with_loss, 0.0, H_next),
        )

    # -- outside a pass -----------------------------------------------------------
    def loss_terms(self, V: Any, W: np.ndarray, H: np.ndarray) -> dict:
        V = kernels.as_block(V)
        terms = self._zero_terms()
        row_bytes = max(kernels._row_bytes(V), H.shape[1] * H.dtype.itemsize)
        for rows in kernels._sub_blocks(V.shape[0], 2 * row_bytes):
            _add(terms, loss_terms_of(V[rows], W[rows] @ H, self.beta))
        return terms

    def loss_from_terms(self, sums: dict, H: np.ndarray) -> float:
        return divergence(sums, self.beta)

    def cost_scale(self) -> float:
        # No scale of V bounds the β-divergence; the watch then judges a rise
        # against the starting cost.
        return 0.0

    def _zero_terms(self) -> dict:
        keys = ("div", "logdiv", "count") if self.beta == 0 else ("vb", "vl", "lb")
        return dict.fromkeys(keys, 0.0)

    # -- transform ----------------------------------------------------------------
    def _fixed_H(self, V: Any, H: np.ndarray) -> None:
        return None  # Λ changes with W: nothing to reuse

    def _w_step(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: Any) -> np.ndarray:
        W_new = np.empty_like(W)
        row_bytes = max(kernels._row_bytes(V), H.shape[1] * H.dtype.itemsize)
        for rows in kernels._sub_blocks(V.shape[0], 4 * row_bytes):
            W_new[rows] = w_update(V[rows], W[rows], H, self.beta, self.reg.l1_W, self.reg.l2_W)[0]
        return W_new

    def _block_error(self, V: Any, W: np.ndarray, H: np.ndarray, fixed: Any) -> float:
        return float(np.sqrt(2 * divergence(self.loss_terms(V, W, H), self.beta)))


def _class_name(beta: float) -> str:
    """``BetaMU_<the float's 16 hex digits>``: an identifier that encodes β exactly."""
    return "BetaMU_" + struct.pack(">d", beta).hex()


@cache
def _class_for(beta: float) -> type[BetaDivergenceMU]:
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite; got {beta}")
    name = _class_name(beta)
    loss_name = "itakura-saito" if beta == 0 else beta
    cls = type(name, (BetaDivergenceMU,), {"beta": beta, "loss_name": loss_name})
    cls.__module__, cls.__qualname__ = __name__, name
    cls.__doc__ = f"MU for the β-divergence with β = {beta:g}."
    return cls


def __getattr__(name: str) -> Any:
    """``BetaMU_<hex>`` classes on demand, for unpickling in another process."""
    if name.startswith("BetaMU_") and len(name) == 23:
        try:
            (beta,) = struct.unpack(">d", bytes.fromhex(name[7:]))
        except ValueError:
            pass
        else:
            return _class_for(beta)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
