"""The ``dask-nmf`` command: fit, transform, info (demo and rank in modules of their own).

Bad input exits with status 2 and a one-line message (no traceback); Ctrl-C
during ``fit`` leaves the output store resumable and exits with status 130.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any

import click

from . import __version__
from .cli_session import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Abort,
    Interrupts,
    Progress,
    check_cluster_options,
    check_input_format,
    cli_words,
    cluster_session,
    fail_on_input_errors,
    with_cluster_options,
)
from .solvers import BETA_LOSSES, SOLVERS


class BetaLoss(click.ParamType):
    """``--beta-loss``: a cost's name or a number, converted with :func:`solvers.beta_of`
    (names stay names: they are what results record)."""

    name = "NAME|NUMBER"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from .io import InputError
        from .solvers import beta_of

        if not isinstance(value, str) or value in BETA_LOSSES:
            return value
        try:
            return beta_of(float(value))
        except (ValueError, InputError):
            names = ", ".join(sorted(BETA_LOSSES))
            self.fail(f"{value!r} is neither a cost ({names}) nor a finite number", param, ctx)


@click.group()
@click.version_option(__version__, prog_name="dask-nmf")
def cli() -> None:
    """Non-negative matrix factorization of zarr stores on dask (Lee & Seung MU)."""


@cli.command()
@click.argument("input_", metavar="INPUT")
@click.option(
    "-k", "--n-components", "k", type=int, required=True, help="Rank of the factorization."
)
@click.option("-o", "--output", required=True, help="Result zarr group (also the checkpoint).")
@click.option(
    "--beta-loss",
    type=BetaLoss(),
    default="frobenius",
    show_default=True,
    help=f"The cost: {', '.join(sorted(BETA_LOSSES))} or a number (the β of the β-divergence).",
)
@click.option(
    "--solver",
    type=click.Choice(sorted({name for name, _ in SOLVERS})),
    default="mu",
    show_default=True,
    help="The algorithm (mu: Lee & Seung's multiplicative updates).",
)
@click.option(
    "--shuffle", is_flag=True, help="Solvers that update coordinates in turn: random order."
)
@click.option(
    "--accelerate",
    is_flag=True,
    help="Frobenius, mu or cd: accelerated updates (several W and H updates per pass over INPUT).",
)
@click.option(
    "--init",
    type=click.Choice(["random", "nndsvd", "nndsvda", "nndsvdar"]),
    default=None,
    show_default="nndsvda if K <= min(rows, columns), else random",
    help="The starting W and H (as scikit-learn's; nndsvd* from a randomized SVD).",
)
@click.option(
    "--max-iter", type=int, default=200, show_default=True, help="At most this many iterations."
)
@click.option(
    "--tol",
    type=float,
    default=1e-4,
    show_default=True,
    help="Stop when the rule's value (on the progress bar) is below it: MU, the decrease of "
    "the error over 10 iterations relative to the initial error; cd, the violation relative "
    "to the first iteration's. 0 runs all --max-iter.",
)
@click.option(
    "--missing",
    default=None,
    help="Fit the observed entries only: 'nan' (NaN are missing) or a fill value, e.g. -9999.",
)
@click.option(
    "--mask",
    default=None,
    help="A boolean zarr array of INPUT's shape, True where observed (the others are missing).",
)
@click.option("--seed", type=int, default=None, help="Random seed (reproducible runs).")
@click.option(
    "--alpha-w",
    type=float,
    default=0.0,
    show_default=True,
    help="Regularization of W (scaled by the columns, as scikit-learn).",
)
@click.option(
    "--alpha-h",
    default="same",
    show_default=True,
    help="Regularization of H (scaled by the rows); 'same' as --alpha-w.",
)
@click.option(
    "--l1-ratio",
    type=float,
    default=0.0,
    show_default=True,
    help="The L1 share of the regularization (0: L2 only, 1: L1 only).",
)
@click.option("--array", "array_name", default=None, help="The array inside a zarr group.")
@click.option("--variable", default=None, help="xarray: the variable of the zarr Dataset.")
@click.option("--sample-dims", default=None, help="xarray: dims stacked into rows, e.g. y,x.")
@click.option("--feature-dims", default=None, help="xarray: dims stacked into columns, e.g. band.")
@with_cluster_options
@click.option(
    "--checkpoint-every",
    type=int,
    default=10,
    show_default=True,
    help="Iterations between checkpoints written to OUTPUT.",
)
@click.option(
    "--loss-every",
    type=int,
    default=None,
    help="KL: evaluate the loss every N iterations (default 10; it costs a log per entry).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in OUTPUT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option(
    "--block-rows",
    type=int,
    default=None,
    show_default="from the workers' memory and dask's array.chunk-size",
    help="Rows of INPUT per block (one task per block and pass).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default=None,
    show_default="float32 for float32 INPUT, else float64",
    help="Compute in this dtype.",
)
@click.option(
    "--keep-in-memory/--no-keep-in-memory",
    default=None,
    help="Keep V's decoded blocks in worker memory (default: when they fit in half of it).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages.")
def fit(
    input_,
    k,
    output,
    beta_loss,
    solver,
    shuffle,
    accelerate,
    init,
    missing,
    mask,
    max_iter,
    tol,
    seed,
    alpha_w,
    alpha_h,
    l1_ratio,
    array_name,
    variable,
    sample_dims,
    feature_dims,
    scheduler,
    scheduler_file,
    n_workers,
    threads_per_worker,
    memory_limit,
    checkpoint_every,
    loss_every,
    resume,
    overwrite,
    block_rows,
    dtype,
    keep_in_memory,
    quiet,
) -> None:
    """Factorize INPUT (a zarr store or URL) into W and H, written to OUTPUT.

    INPUT is a zarr array, or a group with --array (an AnnData store's X);
    for a .h5ad, .npy, .csv or .mtx file the error says how to convert it.

    OUTPUT must be absent or a dask_nmf result: --overwrite replaces only a
    dask_nmf result (never other files, never INPUT), and --resume on a
    finished run reports it instead of running it again, unless --max-iter
    asks for more iterations than it ran.
    """
    from . import driver, options, outputs, resuming

    check_cluster_options(scheduler, scheduler_file, n_workers, threads_per_worker, memory_limit)

    xr_opts = {
        "variable": variable,
        "sample_dims": _split(sample_dims),
        "feature_dims": _split(feature_dims),
    }

    if alpha_h != "same":
        try:
            alpha_h = float(alpha_h)
        except ValueError:
            raise Abort(f"--alpha-h must be 'same' or a number; got {alpha_h!r}") from None
    if resume and overwrite:
        raise Abort("--resume and --overwrite contradict each other")
    missing = _missing_option(missing, mask)
    # Cheap checks of the options, the store (exists, is an array) and OUTPUT
    # (absent or ours, not V) before any cluster starts.
    fit_options = fail_on_input_errors(
        options.FitOptions,
        k,
        beta_loss=beta_loss,
        solver=solver,
        init=init,
        max_iter=max_iter,
        tol=tol,
        random_state=seed,
        alpha_W=alpha_w,
        alpha_H=alpha_h,
        l1_ratio=l1_ratio,
        shuffle=shuffle,
        accelerate=accelerate,
        loss_every=loss_every,
        checkpoint_every=checkpoint_every,
        missing=missing,
    )
    check_input_format(input_)
    fail_on_input_errors(
        driver.input_matrix, input_, block_rows, array=array_name, dtype=dtype, **xr_opts
    )
    _, meta = fail_on_input_errors(
        outputs.check_output,
        output,
        overwrite=overwrite,
        resume=resume,
        inputs=[*outputs.input_locations(input_), *(outputs.input_locations(mask) if mask else [])],
    )
    start = 0
    if resume:
        state = meta.get("state") or {}
        start = int(state.get("iteration", 0))
        done, note = resuming.finished_run(meta, max_iter)
        if done:
            click.echo(f"{output}: {note.replace('max_iter', '--max-iter')}", err=True)
            return
        if note is not None and not quiet:
            click.echo(f"{output}: {note.replace('max_iter', '--max-iter')}", err=True)

    with cluster_session(
        scheduler, n_workers, threads_per_worker, memory_limit, quiet, scheduler_file
    ) as client:
        rule = fit_options.algorithm.criterion_name
        progress = Progress(max_iter, start, quiet, rule, tol)
        t0 = time.perf_counter()
        interrupts = Interrupts()
        try:
            with interrupts, warnings.catch_warnings():
                warnings.simplefilter("ignore", resuming.ResumeNote)  # (said above)
                reading = options.ReadOptions(
                    block_rows=block_rows,
                    keep_in_memory=keep_in_memory,
                    array=array_name,
                    dtype=dtype,
                    mask=mask,
                    **xr_opts,
                )
                res = fail_on_input_errors(
                    driver.fit,
                    input_,
                    fit_options,
                    reading,
                    client=client,
                    callback=progress,
                    on_criterion=progress.criterion,
                    checkpoint=output,
                    resume=resume,
                    overwrite=overwrite,
                    on_checkpoint=lambda it, path: progress.log(
                        f"checkpoint: iteration {it} -> {path}"
                    ),
                )
        except Exception:
            progress.close()  # (before the error's line)
            raise
        except KeyboardInterrupt:
            interrupts.__exit__()  # (already done, unless Ctrl-C came again inside it)
            progress.close()
            click.echo(
                f"\ninterrupted; {output} holds the last checkpoint: continue with --resume",
                err=True,
            )
            sys.exit(EXIT_INTERRUPTED)
        progress.close()
    if not quiet:
        click.echo(
            f"{res.n_iter} iterations in {time.perf_counter() - t0:.1f} s; "
            f"loss {res.loss_history[0]:.6g} -> {res.loss_history[-1]:.6g}; "
            f"reconstruction error {res.reconstruction_err:.6g}; written to {output}"
        )
        click.echo(f"stopped: {cli_words(res.stop_reason)}")


@cli.command()
@click.argument("input_", metavar="INPUT")
@click.option("--model", required=True, help="A result of `dask-nmf fit` (or NMF.save).")
@click.option("-o", "--output", required=True, help="Zarr array to write W to.")
@click.option("--array", "array_name", default=None, help="The array inside a zarr group.")
@click.option("--variable", default=None, help="xarray: the variable of the zarr Dataset.")
@click.option("--sample-dims", default=None, help="xarray: dims stacked into rows, e.g. y,x.")
@click.option("--feature-dims", default=None, help="xarray: dims stacked into columns, as at fit.")
@click.option(
    "--block-rows",
    type=int,
    default=None,
    show_default="from the workers' memory and dask's array.chunk-size",
    help="Rows of INPUT per block.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT written by dask_nmf.")
@with_cluster_options
@click.option("-q", "--quiet", is_flag=True, help="No messages.")
def transform(
    input_,
    model,
    output,
    array_name,
    variable,
    sample_dims,
    feature_dims,
    block_rows,
    overwrite,
    scheduler,
    scheduler_file,
    n_workers,
    threads_per_worker,
    memory_limit,
    quiet,
) -> None:
    """W for the rows of INPUT with H fixed from MODEL, written to OUTPUT.

    OUTPUT must be absent or a dask_nmf store (--overwrite replaces only that).
    """
    import zarr

    from . import driver, outputs, persistence, projection

    check_cluster_options(scheduler, scheduler_file, n_workers, threads_per_worker, memory_limit)
    check_input_format(input_)
    inputs = fail_on_input_errors(lambda: [*outputs.input_locations(input_), outputs.locate(model)])
    fail_on_input_errors(outputs.check_output, output, overwrite=overwrite, inputs=inputs)
    xr_opts = {
        "variable": variable,
        "sample_dims": _split(sample_dims),
        "feature_dims": _split(feature_dims),
    }
    fail_on_input_errors(driver.input_matrix, input_, block_rows, array=array_name, **xr_opts)
    meta = fail_on_input_errors(persistence.read_meta, model)
    _, H, _ = fail_on_input_errors(persistence.read_state, model)
    params = meta.get("params", {})
    with cluster_session(
        scheduler, n_workers, threads_per_worker, memory_limit, quiet, scheduler_file
    ) as client:
        W = fail_on_input_errors(
            projection.transform,
            input_,
            H,
            beta_loss=params.get("beta_loss", "frobenius"),
            solver=params.get("solver", "mu"),
            max_iter=params.get("max_iter", 200),
            tol=params.get("tol", 1e-4),
            alpha_W=params.get("alpha_W", 0.0),
            l1_ratio=params.get("l1_ratio", 0.0),
            block_rows=block_rows,
            client=client,
            array=array_name,
            shuffle=params.get("shuffle", False),
            random_state=params.get("random_state"),
            # (a model fitted with a mask: the new rows' NaN are their missing entries)
            missing="nan" if params.get("missing") == "mask" else params.get("missing"),
            **xr_opts,
        )
        W = persistence._unlabelled(W)  # (the store keeps W's values only)
        claim = fail_on_input_errors(
            outputs.claim_output, output, overwrite=overwrite, inputs=inputs
        )
        with claim:
            claim.clear()
            # The marker goes in with the array's metadata (it is ours from its
            # first byte); "complete" is switched on last.
            mark = {"transform_of": str(input_), "model": str(model), "complete": False}
            target = zarr.create_array(
                output,
                shape=W.shape,
                chunks=(W.chunks[0][0], W.shape[1]),
                dtype=W.dtype,
                attributes={"dask_nmf": mark},
            )
            client.compute(W.store(target, lock=False, compute=False), sync=True)
            target.attrs.update({"dask_nmf": dict(mark, complete=True)})
    if not quiet:
        click.echo(f"W {W.shape} written to {output}")


@cli.command()
@click.argument("path")
def info(path) -> None:
    """Parameters, shape, loss and iterations of a result or checkpoint."""
    from . import persistence

    meta = fail_on_input_errors(persistence.read_meta, path)
    state = meta.get("state") or {}
    params = meta.get("params", {})
    source = meta.get("input", {})
    lines = [
        f"dask_nmf result: {path} (written by dask_nmf {meta.get('version')})",
        f"input: {source.get('path', source.get('kind'))} shape={source.get('shape')} dtype={source.get('dtype')} chunks={source.get('chunks')}",
        "parameters: " + ", ".join(f"{k}={v}" for k, v in params.items() if k != "estimator"),
    ]
    if state:
        # The latest evaluated loss (KL may skip some, and knows the last one late).
        losses = [x for x in state.get("loss_history", []) if not math.isnan(x)]
        lines += [
            f"iterations: {state['iteration']} ({'finished' if state.get('finished') else 'checkpoint, resumable'}; "
            f"converged={state.get('converged')})",
            f"loss: {losses[0]:.6g} -> {losses[-1]:.6g}" if losses else "loss: -",
        ]
        if losses:
            lines.append(f"reconstruction error: {math.sqrt(2 * losses[-1]):.6g}")
    else:
        lines.append("no complete state yet")
    click.echo("\n".join(lines))


def _missing_option(missing: str | None, mask: str | None) -> Any:
    """``FitOptions.missing`` from --missing and --mask."""
    if mask is not None:
        if missing is not None:
            raise Abort("--missing and --mask contradict each other: give one")
        return "mask"
    if missing is None or missing.lower() == "nan":
        return None if missing is None else "nan"
    try:
        return float(missing)
    except ValueError:
        raise Abort(
            f"--missing must be 'nan' or a number (a fill value); got {missing!r}"
        ) from None


def _split(dims: str | None) -> tuple[str, ...] | None:
    """``"y,x"`` -> ``("y", "x")``."""
    return None if dims is None else tuple(d.strip() for d in dims.split(",") if d.strip())


from .cli_demo import demo  # noqa: E402  (commands of their own modules)
from .cli_rank import rank  # noqa: E402

cli.add_command(demo)
cli.add_command(rank)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``dask-nmf`` console script."""
    try:
        return cli.main(args=argv, prog_name="dask-nmf", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        # One line, no usage block, no traceback.
        click.echo(f"dask-nmf: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
