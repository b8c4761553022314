"""The crash-state FileIO itself: a wrong tool would make every other test meaningless."""

from __future__ import annotations

import errno
import os
import random

import pytest

from .faultfs import Crashed, FaultFS
from .helpers import scratch_dir


@pytest.fixture
def d(root):
    with scratch_dir(root, "faultfs") as d:
        yield d


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_synced_writes_survive_and_unsynced_ones_are_undone(d):
    fs = FaultFS()
    path = os.path.join(d, "f")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    fs.fsync_dir(d)
    fs.pwrite_all(fd, b"a" * 10000, 0)
    fs.fdatasync(fd)
    fs.pwrite_all(fd, b"b" * 100, 5000)  # overwrite inside
    fs.pwritev_all(fd, [b"c" * 3000, b"d" * 3000], 9000)  # overwrite + extend
    assert read(path)[5000:5100] == b"b" * 100  # the page cache holds them meanwhile
    rep = fs.crash(random.Random(0), mode="drop")
    assert rep.dropped == 3 and fs.unsynced() == 0  # 1 page + 2 pages (split at 12288)
    assert read(path) == b"a" * 10000
    with pytest.raises(Crashed):
        fs.pread_exact(fd, 1, 0)
    fs.close(fd)  # close always works


def test_keep_mode_keeps_everything(d):
    fs = FaultFS()
    path = os.path.join(d, "f")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    fs.fsync_dir(d)
    fs.pwrite_all(fd, b"a" * 5000, 0)
    fs.pwrite_all(fd, b"b" * 5000, 2500)
    fs.crash(random.Random(0), mode="keep")
    fs.close(fd)
    assert read(path) == b"a" * 2500 + b"b" * 5000


def test_random_crash_states_are_made_of_whole_sectors(d):
    """Every 512-byte sector of an unsynced write ends up all new, all old, or junk."""
    seen = set()
    for seed in range(40):
        path = os.path.join(d, f"f{seed}")
        fs = FaultFS()
        fd = fs.open(path, os.O_RDWR | os.O_CREAT)
        fs.fsync_dir(d)
        fs.pwrite_all(fd, b"o" * 16384, 0)
        fs.fdatasync(fd)
        fs.pwrite_all(fd, b"n" * 16384, 0)
        fs.crash(random.Random(seed))
        fs.close(fd)
        data = read(path)
        assert len(data) == 16384
        for s in range(0, 16384, 512):
            sector = data[s : s + 512]
            if sector in (b"n" * 512, b"o" * 512):
                seen.add(sector[:1])
            else:
                assert sector.count(b"n") + sector.count(b"o") < 64, "a sector mixes old and new"
                seen.add(b"junk")
    assert seen == {b"n", b"o", b"junk"}


def test_files_created_after_the_folder_sync_may_vanish(d):
    vanished = 0
    for seed in range(20):
        fs = FaultFS()
        sub = os.path.join(d, f"s{seed}")
        os.mkdir(sub)
        kept = fs.open(os.path.join(sub, "kept"), os.O_RDWR | os.O_CREAT)
        fs.fsync_dir(sub)
        new = fs.open(os.path.join(sub, "new"), os.O_RDWR | os.O_CREAT)
        fs.pwrite_all(new, b"x", 0)
        fs.fdatasync(new)  # synced data does not save a file whose name is not durable
        fs.crash(random.Random(seed))
        for fd in (kept, new):
            fs.close(fd)
        assert os.path.exists(os.path.join(sub, "kept"))
        vanished += not os.path.exists(os.path.join(sub, "new"))
    assert 0 < vanished < 20


def test_injected_error_on_the_nth_matching_call(d):
    fs = FaultFS()
    fs.fail_on("fdatasync", "*.seg", nth=2, err=errno.ENOSPC)
    a = fs.open(os.path.join(d, "1.seg"), os.O_RDWR | os.O_CREAT)
    b = fs.open(os.path.join(d, "x.bin"), os.O_RDWR | os.O_CREAT)
    fs.fdatasync(a)
    fs.fdatasync(b)  # does not match
    with pytest.raises(OSError) as exc:
        fs.fdatasync(a)
    assert exc.value.errno == errno.ENOSPC
    fs.fdatasync(a)  # one shot
    for fd in (a, b):
        fs.close(fd)


def test_lost_writes_stay_lost_after_a_later_successful_sync(d):
    """fsyncgate: after a failed fdatasync the next one "succeeds" without the data."""
    fs = FaultFS()
    path = os.path.join(d, "f")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    fs.fsync_dir(d)
    fs.pwrite_all(fd, b"a" * 4096, 0)
    fs.fdatasync(fd)
    fs.fail_on("fdatasync", "f", lose=True)
    fs.pwrite_all(fd, b"b" * 4096, 0)
    with pytest.raises(OSError):
        fs.fdatasync(fd)
    fs.fdatasync(fd)  # "succeeds"
    assert fs.pread_exact(fd, 4096, 0) == b"b" * 4096  # still in the page cache
    rep = fs.crash(random.Random(0), mode="keep")
    fs.close(fd)
    assert rep.lost == 1 and read(path) == b"a" * 4096


def test_kill_keeps_the_page_cache_and_halts_until_restart(d):
    fs = FaultFS()
    path = os.path.join(d, "f")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    fs.fsync_dir(d)
    fs.pwrite_all(fd, b"a" * 100, 0)
    fs.kill()
    with pytest.raises(Crashed):
        fs.pwrite_all(fd, b"b", 0)
    fs.restart()
    assert fs.pread_exact(fd, 100, 0) == b"a" * 100
    assert fs.unsynced() == 1  # still at risk
    fs.crash(random.Random(0), mode="drop")
    fs.close(fd)
    assert read(path) == b""


def test_crash_at_the_nth_sync(d):
    fs = FaultFS()
    fd = fs.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT)
    fs.crash_at("fdatasync", "*", 3, random.Random(0))
    fs.fdatasync(fd)
    fs.fdatasync(fd)
    with pytest.raises(Crashed):
        fs.fdatasync(fd)
    assert fs.crashed
    fs.close(fd)


def test_per_file_modes_override_the_default(d):
    fs = FaultFS()
    paths = [os.path.join(d, n) for n in ("primary.img", "1.seg")]
    fds = [fs.open(p, os.O_RDWR | os.O_CREAT) for p in paths]
    fs.fsync_dir(d)
    for fd in fds:
        fs.pwrite_all(fd, b"x" * 512, 0)
    fs.crash(random.Random(0), mode="drop", modes={"*.img": "keep"})
    for fd in fds:
        fs.close(fd)
    assert [read(p) for p in paths] == [b"x" * 512, b""]
