#!/usr/bin/env bash
# Run `dask-nmf` against a dask cluster made of separate processes: one `dask scheduler` and
# `dask worker` processes on 127.0.0.1, exactly as on several machines, then shut them down.
#
# Usage:  bash examples/cluster.sh [WORKDIR]          (default WORKDIR: a new temporary directory)
#         QUICK=1 bash examples/cluster.sh WORKDIR    (a tiny matrix: a smoke test)
#
# Settings (environment variables):
#   ROWS, COLS, K       the generated matrix (default 100000 x 500, rank 10: 400 MB of float64)
#   MAX_ITER            iterations (default 200; the fit stops earlier once converged)
#   INIT                initialization (default nndsvda; random with QUICK=1)
#   N_WORKERS           worker processes (default 2), each with NTHREADS threads (default 1)
#   MEMORY_LIMIT        memory limit per worker (default 1GiB)
#   PORT                scheduler port (default: a free one)
#
# On a real cluster, start the scheduler on one machine and the workers on the others, with
# WORKDIR on storage that every machine (and the machine running `dask-nmf`) can read and
# write: a shared file system, or an object store URL (s3://..., gs://...).  See cluster.md.
set -euo pipefail

if [[ -n "${QUICK:-}" ]]; then
    ROWS=${ROWS:-6000} COLS=${COLS:-80} K=${K:-5} MAX_ITER=${MAX_ITER:-10} INIT=${INIT:-random}
fi
ROWS=${ROWS:-100000}
COLS=${COLS:-500}
K=${K:-10}
MAX_ITER=${MAX_ITER:-200}
INIT=${INIT:-nndsvda}
N_WORKERS=${N_WORKERS:-2}
NTHREADS=${NTHREADS:-1}
MEMORY_LIMIT=${MEMORY_LIMIT:-1GiB}
PYTHON=${PYTHON:-python}

WORKDIR=${1:-$(mktemp -d -t dask-nmf-cluster-XXXXXX)}
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
ADDRESS="tcp://127.0.0.1:$PORT"

PIDS=()
cleanup() {
    # Stop what this script started (and only that), whatever happened before.
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

echo "== scheduler at $ADDRESS (log: $WORKDIR/scheduler.log)"
dask scheduler --host 127.0.0.1 --port "$PORT" --dashboard-address 127.0.0.1:0 \
    >"$WORKDIR/scheduler.log" 2>&1 &
PIDS+=($!)

echo "== $N_WORKERS workers x $NTHREADS threads, memory limit $MEMORY_LIMIT each (log: $WORKDIR/workers.log)"
dask worker "$ADDRESS" --nworkers "$N_WORKERS" --nthreads "$NTHREADS" \
    --memory-limit "$MEMORY_LIMIT" --local-directory "$WORKDIR/dask-worker-space" \
    --dashboard-address 127.0.0.1:0 >"$WORKDIR/workers.log" 2>&1 &
PIDS+=($!)

# While the scheduler and the workers start (and join), write the data; then wait for them.
echo "== data: a ${ROWS} x ${COLS} matrix of rank ${K} (+ noise) in $WORKDIR/V.zarr"
"$PYTHON" -c "
from distributed import Client

from dask_nmf.datasets import make_low_rank_store

make_low_rank_store('$WORKDIR/V.zarr', $ROWS, $COLS, $K, chunk_rows=5000, overwrite=True)
with Client('$ADDRESS', timeout='60s') as client:
    client.wait_for_workers($N_WORKERS, timeout='60s')
    print(f'   {len(client.scheduler_info()[\"workers\"])} workers joined; dashboard:',
          client.dashboard_link)
"

echo "== dask-nmf fit ... --scheduler $ADDRESS"
SECONDS=0
dask-nmf fit "$WORKDIR/V.zarr" -k "$K" -o "$WORKDIR/result.zarr" --overwrite \
    --init "$INIT" --max-iter "$MAX_ITER" --seed 0 --checkpoint-every 10 --scheduler "$ADDRESS"
echo "   (fit: ${SECONDS} s)"

echo "== dask-nmf info"
dask-nmf info "$WORKDIR/result.zarr"

echo "== dask-nmf transform: W for the rows of V with H fixed, on the same cluster"
dask-nmf transform "$WORKDIR/V.zarr" --model "$WORKDIR/result.zarr" \
    -o "$WORKDIR/W_transform.zarr" --overwrite --scheduler "$ADDRESS"

echo "== shutting the cluster down"
# SIGTERM makes `dask worker` close its workers gracefully, then the scheduler stops.
kill -TERM "${PIDS[1]}"
wait "${PIDS[1]}" 2>/dev/null || true
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" 2>/dev/null || true
PIDS=()
echo "== done; results in $WORKDIR"
