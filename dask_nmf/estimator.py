"""``dask_nmf.NMF``: a scikit-learn estimator over the out-of-core solver."""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from . import driver
from .cluster import Runner, resolve_client
from .io import InputError
from .persistence import load


def _in_memory(X: Any) -> bool:
    """Whether X is an in-memory array (NumPy out then, as scikit-learn expects)."""
    if hasattr(X, "dims") and hasattr(X, "data"):  # xarray
        X = X.data
    return isinstance(X, np.ndarray) or (
        not isinstance(X, (str, da.Array))
        and not hasattr(X, "chunks")
        and not hasattr(X, "__fspath__")
    )


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization by multiplicative updates, on dask.

    Finds non-negative W (m x k) and H (k x n) with X ~= W H, minimizing
    ``0.5 * ||X - WH||^2`` or the generalized KL divergence, with the same
    update rules, guards, regularization and stopping rule as scikit-learn's
    ``NMF(solver="mu")``; X may be larger than memory (a zarr store, a dask
    array).  NumPy in gives NumPy out; dask, zarr or a path in gives a lazy
    dask array out.

    Parameters
    ----------
    n_components : int, "auto" or None
        Rank k.  None means n_features; "auto" takes it from W or H given to
        ``fit_transform``.
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
        As in scikit-learn; "custom" uses the W and H given to ``fit_transform``.
    beta_loss : {"frobenius", "kullback-leibler", 2, 1}
    tol : float
        Stop when the error's decrease over 10 iterations, relative to the
        initial error, falls below ``tol`` (checked every 10 iterations).
    max_iter : int
    random_state : int, RandomState or None
    alpha_W, alpha_H, l1_ratio : float
        Regularization, scaled as in scikit-learn.
    verbose : int
    block_rows : int, optional
        Rows of X per block; default from dask's ``array.chunk-size``.
    keep_in_memory : bool, optional
        Keep X's decoded blocks in cluster memory between iterations
        (default: when it fits).
    loss_every : int, optional
        KL only: evaluate the loss every ``loss_every`` iterations (default
        10; the others are NaN in ``loss_history_``).  See
        :func:`dask_nmf.factorize`.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
    reconstruction_err_ : float
        ``||X - WH||_F`` (Frobenius) or ``sqrt(2 * D(X || WH))`` (KL), as scikit-learn.
    n_iter_ : int
    loss_history_ : list of float
        The cost at the start and after each iteration (NaN where KL's
        ``loss_every`` skipped it).
    n_features_in_ : int
    result_ : NMFResult
        The full result of the fit (W as a dask array, the loss history).
    """

    def __init__(
        self,
        n_components: int | str | None = None,
        *,
        init: str | None = None,
        beta_loss: str | int = "frobenius",
        tol: float = 1e-4,
        max_iter: int = 200,
        random_state: Any = None,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        verbose: int = 0,
        block_rows: int | None = None,
        keep_in_memory: bool | None = None,
        loss_every: int | None = None,
    ):
        self.n_components = n_components
        self.init = init
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.block_rows = block_rows
        self.keep_in_memory = keep_in_memory
        self.loss_every = loss_every

    def _rank(self, n_features: int, W: Any, H: Any) -> int:
        if self.n_components is None:
            return n_features
        if self.n_components == "auto":
            if H is not None:
                return int(np.shape(H)[0])
            if W is not None:
                return int(np.shape(W)[1])
            return n_features
        return self.n_components

    def fit_transform(self, X: Any, y: Any = None, W: Any = None, H: Any = None):
        """Learn the factorization of X and return W.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path of shape (n_samples, n_features)
        y : ignored
        W, H : array-like, optional
            Starting factors when ``init="custom"``.

        Returns
        -------
        W : ndarray (NumPy X) or dask.array.Array (otherwise)
        """
        init = self.init
        if init != "custom" and (W is not None or H is not None):
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set init='custom' to use them.",
                UserWarning,
                stacklevel=2,
            )
            W = H = None
        Vin = driver.input_matrix(X, self.block_rows)
        k = self._rank(Vin.shape[1], W, H)
        # The options are checked before V is validated or sent anywhere.
        driver.check_params(k, self.max_iter, self.tol, self.alpha_W, self.alpha_H, self.l1_ratio)
        res = driver.factorize(
            X,
            k,
            beta_loss=self.beta_loss,
            init=init,
            W_init=W,
            H_init=H,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
            alpha_W=self.alpha_W,
            alpha_H=self.alpha_H,
            l1_ratio=self.l1_ratio,
            block_rows=self.block_rows,
            verbose=bool(self.verbose),
            keep_in_memory=self.keep_in_memory,
            loss_every=self.loss_every,
        )
        if not res.converged and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to "
                "improve convergence.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.components_ = np.asarray(res.H)
        self.n_components_ = self.components_.shape[0]
        self.n_iter_ = res.n_iter
        self.reconstruction_err_ = res.reconstruction_err
        self.loss_history_ = res.loss_history
        self.n_features_in_ = Vin.shape[1]
        self.result_ = res
        return res.W.compute() if _in_memory(X) else res.W

    def fit(self, X: Any, y: Any = None, **params):
        """Learn the factorization of X.

        Returns
        -------
        self
        """
        self.fit_transform(X, **params)
        return self

    def transform(self, X: Any):
        """W for the rows of X with ``components_`` fixed (row-local MU, no reduction).

        Returns
        -------
        W : ndarray (NumPy X) or dask.array.Array (otherwise)
        """
        check_is_fitted(self)
        W = driver.transform(
            X,
            self.components_,
            beta_loss=self.beta_loss,
            max_iter=self.max_iter,
            tol=self.tol,
            alpha_W=self.alpha_W,
            l1_ratio=self.l1_ratio,
            block_rows=self.block_rows,
        )
        if not _in_memory(X):
            return W
        with Runner(resolve_client(None)).blas_limits():
            return W.compute()

    def inverse_transform(self, X: Any):
        """``X @ components_``: data back from W.

        Parameters
        ----------
        X : ndarray or dask array of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        if isinstance(X, da.Array):
            return X @ self.components_
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_components_:
            raise InputError(f"W has shape {X.shape}; expected (n_samples, {self.n_components_})")
        return X @ self.components_

    def save(self, path: Any, *, overwrite: bool = False, storage_options: dict | None = None):
        """Write the fitted model (W of the training data, H, parameters) to a zarr group.

        The group has the layout of :mod:`dask_nmf.persistence`, so the
        ``dask-nmf`` command (``info``, ``transform --model``) reads it too.
        """
        check_is_fitted(self)
        self.result_.params = dict(self.result_.params, estimator=self.get_params())
        self.result_.to_zarr(path, overwrite=overwrite, storage_options=storage_options)

    @classmethod
    def load(cls, path: Any, storage_options: dict | None = None) -> NMF:
        """An estimator with ``components_`` and parameters from a saved model or a
        ``dask-nmf fit`` result."""
        res = load(path, storage_options)
        params = dict(res.params.get("estimator", {}))
        if not params:
            keys = ("beta_loss", "max_iter", "tol", "alpha_W", "alpha_H", "l1_ratio")
            params = {k: res.params[k] for k in keys if k in res.params}
            params["n_components"] = int(res.H.shape[0])
        est = cls(**params)
        est.components_ = res.H
        est.n_components_ = res.H.shape[0]
        est.n_features_in_ = res.H.shape[1]
        est.n_iter_ = res.n_iter
        est.reconstruction_err_ = res.reconstruction_err
        est.loss_history_ = res.loss_history
        est.result_ = res
        return est

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
