"""The write policy: dask_nmf never deletes or changes what it did not write.

Every destructive path is pointed at something that is not ours, with a
canary beside or inside it, and the canary must come out intact.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import make_low_rank, write_zarr

import dask_nmf
from dask_nmf import outputs, persistence
from dask_nmf.cli import cli

pytestmark = pytest.mark.timeout(300)

FIT = dict(init="random", random_state=0, max_iter=6, tol=0, block_rows=40)


def digest(path) -> dict:
    """Every file under ``path`` (or the file itself) with a hash of its bytes."""
    path = str(path)
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


@pytest.fixture
def notes(tmp_path):
    """A folder of someone's notes: never ours."""
    d = tmp_path / "notes"
    d.mkdir()
    (d / "field-log.txt").write_text("months of work\n")
    return d


@pytest.fixture
def store(tmp_path, V_small):
    return write_zarr(tmp_path / "data" / "V.zarr", V_small, chunks=(40, 41))


def cli_run(args, cwd=None):
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)


# -- what is not ours is refused, with or without overwrite ------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_fit_refuses_a_folder_that_is_not_ours(notes, V_small, overwrite):
    before = digest(notes)
    with pytest.raises(dask_nmf.InputError, match="not a dask_nmf result"):
        dask_nmf.factorize(V_small, 3, checkpoint=notes, overwrite=overwrite, **FIT)
    assert digest(notes) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_fit_refuses_a_file_url_that_is_not_ours(tmp_path, store, overwrite):
    """A ``file://`` URL of a project folder (V inside it) is not ours either."""
    project = tmp_path / "data"
    before = digest(project)
    url = f"file://{project}"
    with pytest.raises(dask_nmf.InputError):
        dask_nmf.factorize(store, 3, checkpoint=url, overwrite=overwrite, **FIT)
    assert digest(project) == before
    (project / "other").mkdir()
    (project / "other" / "x.txt").write_text("x")
    before = digest(project)
    with pytest.raises(dask_nmf.InputError, match="not a dask_nmf result"):
        dask_nmf.factorize(store, 3, checkpoint=f"file://{project}/other", **FIT)
    assert digest(project) == before


@pytest.mark.parametrize("where", ["V", "inside V", "V's parent", "link to V"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_is_never_the_input(tmp_path, store, where, overwrite):
    target = {
        "V": store,
        "inside V": os.path.join(store, "out.zarr"),
        "V's parent": os.path.dirname(store),
        "link to V": tmp_path / "link.zarr",
    }[where]
    if where == "link to V":
        os.symlink(store, target)
    before = digest(tmp_path / "data")
    with pytest.raises(dask_nmf.InputError, match="the input"):
        dask_nmf.factorize(store, 3, checkpoint=target, overwrite=overwrite, **FIT)
    assert digest(tmp_path / "data") == before


def test_output_inside_an_input_zarr_array_object(tmp_path, store):
    """V given as an opened zarr array (or a dask array over one) is located too."""
    z = zarr.open_array(store, mode="r")
    import dask.array as da

    for V in (z, da.from_zarr(z)):
        with pytest.raises(dask_nmf.InputError, match="the input"):
            dask_nmf.factorize(V, 3, checkpoint=store, overwrite=True, **FIT)
    assert np.array_equal(zarr.open_array(store, mode="r")[...], z[...])


def test_cli_refuses_the_current_directory(tmp_path, store, notes):
    before = digest(notes)
    r = cli_run(["fit", store, "-k", "3", "-o", ".", "--overwrite"], cwd=notes)
    assert r.exit_code == 2, r.output
    assert "not a dask_nmf result" in r.output
    assert digest(notes) == before


def test_cli_refuses_the_input_store(tmp_path, store):
    before = digest(tmp_path / "data")
    for target in (store, os.path.dirname(store)):
        r = cli_run(["fit", store, "-k", "3", "-o", target, "--overwrite"])
        assert r.exit_code == 2 and "the input" in r.output, r.output
    assert digest(tmp_path / "data") == before


def test_to_zarr_and_save_refuse_what_is_not_ours(notes, V_small):
    before = digest(notes)
    res = dask_nmf.factorize(V_small, 3, **FIT)
    est = dask_nmf.NMF(3, max_iter=5, init="random", random_state=0).fit(V_small)
    for overwrite in (False, True):
        with pytest.raises(dask_nmf.InputError, match="not a dask_nmf result"):
            res.to_zarr(notes, overwrite=overwrite)
        with pytest.raises(dask_nmf.InputError, match="not a dask_nmf result"):
            est.save(notes, overwrite=overwrite)
    assert digest(notes) == before


def test_saving_a_loaded_result_onto_its_own_store_is_refused(tmp_path, V_small):
    path = tmp_path / "r.zarr"
    res = dask_nmf.factorize(V_small, 3, **FIT)
    res.to_zarr(path)
    loaded = dask_nmf.load(path)
    with pytest.raises(dask_nmf.InputError, match="the input"):
        loaded.to_zarr(path, overwrite=True)
    again = dask_nmf.load(path)
    np.testing.assert_array_equal(again.W.compute(), res.W.compute())
    assert np.abs(again.W.compute()).sum() > 0
    loaded.to_zarr(tmp_path / "copy.zarr")  # elsewhere it is fine
    np.testing.assert_array_equal(dask_nmf.load(tmp_path / "copy.zarr").H, res.H)


def test_overwrite_deletes_only_what_we_wrote(tmp_path, V_small):
    """A result folder with a user's file in it: --overwrite replaces the
    result and leaves the file."""
    path = tmp_path / "r.zarr"
    dask_nmf.factorize(V_small, 3, checkpoint=path, **FIT)
    (path / "README.txt").write_text("my notes on this run\n")
    res = dask_nmf.factorize(V_small, 2, checkpoint=path, overwrite=True, **FIT)
    assert (path / "README.txt").read_text() == "my notes on this run\n"
    back = dask_nmf.load(path)
    assert back.H.shape[0] == 2
    np.testing.assert_array_equal(back.H, res.H)


def test_overwrite_happens_only_after_the_new_input_is_validated(tmp_path, V_small):
    path = tmp_path / "r.zarr"
    first = dask_nmf.factorize(V_small, 3, checkpoint=path, **FIT)
    bad = V_small.copy()
    bad[5, 5] = np.nan
    with pytest.raises(dask_nmf.InputError, match="NaN"):
        dask_nmf.factorize(bad, 3, checkpoint=path, overwrite=True, **FIT)
    np.testing.assert_array_equal(dask_nmf.load(path).H, first.H)
    assert not (path / outputs.LOCK_NAME).exists()  # the refused run let go of it


def test_a_path_below_a_file_cannot_be_written(tmp_path, V_small):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(dask_nmf.InputError, match="cannot write"):
        dask_nmf.factorize(V_small, 3, checkpoint=tmp_path / "plain" / "r.zarr", **FIT)
    assert (tmp_path / "plain").read_text() == "x"


def test_a_refused_run_leaves_no_folder_behind(tmp_path, V_small):
    """A run that fails after claiming a fresh location removes what it created."""
    path = tmp_path / "r.zarr"
    bad = -V_small
    with pytest.raises(dask_nmf.InputError, match="negative"):
        dask_nmf.factorize(bad, 3, checkpoint=path, **FIT)
    assert not path.exists()


# -- one writer at a time ----------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from dask_nmf import outputs
    claim = outputs.claim_output(sys.argv[1], overwrite=True)
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_two_runs_cannot_share_an_output(tmp_path, V_small):
    path = tmp_path / "r.zarr"
    first = dask_nmf.factorize(V_small, 3, checkpoint=path, **FIT)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = digest(path)
        with pytest.raises(dask_nmf.InputError, match="in use by another dask_nmf run"):
            dask_nmf.factorize(V_small, 3, checkpoint=path, overwrite=True, **FIT)
        with pytest.raises(dask_nmf.InputError, match="in use"):
            dask_nmf.factorize(V_small, 3, checkpoint=path, resume=True, **{**FIT, "max_iter": 9})
        assert digest(path) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without letting go: its lock is stale and is taken over.
    res = dask_nmf.factorize(V_small, 3, checkpoint=path, resume=True, **{**FIT, "max_iter": 9})
    assert res.n_iter == 9
    np.testing.assert_array_equal(dask_nmf.load(path).H, res.H)
    assert not (path / outputs.LOCK_NAME).exists()
    assert first.n_iter == 6


# -- resume ------------------------------------------------------------------


def test_resuming_a_finished_run_reports_it(tmp_path, V_small):
    path = tmp_path / "r.zarr"
    kw = dict(FIT, tol=1e-2, max_iter=300)
    done = dask_nmf.factorize(V_small, 3, checkpoint=path, **kw)
    assert done.converged and done.n_iter < 300
    before = digest(path)
    with pytest.warns(UserWarning, match="finished run .* converged"):
        again = dask_nmf.factorize(V_small, 3, checkpoint=path, resume=True, **kw)
    assert digest(path) == before  # nothing rewritten
    assert again.n_iter == done.n_iter
    np.testing.assert_array_equal(again.H, done.H)


def test_resuming_a_run_stopped_by_max_iter(tmp_path, V_small):
    path = tmp_path / "r.zarr"
    dask_nmf.factorize(V_small, 3, checkpoint=path, **FIT)
    before = digest(path)
    with pytest.warns(UserWarning, match="max_iter above 6"):
        same = dask_nmf.factorize(V_small, 3, checkpoint=path, resume=True, **FIT)
    assert same.n_iter == 6 and digest(path) == before
    with pytest.warns(UserWarning, match="continuing it to max_iter=10"):
        more = dask_nmf.factorize(
            V_small, 3, checkpoint=path, resume=True, **{**FIT, "max_iter": 10}
        )
    straight = dask_nmf.factorize(V_small, 3, **{**FIT, "max_iter": 10})
    assert more.n_iter == 10
    np.testing.assert_allclose(more.H, straight.H, rtol=1e-12)


def test_cli_resume_of_a_finished_run_does_nothing(tmp_path, store, cluster_client):
    out = tmp_path / "out.zarr"
    common = ["--seed", "0", "--scheduler", cluster_client.scheduler.address, "-q"]
    r = cli_run(["fit", store, "-k", "3", "-o", out, "--max-iter", "5", *common])
    assert r.exit_code == 0, r.output
    before = digest(out)
    r = cli_run(["fit", store, "-k", "3", "-o", out, "--max-iter", "5", "--resume", *common])
    assert r.exit_code == 0, r.output
    assert "finished run (5 iterations" in r.output and "nothing to run" in r.output
    assert digest(out) == before


def test_resume_refuses_another_V(tmp_path, V_small, rng):
    """Same shape, other data: the fingerprint (sum, ||V||^2, where V is) differs."""
    a = write_zarr(tmp_path / "a.zarr", V_small, chunks=(40, 41))
    b = write_zarr(tmp_path / "b.zarr", V_small, chunks=(40, 41))
    path = tmp_path / "r.zarr"
    dask_nmf.factorize(a, 3, checkpoint=path, **FIT)
    before = digest(path)
    kw = {**FIT, "max_iter": 9}
    with pytest.raises(dask_nmf.InputError, match="made from V at"):
        dask_nmf.factorize(b, 3, checkpoint=path, resume=True, **kw)
    zarr.open_array(a, mode="r+")[0, 0] += 1.0  # V changed in place since
    with pytest.raises(dask_nmf.InputError, match="not the data the checkpoint was made from"):
        dask_nmf.factorize(a, 3, checkpoint=path, resume=True, **kw)
    assert digest(path) == before
    # In-memory V has no location: its sums alone identify it.
    mem = tmp_path / "m.zarr"
    dask_nmf.factorize(V_small, 3, checkpoint=mem, **FIT)
    other = make_low_rank(rng, *V_small.shape, 4)
    with pytest.raises(dask_nmf.InputError, match="not the data"):
        dask_nmf.factorize(other, 3, checkpoint=mem, resume=True, **kw)


# -- transform, info, demo ---------------------------------------------------


def test_cli_transform_refuses_the_model_and_what_is_not_ours(
    tmp_path, store, notes, cluster_client
):
    addr = cluster_client.scheduler.address
    model = tmp_path / "model.zarr"
    dask_nmf.factorize(store, 3, checkpoint=model, **FIT)
    before_model, before_notes = digest(model), digest(notes)
    for target in (model, notes):
        r = cli_run(
            ["transform", store, "--model", model, "-o", target, "--overwrite", "--scheduler", addr]
        )
        assert r.exit_code == 2, r.output
    assert digest(model) == before_model and digest(notes) == before_notes
    w = tmp_path / "W.zarr"
    args = ["transform", store, "--model", model, "-o", w, "--scheduler", addr, "-q"]
    assert cli_run(args).exit_code == 0
    assert cli_run(args).exit_code == 2  # exists: refused without --overwrite
    r = cli_run([*args, "--overwrite"])  # ours: replaced
    assert r.exit_code == 0, r.output
    assert zarr.open_array(str(w), mode="r").attrs["dask_nmf"]["complete"]


@pytest.mark.parametrize("what", ["notes", "array", "transform output"])
def test_info_and_load_refuse_what_is_not_a_result(tmp_path, notes, what):
    target = {"notes": notes, "array": tmp_path / "a.zarr", "transform output": tmp_path / "w"}[
        what
    ]
    if what == "array":
        zarr.create_array(str(target), shape=(3, 2), dtype="f8")
    if what == "transform output":
        zarr.create_array(
            str(target), shape=(3, 2), dtype="f8", attributes={"dask_nmf": {"transform_of": "x"}}
        )
    r = cli_run(["info", target])
    assert r.exit_code == 2 and "not a dask_nmf result" in r.output, r.output
    with pytest.raises(dask_nmf.InputError, match="not a dask_nmf result"):
        dask_nmf.load(target)


def test_demo_never_replaces_someone_elses_V(tmp_path):
    theirs = write_zarr(tmp_path / "V.zarr", np.ones((30, 4)), chunks=(10, 4))
    before = digest(theirs)
    r = cli_run(["demo", "-o", tmp_path, "--rows", "200", "--cols", "20", "-k", "2"])
    assert r.exit_code == 2 and "not this demo's" in r.output, r.output
    assert digest(theirs) == before
    assert not (tmp_path / "result.zarr").exists()


# -- object storage ----------------------------------------------------------


def test_an_s3_prefix_with_other_objects_is_never_deleted(s3):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("proj")
    V = make_low_rank(np.random.default_rng(2), 120, 20, 3)
    arr = zarr.create_array(
        "s3://proj/V.zarr", shape=V.shape, chunks=(40, 20), dtype="f8", storage_options=s3
    )
    arr[...] = V
    fs.pipe("proj/notes/log.txt", b"months of work")
    before = {p: fs.cat(p) for p in fs.find("proj")}
    for target in ("s3://proj", "s3://proj/notes", "s3://proj/V.zarr"):
        for overwrite in (False, True):
            with pytest.raises(dask_nmf.InputError):
                dask_nmf.factorize(
                    "s3://proj/V.zarr",
                    3,
                    checkpoint=target,
                    overwrite=overwrite,
                    storage_options=s3,
                    **FIT,
                )
    assert {p: fs.cat(p) for p in fs.find("proj")} == before
    # A fresh prefix is fine, and is ours afterwards (overwrite replaces it).
    for overwrite in (False, True):
        res = dask_nmf.factorize(
            "s3://proj/V.zarr",
            3,
            checkpoint="s3://proj/out.zarr",
            overwrite=overwrite,
            storage_options=s3,
            **FIT,
        )
    np.testing.assert_array_equal(dask_nmf.load("s3://proj/out.zarr", storage_options=s3).H, res.H)
    assert not fs.exists(f"proj/out.zarr/{outputs.LOCK_NAME}")
    assert fs.cat("proj/notes/log.txt") == b"months of work"


def test_locations_compare_resolved_paths(tmp_path):
    a = outputs.locate(tmp_path / "x" / ".." / "y")
    b = outputs.locate(f"file://{tmp_path}/y/z")
    assert a.contains(b) and not b.contains(a)
    assert not outputs.locate(tmp_path / "yy").contains(b)  # a prefix of the name is not a parent
    assert persistence.SLOTS == ("state0", "state1")  # what OUR_ENTRIES names
    assert set(persistence.SLOTS) <= set(outputs.OUR_ENTRIES["group"])


# -- failures while writing --------------------------------------------------


@pytest.mark.parametrize("on_cluster", [False, True])
def test_a_failed_checkpoint_write_says_what_is_intact(tmp_path, V_small, on_cluster, request):
    """A checkpoint that cannot be written (here: a file where the spare slot's
    chunks go, as a full or read-only disk would refuse them) stops the fit with
    a message naming the intact checkpoint; resuming from it then works."""
    path = tmp_path / "r.zarr"
    client = request.getfixturevalue("cluster_client") if on_cluster else None
    blocker = path / "state1" / "W" / "c"

    def block_the_spare_slot(iteration, _):
        if iteration == 0:
            blocker.write_text("not a folder")

    kw = dict(FIT, max_iter=12, checkpoint_every=5, client=client)
    with pytest.raises(dask_nmf.InputError) as err:
        dask_nmf.factorize(V_small, 3, checkpoint=path, on_checkpoint=block_the_spare_slot, **kw)
    assert "writing iteration 5" in str(err.value)
    assert "last complete checkpoint (iteration 0) is intact" in str(err.value)
    assert dask_nmf.load(path).n_iter == 0
    assert not (path / outputs.LOCK_NAME).exists()
    blocker.unlink()
    res = dask_nmf.factorize(V_small, 3, checkpoint=path, resume=True, **kw)
    straight = dask_nmf.factorize(V_small, 3, **{**kw, "client": None})
    assert res.n_iter == 12
    np.testing.assert_allclose(res.H, straight.H, rtol=1e-10)


def test_abandon_removes_only_a_fresh_store_with_nothing_complete(tmp_path):
    fresh, kept = tmp_path / "fresh.zarr", tmp_path / "kept.zarr"
    for path in (fresh, kept):
        claim = outputs.claim_output(path)
        persistence.create_store(path, (10, 4), 2, "f8", 5, {"params": {}})
        if path == kept:
            persistence.commit_state(path, "state0", np.ones((2, 4)), {"iteration": 0}, None)
        claim.abandon()
        claim.release()
    assert not fresh.exists()
    assert persistence.read_meta(kept)["state"]["iteration"] == 0
