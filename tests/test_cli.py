"""The dask-nmf command, through click's runner and as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import write_zarr

import dask_nmf
from dask_nmf.cli import cli


@pytest.fixture
def store(tmp_path, V_small):
    return write_zarr(tmp_path / "V.zarr", V_small, chunks=(40, 41))


@pytest.fixture
def address(cluster_client):
    return cluster_client.scheduler.address


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_fit_info_transform(tmp_path, store, address, V_small):
    out = str(tmp_path / "out.zarr")
    r = run(
        [
            "fit",
            store,
            "-k",
            "3",
            "-o",
            out,
            "--max-iter",
            "25",
            "--seed",
            "0",
            "--scheduler",
            address,
            "--checkpoint-every",
            "10",
        ]
    )
    assert r.exit_code == 0, r.output
    assert "checkpoint: iteration 10" in r.output and "checkpoint: iteration 20" in r.output
    assert "25 iterations" in r.output
    # Why it stopped, with what the rule last saw (iteration 20's value) and what to change.
    assert "decrease/err0=" in r.output  # the progress bar
    assert "stopped: --max-iter reached (25 iterations) before --tol was met" in r.output
    assert "at iteration 20" in r.output and "raise --max-iter" in r.output
    res = dask_nmf.load(out)
    direct = dask_nmf.factorize(
        V_small, 3, max_iter=25, random_state=0, block_rows=res.params["block_rows"]
    )
    np.testing.assert_allclose(res.H, direct.H, rtol=1e-9)

    r = run(["info", out])
    assert r.exit_code == 0
    assert "iterations: 25 (finished" in r.output and "n_components=3" in r.output
    assert "shape=[157, 41]" in r.output

    w_out = str(tmp_path / "W.zarr")
    r = run(["transform", store, "--model", out, "-o", w_out, "--scheduler", address, "-q"])
    assert r.exit_code == 0, r.output
    W = zarr.open_array(w_out, mode="r")
    assert W.shape == (157, 3) and W.attrs["dask_nmf"]["complete"]
    est = dask_nmf.NMF.load(out)
    np.testing.assert_allclose(W[...], est.transform(V_small), rtol=1e-9)


def test_resume_after_a_stopped_run(tmp_path, store, address, V_small):
    out = str(tmp_path / "out.zarr")
    assert (
        run(
            [
                "fit",
                store,
                "-k",
                "3",
                "-o",
                out,
                "--max-iter",
                "12",
                "--seed",
                "1",
                "--scheduler",
                address,
                "-q",
                "--tol",
                "0",
            ]
        ).exit_code
        == 0
    )
    r = run(
        [
            "fit",
            store,
            "-k",
            "3",
            "-o",
            out,
            "--max-iter",
            "30",
            "--seed",
            "1",
            "--scheduler",
            address,
            "-q",
            "--tol",
            "0",
            "--resume",
        ]
    )
    assert r.exit_code == 0, r.output
    straight = dask_nmf.factorize(
        V_small,
        3,
        max_iter=30,
        random_state=1,
        tol=0,
        block_rows=dask_nmf.load(out).params["block_rows"],
    )
    np.testing.assert_allclose(dask_nmf.load(out).H, straight.H, rtol=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "{tmp}/none.zarr", "-k", "3", "-o", "{tmp}/o.zarr"], "no zarr store"),
        (
            ["fit", "{neg}", "-k", "3", "-o", "{tmp}/o.zarr", "--scheduler", "{addr}"],
            "negative values",
        ),
        (
            ["fit", "{store}", "-k", "0", "-o", "{tmp}/o.zarr", "--scheduler", "{addr}"],
            "n_components",
        ),
        (["fit", "{group}", "-k", "3", "-o", "{tmp}/o.zarr", "--array", "nope"], "no array 'nope'"),
        (["fit", "{store}", "-k", "3", "-o", "{tmp}/o.zarr", "--beta-loss", "is"], "--beta-loss"),
        (["fit", "{store}", "-k", "3", "-o", "{existing}"], "already exists"),
        (["fit", "{store}", "-o", "{tmp}/o.zarr"], "-k"),
        (["info", "{tmp}/none.zarr"], "no dask_nmf result"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, store, address, args, message):
    neg = write_zarr(tmp_path / "neg.zarr", -np.ones((20, 5)), chunks=(10, 5))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("x", data=np.ones((10, 4)))
    existing = tmp_path / "existing.zarr"
    existing.mkdir()
    fill = dict(
        tmp=tmp_path,
        neg=neg,
        store=store,
        addr=address,
        group=tmp_path / "g.zarr",
        existing=existing,
    )
    argv = [a.format(**fill) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "dask_nmf.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dask-nmf: error:")]
    assert len(err_lines) == 1 and message in err_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.zarr").exists()  # nothing half-written


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_dropped_by_a_finalizer_comes_again(capsys):
    """Python drops a KeyboardInterrupt raised in a finalizer (a dask Future's
    ``__del__``, say); during a fit the CLI sends the signal again until it lands,
    and Python's report of the dropped one ("Exception ignored in ...") is not
    printed."""
    from dask_nmf.cli_session import Interrupts

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), Interrupts():
        Finalized()  # its __del__ takes the first KeyboardInterrupt
        time.sleep(5)
    assert time.perf_counter() - t0 < 2
    assert signal.getsignal(signal.SIGINT) is before
    assert "Exception ignored" not in capsys.readouterr().err


def test_ctrl_c_leaves_a_resumable_store(tmp_path):
    """A real `dask-nmf fit` process, interrupted with SIGINT, then resumed."""
    from dask_nmf.datasets import make_low_rank_store

    data = str(tmp_path / "V.zarr")
    make_low_rank_store(data, 20_000, 300, 5, chunk_rows=1000)
    out = str(tmp_path / "out.zarr")
    args = [
        sys.executable,
        "-m",
        "dask_nmf.cli",
        "fit",
        data,
        "-k",
        "5",
        "-o",
        out,
        "--max-iter",
        "100000",
        "--tol",
        "0",
        "--seed",
        "0",
        "--checkpoint-every",
        "2",
        "--n-workers",
        "1",
        "--threads-per-worker",
        "2",
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "checkpoint: iteration 4" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "--resume" in rest
    # One line says so (after the progress bar's last state): no worker tracebacks,
    # no scheduler warnings, though the signal went to the workers too (killpg).
    said = [line for line in rest.splitlines() if line.strip()]
    assert len(said) <= 3 and "Traceback" not in rest and "WARNING" not in rest, rest
    ck = dask_nmf.load(out)
    assert ck.n_iter >= 4
    r = subprocess.run(
        args[:-6]
        + [
            "--max-iter",
            str(ck.n_iter + 3),
            "--tol",
            "0",
            "--seed",
            "0",
            "--resume",
            "-q",
            "--n-workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert dask_nmf.load(out).n_iter == ck.n_iter + 3


def test_demo_runs_on_a_fresh_directory(tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "demo",
            "-o",
            str(tmp_path / "d"),
            "--rows",
            "3000",
            "--cols",
            "60",
            "--max-iter",
            "20",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "loss never increased: True" in r.output
    assert "stopped: --max-iter reached (20 iterations)" in r.output
    assert dask_nmf.load(tmp_path / "d" / "result.zarr").n_iter == 20


@pytest.mark.parametrize("command", ["fit", "transform", "demo", "info", "rank"])
def test_every_option_is_described_with_its_default(command):
    import click

    ctx = click.Context(cli.commands[command])
    for param in cli.commands[command].params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{command} {param.opts[0]} has no description"
        default = param.get_default(ctx, call=False)
        given = default is not None and type(default).__name__ != "Sentinel"  # (click's UNSET)
        if not param.is_flag and not param.required and given:
            assert param.show_default, f"{command} {param.opts[0]} hides its default"
    text = run([command, "--help"]).output
    if command == "fit":
        assert "[default: (nndsvda if K <= min(rows, columns), else random)]" in " ".join(
            text.split()
        )


@pytest.mark.parametrize("ext", [".npy", ".csv", ".mtx", ".h5ad"])
def test_a_file_of_another_format_gets_a_recipe_that_works(tmp_path, V_small, ext):
    """The message's command, run as given, makes a store the same command then fits."""
    import scipy.io
    import scipy.sparse as sp

    src = tmp_path / f"V{ext}"
    if ext == ".npy":
        np.save(src, V_small)
    elif ext == ".csv":
        np.savetxt(src, V_small, delimiter=",")
    elif ext == ".mtx":
        scipy.io.mmwrite(src, sp.csr_matrix(V_small))
    else:
        anndata = pytest.importorskip("anndata")
        anndata.AnnData(X=V_small).write_h5ad(src)
    r = CliRunner().invoke(cli, ["fit", str(src), "-k", "3", "-o", str(tmp_path / "o.zarr")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"{src} is a {ext} file" in r.output
    recipe = r.output.split('python -c "', 1)[1].split('", then pass', 1)[0]
    subprocess.run([sys.executable, "-c", recipe], check=True, cwd=tmp_path, timeout=120)
    store = str(tmp_path / "V.zarr")
    if ext == ".h5ad":
        assert "--array X" in r.output
        stored = zarr.open_array(store, path="X", mode="r")[...]
    elif ext == ".mtx":
        g = zarr.open_group(store, mode="r")
        stored = sp.csr_matrix(
            (g["data"][:], g["indices"][:], g["indptr"][:]), shape=V_small.shape
        ).toarray()
    else:
        stored = zarr.open_array(store, mode="r")[...]
        res = dask_nmf.factorize(store, 3, max_iter=3, random_state=0)
        assert res.H.shape == (3, V_small.shape[1])
    np.testing.assert_allclose(stored, V_small, rtol=1e-12)
