"""README.md's and examples/*.md's code blocks run as written.

Every fenced ``python``, ``bash``, ``sh`` or ``console`` block of those pages is
extracted and run in a fresh directory holding the small inputs the page's
blocks name (``V.zarr``, ``cells.zarr``, ``cube.zarr``, ...: made by the
fixtures below) and links to ``examples/`` and ``benchmarks/``, so the pages'
relative paths work.  A python block runs as a script in its own process (as
``python block.py``: a block with ``if __name__ == "__main__":`` needs exactly
that, since dask's worker processes import it); a shell block runs in bash with
``set -eo pipefail``.  Installing is ``.ci/run``'s job: a ``pip`` on PATH that
only checks dask_nmf imports stands in for ``pip install .``.

A block that must not run carries, on the line just before its fence::

    <!-- docs-test: skip: why -->

Such exclusions are few (the test suite itself, commands that need a batch
system or a cloud account); a block that is output or a signature is fenced
as ``text``, which is not code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.md"))]
LANGUAGES = {"python": "python", "bash": "shell", "sh": "shell", "console": "shell"}
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")
#: Seconds a block may take (the slowest is the README's `dask-nmf demo`).
TIMEOUT = 240


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    kind: str  # "python" or "shell"
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract(page: Path) -> list[Block]:
    """The code blocks of a markdown page, with their skip markers."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+)\s*(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        previous = next((x for x in reversed(lines[:i]) if x.strip()), "")
        marker = SKIP.search(previous)
        if lang in LANGUAGES:
            code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            skip = marker.group(1) if marker else None
            blocks.append(Block(page, i + 1, LANGUAGES[lang], code, skip))
        i = end + 1
    return blocks


BLOCKS = [b for page in PAGES for b in extract(page)]


def test_blocks_found():
    # The extraction sees the pages' code: a broken fence would silently test nothing.
    ids = {b.id.split(":")[0] for b in BLOCKS}
    assert {"README.md", "examples/hyperspectral.md", "examples/cluster.md"} <= ids
    kinds = {b.kind for b in BLOCKS}
    assert kinds == {"python", "shell"}
    # Exclusions stay few, each with its reason.
    skipped = [b for b in BLOCKS if b.skip]
    assert len(skipped) <= 6, [b.id for b in skipped]
    assert all(len(b.skip) > 15 for b in skipped)


def test_extract_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip: needs a SLURM cluster -->\n"
        "```bash\nsrun true\n```\n\n```text\nnot code\n```\n  ```sh\n  ls\n  ```\n"
    )
    blocks = extract(page)
    assert [(b.line, b.kind, b.code, b.skip) for b in blocks] == [
        (3, "python", "x = 1\n", None),
        (8, "shell", "srun true\n", "needs a SLURM cluster"),
        (15, "shell", "ls\n", None),
    ]


# -- the inputs the pages name ----------------------------------------------------


def _dense(path: Path, m: int = 400, n: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    V = rng.random((m, 8)) @ rng.random((8, n)) + 0.01 * rng.random((m, n))
    arr = zarr.create_array(str(path), shape=V.shape, chunks=(100, n), dtype=V.dtype)
    arr[...] = V


def _cells(path: Path) -> None:
    """An AnnData-style store: a group with a CSR ``X``."""
    from dask_nmf.datasets import make_sparse_counts, write_csr_zarr

    zarr.open_group(str(path), mode="w")
    write_csr_zarr(path / "X", make_sparse_counts(500, 80, 5, 0.1, seed=1))


def _xarray_cube(path: Path) -> None:
    """A Dataset with a (y, x, band) ``reflectance``."""
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(2)
    cube = np.einsum("yxk,kb->yxb", rng.random((12, 10, 6)), rng.random((6, 30)))
    ds = xr.Dataset(
        {"reflectance": (("y", "x", "band"), cube)},
        coords={"y": np.arange(12), "x": np.arange(10), "band": np.linspace(400, 2500, 30)},
    )
    ds.to_zarr(str(path), mode="w")


def _adata(path: Path) -> None:
    """A store written by anndata itself (CSR X, cell and gene names)."""
    anndata = pytest.importorskip("anndata")
    import scipy.sparse as sp

    from dask_nmf.datasets import make_sparse_counts

    X = sp.csr_matrix(make_sparse_counts(300, 50, 4, 0.2, seed=3))
    names = dict(obs=[f"cell{i}" for i in range(300)], var=[f"gene{j}" for j in range(50)])
    adata = anndata.AnnData(X, obs={"obs_names": names["obs"]}, var={"var_names": names["var"]})
    adata.obs_names, adata.var_names = names["obs"], names["var"]
    adata.write_zarr(str(path))


#: What each page's blocks read, made fresh in the block's directory.
INPUTS = {
    "README.md": {
        "V.zarr": _dense,
        "cells.zarr": _cells,
        "cube.zarr": _xarray_cube,
        "later.zarr": _xarray_cube,
        "adata.zarr": _adata,
    },
    "examples/hyperspectral.md": {"cube.zarr": lambda p: _dense(p, 2000, 64)},
    "examples/cluster.md": {"scratch/V.zarr": _dense},
}

PIP_SHIM = """#!/bin/sh
# docs test: installing is .ci/run's job; this only checks that dask_nmf imports.
exec "{python}" -c "import dask_nmf; print('dask_nmf', dask_nmf.__version__, 'is installed')"
"""
SRUN_SHIM = '#!/bin/sh\n# docs test: no batch system here; run the step as it is\nexec "$@"\n'


def _environment(workdir: Path) -> dict:
    bin_dir = workdir / ".bin"
    bin_dir.mkdir()
    for name, text in {"pip": PIP_SHIM.format(python=sys.executable), "srun": SRUN_SHIM}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = [str(bin_dir), os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    return dict(
        os.environ,
        PATH=os.pathsep.join(path),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        SCRATCH=str(workdir / "scratch"),
        MPLBACKEND="Agg",
    )


def _is_slow(block: Block) -> bool:
    # Shell blocks run commands (clusters, scripts); python blocks that make a Client
    # too, or fit many ranks to convergence (select_rank).
    return block.kind == "shell" or "Client" in block.code or "select_rank(" in block.code


def _param(block: Block):
    marks = [pytest.mark.slow] if _is_slow(block) else []
    return pytest.param(block, id=block.id, marks=marks)


def run_block(block: Block, workdir: Path) -> subprocess.CompletedProcess:
    """Run ``block`` in ``workdir`` as a reader would; every process it started is stopped."""
    for link in ("examples", "benchmarks"):
        (workdir / link).symlink_to(ROOT / link)
    (workdir / "scratch").mkdir()
    page = str(block.page.relative_to(ROOT))
    for name, make in INPUTS.get(page, {}).items():
        make(workdir / name)
    if block.kind == "python":
        script = workdir / "block.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-c", "set -eo pipefail\n" + block.code]
    log = workdir / "output.log"
    with open(log, "w") as out:  # (a file: background jobs keep a pipe open after the block)
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=_environment(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # (its own process group: background `&` jobs included)
        )
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{block.id} ran past {TIMEOUT} s:\n{log.read_text()[-5000:]}")
        finally:
            _stop_group(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, log.read_text(), "")


def _stop_group(pgid: int) -> None:
    """Stop what a block left running in the background (a scheduler, workers)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_block_runs(block: Block, tmp_path):
    if block.skip:
        pytest.skip(f"marked in the page: {block.skip}")
    proc = run_block(block, tmp_path)
    assert proc.returncode == 0, (
        f"{block.id} failed:\n{block.code}\n--- output ---\n{proc.stdout[-8000:]}"
    )
    at = proc.stdout.find("Traceback")
    assert at < 0, proc.stdout[max(0, at - 2000) : at + 6000]  # (the traceback, not the tail)
