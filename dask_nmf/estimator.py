"""``dask_nmf.NMF``: a scikit-learn estimator over the out-of-core solver."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import (
    check_is_fitted,
    check_non_negative,
    validate_data,
)

from . import driver, projection
from .cluster import Runner, resolve_client
from .io import InputError, default_feature_dims, feature_dims_of
from .options import INITS, FitOptions, ReadOptions
from .persistence import load
from .sklearn_compat import (
    DtypeError,
    ParameterError,
    custom_factor,
    in_memory,
    positive_int_or_none,
    sk_checked,
    sklearn_input,
    user_stacklevel,
)
from .solvers import SOLVERS


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization by multiplicative updates, on dask.

    Finds non-negative W (m x k) and H (k x n) with X ~= W H, minimizing
    ``0.5 * ||X - WH||^2`` or the generalized KL divergence, with the same
    update rules, guards, regularization and stopping rule as scikit-learn's
    ``NMF(solver="mu")``; X may be larger than memory (a zarr store, a dask
    array).  NumPy in gives NumPy out; dask, zarr or a path in gives a lazy
    dask array out.

    It behaves as scikit-learn's ``NMF(solver="mu")`` does: the same parameter
    checks (raising scikit-learn's ``InvalidParameterError``, a ``ValueError``),
    the same dtype rules (float32 stays float32, anything else becomes
    float64; custom W and H, and X given to :meth:`transform`, must have the
    dtype the model computes in, or a ``TypeError`` is raised), the same
    warnings, ``n_features_in_`` and ``feature_names_in_`` checks and
    estimator tags.  In-memory X (NumPy, lists, pandas, SciPy sparse) is
    validated by scikit-learn's own helpers.

    Parameters
    ----------
    n_components : int, "auto" or None, default="auto"
        Rank k.  None means n_features; "auto" takes it from H given to
        ``fit_transform`` with ``init="custom"``, else n_features.
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}, default=None
        As in scikit-learn; "custom" uses the W and H given to ``fit_transform``.
    solver : str, default="mu"
        The algorithm (see :data:`dask_nmf.solvers.SOLVERS`): "mu", Lee & Seung's
        multiplicative updates.  (scikit-learn's default is "cd".)
    beta_loss : {"frobenius", "kullback-leibler", "itakura-saito"} or float, default="frobenius"
        The β-divergence (2, 1, 0 or any real β), as scikit-learn's MU.  For
        β <= 0, X must not contain zeros.
    tol : float, default=1e-4
        Stop when the error's decrease over 10 iterations, relative to the
        initial error, falls below ``tol`` (checked every 10 iterations).
    max_iter : int, default=200
        Maximum number of iterations.
    random_state : int, RandomState or None, default=None
        Seed of the random and ``nndsvdar`` initializations and of the SVD.
    alpha_W, alpha_H, l1_ratio : float, default=0.0, "same", 0.0
        Regularization, scaled as in scikit-learn.
    verbose : int, default=0
        Print the loss every 10 iterations when true.
    block_rows : int, optional
        Rows of X per block; default from dask's ``array.chunk-size``.
    keep_in_memory : bool, optional
        Keep X's decoded blocks in cluster memory between iterations
        (default: when it fits).
    loss_every : int, optional
        KL only: evaluate the loss every ``loss_every`` iterations (default
        10; the others are NaN in ``loss_history_``).  See
        :func:`dask_nmf.factorize`.

    shuffle : bool, default=False
        For solvers that update coordinates in turn: randomize their order.
    accelerate : bool, default=False
        Frobenius MU and cd: Gillis & Glineur's accelerated MU / HALS (several W
        and H updates per pass over X); see :func:`dask_nmf.factorize`.
    missing : None, "nan" or float, default=None
        Fit only X's observed entries: "nan" takes NaN as missing, a number
        takes entries equal to it as missing (Frobenius and KL MU); None
        refuses NaN, as scikit-learn does.  ``transform`` then fits each row's
        observed entries.  See :func:`dask_nmf.factorize`.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
        The rank used.
    reconstruction_err_ : float
        ``||X - WH||_F`` (Frobenius) or ``sqrt(2 * D(X || WH))`` (KL), as scikit-learn.
    n_iter_ : int
        Iterations run.
    stop_reason_ : str
        Why the fit stopped: ``tol`` met at which iteration, or ``max_iter``
        reached with the last value the stopping rule compared with ``tol``.
    loss_history_ : list of float
        The cost at the start and after each iteration (NaN where KL's
        ``loss_every`` skipped it).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of X, when ``fit`` was given a DataFrame with string column names.
    result_ : NMFResult
        The full result of the fit (W as a dask array, the loss history).
    """

    # scikit-learn's constraints for the parameters the two share, and ours
    # for our own.
    _parameter_constraints: dict = {
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            None,
            StrOptions({"auto"}),
        ],
        "init": [StrOptions(set(INITS)), None],
        "solver": [StrOptions({name for name, _ in SOLVERS})],
        "shuffle": ["boolean"],
        "accelerate": ["boolean"],
        "missing": [None, StrOptions({"nan"}), Real],
        "beta_loss": [StrOptions({"frobenius", "kullback-leibler", "itakura-saito"}), Real],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "verbose": ["verbose"],
        "block_rows": [Interval(Integral, 1, None, closed="left"), None],
        "keep_in_memory": ["boolean", None],
        "loss_every": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components: int | str | None = "auto",
        *,
        init: str | None = None,
        solver: str = "mu",
        beta_loss: str | float = "frobenius",
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
        shuffle: bool = False,
        accelerate: bool = False,
        missing: str | float | None = None,
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
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
        self.shuffle = shuffle
        self.accelerate = accelerate
        self.missing = missing

    def _options(self, k: int) -> FitOptions:
        """The fit's options (validated as they are made)."""
        return FitOptions(
            k,
            beta_loss=self.beta_loss,
            solver=self.solver,
            init=self.init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
            alpha_W=self.alpha_W,
            alpha_H=self.alpha_H,
            l1_ratio=self.l1_ratio,
            shuffle=self.shuffle,
            accelerate=self.accelerate,
            loss_every=self.loss_every,
            missing=self.missing,
        )

    def _our_parameter_message(self) -> str | None:
        """The solver's own message for the first bad parameter, or None."""
        k = self.n_components
        try:
            self._options(1 if k is None or (isinstance(k, str) and k == "auto") else k)
            positive_int_or_none(self.block_rows, "block_rows")
            positive_int_or_none(self.loss_every, "loss_every")
        except InputError as exc:
            return str(exc)
        return None

    def _check_parameters(self) -> None:
        """Raise :class:`ParameterError` (our wording, then scikit-learn's) for a bad parameter."""
        theirs = None
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            theirs = str(exc)
        ours = self._our_parameter_message()
        if ours or theirs:
            raise ParameterError(" ".join(m.rstrip(".") + "." for m in (ours, theirs) if m))

    def _validated(self, X: Any, **kw: Any) -> Any:
        """X through scikit-learn's ``validate_data``; NaN allowed where they are
        the missing entries, else refused with the option named."""
        if self.missing is not None:
            kw["ensure_all_finite"] = "allow-nan"
        try:
            return sk_checked(
                validate_data, self, X, accept_sparse=("csr", "csc"),
                dtype=[np.float64, np.float32], **kw,
            )  # fmt: skip
        except InputError as exc:
            if self.missing is None and "NaN" in str(exc):
                raise InputError(
                    f"{exc}\nFor missing values, pass missing='nan' (or a fill value) to fit "
                    "the observed entries only."
                ) from exc
            raise

    def _drop_feature_names(self) -> None:
        # A fit on input without column names forgets those of an earlier fit.
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def fit_transform(
        self,
        X: Any,
        y: Any = None,
        W: Any = None,
        H: Any = None,
        *,
        variable: str | None = None,
        sample_dims: Any = None,
        feature_dims: Any = None,
    ):
        """Learn the factorization of X and return W.

        Parameters
        ----------
        X : array-like, sparse matrix, dask array, zarr array or path of shape (n_samples, n_features)
            The non-negative data.  NumPy, lists, DataFrames and SciPy sparse
            matrices or arrays are validated by scikit-learn's helpers (float32
            stays float32, other dtypes become float64); lazy inputs are
            validated in one pass over their blocks.
        y : ignored
            Not used, present for API consistency.
        W : array-like of shape (n_samples, n_components), optional
            Starting W when ``init="custom"``, of X's (converted) dtype.
        H : array-like of shape (n_components, n_features), optional
            Starting H when ``init="custom"``, of X's (converted) dtype.
        variable, sample_dims, feature_dims : optional
            For xarray X (an N-d DataArray, a Dataset): the variable, and the
            dimensions stacked into samples and features, as in
            :func:`dask_nmf.factorize`.

        Returns
        -------
        W : ndarray (in-memory X), xarray.DataArray (xarray X) or dask.array.Array (otherwise)
            The transformed data, of shape (n_samples, n_components).

        Raises
        ------
        ParameterError
            For a bad parameter (also scikit-learn's ``InvalidParameterError``).
        InputError
            For bad data: negative, NaN, not 2-D, empty, custom W/H of the wrong shape.
        DtypeError
            When custom W or H has another dtype than X (a ``TypeError``).
        """
        self._check_parameters()
        labelled = dict(variable=variable, sample_dims=sample_dims, feature_dims=feature_dims)
        if sklearn_input(X):
            X = self._validated(X)
            if self.missing is None:  # (else checked on the observed entries only)
                sk_checked(check_non_negative, X, "NMF (input X)")
            shape, dtype = X.shape, np.dtype(X.dtype)
        else:
            Vin = driver.input_matrix(X, self.block_rows, **labelled)
            shape, dtype = Vin.shape, Vin.dtype
            self._drop_feature_names()
            self.n_features_in_ = shape[1]
        n_samples, n_features = shape

        custom = self.init == "custom"
        if not custom and (W is not None or H is not None):
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set init='custom' to use "
                "them as initialization.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            W = H = None
        k = self.n_components
        if k is None or (isinstance(k, str) and k == "auto" and not custom):
            k = n_features
        if custom:
            auto = isinstance(k, str)
            H = custom_factor(H, (None if auto else k, n_features), "H")
            W = custom_factor(W, (n_samples, None if auto else k), "W")
            k = int(H.shape[0]) if auto else k
            if W.shape[1] != k:
                raise InputError(
                    f"W has {W.shape[1]} columns but H has {k} rows. Array with wrong second "
                    f"dimension passed to NMF (input W). Expected {k}, but got {W.shape[1]}."
                )
            if H.dtype != dtype or W.dtype != dtype:
                raise DtypeError(
                    f"H and W should have the same dtype as X. Got H.dtype = {H.dtype} and "
                    f"W.dtype = {W.dtype}. (X is factorized in {dtype}; pass W and H as "
                    f"{dtype}, e.g. W.astype('{dtype}'), or X in their dtype.)"
                )
        self._n_components = int(k)  # (scikit-learn's name for the rank in use)
        # Our own checks too (finite alpha and tol), before V is sent anywhere.
        reading = ReadOptions(
            block_rows=self.block_rows, keep_in_memory=self.keep_in_memory, **labelled
        )
        res = driver.fit(
            X, self._options(int(k)), reading, W_init=W, H_init=H, verbose=bool(self.verbose)
        )
        if not res.converged and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to "
                f"improve convergence. ({res.stop_reason})",
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
        self.components_ = np.asarray(res.H)
        self.n_components_ = self.components_.shape[0]
        self.n_iter_ = res.n_iter
        self.reconstruction_err_ = res.reconstruction_err
        self.stop_reason_ = res.stop_reason
        self.loss_history_ = res.loss_history
        self.result_ = res
        return res.W.compute() if in_memory(X) else res.W

    def fit(self, X: Any, y: Any = None, **params: Any) -> NMF:
        """Learn the factorization of X.

        Parameters
        ----------
        X : array-like, sparse matrix, dask array, zarr array or path of shape (n_samples, n_features)
            The non-negative data (see :meth:`fit_transform`).
        y : ignored
            Not used, present for API consistency.
        **params
            ``W`` and ``H`` for ``init="custom"``; ``variable``, ``sample_dims``,
            ``feature_dims`` for xarray X (see :meth:`fit_transform`).

        Returns
        -------
        self : NMF
            The fitted estimator.
        """
        self.fit_transform(X, **params)
        return self

    def transform(
        self,
        X: Any,
        *,
        variable: str | None = None,
        sample_dims: Any = None,
        feature_dims: Any = None,
    ):
        """W for the rows of X with ``components_`` fixed (row-local MU, no reduction).

        Parameters
        ----------
        X : array-like, sparse matrix, dask array, zarr array or path of shape (n_samples, n_features)
            Non-negative data with the features (and column names) seen in
            ``fit``, whose dtype, converted as in ``fit``, is that of ``components_``.
        variable, sample_dims, feature_dims : optional
            For xarray X, as in :meth:`fit_transform`.  After a fit on xarray
            data, ``feature_dims`` defaults to the fit's, and X's feature
            coordinates must equal the fit's.

        Returns
        -------
        W : ndarray (in-memory X), xarray.DataArray (xarray X) or dask.array.Array (otherwise)
            Of shape (n_samples, n_components).

        Raises
        ------
        InputError
            For bad data or another number of features than in ``fit``.
        DtypeError
            When X (converted) and ``components_`` have different dtypes, as
            scikit-learn raises (a ``TypeError``).
        """
        check_is_fitted(self)
        H = self._labelled_components()
        labelled = {}
        if sklearn_input(X):
            X = self._validated(X, reset=False, ensure_non_negative=self.missing is None)
            dtype = np.dtype(X.dtype)
        else:
            feature_dims = default_feature_dims(X, H, variable, sample_dims, feature_dims)
            labelled = dict(variable=variable, sample_dims=sample_dims, feature_dims=feature_dims)
            Vin = driver.input_matrix(X, self.block_rows, **labelled)
            if Vin.shape[1] != self.n_features_in_:
                raise InputError(
                    f"X has {Vin.shape[1]} features, but NMF is expecting "
                    f"{self.n_features_in_} features as input."
                )
            dtype = Vin.dtype
        if dtype != H.dtype:
            raise DtypeError(
                f"H should have the same dtype as X. Got H.dtype = {H.dtype}. (The model was "
                f"fitted in {H.dtype} and X is {dtype}: pass X as {H.dtype}.)"
            )
        W = projection.transform(
            X,
            H,
            beta_loss=self.beta_loss,
            solver=self.solver,
            max_iter=self.max_iter,
            tol=self.tol,
            alpha_W=self.alpha_W,
            l1_ratio=self.l1_ratio,
            block_rows=self.block_rows,
            shuffle=self.shuffle,
            random_state=self.random_state,
            missing=self.missing,
            **labelled,
        )
        if not in_memory(X):
            return W
        with Runner(resolve_client(None)).blas_limits():
            return W.compute()

    def _labelled_components(self):
        """``components_``, with the fit's feature labels where it had some (xarray X)."""
        H = np.asarray(self.components_)
        fitted = getattr(getattr(self, "result_", None), "H", None)
        if feature_dims_of(fitted) is not None and fitted.shape == H.shape:
            return fitted.copy(data=H)
        return H

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
        est.n_components_ = est._n_components = res.H.shape[0]
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
        tags.input_tags.sparse = True  # SciPy sparse: CSR/CSC as they are, others converted
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
