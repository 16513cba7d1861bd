"""``dask-nmf demo``: generate a dataset, factorize it on an embedded cluster, show the result."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import click

from .cli_session import (
    Abort,
    Progress,
    cli_words,
    cluster_session,
    fail_on_input_errors,
)
from .solvers import solver_class


@click.command()
@click.option(
    "-o",
    "--output-dir",
    default=None,
    help="Where to write the data and result (default: a temporary directory).",
)
@click.option("--rows", default=20_000, show_default=True, help="Rows of the generated matrix.")
@click.option("--cols", default=500, show_default=True, help="Its columns.")
@click.option("-k", "--n-components", "k", default=8, show_default=True, help="Its rank.")
@click.option("--max-iter", default=100, show_default=True, help="At most this many iterations.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def demo(output_dir, rows, cols, k, max_iter, quiet) -> None:
    """Generate a dataset, factorize it on an embedded cluster, show the result."""
    import numpy as np

    from . import driver
    from .datasets import make_low_rank_store

    keep = output_dir is not None
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            output_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dask-nmf-demo-"))
        os.makedirs(output_dir, exist_ok=True)
        data = os.path.join(output_dir, "V.zarr")
        out = os.path.join(output_dir, "result.zarr")
        # An existing DIR/V.zarr is reused if this demo wrote it with these sizes;
        # anything else there is the user's and is left alone.
        recipe = {"rows": rows, "cols": cols, "k": k, "seed": 0}
        if os.path.lexists(data):
            if _demo_recipe(data) != recipe:
                raise Abort(
                    f"{data} exists and is not this demo's {rows} x {cols} matrix; "
                    "choose another --output-dir"
                )
            click.echo(f"reusing the {rows} x {cols} matrix of rank {k} (+ noise) in {data}")
        else:
            click.echo(f"writing a {rows} x {cols} matrix of rank {k} (+ noise) to {data}")
            make_low_rank_store(data, rows, cols, k, attributes={"dask_nmf_demo": recipe})
        with cluster_session(None, 2, 1, "auto", quiet) as client:
            rule = solver_class("frobenius", "mu").criterion_name  # (factorize's defaults)
            progress = Progress(max_iter, 0, quiet, rule, 1e-4)
            res = fail_on_input_errors(
                driver.factorize,
                data,
                k,
                max_iter=max_iter,
                random_state=0,
                client=client,
                callback=progress,
                on_criterion=progress.criterion,
                checkpoint=out,
                overwrite=True,  # (only ever a dask_nmf result: see dask_nmf.outputs)
            )
            progress.close()
        losses = np.asarray(res.loss_history)
        click.echo("iteration  loss")
        for it in sorted({0, 1, 2, 5, *range(10, res.n_iter + 1, 10), res.n_iter}):
            click.echo(f"{it:9d}  {losses[it]:.6g}")
        monotone = bool(np.all(np.diff(losses) <= 1e-9 * losses[0]))
        click.echo(
            f"loss never increased: {monotone}; relative error "
            f"{res.reconstruction_err / math.sqrt(2 * _norm2(data) / 2):.4f}; "
            + (f"result in {out}" if keep else "result discarded (pass -o DIR to keep it)")
        )
        click.echo(f"stopped: {cli_words(res.stop_reason)}")


def _demo_recipe(path: str) -> dict | None:
    """The sizes a demo matrix at ``path`` was written with (None: not the demo's)."""
    import zarr

    try:
        return dict(zarr.open_array(path, mode="r").attrs.get("dask_nmf_demo", {})) or None
    except Exception:  # not a zarr array at all: not the demo's
        return None


def _norm2(path: str) -> float:
    import dask.array as da

    V = da.from_zarr(path)
    return float((V**2).sum().compute())
