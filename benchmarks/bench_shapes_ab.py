"""Before/after of a change, by shape, in one process: two dask_nmf checkouts and
scikit-learn's MU timed interleaved, so all three see the same machine noise.

    python benchmarks/bench_shapes_ab.py BEFORE_DIR AFTER_DIR 250x100000:frobenius sparse:frobenius

Per iteration = (t(25) - t(5)) / 20, the minimum of two runs of each length; dense
V from ``common.synth_matrix`` with k = 32; ``sparse``: 20000 x 100000 at 0.5 %,
k = 20, (t(13) - t(3)) / 10.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import start_factors, synth_matrix  # noqa: E402


def load(root: str, name: str):
    """The dask_nmf package under ``root`` imported as ``name``."""
    spec = importlib.util.spec_from_file_location(
        name, f"{root}/dask_nmf/__init__.py", submodule_search_locations=[f"{root}/dask_nmf"]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def sklearn_mu(V, W0, H0, beta, N):
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NMF(W0.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=N, tol=0).fit(
            V, W=W0.copy(), H=H0.copy()
        )


def case(shape: str):
    if shape == "sparse":
        from dask_nmf.datasets import make_sparse_counts

        m, n, k = 20000, 100000, 20
        V = make_sparse_counts(m, n, k, 0.005, seed=0, dtype="float64")
        rng = np.random.default_rng(0)
        return V, rng.random((m, k)), rng.random((k, n)), (3, 13)
    m, n = map(int, shape.split("x"))
    return (synth_matrix(m, n), *start_factors(m, n, 32), (5, 25))


def main(argv: list[str]) -> None:
    before, after = load(argv[0], "dask_nmf_before"), load(argv[1], "dask_nmf_after")

    def ours(mod):
        return lambda V, W0, H0, beta, N: mod.factorize(
            V, W0.shape[1], beta_loss=beta, W_init=W0, H_init=H0, max_iter=N, tol=0
        )

    runs = {"sklearn": sklearn_mu, "before": ours(before), "after": ours(after)}
    for spec in argv[2:]:
        shape, beta = spec.split(":")
        V, W0, H0, (n1, n2) = case(shape)
        times = {name: ([], []) for name in runs}
        for _ in range(2):
            for name, fn in runs.items():
                for i, N in enumerate((n1, n2)):
                    t0 = time.perf_counter()
                    fn(V, W0, H0, beta, N)
                    times[name][i].append(time.perf_counter() - t0)
        per = {k: 1e3 * (min(b) - min(a)) / (n2 - n1) for k, (a, b) in times.items()}
        sk = per["sklearn"]
        print(
            f"{shape} {beta}: sklearn {sk:.0f} ms, before {per['before']:.0f} ms "
            f"({per['before'] / sk:.2f}x), after {per['after']:.0f} ms ({per['after'] / sk:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
