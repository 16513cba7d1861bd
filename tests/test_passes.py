"""The pass graph, built without running it (no cluster, no scheduler)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from conftest import make_low_rank

from dask_nmf import kernels
from dask_nmf.cluster import Runner
from dask_nmf.io import block_sources, open_input
from dask_nmf.passes import SPLIT_EVERY, PassBuilder, describe_key
from dask_nmf.solvers import Regularization, solver_class


def reduction_nodes(leaves: int) -> int:
    """Nodes a tree of fan-in SPLIT_EVERY adds above ``leaves`` leaves."""
    nodes = 0
    while leaves > 1:
        leaves = math.ceil(leaves / SPLIT_EVERY)
        nodes += leaves
    return nodes


def builder(V, block_rows, beta):
    Vin = open_input(V, block_rows)
    stats = kernels.block_stats(V)
    solver = solver_class(beta)(Regularization(), stats["sumsq"], stats["sum"], Vin.dtype)
    runner = Runner(None)
    return PassBuilder(runner, Vin, runner.place(block_sources(Vin)), None, solver), Vin


@pytest.mark.parametrize("n_blocks", [1, 2, 8, 9, 20, 64, 65])
@pytest.mark.parametrize("beta", [2, 1])
def test_task_count_is_a_formula_of_the_block_count(rng, n_blocks, beta):
    V = make_low_rank(rng, 2 * n_blocks, 7, 2, zeros=False)
    passes, Vin = builder(V, 2, beta)
    assert len(Vin.bounds) == n_blocks
    W = [rng.random((b - a, 2)) for a, b in Vin.bounds]
    H = rng.random((2, 7))
    firsts = math.ceil(n_blocks / SPLIT_EVERY)
    for t in (0, 1, 1000):
        dsk, keys, owners = passes.build(W, H, t, first=t == 0, with_loss=True)
        # per block: V, W in, step, W out, partials; the sums; the start, next
        # state, report
        assert len(dsk) == 5 * n_blocks + firsts + reduction_nodes(firsts) + 3
        roles = Counter(describe_key(k)["role"] for k in dsk)
        assert roles == {
            "V": n_blocks,
            "W-in": n_blocks,
            "step": n_blocks,
            "W": n_blocks,
            "partials": n_blocks,
            "sum": firsts + reduction_nodes(firsts),
            "state": 1,
            "next-state": 1,
            "report": 1,
        }
        assert [describe_key(k)["role"] for k in keys] == ["W"] * n_blocks + [
            "next-state",
            "report",
        ]
        assert {describe_key(k)["pass"] for k in keys} == {t}
        assert owners is None  # in-memory blocks: no pinning


def test_a_pass_built_here_is_one_iteration(rng):
    """The built graph, run by dask's local scheduler, is one MU iteration."""
    import dask
    from conftest import reference_mu

    V = make_low_rank(rng, 40, 9, 3)
    passes, Vin = builder(V, 10, 2)
    W0, H0 = rng.random((40, 3)) + 0.1, rng.random((3, 9)) + 0.1
    W = [W0[a:b] for a, b in Vin.bounds]
    dsk, keys, _ = passes.build(W, H0, 0, first=True, with_loss=True)
    *W_new, state, report = dask.get(dsk, keys)
    W_ref, H_ref, losses = reference_mu(V, W0, H0, 2, 1)
    np.testing.assert_allclose(np.vstack(W_new), W_ref, rtol=1e-12)
    np.testing.assert_allclose(state[0], H_ref, rtol=1e-12)
    assert report.after == pytest.approx(losses[0], rel=1e-9)
    assert describe_key("some-other-key") is None
