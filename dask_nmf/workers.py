"""What a fit changes in dask's worker processes, and puts back afterwards.

dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` so that
freed memory goes back to the operating system at once.  Setting it also turns
off glibc's adaptive thresholds, so every allocation above 128 KiB -- each
decoded zarr chunk, each compressed chunk read from disk, each block
temporary -- is a fresh ``mmap`` whose pages fault in one by one.  Reading V
out of core allocates and frees block-sized buffers many times per second;
in a worker each of those pays its page faults again (see benchmarks/README.md
for what that costs).

During a fit we let glibc keep a bounded amount of freed memory for reuse, the
way its adaptive thresholds would, and restore the nanny's settings at the
end.  Only workers that run under those settings (Linux, glibc, the variable
set) are touched.  ``dask.config.set({"dask-nmf.worker-malloc": False})``
turns this off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from typing import Any

import dask

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
_MMAP_MAX = 32 * 2**20
#: glibc's static default for both thresholds.
_GLIBC_DEFAULT = 128 * 1024
#: At most this much freed memory is kept for reuse when a worker has no memory limit.
_KEEP_MAX = 256 * 2**20
#: ... and at most this fraction of its memory limit when it has one.
_KEEP_FRACTION = 1 / 16
#: Seconds the undoing at the end of a fit waits for the workers' answers.
_UNDO_WAIT = 5.0


def _libc():
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (musl and others have no mallopt)
    except (OSError, AttributeError):
        return None
    return libc


def set_malloc_thresholds(keep: int) -> bool:
    """(In a worker) let glibc keep up to ``keep`` bytes of freed memory for reuse."""
    libc = _libc()
    if libc is None:
        return False
    mmap = max(_GLIBC_DEFAULT, min(_MMAP_MAX, keep // 2))
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, int(keep))) and bool(
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap))
    )


def restore_malloc_thresholds() -> bool:
    """(In a worker) put back the thresholds its environment asked for, and trim."""
    libc = _libc()
    if libc is None:
        return False
    trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", _GLIBC_DEFAULT))
    mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", _GLIBC_DEFAULT))
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, trim)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap))
    libc.malloc_trim(0)
    return ok


@contextlib.contextmanager
def tuned_for_blocks(client: Any, block_bytes: int):
    """Around a fit on ``client``'s workers: malloc keeps freed blocks for reuse.

    Each worker may keep ``4 * block_bytes`` of freed memory (a block and the
    temporaries of its update), at most 1/16 of its memory limit, so dask's memory
    manager still sees the workers well below its thresholds.  On exit the
    nanny's settings come back.
    """
    if client is None or not dask.config.get("dask-nmf.worker-malloc", True):
        yield
        return
    workers = client.scheduler_info(n_workers=-1)["workers"]
    by_keep: dict[int, list[str]] = {}
    for addr, info in workers.items():
        limit = info.get("memory_limit") or 0
        keep = min(4 * int(block_bytes), int(limit * _KEEP_FRACTION) if limit else _KEEP_MAX)
        if keep > _GLIBC_DEFAULT:
            by_keep.setdefault(keep, []).append(addr)
    tuned = [a for addrs in by_keep.values() for a in addrs]
    try:
        for keep, addrs in by_keep.items():
            client.run(set_malloc_thresholds, keep, workers=addrs)
        yield
    finally:
        if tuned:
            run_briefly(client, restore_malloc_thresholds, workers=tuned)


def run_briefly(client: Any, function: Any, workers: list[str] | None = None) -> None:
    """``client.run(function)`` on the workers, waiting at most a few seconds.

    For the undoing at the end of a fit, which may follow a failure or Ctrl-C
    (a terminal's Ctrl-C reaches an embedded cluster's worker processes too):
    a call to a worker that is gone waits for the scheduler's connect timeout
    (30 s), which held the command's exit.  The call goes on in the
    background; errors (workers gone) are ignored.
    """

    if getattr(client, "status", "running") != "running":
        return  # the scheduler is lost: no call would get through

    def call():
        with contextlib.suppress(Exception):
            client.run(function, workers=workers)

    thread = threading.Thread(target=call, name="dask-nmf-undo", daemon=True)
    thread.start()
    thread.join(_UNDO_WAIT)
