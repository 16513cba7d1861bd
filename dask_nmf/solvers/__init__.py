"""The algorithms: one module per solver and cost, all on one engine.

Each implements :class:`~dask_nmf.solvers.base.Solver`; :func:`solver_class`
finds one by ``solver`` and ``beta_loss``.  A new solver is a new module here
and one entry in :data:`SOLVERS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .anls import AlternatingNNLS
from .base import PassReport, Regularization, Solver
from .cd import CoordinateDescent
from .masked_mu import MaskedFrobeniusMU, MaskedKullbackLeiblerMU
from .mu_beta import BetaDivergenceMU
from .mu_frobenius import FrobeniusMU
from .mu_kl import KullbackLeiblerMU

#: Key of :data:`SOLVERS` for a class that takes any beta without its own entry
#: (it has ``for_beta(beta)``, which gives the class of that beta).
ANY_BETA = None

#: ``(solver, beta)`` -> the class; ``(solver, ANY_BETA)`` for the general one.
SOLVERS: dict[tuple[str, float | None], type[Solver]] = {
    (FrobeniusMU.name, FrobeniusMU.beta): FrobeniusMU,
    (KullbackLeiblerMU.name, KullbackLeiblerMU.beta): KullbackLeiblerMU,
    (BetaDivergenceMU.name, ANY_BETA): BetaDivergenceMU,
    (CoordinateDescent.name, CoordinateDescent.beta): CoordinateDescent,
    (AlternatingNNLS.name, AlternatingNNLS.beta): AlternatingNNLS,
}
#: The solvers for V with missing entries, keyed as :data:`SOLVERS`.
MASKED_SOLVERS: dict[tuple[str, float | None], type[Solver]] = {
    (MaskedFrobeniusMU.name, MaskedFrobeniusMU.beta): MaskedFrobeniusMU,
    (MaskedKullbackLeiblerMU.name, MaskedKullbackLeiblerMU.beta): MaskedKullbackLeiblerMU,
}
#: Accepted spellings of the costs, mapped to the beta of the beta-divergence.
BETA_LOSSES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}

__all__ = [
    "ANY_BETA",
    "AlternatingNNLS",
    "BETA_LOSSES",
    "MASKED_SOLVERS",
    "MaskedFrobeniusMU",
    "MaskedKullbackLeiblerMU",
    "SOLVERS",
    "BetaDivergenceMU",
    "PassReport",
    "Regularization",
    "Solver",
    "CoordinateDescent",
    "FrobeniusMU",
    "KullbackLeiblerMU",
    "beta_of",
    "masked_solver_class",
    "solver_class",
]


def beta_of(beta_loss: Any) -> float:
    """The beta of a ``beta_loss`` value (a name or a number), or :class:`InputError`."""
    from ..io import InputError

    if isinstance(beta_loss, str) and beta_loss in BETA_LOSSES:
        return BETA_LOSSES[beta_loss]
    if isinstance(beta_loss, (int, float, np.number)) and not isinstance(beta_loss, bool):
        if math.isfinite(float(beta_loss)):
            return float(beta_loss)
    names = ", ".join(f"{name!r} ({beta:g})" for name, beta in BETA_LOSSES.items())
    raise InputError(f"unknown beta_loss {beta_loss!r}; choose {names} or any finite number")


def solver_class(beta_loss: Any, solver: str = "mu") -> type[Solver]:
    """The :class:`Solver` for ``solver`` and ``beta_loss``, or :class:`InputError`."""
    from ..io import InputError

    beta = beta_of(beta_loss)
    # A class of its own for this beta (faster, specialized), else the solver's
    # general one made for this beta.
    if (solver, beta) in SOLVERS:
        return SOLVERS[(solver, beta)]
    if (solver, ANY_BETA) in SOLVERS:
        return SOLVERS[(solver, ANY_BETA)].for_beta(beta)
    costs = [name for name, b in BETA_LOSSES.items() if (solver, b) in SOLVERS]
    if costs:  # a known solver, for other costs only (scikit-learn's wording first)
        raise InputError(
            f"Invalid beta_loss parameter: solver {solver!r} does not handle "
            f"beta_loss = {beta_loss!r}; it minimizes {' or '.join(costs)} only "
            f"(solver='mu' handles every beta_loss)"
        )
    known = sorted({name for name, _ in SOLVERS})
    raise InputError(
        f"unknown solver {solver!r} for beta_loss={beta_loss!r}; choose one of {known}"
    )


def masked_solver_class(beta_loss: Any, solver: str = "mu") -> type[Solver]:
    """The :class:`Solver` fitting only the observed entries, or :class:`InputError`
    saying which combinations have one."""
    from ..io import InputError

    beta = beta_of(beta_loss)
    if (solver, beta) in MASKED_SOLVERS:
        return MASKED_SOLVERS[(solver, beta)]
    # (an unknown solver or cost: its own message first)
    why = solver_class(beta_loss, solver).no_missing_values
    raise InputError(
        f"missing values are not supported with solver={solver!r}, beta_loss={beta_loss!r}: "
        f"{why}; use solver='mu' with beta_loss='frobenius' or 'kullback-leibler'"
    )
