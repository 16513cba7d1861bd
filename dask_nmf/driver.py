"""The iteration driver: one dask graph, and one pass over V, per MU iteration.

Each iteration submits a graph of fixed size: for every row block, one task
reads V_i, updates W_i and emits the partial sums of the H update; a tree of
small tasks adds the partials up and one more turns them into the new H (a
``k x n`` array) and the two loss numbers the client fetches.  On a cluster
the next iteration's graph is submitted before this one ends and refers to
the new H by its future, so no client round trip separates two passes.  W's
blocks stay where they were computed (futures on a distributed cluster,
arrays in this process on dask's local scheduler).

On a distributed cluster the scheduler keeps the recipe of every task that a
held result depends on, so W_t's lineage would reach back to W_0.  Every
``checkpoint_every`` iterations W is written to a zarr store and read back
from there, which gives the next W blocks no history: lineage (and the
scheduler's task table) stays bounded, and a lost worker costs at most the
iterations since the last checkpoint, replayed by dask itself.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from . import outputs, persistence, resuming, workers
from .checkpoint import Checkpoints, lineage_store
from .cluster import Runner, resolve_client
from .init import initialize, plan_start
from .io import (
    BlockReader,
    InputError,
    InputMatrix,
    block_sources,
    check_stats,
    label_results,
)
from .loop import Iterate, IterationLoop
from .missing import check_input as check_missing_input
from .missing import masked_input, split_missing, stats_function
from .options import FitOptions, ReadOptions
from .passes import PassBuilder, as_delayed, input_stats
from .persistence import NMFResult


def factorize(
    V: Any,
    n_components: int | str,
    *,
    beta_loss: str | float = "frobenius",
    solver: str = "mu",
    init: str | None = None,
    W_init: Any = None,
    H_init: Any = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: Any = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    block_rows: int | None = None,
    client: Any = None,
    callback: Callable[[int, float], Any] | None = None,
    verbose: bool = False,
    checkpoint: Any = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    overwrite: bool = False,
    keep_in_memory: bool | None = None,
    array: str | None = None,
    dtype: Any = None,
    storage_options: dict | None = None,
    on_checkpoint: Callable[[int, Any], Any] | None = None,
    on_criterion: Callable[[int, float], Any] | None = None,
    variable: str | None = None,
    sample_dims: Any = None,
    feature_dims: Any = None,
    loss_every: int | None = None,
    shuffle: bool = False,
    accelerate: bool = False,
    missing: Any = None,
) -> NMFResult:
    """Factorize a non-negative matrix V ~= W H with Lee & Seung's multiplicative updates.

    Parameters
    ----------
    V : str, os.PathLike, zarr.Array, dask.array.Array or numpy.ndarray
        The m x n non-negative matrix: a zarr store (path or fsspec URL), a
        zarr array, a dask array or a NumPy array.  It is read in row blocks
        and never modified.
    n_components : int or "auto"
        The rank k; "auto" as in scikit-learn: the rank of ``W_init``/``H_init``
        when given, else the number of columns of V.
    beta_loss : {"frobenius", "kullback-leibler", "itakura-saito"} or float
        The cost, a β-divergence: ``0.5 * ||V - WH||^2`` (2), the generalized
        KL divergence (1), Itakura-Saito (0) or any other real β (scikit-learn's
        MU for it; β <= 0 refuses a V with zeros, as scikit-learn does).
    solver : str
        The algorithm: "mu" (Lee & Seung's multiplicative updates); see
        :data:`dask_nmf.solvers.SOLVERS` for what is registered.
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
        Like scikit-learn's; None means "nndsvda" if k <= min(m, n), else
        "random".  "custom" takes ``W_init`` and ``H_init``.
    W_init, H_init : array-like, optional
        Starting factors for ``init="custom"`` (given both, init defaults to it).
    max_iter : int
        Maximum number of iterations.
    tol : float
        scikit-learn's stopping rule: every 10 iterations, stop when the
        decrease of ``sqrt(2 * loss)`` over the last 10 iterations, relative to
        its initial value, is below ``tol``.  0 runs ``max_iter`` iterations.
    random_state : int, numpy.random.RandomState or None
        Seed for the initialization; the same seed and ``block_rows`` give the
        same result.
    alpha_W, alpha_H, l1_ratio : float
        Regularization, scaled as in scikit-learn (W terms by n, H terms by m).
    block_rows : int, optional
        Rows of V per block (and per W block).  Default: from dask's
        ``array.chunk-size`` (on a cluster at most 1/8 of a worker thread's
        memory limit for a dense zarr store, 1/16 for other lazy inputs), at
        least one block per worker thread (two where V is read from a store),
        sized for an even share between the threads, in whole store row
        chunks where there are enough.
    client : distributed.Client, optional
        Where to run; default: the current default client if there is one,
        else dask's local threaded scheduler.  No cluster is started here.
    callback : callable, optional
        ``callback(iteration, loss)`` once per iteration, when its loss is
        known (for KL that is during the next pass); ``loss`` is NaN for the
        iterations whose loss ``loss_every`` skips.
    verbose : bool
        Print the loss every 10 iterations.
    checkpoint : str or os.PathLike, optional
        A zarr group to write the state to every ``checkpoint_every``
        iterations and at the end (see :mod:`dask_nmf.persistence`).
    checkpoint_every : int
        Iterations between checkpoints (also the lineage cut on a cluster).
    resume : bool
        Continue from the last complete state in ``checkpoint``.
    overwrite : bool
        Replace an existing ``checkpoint`` store instead of refusing to.
    keep_in_memory : bool, optional
        Keep V's decoded blocks in memory after the first read.  Default:
        when V takes at most half the workers' memory (a quarter of this
        machine's free memory on the local scheduler).
    array : str, optional
        The array's name when V is a zarr group.
    dtype : {None, "float32", "float64"}
        Compute in this dtype (default: float32 for float32 V, else float64).
    storage_options : dict, optional
        fsspec options for URLs of V and of the checkpoint.
    on_checkpoint : callable, optional
        ``on_checkpoint(iteration, path)`` after each complete checkpoint.
    on_criterion : callable, optional
        ``on_criterion(iteration, value)`` each time the stopping rule is
        tested: the value it compares with ``tol`` (MU: the decrease of the
        error over the last 10 iterations relative to the initial error; cd:
        the violation relative to the first iteration's).
    variable, sample_dims, feature_dims : optional
        For xarray input (a DataArray, a Dataset, or a zarr store opened with
        xarray when one of these is given): the variable, and the dimensions
        stacked into samples (rows) and features (columns).  W and H then come
        back as DataArrays with V's coordinates and a ``component`` dimension.
    loss_every : int, optional
        KL and other β than 2 only: evaluate the loss every ``loss_every`` iterations (and at the
        last one, and wherever ``tol`` needs it); the others are NaN in
        ``loss_history``.  The KL loss takes a logarithm per entry of V, which
        costs about as much as the update itself, so the default is 10, the
        iterations scikit-learn's stopping rule looks at.  1 gives every
        iteration's loss.  The Frobenius loss comes from the update's own
        partial sums and is always known at every iteration.

    shuffle : bool
        For solvers that update coordinates in turn: randomize their order
        (seeded by ``random_state``).
    accelerate : bool
        Frobenius MU and cd: Gillis & Glineur's accelerated MU / HALS, several
        W updates per block while V's block is in memory and several H updates
        per pass from the same sums (each is a step of the same solver: the
        cost never increases).
        Off by default (the default follows scikit-learn step for step).
    missing : None, "nan", float, or a boolean array of V's shape
        Fit only V's observed entries (Frobenius and KL MU): None refuses NaN;
        "nan" takes NaN as missing; a number takes entries equal to it (and NaN)
        as missing; a boolean mask (NumPy, dask, zarr array or path; True =
        observed, row-chunked like V) names them.  See :mod:`dask_nmf.missing`.

    Returns
    -------
    NMFResult
        ``W`` (dask array, row blocks aligned with V's), ``H`` (NumPy),
        ``loss_history``, ``n_iter``, ``converged``, ``stop_reason``.
    """
    if init is None and W_init is not None and H_init is not None:
        init = "custom"
    missing, mask = split_missing(missing)
    reading = ReadOptions(
        block_rows=block_rows,
        keep_in_memory=keep_in_memory,
        array=array,
        dtype=dtype,
        storage_options=storage_options,
        variable=variable,
        sample_dims=sample_dims,
        feature_dims=feature_dims,
        mask=mask,
    )
    if isinstance(n_components, str) and n_components == "auto":
        n_components = _auto_rank(V, W_init, H_init, reading)
    options = FitOptions(
        n_components,
        beta_loss=beta_loss,
        solver=solver,
        init=init,
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
        alpha_W=alpha_W,
        alpha_H=alpha_H,
        l1_ratio=l1_ratio,
        shuffle=shuffle,
        accelerate=accelerate,
        loss_every=loss_every,
        checkpoint_every=checkpoint_every,
        missing=missing,
    )
    return fit(
        V,
        options,
        reading,
        W_init=W_init,
        H_init=H_init,
        client=client,
        callback=callback,
        verbose=verbose,
        checkpoint=checkpoint,
        resume=resume,
        overwrite=overwrite,
        on_checkpoint=on_checkpoint,
        on_criterion=on_criterion,
    )


def fit(
    V: Any,
    options: FitOptions,
    reading: ReadOptions | None = None,
    *,
    W_init: Any = None,
    H_init: Any = None,
    client: Any = None,
    callback: Callable[[int, float], Any] | None = None,
    verbose: bool = False,
    checkpoint: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    on_checkpoint: Callable[[int, Any], Any] | None = None,
    on_criterion: Callable[[int, float], Any] | None = None,
) -> NMFResult:
    """:func:`factorize` with its options already made (what the estimator and
    the command line call, having validated the options before anything else):
    ``options`` the algorithm's, ``reading`` how V is read; the rest are
    :func:`factorize`'s parameters of the same names.

    Flow: open V → claim the output → validate V → solver and initial state →
    :class:`~dask_nmf.loop.IterationLoop` → result.
    """
    t_start = time.perf_counter()
    reading = reading or ReadOptions()
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint= naming the store to resume from")

    storage_options = reading.storage_options
    V_places = outputs.input_locations(V, storage_options)
    V, masked = masked_input(V, options.missing, reading.mask, storage_options, reading.array)
    runner = Runner(resolve_client(client))
    block_rows = reading.block_rows
    if resume and block_rows is None and checkpoint is not None:
        # Continue with the checkpoint's row blocks (W is stored in them).
        with contextlib.suppress(FileNotFoundError, ValueError):
            block_rows = persistence.read_meta(checkpoint, storage_options)["params"]["block_rows"]
    Vin = reading.open(
        V,
        runner,
        block_rows,
        n_components=options.n_components,
        **({"array": None} if masked else {}),
    )
    runner.expect_blocks(Vin, checkpoint, storage_options)  # (for ClusterError's messages)
    check_missing_input(Vin, options.missing)
    m, n = Vin.shape
    k = options.n_components
    init, custom = plan_start(options, Vin, W_init, H_init, resume)
    params = dict(options.record(), init=init, block_rows=Vin.block_rows, dtype=Vin.dtype.name)

    # The output is taken before V is read: refused unless it is absent or ours,
    # and locked against other runs until this one ends.
    resume_meta, claim = None, None
    note = None  # about a finished run being resumed
    temp_store = None
    if checkpoint is not None:
        claim = outputs.claim_output(
            checkpoint,
            overwrite=overwrite,
            resume=resume,
            inputs=V_places,
            storage_options=storage_options,
            what="checkpoint",
        )
    # What the fit holds or changes for its duration (the output's lock, BLAS
    # threads, the workers' malloc, read buffers), undone in the ``finally`` below.
    settings = contextlib.ExitStack()
    if claim is not None:
        settings.callback(claim.release)  # (last of all)
    try:
        if resume:
            resume_meta = claim.marker
            resuming.check_resumable(resume_meta, params, Vin, V_places)
            done, note = resuming.finished_run(resume_meta, options.max_iter)
            if done:
                warnings.warn(f"{checkpoint!r}: {note}", resuming.ResumeNote, stacklevel=2)
                return persistence.load(checkpoint, storage_options)

        # Keep V's decoded blocks in memory when they fit: every pass after the first
        # is then a memory-bound one.
        keep_in_memory = reading.keep_in_memory
        if Vin.array is not None:
            if keep_in_memory is None:
                keep_in_memory = Vin.nbytes <= runner.memory_budget()
            if keep_in_memory:
                (Vin.array,) = runner.persist(Vin.array)
                Vin.zarr = None  # the iterations use the kept blocks, not the store
        local_stats, block_stats = None, stats_function(options.missing)
        if Vin.local is not None:
            # V is here: check it before any of it is sent to a cluster.
            local_stats = input_stats(Runner(None), block_sources(Vin), stats=block_stats)
            check_stats(local_stats, dtype=Vin.dtype, shape=Vin.shape, k=k)
        sources = runner.place(block_sources(Vin))
        # Re-read from a zarr store: every pass reads V's blocks inside its own tasks.
        reader = BlockReader(Vin.zarr, Vin.dtype) if Vin.zarr is not None else None

        try:
            # validation and statistics
            stats = local_stats or input_stats(runner, sources, reader, Vin.bounds, block_stats)
            check_stats(stats, dtype=Vin.dtype, shape=Vin.shape, k=k)
            options.algorithm.check_stats(stats)
            fingerprint = resuming.fingerprint(stats, V_places)
            if resume_meta is not None:
                resuming.check_fingerprint(resume_meta, fingerprint)
                if note is not None:
                    warnings.warn(f"{checkpoint!r}: {note}", resuming.ResumeNote, stacklevel=2)
        except BaseException:
            runner.release_read_buffers()  # (on success, released when the fit ends)
            raise
        solver = options.solver_for(Vin.shape, stats, Vin.dtype)
        solver.threads = 1 if runner.distributed else runner.parallelism
        passes = PassBuilder(runner, Vin, sources, reader, solver)

        store = checkpoint
        if store is None and runner.distributed:
            # The lineage cut needs a store every worker can read.
            temp_store, store = lineage_store(runner)
        meta = {
            "params": params,
            "input": dict(Vin.source, fingerprint=fingerprint),
            "beta_loss": solver.loss_name,
        }
        settings.enter_context(runner.blas_limits())
        settings.enter_context(
            workers.tuned_for_blocks(runner.client, Vin.nbytes // len(Vin.bounds))
        )
        # (Exits run last in, first out: the buffers go before malloc is trimmed.)
        settings.callback(runner.release_read_buffers)
        checkpoints = None
        if store is not None:
            saved = None if store != checkpoint else _announce(verbose, on_checkpoint)
            checkpoints = Checkpoints(store, runner, Vin.bounds, storage_options, saved)
        if resume_meta is not None:
            W_h, H, losses, t, carry = checkpoints.restore(resume_meta)
            it = Iterate(W_h, H, t, losses, carry=carry)
        else:
            W_src, H = custom or initialize(
                init,
                Vin,
                k,
                stats,
                options.random_state,
                runner,
                reader,
                missing=options.missing,
                placed=sources,
            )
            it = Iterate(runner.place(W_src), H, 0)
            if checkpoints is not None:
                if claim is not None:
                    claim.clear()  # an earlier result, replaced only now (overwrite=True)
                checkpoints.create(Vin.shape, k, Vin.dtype, meta)
        it.H = np.asarray(it.H, dtype=Vin.dtype)
        if checkpoint is not None and resume_meta is None:
            # State 0 at once: an interrupted run is resumable from the start.
            it.W = checkpoints.save(it.W, it.H, 0, it.losses, False, False)

        def report(s: int, loss: float) -> None:
            if verbose and (s % 10 == 0 or s == options.max_iter) and not math.isnan(loss):
                print(
                    f"Epoch {s:02d} reached after {time.perf_counter() - t_start:.3f} seconds, "
                    f"error: {math.sqrt(2 * loss):f}"
                )
            if callback is not None:
                callback(s, loss)

        loop = IterationLoop.of_options(
            passes, solver, runner, options, checkpoints, report, on_criterion
        )
        it = loop.run(it)
        if checkpoint is not None:
            it.W = checkpoints.save(it.W, it.H, it.t, it.losses, it.converged, True, carry=it.carry)
        if runner.distributed:
            # The result's blocks must not depend on the temporary store.
            it.W, _ = runner.run([as_delayed(w) for w in it.W])
    except BaseException:
        if claim is not None:
            claim.abandon()  # a store this run created, with nothing complete in it
        raise
    finally:
        settings.close()
        if temp_store is not None:
            shutil.rmtree(temp_store, ignore_errors=True)

    W = da.concatenate(
        [
            da.from_delayed(as_delayed(w), shape=(b - a, k), dtype=Vin.dtype)
            for w, (a, b) in zip(it.W, Vin.bounds)
        ],
        axis=0,
    )
    W, H_out = label_results(W, it.H, Vin.labels)
    result = NMFResult(
        W=W,
        H=H_out,
        loss_history=[float(x) for x in it.losses],
        n_iter=it.t,
        converged=it.converged,
        beta_loss=solver.loss_name,
        stop_reason=it.stop_reason,
        params=params,
        source=Vin.source,
    )
    result.diagnostics = {"graph_tasks": passes.graph_tasks, "kept_in_memory": bool(keep_in_memory)}
    return result


def _announce(verbose: bool, on_checkpoint: Callable | None) -> Callable[[int, Any], None]:
    """What to do after each saved state of the user's checkpoint."""

    def saved(t: int, store: Any) -> None:
        if verbose:
            print(f"checkpoint: iteration {t} written to {store}")
        if on_checkpoint is not None:
            on_checkpoint(t, store)

    return saved


def _auto_rank(V: Any, W_init: Any, H_init: Any, reading: ReadOptions) -> int:
    """scikit-learn's ``n_components="auto"``: the rank of the custom W or H,
    else the number of features (V's columns)."""
    if H_init is not None and np.ndim(H_init) == 2:
        return int(np.shape(H_init)[0])
    if W_init is not None and np.ndim(W_init) == 2:
        return int(np.shape(W_init)[1])
    return int(reading.open(V).shape[1])


def input_matrix(V: Any, block_rows: int | None = None, **kw) -> InputMatrix:
    """Open V as the driver would (exposed for the estimator and the CLI)."""
    return ReadOptions(block_rows=block_rows, **kw).open(V)
