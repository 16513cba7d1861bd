"""FitOptions: every option checked once, when the options are made."""

from __future__ import annotations

import json
import math

import pytest

from dask_nmf.io import InputError
from dask_nmf.options import FitOptions, regularization
from dask_nmf.solvers import FrobeniusMU, KullbackLeiblerMU


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": math.inf}, "tol"),
        ({"tol": math.nan}, "tol"),
        ({"alpha_W": -1.0}, "alpha_W"),
        ({"alpha_H": math.inf}, "alpha_H"),
        ({"l1_ratio": 2.0}, "l1_ratio"),
        ({"beta_loss": "banana"}, "beta_loss"),
        ({"solver": "pg"}, "unknown solver"),
        ({"solver": "cd", "beta_loss": "kullback-leibler"}, "does not handle"),
        ({"init": "pca"}, "unknown init"),
        ({"loss_every": 0}, "loss_every"),
        ({"checkpoint_every": 1.5}, "checkpoint_every"),
        ({"accelerate": True, "beta_loss": 1}, "accelerate=True is not implemented"),
    ],
)
def test_bad_options_are_refused_when_made(kwargs, message):
    kwargs = {"n_components": 3, **kwargs}
    with pytest.raises(InputError, match=message):
        FitOptions(**kwargs)


def test_defaults_and_the_solver_class():
    options = FitOptions(4, loss_every=None)
    assert options.loss_every == 10 and options.algorithm is FrobeniusMU
    assert FitOptions(4, beta_loss=1).algorithm is KullbackLeiblerMU


def test_the_record_is_json_and_names_the_cost():
    options = FitOptions(4, beta_loss=1, alpha_W=1, alpha_H=2, random_state=7, tol=0)
    record = json.loads(json.dumps(options.record()))
    assert record["beta_loss"] == "kullback-leibler" and record["n_components"] == 4
    assert record["alpha_H"] == 2.0 and record["random_state"] == 7
    assert FitOptions(4, random_state=object()).record()["random_state"] is None


def test_the_solver_gets_the_scaled_regularization():
    options = FitOptions(3, alpha_W=0.5, l1_ratio=0.25)
    solver = options.solver_for((100, 20), {"sumsq": 4.0, "sum": 2.0}, "float64")
    assert tuple(vars(solver.reg).values()) == regularization((100, 20), 0.5, "same", 0.25)
    assert solver.norm_v2 == 4.0 and solver.v_sum == 2.0
