"""What V is once opened (:class:`InputMatrix`), the error for unusable input, and the
checks of V's statistics and of given factors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import zarr

from .. import kernels

if TYPE_CHECKING:
    from .csr import ZarrCSR


class InputError(ValueError):
    """V (or an option describing it) cannot be used; the message says why."""


#: Errors that codecs (numcodecs, zarr's pipeline) raise for bytes they cannot decode.
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError)


@dataclass
class InputMatrix:
    """V split into row blocks.

    Attributes
    ----------
    shape, dtype
        Shape of V and the floating dtype the factorization runs in.
    bounds
        ``(start, stop)`` of each row block.
    array
        V as a dask array chunked by exactly these row blocks (for dask and zarr
        input), or ``None`` for an in-memory V.
    local
        V itself when it was given in memory: a NumPy array or a SciPy CSR matrix.
    sparse
        Whether V's blocks are sparse (CSR); the kernels then never densify them.
    zarr
        The zarr store V is read from, when it is one (a dense ``zarr.Array`` or
        a :class:`ZarrCSR`): the solver then reads each block inside the task
        that updates it (:func:`read_rows_into`).
    source
        A description of where V came from (path, chunks), kept with results.
    labels
        For xarray input: the sample and feature dimensions and coordinates,
        with which results are labelled (see :func:`label_results`).
    """

    shape: tuple[int, int]
    dtype: np.dtype
    bounds: list[tuple[int, int]]
    array: da.Array | None = None
    local: Any = None
    source: dict = field(default_factory=dict)
    labels: dict | None = None
    sparse: bool = False
    stored_bytes: int | None = None
    zarr: zarr.Array | ZarrCSR | None = None

    @property
    def block_rows(self) -> int:
        return self.bounds[0][1] - self.bounds[0][0]

    @property
    def nbytes(self) -> int:
        """Bytes of V in memory (values and indices for sparse V, when known)."""
        if self.stored_bytes is not None:
            return self.stored_bytes
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _float_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        # (scikit-learn's phrase for complex data, which its checks and users match.)
        phrase = "Complex data not supported. " if dtype.kind == "c" else ""
        raise InputError(f"{phrase}V has dtype {dtype}; NMF needs real numbers (float or integer)")
    # Like scikit-learn: float32 stays float32, everything else becomes float64.
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def _as_dtype(dtype: Any) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise InputError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from None


def check_stats(
    stats: dict,
    name: str = "V",
    *,
    dtype: Any = None,
    shape: tuple[int, int] | None = None,
    k: int = 1,
) -> None:
    """Raise :class:`InputError` if the statistics show NaN/inf or negative values.

    Given the ``dtype`` the fit computes in and V's ``shape`` (and the rank
    ``k``), also refuse a V that is all zeros or whose scale the dtype's
    arithmetic cannot carry: the updates form products of about
    ``max(V)^1.5`` and sums of ``max(V)^2`` over a row or column (norms, the
    NNDSVD's SVD), which must neither overflow nor underflow (V ~ 1e300 in float64, V ~ 2**64 in
    float32; V ~ 1e-300 gives W = H = 0).
    """
    if not stats["finite"]:
        # (The second sentences are scikit-learn's phrases, which users match.)
        if "observed" in stats:  # missing entries are allowed: what is left is inf
            raise InputError(
                f"{name} contains infinite values; NMF needs finite observed entries (NaN "
                f"and the fill value are the missing ones). Input {name} contains infinity."
            )
        hint = (
            " For missing values, pass missing='nan' (or a fill value, or a boolean mask) "
            "to fit the observed entries only."
            if name == "V"
            else ""
        )
        raise InputError(
            f"{name} contains NaN or infinite values; NMF needs finite entries.{hint} "
            f"Input {name} contains NaN or infinity."
        )
    if stats.get("observed", 1) == 0:
        raise InputError(f"{name} has no observed entry: every entry is missing")
    if stats["min"] < 0:
        raise InputError(
            f"{name} contains negative values (minimum {stats['min']:.6g}); NMF needs V >= 0. "
            f"Negative values in data passed to NMF (input {name})."
        )
    if dtype is None or shape is None:
        return
    info = np.finfo(dtype)
    vmax = float(stats.get("max", math.nan))
    if stats["sum"] == 0 or vmax == 0:
        raise InputError(f"{name} is all zeros; there is nothing to factorize")
    rescale = f"rescale {name} (e.g. divide it by its maximum, {vmax:.3g})"
    too_large = (
        not math.isfinite(stats["sum"])
        or not math.isfinite(stats["sumsq"])
        or vmax * vmax * max(shape) * k >= float(info.max) / 16
    )
    if too_large:
        raise InputError(
            f"{name}'s values (up to {vmax:.3g}) are too large for {np.dtype(dtype).name} "
            f"arithmetic: sums of their squares overflow; {rescale}"
        )
    if vmax * vmax <= float(info.tiny) / float(info.eps):  # squares (norms, SVD) underflow
        raise InputError(
            f"{name}'s values (at most {vmax:.3g}) are too small for {np.dtype(dtype).name} "
            f"arithmetic: the products of the updates underflow to zero; {rescale}"
        )


def check_factor(X: Any, shape: tuple[int, int], name: str) -> Any:
    """Validate a user-supplied initial factor (shape, finiteness, sign)."""
    if X is None:
        raise InputError(f"init='custom' needs {name}")
    if not isinstance(X, da.Array):
        X = np.asarray(X)
    if X.ndim != 2 or tuple(X.shape) != tuple(shape):
        raise InputError(f"{name} has shape {tuple(X.shape)}; expected {tuple(shape)}")
    if np.dtype(X.dtype).kind not in "biuf":
        raise InputError(f"{name} has dtype {X.dtype}; expected real numbers")
    stats = kernels.block_stats(X) if isinstance(X, np.ndarray) else dask.compute(_dask_stats(X))[0]
    check_stats(stats, name)
    if stats["sum"] == 0:
        raise InputError(f"{name} is all zeros; multiplicative updates cannot move from zero")
    return X


def _dask_stats(X: da.Array):
    blocks = X.to_delayed().ravel()
    parts = [dask.delayed(kernels.block_stats)(b) for b in blocks]
    return dask.delayed(kernels.merge_all_stats)(parts)
