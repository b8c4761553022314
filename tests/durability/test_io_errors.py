"""I/O errors on journal and primary, and bad files: refused or repaired, never served wrong.

Journal errors are tested on the journal itself (its fail-stop contract) and
on a volume for what survives a restart; what a volume does *next* (host
writes going on while out of sync, resync) belongs to the out-of-sync tests.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sqlite3
import threading
import time
import uuid as uuidlib

import pytest
import structlog

from appliance.engine import (
    CatalogVersionError,
    InvalidArgument,
    JournalCorrupt,
    JournalFailed,
    PrimaryIOError,
)
from appliance.engine import record as R
from appliance.engine.catalog import SCHEMA_VERSION
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, list_segments, segment_path

from .faultfs import FaultFS
from .helpers import abandon, create, journal_of, open_tracked, paths, scratch_dir, settle

SIZE = 256 << 10
NO_RETRY = {"secondary_retry": 3600.0, "map_seconds": 3600.0}


@pytest.fixture
def d(root):
    with scratch_dir(root, "ioerr") as d:
        yield d


# ---------------------------------------------------------------- the journal's fail-stop


def new_journal(d: str, fs: FaultFS) -> Journal:
    j = Journal(fs, os.path.join(d, "journal"), uuidlib.uuid4(), 1 << 20)
    j.start(0, 0, clean=True)
    return j


def write(j: Journal, tag: bytes) -> int:
    return j.append(R.WRITE, 0, 4096, tag * 4096).seq


@pytest.mark.parametrize(
    "method,err",
    [("fdatasync", errno.EIO), ("pwritev_all", errno.EIO), ("pwritev_all", errno.ENOSPC)],
)
def test_journal_error_in_a_group_commit_is_fail_stop(d, method, err):
    fs = FaultFS()
    j = new_journal(d, fs)
    good = write(j, b"a")
    j.sync()
    fs.fail_on(method, "*.seg", err=err, lose=True)
    group = [write(j, b"b"), write(j, b"c")]
    with pytest.raises(JournalFailed):
        j.sync()
    assert j.failed is not None and j.durable_seq == good
    with pytest.raises(JournalFailed):  # every later append
        write(j, b"d")
    with pytest.raises(JournalFailed):  # and sync: the one-shot error is not "retried away"
        j.sync(group[0])
    assert j.durable_seq == good
    j.close()
    fs.crash(random.Random(1))  # the machine goes down: what reached the disk?
    scan = Journal(OsFileIO(), j.folder, j.uuid, 1 << 20).scan()
    assert scan.last_seq == good, scan.end_reason
    assert [r.seq for r in scan.records] == [good]


def test_journal_error_on_the_rollover_sync_is_fail_stop(d):
    """The writer fdatasyncs the full segment before its first write to the next one."""
    fs = FaultFS()
    j = new_journal(d, fs)
    durable = [j.append(R.WRITE, 0, 65536, b"x" * 65536).seq for _ in range(4)][-1]
    j.sync()
    fs.fail_on("fdatasync", "*.seg", thread="cdp-journal-writer", lose=True)
    try:
        for _ in range(40):  # 15 records of 64 KiB fill a 1 MiB segment
            j.append(R.WRITE, 0, 65536, b"y" * 65536)
    except JournalFailed:
        pass
    with pytest.raises(JournalFailed):
        j.sync()
    got = j.durable_seq  # the syncer may have synced part of it before: that much stays
    assert got >= durable
    assert list_segments(j.folder) == [1]  # the next segment was never begun
    j.close()
    fs.crash(random.Random(2))
    # At least what was reported durable; more may have reached the disk (the
    # syncer's sync writes every dirty page of the file, not only its group).
    assert Journal(OsFileIO(), j.folder, j.uuid, 1 << 20).scan().last_seq >= got


def test_volume_journal_fdatasync_eio_keeps_the_journal_at_the_last_durable_group(d):
    """EIO during a group commit: that group and every later one never durable; after
    the machine restarts the journal ends at the last durable group, acks intact."""
    fs = FaultFS()
    vol = create(d, SIZE, io=fs, **NO_RETRY)
    acked = vol.write(0, b"1" * 4096)
    vol.flush()
    fs.fail_on("fdatasync", "*.seg", lose=True)
    vol.write(4096, b"2" * 4096)
    try:
        vol.flush()  # the volume's reaction (out of sync) is not this test's business
    except (JournalFailed, OSError):
        pass
    assert vol._journal.failed is not None
    assert vol._journal.durable_seq == acked
    fs.crash(random.Random(3))
    abandon(vol, fs)
    scan = journal_of(d).scan()
    assert scan.last_seq == acked, scan.end_reason
    vol = open_tracked(d)
    try:
        settle(vol)
        assert vol.image(seq=acked).read(0, 8192) == b"1" * 4096 + bytes(4096)
        assert vol.read(0, 4096) == b"1" * 4096
    finally:
        vol.close()


# ---------------------------------------------------------------- the primary


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
@pytest.mark.parametrize("kind", ["write", "write_zeros"])
def test_primary_write_error_acknowledges_nothing_and_journals_nothing(d, err, kind):
    fs = FaultFS()
    vol = create(d, SIZE, io=fs, **NO_RETRY)
    acked = vol.write(0, b"1" * 8192)
    vol.flush()
    fs.fail_on("pwrite_all", "primary.img", err=err)
    with pytest.raises(PrimaryIOError, match=os.strerror(err)):
        if kind == "write":
            vol.write(4096, b"2" * 4096, fua=True)
        else:
            vol.write_zeros(4096, 4096, fua=True)
    assert vol.last_seq == acked  # no record was appended
    later = vol.write(16384, b"3" * 512)
    vol.flush()
    vol.close()
    scan = journal_of(d).scan()
    assert [r.offset for r in scan.records if r.seq > acked and r.kind in R.DATA_KINDS] == [16384]
    vol = open_tracked(d)
    try:
        settle(vol)
        assert vol.image(seq=later).read(0, 8192) == b"1" * 8192
        assert vol.read(0, 8192) == b"1" * 8192
    finally:
        vol.close()


# ---------------------------------------------------------------- bad files


def filled(d: str, fs=None):
    """A volume with many delta maps (a catalog of many pages); closed cleanly."""
    vol = create(d, SIZE, io=fs, map_records=2)
    rng = random.Random(5)
    for i in range(200):
        vol.write((i * 8 % 500) * 512, rng.randbytes(2048))
        if i % 50 == 0:
            vol.bookmark(f"b{i}")
    vol.flush()
    seqs = list(range(vol._maps.baseline_done_seq, vol.last_seq + 1, 7))
    images = {s: vol.image(seq=s).read(0, SIZE) for s in seqs}
    marks = dict(vol._maps.bookmarks)
    vol.close()
    return images, marks


def assert_repaired(d: str, images, marks, logs) -> None:
    vol = open_tracked(d, map_records=2)
    try:
        settle(vol)
        assert vol._catalog.integrity_check() == "ok"
        for s, img in images.items():
            assert vol.image(seq=s).read(0, SIZE) == img
        assert dict(vol._maps.bookmarks) == marks
    finally:
        vol.close()
    rebuilt = [e for e in logs if e["event"] == "catalog.rebuild"]
    assert len(rebuilt) == 1 and "malformed" in rebuilt[0]["reason"]
    assert any(n.startswith("catalog.sqlite.bad-") for n in os.listdir(paths(d)["state"]))


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.9])
def test_truncated_catalog_is_set_aside_and_rebuilt(d, fraction):
    images, marks = filled(d)
    cat = paths(d)["catalog"]
    with open(cat, "r+b") as f:
        f.truncate(int(os.path.getsize(cat) * fraction))
    with structlog.testing.capture_logs() as logs:
        assert_repaired(d, images, marks, logs)


def test_catalog_from_a_newer_schema_is_refused(d):
    filled(d)
    c = sqlite3.connect(paths(d)["catalog"])
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.close()
    msg = f"catalog schema version {SCHEMA_VERSION + 1} is newer than this software understands"
    with pytest.raises(CatalogVersionError, match=msg):
        open_tracked(d)
    c = sqlite3.connect(paths(d)["catalog"])  # refused, not rebuilt over
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    c.close()


@pytest.mark.parametrize("where", ["next", "replacing the last"])
def test_segment_of_another_volume_is_refused(root, where):
    with scratch_dir(root, "mine") as mine, scratch_dir(root, "other") as other:
        for x in (mine, other):
            vol = create(x, SIZE)
            vol.write(0, os.urandom(4096))
            vol.close()
        jm, jo = paths(mine)["journal"], paths(other)["journal"]
        last = list_segments(jm)[-1]
        target = last + 1 if where == "next" else last
        shutil.copy(segment_path(jo, list_segments(jo)[-1]), segment_path(jm, target))
        if where == "next":  # make it claim the right number: only the volume differs
            path = segment_path(jm, target)
            with open(path, "r+b") as f:
                raw = bytearray(f.read(R.SEGMENT_HEADER_SIZE))
                raw[32:40] = target.to_bytes(8, "little")
                raw[60:64] = R.crc32c(bytes(raw[:60])).to_bytes(4, "little")
                f.seek(0)
                f.write(raw)
        with pytest.raises(JournalCorrupt, match="belongs to volume"):
            journal_of(mine).scan()
        with pytest.raises(JournalCorrupt, match=f"segment {target} belongs to volume"):
            os.unlink(paths(mine)["catalog"])  # nothing to skip it: a full scan
            open_tracked(mine)


@pytest.mark.parametrize(
    "content,why",
    [
        (b"\x00\x01garbage{", "is not a volume description"),
        (b"", "is not a volume description"),
        (b"[1, 2]", "is not a volume description"),
        (b'{"format": 1}', "is not a volume description"),
        (b"\xff\xfe{", "is not a volume description"),
    ],
)
def test_volume_json_that_is_not_a_description_is_refused(d, content, why):
    create(d, SIZE).close()
    with open(os.path.join(paths(d)["state"], "volume.json"), "wb") as f:
        f.write(content)
    with pytest.raises(InvalidArgument, match=why) as exc:
        open_tracked(d)
    assert "\n" not in str(exc.value)


def test_volume_json_of_an_unknown_format_is_refused(d):
    create(d, SIZE).close()
    path = os.path.join(paths(d)["state"], "volume.json")
    with open(path) as f:
        meta = json.load(f)
    meta["format"] = 2
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(InvalidArgument, match="format 2 not supported"):
        open_tracked(d)


# ---------------------------------------------------------------- known bugs


@pytest.mark.known_bug
def test_bug_damaged_catalog_page_is_rebuilt(d):
    images, marks = filled(d)
    cat = paths(d)["catalog"]
    c = sqlite3.connect(cat)
    (page,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'delta_map'").fetchone()
    c.close()
    with open(cat, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(random.Random(8).randbytes(4096))  # the whole root page
    with structlog.testing.capture_logs() as logs:
        try:
            assert_repaired(d, images, marks, logs)
        except sqlite3.DatabaseError as exc:
            raise AssertionError(f"open raised a raw {type(exc).__name__}: {exc}") from exc


def test_bug_rollover_failure_then_syncer_success(d):
    """Regression: the writer's rollover fdatasync fails (the kernel drops the
    dirty pages and reports the error once); the syncer's fdatasync of the same
    file then "succeeds" and reported its group durable.  After a power loss
    the journal held less than ``durable_seq`` said.  The syncer is held here
    until the writer's call has failed, the order that made the bug."""
    fs = FaultFS()
    j = new_journal(d, fs)
    writer_failing, syncer_syncing = threading.Event(), threading.Event()

    def hold(path):
        name = threading.current_thread().name
        if name == "cdp-journal-writer":
            writer_failing.set()
        elif name == "cdp-journal-syncer":
            syncer_syncing.set()
            if writer_failing.wait(1.0):
                time.sleep(0.05)  # the writer's call has failed by now

    fs.before("fdatasync", "*.seg", hold)
    fs.fail_on("fdatasync", "*.seg", thread="cdp-journal-writer", lose=True)
    first = [j.append(R.WRITE, 0, 65536, b"a" * 65536).seq for _ in range(10)][-1]
    deadline = time.monotonic() + 5
    while j._written_seq < first and time.monotonic() < deadline:
        time.sleep(0.001)
    j.request_sync(first)  # the syncer takes the first group...
    assert syncer_syncing.wait(5)
    try:
        for _ in range(10):  # ...while the writer rolls over into segment 2
            j.append(R.WRITE, 0, 65536, b"b" * 65536)
    except JournalFailed:
        pass
    deadline = time.monotonic() + 5
    while j.failed is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert j.failed is not None
    j.close()  # joins the syncer: its sync has returned
    claimed = j.durable_seq
    fs.crash(random.Random(3))
    found = Journal(OsFileIO(), j.folder, j.uuid, 1 << 20).scan().last_seq
    assert found >= claimed, f"durable_seq said {claimed}, the disk holds up to {found}"
