"""Opening V, splitting it into row blocks, reading and validating it.

Whatever the user has -- a zarr path or fsspec URL, a ``zarr.Array``, a dask
array, a NumPy or SciPy sparse array, xarray -- becomes an
:class:`InputMatrix`: the shape, the dtype we compute in, the row blocks, and
one lazily read source per row block.  V is never loaded whole and never
written.

- :mod:`.matrix`: :class:`InputMatrix`, :class:`InputError`, checks of V's statistics
- :mod:`.opening`: :func:`open_input` for every kind of input
- :mod:`.blocks`: block sizing and bounds, blocks as dask arrays or sources
- :mod:`.reader`: reading a zarr store's blocks inside the tasks (fused decoding)
- :mod:`.csr`: CSR stores
- :mod:`.anndata`: AnnData stores (which matrix is V; obs/var names as labels)
- :mod:`.xarray_inputs`: xarray in and labelled results out
"""

from .blocks import (
    MAX_BLOCKS,
    as_dask_array,
    block_sources,
    default_block_rows,
    row_bounds,
    rows_array,
)
from .csr import ZarrCSR, read_csr_rows
from .matrix import InputError, InputMatrix, check_factor, check_stats
from .opening import open_input, open_zarr_array
from .reader import BlockReader, read_rows, read_rows_into, release_read_buffers, zarr_getter
from .xarray_inputs import check_features, default_feature_dims, feature_dims_of, label_results

__all__ = [
    "MAX_BLOCKS",
    "BlockReader",
    "InputError",
    "InputMatrix",
    "ZarrCSR",
    "as_dask_array",
    "block_sources",
    "check_factor",
    "check_features",
    "check_stats",
    "default_block_rows",
    "default_feature_dims",
    "feature_dims_of",
    "label_results",
    "open_input",
    "open_zarr_array",
    "read_csr_rows",
    "read_rows",
    "read_rows_into",
    "release_read_buffers",
    "row_bounds",
    "rows_array",
    "zarr_getter",
]
