"""dask_nmf: out-of-core non-negative matrix factorization on dask.

Lee & Seung's multiplicative updates for the Frobenius and generalized
Kullback-Leibler costs, one pass over V per iteration, on a dask cluster.
"""

__version__ = "0.1.0"

from .cluster import ClusterError
from .driver import factorize
from .io import InputError
from .loop import FitError
from .persistence import NMFResult, load
from .projection import transform
from .rank import RankSelection, select_rank

__all__ = [
    "factorize",
    "select_rank",
    "RankSelection",
    "transform",
    "load",
    "NMFResult",
    "InputError",
    "ClusterError",
    "FitError",
    "NMF",
    "__version__",
]


def __getattr__(name):
    # The estimator imports scikit-learn's base classes; load it on first use.
    if name == "NMF":
        from .estimator import NMF

        return NMF
    raise AttributeError(name)
