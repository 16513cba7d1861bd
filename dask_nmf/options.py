"""The fit's options: one :class:`FitOptions`, validated once when it is made
(before any cluster starts or any data is read), used alike by
:func:`dask_nmf.factorize`, the estimator and the command line; and
scikit-learn's scaling of the regularization."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .io import InputError
from .missing import check_missing, fill_value
from .solvers import Regularization, Solver, masked_solver_class, solver_class


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


#: Initializations by name (``custom`` takes W and H given by the caller).
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")


@dataclass(frozen=True)
class FitOptions:
    """What to fit: the algorithm and its settings, independent of V and of where it runs.

    Making one checks every value (:class:`InputError` naming the first bad
    one); the rest of the package takes them as valid.  See
    :func:`dask_nmf.factorize` for what each means.
    """

    n_components: int
    beta_loss: Any = "frobenius"
    solver: str = "mu"
    init: str | None = None
    max_iter: int = 200
    tol: float = 1e-4
    random_state: Any = None
    alpha_W: float = 0.0
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0
    shuffle: bool = False
    accelerate: bool = False
    loss_every: int | None = 10
    checkpoint_every: int = 10
    missing: Any = None

    def __post_init__(self) -> None:
        if self.loss_every is None:  # (the default, 10, where callers pass None through)
            object.__setattr__(self, "loss_every", 10)
        check_params(
            self.n_components, self.max_iter, self.tol, self.alpha_W, self.alpha_H, self.l1_ratio
        )
        algorithm = solver_class(self.beta_loss, self.solver)
        if self.accelerate and not algorithm.accelerates:
            raise InputError(
                f"accelerate=True is not implemented for solver={algorithm.name!r} with "
                f"beta_loss={algorithm.loss_name!r}; it is for solver='mu' or 'cd' with 'frobenius'"
            )
        object.__setattr__(self, "missing", check_missing(self.missing))
        if self.missing is not None:
            masked_solver_class(self.beta_loss, self.solver)  # (refuses what has none)
            if self.accelerate:
                raise InputError("accelerate=True is not implemented with missing values")
        if self.init is not None and self.init not in INITS:
            raise InputError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        for name in ("loss_every", "checkpoint_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise InputError(f"{name} must be a positive integer; got {value!r}")

    @property
    def algorithm(self) -> type[Solver]:
        """The solver class (from the registry)."""
        return solver_class(self.beta_loss, self.solver)

    def regularization(self, shape: tuple[int, int]) -> Regularization:
        """The penalties scaled for V of ``shape`` (see :func:`regularization`)."""
        return Regularization(*regularization(shape, self.alpha_W, self.alpha_H, self.l1_ratio))

    def solver_for(self, shape: tuple[int, int], stats: dict, dtype: Any) -> Solver:
        """The solver object for V of ``shape`` with validation ``stats``.

        With ``missing`` set and an entry missing, the masked solver of the same
        cost; with none missing, the plain one (the same fit, fewer products).
        """
        common = dict(tol=self.tol, shuffle=self.shuffle, random_state=self.random_state)
        args = (self.regularization(shape), stats["sumsq"], stats["sum"], dtype)
        if self.missing is not None and stats.get("observed", math.inf) < stats.get("size", 0):
            cls = masked_solver_class(self.beta_loss, self.solver)
            return cls(*args, **common, fill=fill_value(self.missing))
        return self.algorithm(*args, **common, accelerate=self.accelerate)

    def record(self) -> dict:
        """The options as a checkpoint records them (JSON; names as given by the user)."""
        out = asdict(self)
        out["beta_loss"] = self.algorithm.loss_name
        out["random_state"] = self.random_state if is_int(self.random_state) else None
        for key in ("tol", "alpha_W", "l1_ratio"):
            out[key] = float(out[key])
        if self.alpha_H != "same":
            out["alpha_H"] = float(self.alpha_H)
        return out


# --------------------------------------------------------------------------
# How V is read
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadOptions:
    """How V is opened and read: the same for a fit, a transform, the estimator
    and the command line.  The fields are :func:`dask_nmf.factorize`'s
    parameters of the same names; ``mask`` is the boolean array of
    ``missing=<mask>``."""

    block_rows: int | None = None
    keep_in_memory: bool | None = None
    array: str | None = None
    dtype: Any = None
    storage_options: dict | None = None
    variable: str | None = None
    sample_dims: Any = None
    feature_dims: Any = None
    mask: Any = None

    def open(self, V: Any, runner: Any = None, block_rows: int | None = None, **override: Any):
        """V as an :class:`~dask_nmf.io.InputMatrix` (metadata only): row blocks
        of ``block_rows`` (default: this object's, else sized for ``runner``'s
        workers; no ``runner``: for dask's local scheduler)."""
        from .cluster import Runner, resolve_client
        from .io import open_input

        runner = runner if runner is not None else Runner(resolve_client(None))
        opening = dict(
            array=self.array,
            dtype=self.dtype,
            storage_options=self.storage_options,
            variable=self.variable,
            sample_dims=self.sample_dims,
            feature_dims=self.feature_dims,
        )
        opening.update(override)
        rows = self.block_rows if block_rows is None else block_rows
        return open_input(
            V, rows, parallelism=runner.parallelism, block_bytes=runner.block_bytes, **opening
        )
