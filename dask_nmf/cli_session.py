"""What every ``dask-nmf`` command shares: one-line errors (exit status 2), the
connection to a scheduler or an embedded ``LocalCluster`` with its options, the
progress bar, Ctrl-C during a fit (exit status 130, the output resumable), and the
conversion hints for inputs that are not zarr stores."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import click

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Abort(click.ClickException):
    """A one-line error with exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"dask-nmf: error: {self.format_message()}", err=True)


#: Default of ``dask-nmf.connect-timeout``: how long the CLI tries to reach a scheduler.
CONNECT_TIMEOUT = "10s"


def _connect_timeout() -> float:
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("dask-nmf.connect-timeout", CONNECT_TIMEOUT)))


def check_cluster_options(
    scheduler: str | None,
    scheduler_file: str | None,
    n_workers: int,
    threads_per_worker: int,
    memory_limit: str,
) -> None:
    """Refuse bad cluster options before anything starts (one line, exit 2)."""
    if scheduler is not None and not scheduler.strip():
        raise Abort(
            "--scheduler needs an address (e.g. tcp://host:8786); omit it for a local cluster"
        )
    if scheduler is not None and scheduler_file is not None:
        raise Abort("--scheduler and --scheduler-file contradict each other; give one")
    if scheduler_file is not None and not scheduler_file.strip():
        raise Abort("--scheduler-file needs a path")
    if n_workers < 1:
        raise Abort(f"--n-workers must be at least 1; got {n_workers}")
    if threads_per_worker < 1:
        raise Abort(f"--threads-per-worker must be at least 1; got {threads_per_worker}")
    import logging

    from distributed.worker_memory import parse_memory_limit

    try:  # as LocalCluster reads it: "auto", a fraction of the memory, bytes ("4GiB"), 0 = none
        limit = parse_memory_limit(
            memory_limit, threads_per_worker, logger=logging.getLogger("dask_nmf")
        )
    except (ValueError, TypeError, AssertionError):
        limit = -1
    if limit is not None and limit < 0:
        raise Abort(
            f"--memory-limit must be 'auto', a fraction like 0.5, or a size like 4GiB; "
            f"got {memory_limit!r}"
        )


def _scheduler_lost(client: Any) -> bool:
    return getattr(client, "status", "running") != "running"


@contextlib.contextmanager
def _quiet_distributed(name: str = "distributed"):
    """Mute distributed's logger ``name`` (it logs tracebacks of a lost connection,
    which the command reports in one line)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _connect(scheduler: str | None, scheduler_file: str | None):
    """A Client of a running scheduler, or Abort within the connect timeout."""
    from distributed import Client

    timeout = _connect_timeout()
    if scheduler_file is not None:
        # (Client would wait for the file with no end.)
        deadline = time.monotonic() + timeout
        while not os.path.exists(scheduler_file):
            if time.monotonic() > deadline:
                raise Abort(f"no scheduler file {scheduler_file} appeared within {timeout:g} s")
            time.sleep(0.1)
    target = scheduler or scheduler_file
    try:
        with _quiet_distributed():
            if scheduler_file is not None:
                return Client(scheduler_file=scheduler_file, timeout=timeout)
            return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise Abort(f"cannot reach the dask scheduler at {target} ({exc})") from None


@contextlib.contextmanager
def cluster_session(
    scheduler, n_workers, threads_per_worker, memory_limit, quiet, scheduler_file=None
):
    """Connect to ``scheduler`` (or the one in ``scheduler_file``), or start an
    embedded LocalCluster.

    A :class:`~dask_nmf.cluster.ClusterError` in the body, or a scheduler lost
    during it, ends the command with one line and exit status 2.
    """
    from distributed import Client, LocalCluster

    from .cluster import ClusterError

    if scheduler is not None or scheduler_file is not None:
        stack = contextlib.ExitStack()
        client = _connect(scheduler, scheduler_file)
        address = client.scheduler.address
        try:
            # A lost scheduler: the client logs each failed reconnect with a
            # traceback, and its batched comm the closed connection with another.
            for name in ("distributed.client", "distributed.batched", "distributed.comm"):
                stack.enter_context(_quiet_distributed(name))
            if not quiet:
                click.echo(f"connected to {address} ({len(client.nthreads())} workers)", err=True)
            yield client
        except Abort:
            raise
        except ClusterError as exc:
            raise Abort(str(exc)) from None
        except Exception:
            if _scheduler_lost(client):
                raise Abort(
                    f"lost the connection to the dask scheduler at {address}; "
                    "continue with --resume once it is back"
                ) from None
            raise
        finally:
            with _quiet_distributed():
                client.close(timeout=_connect_timeout())
            stack.close()
        return
    with _sigint_ignored():  # (inherited by the worker processes started now)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            dashboard_address=":0",
        )
    with cluster, Client(cluster) as client:
        if not quiet:
            link = cluster.dashboard_link
            click.echo(
                f"LocalCluster: {n_workers} workers x {threads_per_worker} threads, "
                f"memory limit {memory_limit}; dashboard {link}",
                err=True,
            )
        try:
            yield client
        except ClusterError as exc:
            raise Abort(str(exc)) from None
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C: the command says so in one line; the cluster's shutdown
            # (tasks cancelled, connections closed mid-pass) is not news.
            _silence_distributed()
            raise
        finally:
            # Nor is it after a fit: a worker whose heartbeat meets the closing
            # scheduler logs the closed connection with a traceback.
            with contextlib.suppress(Exception):  # (best effort: the workers may be gone)
                client.run(_silence_distributed, on_error="ignore")


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while the embedded cluster starts its worker processes.

    A terminal sends Ctrl-C to its whole foreground process group, the workers
    included: each would print its own ``KeyboardInterrupt`` traceback and the
    scheduler its lost connections.  An ignored signal stays ignored in a child
    process (Python then installs no ``KeyboardInterrupt`` handler), so the
    workers leave Ctrl-C to this process, which closes them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _silence_distributed() -> None:
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


class Progress:
    """A tqdm bar with the loss, what the stopping rule tests, and an ETA.

    The bar shows the value the rule last compared with ``tol`` (``rule``:
    its name, e.g. MU's decrease of the error over 10 iterations relative to
    the initial error), not a per-iteration decrease the rule never looks at.
    It appears with the first iteration, so that errors found while V is
    validated are printed on a line of their own.
    """

    def __init__(self, max_iter: int, start: int, quiet: bool, rule: str = "", tol: float = 0.0):
        self.quiet, self.max_iter, self.start = quiet, max_iter, start
        self.rule, self.tol = rule, tol
        self.loss_text = self.rule_text = ""
        self.bar = None

    def _ensure_bar(self):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.max_iter, initial=self.start, unit="it", file=sys.stderr)
        return self.bar

    def __call__(self, iteration: int, loss: float) -> None:
        if self.quiet:
            return
        bar = self._ensure_bar()
        if not math.isnan(loss):  # NaN: an iteration whose KL loss was skipped
            self.loss_text = f"loss={loss:.6g}"
            self._postfix()
        bar.update(iteration - bar.n)

    def criterion(self, iteration: int, value: float) -> None:
        """The stopping rule's value at ``iteration`` (``on_criterion``)."""
        if self.quiet:
            return
        self.rule_text = f"{self.rule}={value:.2e} (stops below tol={self.tol:g})"
        self._ensure_bar()
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(" ".join(x for x in (self.loss_text, self.rule_text) if x))

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            click.echo(message, err=True)
        else:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Interrupts:
    """Ctrl-C during a fit, delivered until the fit has taken it.

    Python drops a ``KeyboardInterrupt`` raised inside a finalizer, printing
    "Exception ignored in ..."; a dask ``Future``'s ``__del__`` runs in the main
    thread many times per pass, so now and then Ctrl-C landed there and the fit
    went on -- or waited forever on a worker that the same Ctrl-C had stopped
    (a terminal sends it to the worker processes of the embedded cluster too).
    After a Ctrl-C the signal is sent again every half second until the fit
    has been interrupted.
    """

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.repeating = False

    def __enter__(self) -> Interrupts:
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # (signals go there only)
            self.previous = signal.signal(signal.SIGINT, self._handler)
        # A Ctrl-C dropped by a finalizer is sent again (below): Python's report
        # of the dropped one ("Exception ignored in ... Traceback") is not news.
        self.unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: Any) -> None:
        self.taken.set()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        sys.unraisablehook = self.unraisable

    def _unraisable(self, info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            self.unraisable(info)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.taken.is_set():
            return
        if not self.repeating:
            self.repeating = True
            threading.Thread(target=self._repeat, name="dask-nmf-ctrl-c", daemon=True).start()
        raise KeyboardInterrupt

    def _repeat(self) -> None:
        while not self.taken.wait(0.5):
            os.kill(os.getpid(), signal.SIGINT)


#: Files that are not zarr stores, and how to write one from each (out of core where it can be).
CONVERSIONS = {
    ".h5ad": "import anndata; anndata.read_h5ad('{src}').write_zarr('{dst}')",
    ".npy": "import dask.array as da, numpy as np; "
    "da.from_array(np.load('{src}', mmap_mode='r')).to_zarr('{dst}')",
    ".npz": "import numpy as np, zarr; zarr.save_array('{dst}', np.load('{src}')['NAME'])",
    ".csv": "import numpy as np, zarr; zarr.save_array('{dst}', np.loadtxt('{src}', delimiter=','))",
    ".tsv": "import numpy as np, zarr; zarr.save_array('{dst}', np.loadtxt('{src}', delimiter='\\t'))",
    ".mtx": "import scipy.io; from dask_nmf.datasets import write_csr_zarr; "
    "write_csr_zarr('{dst}', scipy.io.mmread('{src}'))",
}


def check_input_format(path: str) -> None:
    """Refuse a file of a format dask-nmf does not read, saying how to convert it."""
    stem, ext = os.path.splitext(path.rstrip("/"))
    ext = ext.lower()
    if ext not in CONVERSIONS or os.path.isdir(path):
        return
    recipe = CONVERSIONS[ext].format(src=path, dst=f"{stem}.zarr")
    then = f"then pass {stem}.zarr"
    if ext == ".h5ad":
        then += " with --array X (or a layer: --array layers/NAME)"
    raise Abort(
        f"{path} is a {ext} file; dask-nmf reads zarr stores. Convert it once with: "
        f'python -c "{recipe}", {then}'
    )


def fail_on_input_errors(fn, *args, **kwargs):
    from .cluster import ClusterError
    from .io import InputError
    from .loop import FitError

    try:
        return fn(*args, **kwargs)
    except (InputError, ClusterError, FitError) as exc:  # one line, never "converged"
        raise Abort(str(exc)) from None
    except FileNotFoundError as exc:
        raise Abort(str(exc)) from None


cluster_options = [
    click.option("--scheduler", metavar="ADDRESS", help="Connect to this dask scheduler."),
    click.option(
        "--scheduler-file",
        metavar="PATH",
        help="Connect to the scheduler named in this file (dask scheduler --scheduler-file).",
    ),
    click.option("--n-workers", default=2, show_default=True, help="Embedded cluster: workers."),
    click.option(
        "--threads-per-worker", default=1, show_default=True, help="Embedded cluster: threads each."
    ),
    click.option(
        "--memory-limit",
        default="auto",
        show_default=True,
        help="Embedded cluster: memory per worker.",
    ),
]


def with_cluster_options(fn):
    for option in reversed(cluster_options):
        fn = option(fn)
    return fn


def cli_words(reason: str | None) -> str:
    """A stop reason in the options' names (--max-iter, --tol)."""
    if reason is None:  # (a finished run read back)
        return "finished earlier"
    return reason.replace("max_iter", "--max-iter").replace(" tol", " --tol")
