"""Resuming a fit from its checkpoint: the same problem, the same V, and what a
finished run means.

A checkpoint records the fit's options, V's shape, dtype and location, and a
fingerprint of V's values (its sum and ‖V‖², which the validation pass
computes anyway).  A resume with other options or another V is refused; a run
that has finished is reported, not continued, unless it stopped at its
``max_iter`` and the new ``max_iter`` asks for more.
"""

from __future__ import annotations

import math

import numpy as np

from .io import InputError, InputMatrix


def check_resumable(meta: dict, params: dict, Vin: InputMatrix, V_places: list) -> None:
    """Refuse a resume from a checkpoint made with another V or other settings."""
    if not meta.get("state"):
        raise InputError("cannot resume: the checkpoint holds no complete state yet")
    shape = meta.get("input", {}).get("shape")
    if shape is not None and tuple(shape) != tuple(Vin.shape):
        raise InputError(
            f"cannot resume: the checkpoint is for V of shape {tuple(shape)}, not {Vin.shape}"
        )
    old = meta.get("params", {})
    for key in (
        "n_components",
        "beta_loss",
        "solver",
        "shuffle",
        "accelerate",
        "block_rows",
        "alpha_W",
        "alpha_H",
        "l1_ratio",
        "dtype",
        "missing",
    ):
        if key in old and old[key] != params[key]:
            raise InputError(
                f"cannot resume: the checkpoint was made with {key}={old[key]!r}, not {params[key]!r}"
            )
    old_dtype = meta.get("input", {}).get("dtype")
    if old_dtype is not None and old_dtype != str(Vin.source.get("dtype", old_dtype)):
        raise InputError(
            f"cannot resume: the checkpoint is for V of dtype {old_dtype}, "
            f"not {Vin.source.get('dtype')}"
        )
    where = meta.get("input", {}).get("fingerprint", {}).get("location")
    here = str(V_places[0]) if V_places else None
    if where is not None and here is not None and where != here:
        raise InputError(
            f"cannot resume: the checkpoint was made from V at {where!r}, not {here!r}"
        )


class ResumeNote(UserWarning):
    """What resuming a finished run did (see :func:`finished_run`)."""


def finished_run(meta: dict, max_iter: int) -> tuple[bool, str | None]:
    """What resuming a checkpoint does when it holds a finished run.

    A finished run is reported, not continued, unless it stopped at its
    ``max_iter`` (not by ``tol``) and ``max_iter`` now asks for more.

    Returns
    -------
    (bool, str or None)
        Whether there is nothing to run, and what to tell the user (None when
        the checkpoint is not a finished run).
    """
    state = meta.get("state") or {}
    if not state.get("finished"):
        return False, None
    ran, converged = int(state["n_iter"]), bool(state.get("converged"))
    if converged:
        return True, f"it holds a finished run ({ran} iterations, converged): nothing to run"
    if max_iter <= ran:
        return True, (
            f"it holds a finished run ({ran} iterations, stopped at max_iter={ran}): nothing "
            f"to run; a max_iter above {ran} continues it"
        )
    return (
        False,
        f"it holds a run finished at iteration {ran}; continuing it to max_iter={max_iter}",
    )


def fingerprint(stats: dict, V_places: list) -> dict:
    """What identifies V in a checkpoint: its sum and ‖V‖², and where it is stored;
    with missing entries also which are observed (their count, and the counts per
    column weighted by position, so that another mask of V is told apart even
    where it differs only at zeros of V)."""
    out = {
        "sum": float(stats["sum"]),
        "sumsq": float(stats["sumsq"]),
        "location": str(V_places[0]) if V_places else None,
    }
    if "observed" in stats:
        counts = np.asarray(stats["col_count"], np.float64)
        out["observed"] = int(stats["observed"])
        out["observed_by_column"] = float(np.dot(counts, np.arange(1, counts.size + 1)))
    return out


def check_fingerprint(meta: dict, fingerprint: dict) -> None:
    old = meta.get("input", {}).get("fingerprint")
    if not old:
        return  # (a checkpoint written before fingerprints existed)
    for key in ("sum", "sumsq"):
        # The same blocks summed again: equal but for the order of a tree reduction.
        if not math.isclose(old[key], fingerprint[key], rel_tol=1e-6, abs_tol=1e-300):
            raise InputError(
                f"cannot resume: V is not the data the checkpoint was made from "
                f"(its {'sum' if key == 'sum' else 'sum of squares'} is {fingerprint[key]:.10g}, "
                f"the checkpoint's V had {old[key]:.10g})"
            )
    for key in ("observed", "observed_by_column"):
        if key in old and old[key] != fingerprint.get(key):
            raise InputError(
                "cannot resume: another set of V's entries is missing than in the checkpoint's "
                f"fit ({key.replace('_', ' ')}: {fingerprint.get(key)}, the checkpoint's "
                f"{old[key]}); resume with the same missing= (and the same mask)"
            )
