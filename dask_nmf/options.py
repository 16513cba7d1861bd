"""Checks of the fit's options (all made before any data is read) and
scikit-learn's scaling of the regularization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .io import (
    InputError,
)


# --------------------------------------------------------------------------
# Parameter checks (all before any data is read)
# --------------------------------------------------------------------------
def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_params(
    n_components: Any,
    max_iter: Any,
    tol: Any,
    alpha_W: Any,
    alpha_H: Any,
    l1_ratio: Any,
    n_features: int | None = None,
) -> None:
    """Raise :class:`InputError` naming the first bad option."""
    if not is_int(n_components) or n_components < 1:
        raise InputError(f"n_components must be a positive integer; got {n_components!r}")
    if not is_int(max_iter) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer; got {max_iter!r}")
    # (NaN fails every comparison; inf would turn the factors into NaN or zeros.)
    if not is_real(tol) or not 0 <= tol < math.inf:
        raise InputError(f"tol must be a finite number >= 0; got {tol!r}")
    if not is_real(alpha_W) or not 0 <= alpha_W < math.inf:
        raise InputError(f"alpha_W must be a finite number >= 0; got {alpha_W!r}")
    if not (alpha_H == "same" or (is_real(alpha_H) and 0 <= alpha_H < math.inf)):
        raise InputError(f"alpha_H must be 'same' or a finite number >= 0; got {alpha_H!r}")
    if not is_real(l1_ratio) or not 0 <= l1_ratio <= 1:
        raise InputError(f"l1_ratio must be a number in [0, 1]; got {l1_ratio!r}")


def regularization(
    shape: tuple[int, int], alpha_W: float, alpha_H: Any, l1_ratio: float
) -> tuple[float, float, float, float]:
    """scikit-learn's scaling: ``(l1_W, l2_W, l1_H, l2_H)``.

    The W terms are scaled by n (features), the H terms by m (samples).
    """
    m, n = shape
    alpha_H = alpha_W if alpha_H == "same" else alpha_H
    return (
        n * alpha_W * l1_ratio,
        n * alpha_W * (1.0 - l1_ratio),
        m * alpha_H * l1_ratio,
        m * alpha_H * (1.0 - l1_ratio),
    )
