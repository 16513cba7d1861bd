"""xarray in and out: a DataArray or Dataset (or a zarr store opened through xarray)
stacked into rows and columns, and results labelled with its coordinates."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from .matrix import InputError


def _is_xarray(V: Any) -> bool:
    return type(V).__module__.startswith("xarray.") and hasattr(V, "dims")


def _open_xarray_zarr(path: Any, storage_options: dict | None):
    try:
        import xarray as xr
    except ImportError as exc:  # pragma: no cover - xarray is in the "xarray" extra
        raise InputError(
            "variable=/sample_dims= need xarray: pip install 'dask_nmf[xarray]'"
        ) from exc
    spath = os.fspath(path)
    if "://" not in spath and not os.path.exists(spath):
        raise InputError(f"no zarr store at {spath!r}: the path does not exist")
    try:
        with warnings.catch_warnings():
            # unconsolidated stores are fine here: we read one variable's metadata
            warnings.simplefilter("ignore", RuntimeWarning)
            return xr.open_zarr(spath, storage_options=storage_options)
    except Exception as exc:
        raise InputError(f"cannot open {spath!r} with xarray: {exc}") from exc


def _dims(x: Any) -> tuple:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def _from_xarray(V: Any, variable, sample_dims, feature_dims):
    """A 2-D (samples x features) array from an xarray object, and its labels."""
    import xarray as xr

    if isinstance(V, xr.Dataset):
        names = list(V.data_vars)
        if variable is None:
            if len(names) != 1:
                raise InputError(f"the Dataset has variables {names}; say which one with variable=")
            variable = names[0]
        if variable not in V.data_vars:
            raise InputError(f"the Dataset has no variable {variable!r} (it has {names})")
        V = V[variable]
    elif variable is not None:
        raise InputError("variable= applies to a Dataset, not a DataArray")
    samples, features = _dims(sample_dims), _dims(feature_dims)
    if not samples and not features:
        if V.ndim != 2:
            raise InputError(
                f"V has dims {V.dims}; say which are samples and which features "
                "(sample_dims=, feature_dims=)"
            )
        samples, features = (V.dims[0],), (V.dims[1],)
    elif not samples:
        samples = tuple(d for d in V.dims if d not in features)
    elif not features:
        features = tuple(d for d in V.dims if d not in samples)
    unknown = [d for d in samples + features if d not in V.dims]
    if unknown:
        raise InputError(f"V has no dimension(s) {unknown}; its dims are {V.dims}")
    if sorted(samples + features) != sorted(V.dims):
        raise InputError(
            f"sample_dims {samples} and feature_dims {features} must split V's dims {V.dims}"
        )
    # A side of one dimension keeps its name and coordinate; several are stacked
    # into "sample" or "feature", a MultiIndex whose levels are those dimensions.
    sdim = samples[0] if len(samples) == 1 else "sample"
    fdim = features[0] if len(features) == 1 else "feature"
    stacks = {d: dims for d, dims in ((sdim, samples), (fdim, features)) if len(dims) > 1}
    V2 = (V.stack(stacks) if stacks else V).transpose(sdim, fdim)
    labels = {
        "sample_dim": sdim,
        "feature_dim": fdim,
        "sample_coords": V2[sdim].coords,
        "feature_coords": V2[fdim].coords,
        "feature_index": V2.indexes.get(fdim),
        "describe": {
            "xarray_name": V.name if isinstance(V.name, str) else None,
            "sample_dims": list(samples),
            "feature_dims": list(features),
        },
    }
    return V2.data, labels


def feature_dims_of(H: Any) -> tuple | None:
    """The dimensions of V that a labelled H's columns stand for, or None.

    H's feature dimension, or the levels of its MultiIndex where several of V's
    dimensions were stacked into it at fit.
    """
    if not _is_xarray(H) or H.ndim != 2:
        return None
    fdim = H.dims[1]
    index = H.indexes.get(fdim)
    names = getattr(index, "names", None)
    return tuple(names) if names is not None and len(names) > 1 else (fdim,)


def default_feature_dims(V: Any, H: Any, variable, sample_dims, feature_dims) -> Any:
    """``feature_dims`` for a transform of xarray V by H: as given, else a labelled H's."""
    if feature_dims is None and sample_dims is None and (_is_xarray(V) or variable is not None):
        return feature_dims_of(H)  # (None for an unlabelled H)
    return feature_dims


def check_features(labels: dict | None, H: Any) -> None:
    """Refuse V whose features are not a labelled H's (names, coordinates, order)."""
    if labels is None or not _is_xarray(H):
        return
    fdim, theirs = labels["feature_dim"], labels.get("feature_index")
    ours = H.indexes.get(H.dims[1])
    if fdim != H.dims[1]:
        raise InputError(
            f"V's features are the dimension(s) {labels['describe'].get('feature_dims', [fdim])} "
            f"but H's "
            f"are {list(feature_dims_of(H))}: pass feature_dims= naming H's"
        )
    if ours is not None and theirs is not None and not ours.equals(theirs):
        raise InputError(
            f"V's {fdim!r} coordinate differs from H's (other values or another order); "
            f"select H's features from V first, e.g. V.sel({fdim}=H[{fdim!r}])"
        )


def label_results(W: Any, H: np.ndarray, labels: dict | None):
    """W and H as xarray DataArrays with V's coordinates (``W.unstack()`` gives maps)."""
    if not labels:
        return W, H
    import xarray as xr

    sdim, fdim = labels["sample_dim"], labels["feature_dim"]
    Wx = xr.DataArray(W, dims=(sdim, "component"), coords=labels["sample_coords"])
    Hx = xr.DataArray(H, dims=("component", fdim), coords=labels["feature_coords"])
    return Wx, Hx
