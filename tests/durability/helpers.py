"""Shared pieces of the durability tests: scratch folders, volumes, a dead process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid as uuidlib

from appliance.engine import ProtectedVolume
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal

from .faultfs import FaultFS

SHM = "/dev/shm"


def scratch_root(fallback: str) -> str:
    """Where the many tiny volumes go: tmpfs if there is one (CDP_DURABILITY_DIR wins).

    FaultFS computes crash states itself, so the real disk's fsyncs only cost
    time (SQLite's catalog still fsyncs on its own).
    """
    root = os.environ.get("CDP_DURABILITY_DIR")
    if root:
        os.makedirs(root, exist_ok=True)
        return root
    if os.path.isdir(SHM) and os.access(SHM, os.W_OK):
        return SHM
    return fallback


@contextlib.contextmanager
def scratch_dir(root: str, tag: str):
    d = tempfile.mkdtemp(prefix=f"cdp-{tag}-", dir=root)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def paths(d: str) -> dict[str, str]:
    return {
        "state": os.path.join(d, "state"),
        "primary": os.path.join(d, "primary.img"),
        "secondary": os.path.join(d, "secondary"),
        "journal": os.path.join(d, "secondary", "journal"),
        "catalog": os.path.join(d, "state", "catalog.sqlite"),
    }


def create(d: str, size: int, block_size: int = 512, io=None, **options) -> ProtectedVolume:
    p = paths(d)
    return ProtectedVolume.create(
        p["state"],
        primary=p["primary"],
        secondary=p["secondary"],
        size=size,
        block_size=block_size,
        segment_size=1 << 20,
        io=io,
        **options,
    )


def open_volume(d: str, io=None, **options) -> ProtectedVolume:
    return ProtectedVolume.open(paths(d)["state"], io=io, **options)


def journal_of(d: str) -> Journal:
    """A stand-alone Journal over the volume's segments, for ``scan()`` before an open.

    After an unclean stop the open itself appends (a resync marker, fix-ups),
    so the recovered end of the journal is measured here, before it.
    """
    with open(os.path.join(paths(d)["state"], "volume.json"), "rb") as f:
        meta = json.loads(f.read())
    return Journal(
        OsFileIO(), paths(d)["journal"], uuidlib.UUID(meta["uuid"]), meta["segment_size"]
    )


def settle(vol: ProtectedVolume, timeout: float = 60) -> None:
    """Wait for the jobs an open may start (baseline, resync after an unclean stop)."""
    for job in (getattr(vol, "baseline_job", None), getattr(vol, "_proc_job", None)):
        if job is not None:
            job.wait(timeout)


def abandon(vol: ProtectedVolume, fs: FaultFS | None = None) -> None:
    """Stop a volume as a dying process would: no clean-close marker, no map closing.

    With a FaultFS it must already be halted (``kill``/``crash``), so nothing
    more reaches the files; this only joins the threads and frees fds and the
    catalog connection, so the next open sees what a new process would.
    """
    vol._closed = True
    steps = (
        ("_bg_stop", lambda x: vol._stop_background()),  # background jobs, housekeeping
        ("_journal", lambda j: j.close()),  # a sync attempt fails on a halted FaultFS
        ("_maps", lambda m: m.stop(close_tail=False)),
        ("_catalog", lambda c: c.close()),
        ("_drl", lambda r: r.close()),
    )
    for attr, stop in steps:
        obj = getattr(vol, attr, None)  # a half-done open lacks some
        if obj is not None:
            with contextlib.suppress(Exception):
                stop(obj)
    if fs is not None:
        fs.close_stale()
    else:
        _close_primary_fd(vol)


def _close_primary_fd(vol) -> None:
    """Close the primary's fd unless the engine did (the number may be reused)."""
    fd, path = getattr(vol, "_pfd", None), getattr(vol, "primary_path", None)
    if fd is None or path is None:
        return
    with contextlib.suppress(OSError):
        st, want = os.fstat(fd), os.stat(path)
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            os.close(fd)


def remove_catalog(d: str) -> None:
    cat = paths(d)["catalog"]
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cat + suffix)


class TrackedVolume(ProtectedVolume):
    """ProtectedVolume that remembers (per thread) the instance it starts opening.

    An open that fails half-way leaves no object to stop (see
    ``bugs.failed_open_leaks_threads``); this keeps a handle so the harness can.
    """

    local = threading.local()

    def _init(self, *args, **kw):
        TrackedVolume.local.started = self
        return super()._init(*args, **kw)


def open_tracked(d: str, io=None, **options) -> ProtectedVolume:
    """Open; if the open fails, stop whatever it started, then re-raise."""
    TrackedVolume.local.started = None
    try:
        return TrackedVolume.open(paths(d)["state"], io=io, **options)
    except BaseException:
        vol = TrackedVolume.local.started
        if vol is not None:
            abandon(vol, io if isinstance(io, FaultFS) else None)
        raise
    finally:
        TrackedVolume.local.started = None
