"""What reading V costs: zarr codecs and chunk shapes against the raw file read.

    python benchmarks/run.py --case codecs [--quick]

The same synthetic matrix (low rank + noise, as everywhere in the suite) is
written with several codecs; for each: stored size, the raw read of its files
from the page cache, zarr's read + decode by row chunk with 1 and 2 threads,
and dask_nmf's own out-of-core Frobenius iteration on it (threaded scheduler,
``keep_in_memory=False``, so V is read every iteration).  This is how the
codec of the stores we write (``dask_nmf.datasets``, the examples) is chosen.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
from bench_roofline import zarr_bandwidth
from common import data_dir, per_iteration, synth_rows, table

import dask_nmf


def codecs() -> dict:
    from zarr.codecs import BloscCodec, ZstdCodec

    return {
        "zstd (zarr default)": "auto",
        "none": None,
        "blosc lz4 + shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc zstd-1 + shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
        "zstd level 1": [ZstdCodec(level=1)],
    }


def write(path, m, n, dtype, chunk_rows, compressors) -> float:
    import zarr

    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    arr = zarr.create_array(store=str(path), shape=(m, n), chunks=(chunk_rows, n), dtype=dtype,
                            compressors=compressors)
    step = chunk_rows * 4
    for a in range(0, m, step):
        b = min(a + step, m)
        arr[a:b] = synth_rows(a, b, n, dtype, 0, 10, chunk=chunk_rows)
    return time.perf_counter() - t0


def run(args, ctx) -> dict:
    log = ctx["log"]
    m, n, k = (8000, 2000, 16) if args.quick else (32000, 2000, 32)
    dtype = np.float32
    chunk_rows = 1000
    n1, n2 = (1, 3) if args.quick else (2, 6)
    rows = []
    log(f"  V {m}x{n} {np.dtype(dtype).name} ({m * n * 4 / 2**20:.0f} MiB), row chunks of {chunk_rows}; "
        f"fit: Frobenius k={k}, threaded scheduler, keep_in_memory=False, N1={n1}, N2={n2}")
    for name, comp in codecs().items():
        path = data_dir(args) / f"codec_{name.split()[0]}_{name.count('+')}_{m}x{n}.zarr"
        write_s = write(path, m, n, dtype, chunk_rows, comp)
        bw = zarr_bandwidth(path)

        def fit(N, path=path):
            dask_nmf.factorize(str(path), k, init="random", random_state=0, max_iter=N, tol=0,
                               keep_in_memory=False)

        it = per_iteration(fit, n1, n2, repeats=1 if args.quick else 2)["ms_per_iter"]
        row = {"codec": name, "ratio": bw["compression_ratio"], "write_s": write_s,
               "raw_gbs": bw["raw_file_read_gbs_1t"], "zarr_1t": bw["read_decompress_gbs_1t"],
               "zarr_2t": bw["read_decompress_gbs_2t"], "ms_per_iter": it,
               "decoded_gbs_in_fit": m * n * 4 / (it / 1e3) / 1e9}
        rows.append(row)
        log(f"    {name:24s} ratio {row['ratio']:.2f}  write {write_s:5.1f} s  raw {row['raw_gbs']:5.2f} GB/s  "
            f"zarr {row['zarr_1t']:.2f}/{row['zarr_2t']:.2f} GB/s (1/2 threads)  fit {it:7.1f} ms/iter")
        shutil.rmtree(path)
    # The same in-memory matrix, for the compute part of an iteration.
    V = synth_rows(0, m, n, dtype, 0, 10, chunk=chunk_rows)


    def fit_in_memory(N, V=V):
        dask_nmf.factorize(V, k, init="random", random_state=0, max_iter=N, tol=0)

    mem = per_iteration(fit_in_memory, n1, n2, repeats=1 if args.quick else 2)
    del V, fit_in_memory
    log("")
    log(table(rows, ["codec", "ratio", "write_s", "raw_gbs", "zarr_1t", "zarr_2t", "ms_per_iter",
                     "decoded_gbs_in_fit"],
              title=f"Codecs, {m}x{n} float32 (in memory the same fit takes {mem['ms_per_iter']:.0f} ms/iter)",
              headers={"ratio": "compression", "write_s": "write s", "raw_gbs": "raw file read GB/s",
                       "zarr_1t": "zarr read GB/s 1 thread", "zarr_2t": "2 threads",
                       "ms_per_iter": "fit ms/iter (V re-read)", "decoded_gbs_in_fit": "V GB/s in the fit"}))
    log("")
    return {"shape": [m, n], "k": k, "dtype": "float32", "rows": rows, "in_memory_ms_per_iter": mem["ms_per_iter"]}
