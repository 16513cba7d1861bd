"""dask_nmf.NMF against scikit-learn's own NMF tests and its estimator checks.

Two parts:

* scikit-learn's ``sklearn/decomposition/tests/test_nmf.py`` (shipped with the
  installed package) is imported, and every test of it that applies to the
  solvers dask_nmf implements (multiplicative updates, and coordinate descent
  for the Frobenius cost) is run with that module's name ``NMF`` pointing at
  :class:`MuNMF` (dask_nmf's estimator with scikit-learn's signature), over
  the same parametrizations, read from the tests' own ``parametrize`` marks.  What
  does not apply is collected too, skipped, with the reason.
* ``parametrize_with_checks`` over dask_nmf.NMF, where the only checks expected
  to fail are those scikit-learn's ``NMF(solver="mu")`` fails itself with the
  same parameters (found by running them on it, when this module is collected).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import MiniBatchNMF
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

import dask_nmf
from dask_nmf import NMF
from dask_nmf.solvers import SOLVERS

try:
    sk_tests = importlib.import_module("sklearn.decomposition.tests.test_nmf")
except ImportError:  # (some distributions strip scikit-learn's tests)
    sk_tests = None


class MuNMF(NMF):
    """dask_nmf.NMF with scikit-learn's NMF signature (``solver`` as registered)."""

    _parameter_constraints: dict = {
        **NMF._parameter_constraints,
        "solver": [StrOptions({name for name, _ in SOLVERS})],
        "shuffle": ["boolean"],
    }

    def __init__(
        self,
        n_components: Any = "auto",
        *,
        init: Any = None,
        solver: str = "mu",
        beta_loss: Any = "frobenius",
        tol: float = 1e-4,
        max_iter: int = 200,
        random_state: Any = None,
        alpha_W: float = 0.0,
        alpha_H: Any = "same",
        l1_ratio: float = 0.0,
        verbose: int = 0,
        shuffle: bool = False,
    ):
        super().__init__(
            n_components,
            init=init,
            beta_loss=beta_loss,
            tol=tol,
            max_iter=max_iter,
            random_state=random_state,
            alpha_W=alpha_W,
            alpha_H=alpha_H,
            l1_ratio=l1_ratio,
            verbose=verbose,
        )
        self.solver = solver
        self.shuffle = shuffle  # (coordinate descent only: no effect on MU)


# Named as the estimator it stands for: get_feature_names_out() and messages
# use the class name ("nmf0", "... parameter of NMF ...").
MuNMF.__name__ = MuNMF.__qualname__ = "NMF"


#: Tests of scikit-learn's module that do not apply at all, and why.
NOT_APPLICABLE = {
    "test_initialize_nn_output": "tests the private helper _initialize_nmf",
    "test_initialize_close": "tests the private helper _initialize_nmf",
    "test_initialize_variants": "tests the private helper _initialize_nmf",
    "test_parameter_checking": (
        "mixes MiniBatchNMF and the private _initialize_nmf; its NMF assertions (solver='mu' "
        "and 'cd') are test_parameter_checking_mu_part below"
    ),
    "test_minibatch_nmf_transform": "MiniBatchNMF only",
    "test_mbnmf_inverse_transform": "MiniBatchNMF only",
    "test_minibatch_nmf_negative_beta_loss": "MiniBatchNMF only",
    "test_minibatch_nmf_partial_fit": "MiniBatchNMF only",
    "test_minibatch_nmf_verbose": "MiniBatchNMF only",
    "test_non_negative_factorization_consistency": (
        "scikit-learn's function non_negative_factorization"
    ),
    "test_non_negative_factorization_checking": (
        "scikit-learn's function non_negative_factorization"
    ),
    "test_nmf_non_negative_factorization_n_components_auto": (
        "scikit-learn's function non_negative_factorization"
    ),
    "test_nmf_n_components_auto_no_h_update": "scikit-learn's function non_negative_factorization",
    "test_nmf_w_h_not_used_warning": (
        "scikit-learn's function non_negative_factorization; the estimator's RuntimeWarning is "
        "test_w_h_not_used_warning in this module"
    ),
    "test_beta_divergence": "tests the private helper _beta_divergence",
    "test_special_sparse_dot": "tests the private helper _special_sparse_dot",
    "test_nmf_multiplicative_update_sparse": (
        "scikit-learn's function non_negative_factorization (tests/test_beta.py compares "
        "sparse and dense fits for other beta)"
    ),
    "test_nmf_negative_beta_loss": (
        "scikit-learn's function non_negative_factorization (tests/test_beta.py checks the "
        "same refusal of beta_loss <= 0 with zeros)"
    ),
    "test_nmf_decreasing": (
        "non_negative_factorization and the private _beta_divergence, one iteration per call"
    ),
    "test_nmf_underflow": "tests the private helper _beta_divergence",
}


def _case_reason(kwargs: dict) -> str | None:
    """Why one parametrization does not apply to dask_nmf's solvers, or None."""
    if kwargs.get("Estimator") is MiniBatchNMF:
        return "MiniBatchNMF only"
    solver = kwargs.get("solver")
    if isinstance(solver, dict):
        solver = solver.get("solver")
    beta_loss = kwargs.get("beta_loss", "frobenius")
    if solver is not None and not any(
        name == solver and (beta is None or beta_loss in (beta, int(beta), cls.loss_name))
        for (name, beta), cls in SOLVERS.items()
    ):
        return f"solver={solver!r} only (dask_nmf implements {sorted({n for n, _ in SOLVERS})})"
    return None


def _value_id(value: Any) -> str:
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return str(value)


def _cases() -> list:
    """One pytest param per (test of scikit-learn's module, parametrization)."""
    if sk_tests is None:
        return [pytest.param(None, {}, marks=pytest.mark.skip(reason="no sklearn tests"))]
    params = []
    for name, fn in sorted(vars(sk_tests).items()):
        if not name.startswith("test_") or not inspect.isfunction(fn):
            continue
        marks = list(getattr(fn, "pytestmark", []))
        grids, extra = [], []
        for mark in marks:
            if mark.name == "parametrize":
                argnames, argvalues = mark.args[0], mark.args[1]
                if isinstance(argnames, str):
                    argnames = [a.strip() for a in argnames.split(",")]
                rows = []
                for values in argvalues:
                    values = getattr(values, "values", values)  # (pytest.param)
                    values = values if len(argnames) > 1 else (values,)
                    rows.append(dict(zip(argnames, values)))
                grids.append(rows)
            else:
                extra.append(mark)  # filterwarnings: applied to our param as well
        for combo in itertools.product(*grids) if grids else [()]:
            kwargs = {k: v for part in combo for k, v in part.items()}
            missing = set(inspect.signature(fn).parameters) - set(kwargs)
            reason = NOT_APPLICABLE.get(name) or _case_reason(kwargs)
            if missing and not reason:
                reason = f"needs fixtures {sorted(missing)}"
            case_id = "-".join([name] + [_value_id(v) for v in kwargs.values()])
            skip = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(fn, kwargs, id=case_id, marks=extra + skip))
    return params


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sk_test, kwargs", _cases())
def test_sklearn_nmf_suite(sk_test, kwargs, monkeypatch):
    """scikit-learn's test, with its ``NMF`` (and ``Estimator=NMF``) being dask_nmf's.

    Where a test also runs MiniBatchNMF or non_negative_factorization beside
    NMF (test_nmf_true_reconstruction, test_nmf_custom_init_dtype_error,
    test_nmf_minibatchnmf_equivalence), those stay scikit-learn's: they are
    the reference our NMF is compared with there.
    """
    monkeypatch.setattr(sk_tests, "NMF", MuNMF)
    kwargs = {k: (MuNMF if v is SkNMF else v) for k, v in kwargs.items()}
    sk_test(**kwargs)


def test_every_sklearn_test_is_accounted_for():
    """Each of scikit-learn's NMF tests runs here at least once, or is listed as not applicable."""
    if sk_tests is None:
        pytest.skip("scikit-learn's tests are not installed")
    names = {n for n, f in vars(sk_tests).items() if n.startswith("test_") and callable(f)}
    ran = {p.values[0].__name__ for p in _cases() if not any(m.name == "skip" for m in p.marks)}
    assert names == ran | (names & set(NOT_APPLICABLE)), names - ran - set(NOT_APPLICABLE)
    assert set(NOT_APPLICABLE) <= names  # (a test scikit-learn removed: drop it here)
    assert len(ran) >= 15


# -- What scikit-learn's mixed tests assert about NMF(solver="mu"), in our words --


def test_parameter_checking_mu_part():
    A = np.ones((2, 2))
    msg = "Invalid beta_loss parameter: solver 'cd' does not handle beta_loss = 1.0"
    with pytest.raises(ValueError, match=msg):
        NMF(solver="cd", beta_loss=1.0).fit(A)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        NMF().fit(-A)
    est = NMF(2, tol=0.1).fit(A)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        est.transform(-A)
    for init in ["nndsvd", "nndsvda", "nndsvdar"]:
        msg = f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            NMF(3, init=init).fit(A)


def test_w_h_not_used_warning():
    rng = np.random.RandomState(0)
    X = rng.random_sample((6, 5))
    with pytest.warns(RuntimeWarning, match="When init!='custom', provided W or H are ignored"):
        NMF(max_iter=5, tol=0).fit(X, H=rng.random_sample((2, 5)))


# -- scikit-learn's estimator checks --

_CHECK_PARAMS = dict(n_components=2, max_iter=20, random_state=0)


def _sklearn_own_failures() -> dict:
    """The checks scikit-learn's own NMF(solver="mu") fails with ``_CHECK_PARAMS``.

    At max_iter=20 it fails the transformer checks that compare fit_transform
    with transform (neither has converged); dask_nmf computes the same numbers.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(SkNMF(solver="mu", **_CHECK_PARAMS), on_fail=None)
    return {
        r["check_name"]: f"scikit-learn's NMF(solver='mu') fails it too: {r['exception']!r}"[:200]
        for r in results
        if r["status"] == "failed"
    }


SKLEARN_FAILS = _sklearn_own_failures()


def test_sklearn_failures_are_convergence_checks():
    # Guard against masking real problems: only the fit_transform/transform
    # comparisons, which need convergence, may be expected to fail.
    assert set(SKLEARN_FAILS) <= {
        "check_transformer_general",
        "check_transformer_data_not_an_array",
    }


@pytest.mark.timeout(120)
@parametrize_with_checks([NMF(**_CHECK_PARAMS)], expected_failed_checks=lambda est: SKLEARN_FAILS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_tags():
    tags = NMF().__sklearn_tags__()
    theirs = SkNMF().__sklearn_tags__()
    assert tags.input_tags.sparse and tags.input_tags.positive_only
    assert tags.input_tags == theirs.input_tags
    assert tags.transformer_tags == theirs.transformer_tags


def test_dask_nmf_errors_are_input_errors():
    # scikit-learn's exception types, and dask_nmf's InputError as the README promises.
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.ones((4, 3))
    with pytest.raises(InvalidParameterError, match="The 'max_iter' parameter of NMF must be"):
        NMF(max_iter=0).fit(X)
    with pytest.raises(dask_nmf.InputError, match="max_iter must be a positive integer"):
        NMF(max_iter=0).fit(X)
    with pytest.raises(dask_nmf.InputError, match="Negative values in data passed to"):
        NMF().fit(-X)
