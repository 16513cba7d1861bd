"""Where dask_nmf may write: the write policy for results, checkpoints and W stores.

Every location dask_nmf writes to (a fit's result/checkpoint, ``to_zarr``,
``NMF.save``, ``dask-nmf transform -o``) goes through :func:`claim_output`:

- A location is ours only if nothing is there, or the
  zarr node at its root carries our marker: the ``dask_nmf`` attribute, which
  is written with the node's first metadata document.  Anything else is
  refused, with or without ``overwrite``.
- It may never be an input, contain one, or lie inside one (resolved paths:
  symbolic links and ``..`` are followed; URLs are compared by protocol and
  path).
- One writer at a time: the claim creates a lock file inside the location
  exclusively (``O_EXCL``), so two fits cannot share an output; a lock left by
  a process of this host that is no longer alive is taken over.  On object
  stores the lock is checked and written (best effort: they have no atomic
  create that fsspec exposes).
- ``overwrite`` deletes only the entries a dask_nmf node consists of
  (``zarr.json`` and its ``state0``/``state1`` groups, or an array's chunk
  folder ``c``), and only when :meth:`Claim.clear` is called -- after the new
  run's inputs are validated.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from .io import InputError

LOCK_NAME = ".dask_nmf.lock"
# What a dask_nmf node is made of, by its zarr node type.
OUR_ENTRIES = {"group": ("zarr.json", "state0", "state1"), "array": ("zarr.json", "c")}
# (zarr.json first: removed last, see Claim.clear)


@dataclass(frozen=True)
class Location:
    """A resolved place in a file system: local (real path) or an fsspec URL."""

    given: str
    fs: Any
    root: str
    protocol: str

    def key(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies below it."""
        if self.protocol != other.protocol:
            return False
        mine = self.root.rstrip("/")
        return other.root == self.root or other.root.startswith(mine + "/") or mine == ""

    def __str__(self) -> str:
        return self.root if self.protocol == "file" else f"{self.protocol}://{self.root}"


def locate(path: Any, storage_options: dict | None = None) -> Location:
    """Resolve a local path or fsspec URL to a :class:`Location`."""
    import fsspec

    given = os.fspath(path)
    if not given:
        raise InputError("an empty path was given as a location")
    fs, root = fsspec.core.url_to_fs(given, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        protocol, root = "file", os.path.realpath(root)
    else:
        root = root.rstrip("/")
    return Location(given, fs, root, protocol)


def input_locations(V: Any, storage_options: dict | None = None) -> list[Location]:
    """The stores V is read from, as far as they can be told from V itself."""
    import zarr

    found = []
    if isinstance(V, (str, os.PathLike)):
        found.append(locate(V, storage_options))
    elif isinstance(V, (zarr.Array, zarr.Group)):
        found += _zarr_locations([V])
    elif hasattr(V, "__dask_graph__") and V.__dask_graph__() is not None:
        # A dask array over zarr arrays (da.from_zarr keeps the array in its graph).
        values = V.__dask_graph__().values()
        found += _zarr_locations([x for x in values if isinstance(x, (zarr.Array, zarr.Group))])
    source = getattr(V, "encoding", {}).get("source") if hasattr(V, "encoding") else None
    if source:  # an xarray object opened from a store
        found.append(locate(source))
    return found


def _zarr_locations(nodes: list) -> list[Location]:
    out = []
    for node in nodes:
        store = node.store
        root = getattr(store, "root", None)  # LocalStore
        if root is not None:
            out.append(locate(os.path.join(os.fspath(root), node.path)))
        elif getattr(store, "fs", None) is not None:  # FsspecStore
            fs = store.fs
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            full = f"{store.path.rstrip('/')}/{node.path}".rstrip("/")
            out.append(Location(full, fs, full, protocol))
    return out


def read_marker(loc: Location) -> dict | None:
    """The ``dask_nmf`` attribute of the zarr node at ``loc``, or None."""
    doc = _node_document(loc)
    marker = (doc or {}).get("attributes", {}).get("dask_nmf")
    return marker if isinstance(marker, dict) else None


def _node_document(loc: Location) -> dict | None:
    try:
        raw = loc.fs.cat_file(loc.key("zarr.json"))
        doc = json.loads(raw)
    except (OSError, ValueError):  # absent, unreadable, not JSON: not a node of ours
        return None
    return doc if isinstance(doc, dict) else None


def _entries(loc: Location) -> list[str] | None:
    """Names directly inside ``loc``; None where nothing is there."""
    try:
        if not loc.fs.exists(loc.root):
            return None
        if not loc.fs.isdir(loc.root):
            return [os.path.basename(loc.root)]  # a file: never ours
        listed = loc.fs.ls(loc.root, detail=False)
    except FileNotFoundError:
        return None
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]


def check_output(
    path: Any,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: list[Location] = (),
    storage_options: dict | None = None,
    what: str = "output",
) -> tuple[Location, dict | None]:
    """Refuse ``path`` as an output unless it is absent or ours (see the module docstring).

    Reads only; see :func:`claim_output` for taking it.

    Returns
    -------
    (Location, dict or None)
        The location and the marker of the dask_nmf node already there.

    Raises
    ------
    InputError
        When the location is an input, contains one or lies inside one; when
        something that is not a dask_nmf node is there; when a dask_nmf node is
        there and neither ``overwrite`` nor ``resume`` is given; when
        ``resume`` is given and there is nothing to resume.
    """
    loc = locate(path, storage_options)
    for source in inputs:
        if loc.contains(source) or source.contains(loc):
            relation = (
                "is"
                if loc.root == source.root
                else ("contains" if loc.contains(source) else "lies inside")
            )
            raise InputError(
                f"the {what} {loc.given!r} {relation} the input {str(source)!r}; "
                "dask_nmf never writes over or inside what it reads: choose another location"
            )
    entries = _entries(loc)
    marker = read_marker(loc) if entries else None
    # (A folder holding only a lock is a run of ours that died before writing.)
    if entries is not None and marker is None and entries != [LOCK_NAME]:
        raise InputError(
            f"the {what} {loc.given!r} already exists and is not a dask_nmf result; dask_nmf "
            "replaces only what it wrote (with or without overwrite): choose another location"
        )
    if resume and marker is None:
        raise InputError(f"cannot resume: no checkpoint at {loc.given!r}")
    if marker is not None and not (overwrite or resume):
        raise InputError(
            f"{loc.given!r} already exists (a dask_nmf result); pass resume=True to continue "
            "it or overwrite=True to replace it (on the command line: --resume, --overwrite)"
        )
    return loc, marker


class Claim:
    """One writer's hold on an output location (see :func:`claim_output`).

    Attributes
    ----------
    location : Location
    marker : dict or None
        The ``dask_nmf`` attribute of the node that was there when claimed.
    """

    def __init__(self, location: Location, marker: dict | None, created: bool):
        self.location, self.marker, self.created = location, marker, created
        self.released = False

    def clear(self) -> None:
        """Delete what an earlier dask_nmf run wrote here (its node entries only)."""
        loc = self.location
        doc = _node_document(loc) or {}
        # zarr.json last: while it is there, the location stays recognisably ours.
        for name in reversed(OUR_ENTRIES.get(doc.get("node_type"), ())):
            if loc.fs.exists(loc.key(name)):
                loc.fs.rm(loc.key(name), recursive=True)
        self.marker = None

    def abandon(self) -> None:
        """After a failed run: remove the node if this claim created it and no state is complete.

        A store holding a complete state (a checkpoint to resume from) is kept.
        """
        marker = read_marker(self.location)
        if self.created and marker is not None and not marker.get("state"):
            self.clear()

    def release(self) -> None:
        """Remove the lock; remove the location too if this claim created it and it is empty."""
        if self.released:
            return
        self.released = True
        loc = self.location
        try:
            loc.fs.rm(loc.key(LOCK_NAME))
        except FileNotFoundError:
            pass
        if self.created and loc.protocol == "file":
            try:
                os.rmdir(loc.root)  # only if empty: nothing was written after all
            except OSError:
                pass

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_output(path: Any, **rules: Any) -> Claim:
    """Take ``path`` for writing: :func:`check_output` (``rules`` are its keyword
    arguments), then an exclusive lock.

    Nothing is deleted here; call :meth:`Claim.clear` before writing anew over
    an earlier result, and :meth:`Claim.release` at the end (also on failure).

    Raises
    ------
    InputError
        As :func:`check_output`, and when another run holds the location or
        it cannot be written to.
    """
    loc, _ = check_output(path, **rules)
    created = _entries(loc) is None
    try:
        _lock(loc)
    except OSError as exc:  # read-only, no permission, no such bucket, ...
        what = rules.get("what", "output")
        raise InputError(f"cannot write to the {what} {loc.given!r}: {exc}") from None
    claim = Claim(loc, None, created)
    try:
        # Again under the lock: another run may have written here since the check.
        _, claim.marker = check_output(path, **rules)
    except BaseException:
        claim.release()
        raise
    return claim


def _lock(loc: Location) -> None:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
    key = loc.key(LOCK_NAME)
    if loc.protocol != "file":
        holder = _holder(loc)
        if holder is not None:
            raise _in_use(loc, holder)
        loc.fs.pipe_file(key, record.encode())
        return
    os.makedirs(loc.root, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(key, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(loc)
            if holder is not None and not _stale(holder):
                raise _in_use(loc, holder) from None
            # A lock left by a run of this host that is gone (killed, crashed).
            try:
                os.unlink(key)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return
    raise _in_use(loc, _holder(loc) or {})


def _holder(loc: Location) -> dict | None:
    try:
        record = json.loads(loc.fs.cat_file(loc.key(LOCK_NAME)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _stale(holder: dict) -> bool:
    """Whether the lock's process is known to be gone (same host, no such pid)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == os.getpid():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _in_use(loc: Location, holder: dict) -> InputError:
    who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
    return InputError(
        f"{loc.given!r} is in use by another dask_nmf run ({who}); if no such run is alive, "
        f"delete {loc.key(LOCK_NAME)!r} and try again"
    )


def write_failed(path: Any, iteration: int, exc: BaseException, storage_options=None) -> InputError:
    """The error for a checkpoint that could not be written, saying what is intact."""
    from .persistence import read_meta

    try:
        state = read_meta(path, storage_options).get("state")
    except (OSError, ValueError):
        state = None
    if state:
        intact = (
            f"the last complete checkpoint (iteration {state['iteration']}) is intact: fix the "
            "cause (free space, permissions) and continue with resume=True (--resume)"
        )
    else:
        intact = "no checkpoint was complete yet: fix the cause and start the fit again"
    return InputError(
        f"writing iteration {iteration} to {os.fspath(path)!r} failed ({exc}); {intact}"
    )
