"""``dask-nmf rank``: choose k (see :func:`dask_nmf.select_rank`)."""

from __future__ import annotations

import os

import click

from .cli_session import (
    Abort,
    check_cluster_options,
    check_input_format,
    cluster_session,
    fail_on_input_errors,
    with_cluster_options,
)


@click.command()
@click.argument("input_", metavar="INPUT")
@click.option("--ks", default="2-12", show_default=True, help="Candidate ranks: 2-12 or 2,4,8.")
@click.option("--restarts", type=int, default=3, show_default=True, help="Random starts per rank.")
@click.option(
    "--holdout", type=float, default=0.05, show_default=True, help="Fraction of entries held out."
)
@click.option(
    "--beta-loss",
    type=click.Choice(["frobenius", "kullback-leibler"]),
    default="frobenius",
    show_default=True,
    help="The cost every fit minimizes (masked MU).",
)
@click.option(
    "--max-iter", type=int, default=200, show_default=True, help="Passes over INPUT at most."
)
@click.option(
    "--tol",
    type=float,
    default=1e-4,
    show_default=True,
    help="scikit-learn's stopping rule on the summed cost of all fits (0: run --max-iter).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Held-out entries and starts.")
@click.option("--array", "array_name", default=None, help="The array inside a zarr group.")
@click.option("--block-rows", type=int, default=None, help="Rows per block (default: from memory).")
@click.option("--plot", default=None, help="Write the rank curves to this PNG.")
@click.option("--json", "json_path", default=None, help="Write the table to this JSON file.")
@click.option("--overwrite", is_flag=True, help="Replace existing --plot and --json files.")
@with_cluster_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def rank(
    input_,
    ks,
    restarts,
    holdout,
    beta_loss,
    max_iter,
    tol,
    seed,
    array_name,
    block_rows,
    plot,
    json_path,
    overwrite,
    scheduler,
    scheduler_file,
    n_workers,
    threads_per_worker,
    memory_limit,
    quiet,
) -> None:
    """Fit every rank in --ks (with --restarts starts each) in the same passes over
    INPUT, holding out a fraction of its entries; print, per k, the held-out and
    training errors and the stability of the components across restarts.
    NaN entries are missing."""
    from tqdm.auto import tqdm

    from .rank import parse_ks, select_rank

    check_cluster_options(scheduler, scheduler_file, n_workers, threads_per_worker, memory_limit)
    check_input_format(input_)
    candidates = fail_on_input_errors(parse_ks, ks)
    for path in (plot, json_path):
        # (refused before any work: the fits take long, the files are the user's)
        if path and os.path.exists(path) and not overwrite:
            raise Abort(f"{path} exists; --overwrite replaces it")
    with cluster_session(
        scheduler, n_workers, threads_per_worker, memory_limit, quiet, scheduler_file
    ) as client:
        bar = tqdm(total=max_iter, desc="passes (all ranks)", disable=quiet, leave=False)
        result = fail_on_input_errors(
            select_rank,
            input_,
            candidates,
            n_restarts=restarts,
            holdout=holdout,
            beta_loss=beta_loss,
            max_iter=max_iter,
            tol=tol,
            random_state=seed,
            array=array_name,
            block_rows=block_rows,
            client=client,
            callback=lambda t, loss: bar.update(1),
        )
        bar.close()
    click.echo(result.table())
    stopped = "converged" if result.converged else "max_iter reached"
    click.echo(
        f"chosen k = {result.best_k} (the smallest k within one std of the lowest held-out "
        f"error); {result.n_iter} passes over INPUT for {len(result.candidates)} fits ({stopped}), {result.seconds:.1f} s"
    )
    if plot:
        result.plot(plot)
        click.echo(f"plot written to {plot}")
    if json_path:
        with open(json_path, "w") as f:
            f.write(result.to_json())
