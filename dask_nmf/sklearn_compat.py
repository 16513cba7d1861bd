"""scikit-learn's conventions for the estimator's input: its error classes (ours
and theirs at once), which inputs go through its validation helpers, and the
checks of custom factors with its wording."""

from __future__ import annotations

import os
import sys
from typing import Any

import dask.array as da
import numpy as np
from sklearn.utils._param_validation import (
    InvalidParameterError,
)
from sklearn.utils.validation import (
    check_array,
    check_non_negative,
)

from .io import InputError
from .options import is_int


class ParameterError(InputError, InvalidParameterError):
    """A bad parameter of :class:`NMF`.

    Its message gives our wording and scikit-learn's; it is caught as
    :class:`dask_nmf.InputError`, ``ValueError`` and scikit-learn's
    ``InvalidParameterError`` alike.
    """


class DtypeError(InputError, TypeError):
    """X, W, H or the fitted ``components_`` disagree on the dtype.

    A ``TypeError``, as scikit-learn raises, and a :class:`dask_nmf.InputError`.
    """


def _library_dirs() -> tuple[str, ...]:
    import sklearn

    here = os.path.dirname(os.path.abspath(__file__))
    return here + os.sep, os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller of this function
    that points at the user's line: the first frame outside dask_nmf and
    scikit-learn (whose ``set_output`` wraps ``fit_transform``), however deep
    inside them the warning is raised."""
    internal = _library_dirs()
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


def is_xarray(X: Any) -> bool:
    return hasattr(X, "dims") and hasattr(X, "data")


def in_memory(X: Any) -> bool:
    """Whether X is an in-memory array (NumPy out then, as scikit-learn expects)."""
    if is_xarray(X):
        X = X.data
    return isinstance(X, np.ndarray) or (
        not isinstance(X, (str, da.Array))
        and not hasattr(X, "chunks")
        and not hasattr(X, "__fspath__")
    )


def sklearn_input(X: Any) -> bool:
    """Whether scikit-learn's own helpers validate X: NumPy, lists, pandas, SciPy sparse.

    Lazy inputs (paths, zarr, dask) keep the solver's one-pass validation, and
    xarray and pydata ``sparse`` go through the solver, which keeps their labels
    or reads their blocks.
    """
    return in_memory(X) and not is_xarray(X) and not hasattr(X, "to_scipy_sparse")


def sk_checked(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call a scikit-learn validation helper; its ValueErrors become InputErrors
    (same message), as every bad input to dask_nmf does."""
    try:
        return fn(*args, **kw)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def custom_factor(A: Any, shape: tuple[Any, Any], name: str) -> Any:
    """Check a starting W or H: 2-D, of ``shape`` (None: any), non-negative, not all zeros.

    In-memory factors go through scikit-learn's ``check_array`` and
    ``check_non_negative``; a dask factor's values are checked by the solver,
    in the same pass as its other statistics.
    """
    if A is None:
        raise InputError(f"init='custom' needs both W and H; {name} is missing")
    if not isinstance(A, da.Array):
        A = sk_checked(check_array, A, input_name=name)
    elif A.ndim != 2:
        raise InputError(f"{name} must be 2-D; got shape {A.shape}")
    want = tuple("k" if s is None else s for s in shape)
    for axis, which in ((0, "first"), (1, "second")):
        if shape[axis] is not None and A.shape[axis] != shape[axis]:
            raise InputError(
                f"{name} has shape {tuple(A.shape)}; expected ({want[0]}, {want[1]}). "
                f"Array with wrong {which} dimension passed to NMF (input {name}). "
                f"Expected {shape[axis]}, but got {A.shape[axis]}."
            )
    if isinstance(A, np.ndarray):
        sk_checked(check_non_negative, A, f"NMF (input {name})")
        if A.max() == 0:
            raise InputError(
                f"{name} is all zeros; multiplicative updates cannot move from zero. "
                f"Array passed to NMF (input {name}) is full of zeros."
            )
    return A


def positive_int_or_none(value: Any, name: str) -> None:
    if value is not None and not (is_int(value) and value >= 1):
        raise InputError(f"{name} must be a positive integer or None; got {value!r}")
