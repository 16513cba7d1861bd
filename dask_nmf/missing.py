"""The ``missing=`` option: which entries of V are missing, and V as the fit reads it.

- ``None`` (the default): every entry is observed; NaN is refused.
- ``"nan"``: NaN entries are missing (xarray's ``.where`` gives them).
- a number: entries equal to it (a fill value such as -9999) are missing, NaN too.
- a boolean array of V's shape (NumPy, dask, a zarr array or path; True =
  observed), row-chunked like V: V is read as NaN where the mask is False.
  In :class:`~dask_nmf.options.FitOptions` this is recorded as ``"mask"``.

The mask of each block is made inside the block task from the block itself
(:func:`dask_nmf.kernels_masked.mask`), so nothing of V's size besides V travels.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import dask.array as da
import numpy as np

from . import kernels, kernels_masked
from .io import InputError, InputMatrix

#: ``FitOptions.missing`` when the missing entries are given by a mask array.
MASK = "mask"


def is_mask_array(missing: Any) -> bool:
    """Whether ``missing`` is a mask (an array, a zarr array or a path), not an option value."""
    if missing is None or isinstance(missing, (bool, int, float, np.number)):
        return False
    if isinstance(missing, str):
        return missing.lower() not in ("nan", MASK)
    return isinstance(missing, (os.PathLike, np.ndarray, da.Array)) or hasattr(missing, "shape")


def split_missing(missing: Any) -> tuple[Any, Any]:
    """``(the option's value, the mask array or None)`` of a ``missing=`` argument."""
    if is_mask_array(missing):
        return MASK, missing
    return missing, None


def check_missing(missing: Any) -> Any:
    """The option's value, or :class:`InputError` naming what is accepted."""
    if isinstance(missing, str) and missing.lower() == "nan":
        return "nan"
    if missing is None or (isinstance(missing, str) and missing in ("nan", MASK)):
        return missing
    is_number = isinstance(missing, (int, float, np.number)) and not isinstance(missing, bool)
    if is_number and math.isfinite(float(missing)):
        return float(missing)
    if is_number and math.isnan(float(missing)):
        return "nan"
    raise InputError(
        f"missing must be None, 'nan', a finite fill value or a boolean mask array of V's "
        f"shape; got {missing!r}"
    )


def fill_value(missing: Any) -> float | None:
    """The fill value marking missing entries, or None (NaN marks them)."""
    return None if missing is None or isinstance(missing, str) else float(missing)


def stats_function(missing: Any):
    """The per-block statistics of the validation pass for this ``missing``."""
    if missing is None:
        return kernels.block_stats
    return partial(kernels_masked.block_stats, fill=fill_value(missing))


#: Why sparse V and missing= do not go together.
SPARSE_REFUSAL = (
    "missing= is not supported for sparse V: the weighted updates would densify "
    "every block (implicit zeros are observed zeros); store the data densely, "
    "with NaN for the missing entries"
)


def check_input(Vin: InputMatrix, missing: Any) -> None:
    """Refuse inputs whose missing entries the masked kernels cannot take."""
    if missing is not None and Vin.sparse:
        raise InputError(SPARSE_REFUSAL)


def column_means(stats: dict) -> np.ndarray | None:
    """The mean of each column's observed entries (0 where none is), or None."""
    if "col_sum" not in stats:
        return None
    counts = np.asarray(stats["col_count"], np.float64)
    return np.asarray(stats["col_sum"], np.float64) / np.maximum(counts, 1.0)


def masked_input(
    V: Any,
    missing: Any,
    mask: Any,
    storage_options: dict | None = None,
    array: str | None = None,
) -> tuple[Any, bool]:
    """``(V as the fit reads it, whether it was masked)``: with NaN where a mask
    array says missing (``missing="mask"``); ``array`` names V in a zarr group
    (the masked V is then that array, opened without ``array=``)."""
    if missing == MASK:
        if mask is None:
            raise InputError("missing='mask' needs the mask: pass the boolean array as missing=")
        return apply_mask(V, mask, storage_options, array), True
    return V, False


def apply_mask(
    V: Any, mask: Any, storage_options: dict | None = None, array: str | None = None
) -> Any:
    """V with NaN where ``mask`` is False: a NumPy array for NumPy V and mask,
    else a lazy dask array chunked like V (each block masked where it is read)."""
    from .io import open_zarr_array

    def as_array(X: Any, name: str, array: str | None = None) -> Any:
        if isinstance(X, (str, os.PathLike)):
            X = open_zarr_array(X, array, storage_options)
        if hasattr(X, "dims") or hasattr(X, "data_vars"):
            raise InputError(
                f"{name}: a mask with xarray input is not supported; use V.where(mask)"
            )
        if hasattr(X, "nnz") or hasattr(X, "to_scipy_sparse"):
            raise InputError(SPARSE_REFUSAL)
        return X

    V, mask = as_array(V, "V", array), as_array(mask, "missing")
    if tuple(mask.shape) != tuple(V.shape):
        raise InputError(f"the mask has shape {tuple(mask.shape)}; V has {tuple(V.shape)}")
    if np.dtype(mask.dtype) != np.bool_:
        raise InputError(f"the mask must be boolean (True = observed); it has dtype {mask.dtype}")
    dtype = np.float32 if np.dtype(V.dtype) == np.float32 else np.float64
    if isinstance(V, np.ndarray) and isinstance(mask, np.ndarray):
        return np.where(mask, V, np.nan).astype(dtype, copy=False)
    Vd = V if isinstance(V, da.Array) else da.from_array(V, chunks=(_row_chunk(V), -1))
    Md = mask if isinstance(mask, da.Array) else da.from_array(mask, chunks=Vd.chunks)
    return da.where(Md.rechunk(Vd.chunks), Vd.astype(dtype), np.nan)


def _row_chunk(V: Any) -> Any:
    chunks = getattr(V, "chunks", None)
    return chunks[0] if chunks and isinstance(chunks[0], int) else "auto"
