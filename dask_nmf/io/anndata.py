"""AnnData stores (``anndata``'s ``write_zarr``, zarr format 2 or 3): which matrix of the
store is V, and the cell and gene names that label W's rows and H's columns.

An AnnData store is a zarr group whose root has ``encoding-type: anndata``; its
matrices are ``X`` and ``layers/<name>``, dense arrays or sparse groups
(``csr_matrix``, ``csc_matrix``), and its ``obs``/``var`` data frames keep the
row and column names in the array their ``_index`` attribute names.  Only
metadata and the names are read here, never V's values.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .matrix import InputError

#: AnnData's name for its axes: W's rows are observations, H's columns variables.
SAMPLE_DIM, FEATURE_DIM = "obs", "var"


def is_anndata(node: Any) -> bool:
    """Whether a zarr group is the root of an AnnData store."""
    return isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "anndata"


def anndata_matrix(root: zarr.Group, path: Any, array: str | None) -> str:
    """The name of V inside an AnnData store: ``array``, else ``X``.

    Raises :class:`InputError` naming what the store holds when neither is a
    matrix of it (an AnnData store written with ``X=None``, a misspelt layer),
    and with how to convert a CSC matrix, whose rows cannot be read in blocks.
    """
    layers = sorted(root["layers"].keys()) if isinstance(root.get("layers"), zarr.Group) else []
    choices = (["X"] if "X" in root else []) + [f"layers/{name}" for name in layers]
    name = "X" if array is None else array.strip("/")
    if name not in root:
        if array is None:
            raise InputError(
                f"the AnnData store {path!r} has no X; say which matrix to use with "
                f"array= (--array): it has {choices or 'no matrices'}"
            )
        raise InputError(f"the AnnData store {path!r} has no {name!r}; its matrices are {choices}")
    node = root[name]
    if isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "csc_matrix":
        raise InputError(
            f"{name!r} in the AnnData store {path!r} is a csc_matrix (stored by columns): "
            "its rows cannot be read in blocks. Store it by rows once, e.g. "
            f"adata = anndata.read_zarr({str(path)!r}); adata.{_attribute(name)} = "
            f"adata.{_attribute(name)}.tocsr(); adata.write_zarr(...)"
        )
    return name


def _attribute(name: str) -> str:
    """The AnnData attribute holding the matrix stored at ``name`` (for messages)."""
    if name.startswith("layers/"):
        return f"layers[{name.split('/', 1)[1]!r}]"
    return name.replace("/", ".")


def anndata_labels(root: zarr.Group, name: str, shape: tuple[int, int]) -> dict | None:
    """Labels for W and H from ``obs_names`` and ``var_names``, as xarray input has.

    For ``X`` and ``layers/*`` (whose rows and columns are the store's obs and
    var); None for other matrices, for names that do not match V's shape, and
    without xarray (the labelled results are DataArrays).
    """
    if not (name == "X" or name.startswith("layers/")):
        return None
    if importlib.util.find_spec("xarray") is None:
        return None
    obs, var = _index(root, SAMPLE_DIM), _index(root, FEATURE_DIM)
    if obs is None or var is None or (len(obs), len(var)) != tuple(shape):
        return None
    return {
        "sample_dim": SAMPLE_DIM,
        "feature_dim": FEATURE_DIM,
        "sample_coords": {SAMPLE_DIM: obs},
        "feature_coords": {FEATURE_DIM: var},
        "feature_index": pd.Index(var, name=FEATURE_DIM),
        "describe": {"anndata": name},
    }


def _index(root: zarr.Group, frame: str) -> np.ndarray | None:
    """The index (names) of AnnData's ``obs`` or ``var`` data frame, or None."""
    df = root.get(frame)
    if not isinstance(df, zarr.Group):
        return None
    index = df.get(str(df.attrs.get("_index", "_index")))
    if not isinstance(index, zarr.Array) or index.ndim != 1:
        return None  # (an encoded column, e.g. categorical: not labels we can use)
    return np.asarray(index[...]).astype(object)
