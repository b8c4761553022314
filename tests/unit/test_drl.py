"""The dirty region log: file format, mark-before-write, pins, reset policy."""

import errno
import os
import threading
import time
import uuid

import pytest

from appliance.engine.drl import DirtyRegionLog
from appliance.engine.fileio import OsFileIO

from .helpers import FlakyIO, make_volume, pattern, reopen

RS = 64 << 10


def new_drl(tmp_path, size=4 << 20, vol_uuid=None):
    return DirtyRegionLog(
        OsFileIO(), str(tmp_path / "drl.bin"), vol_uuid or uuid.UUID(int=7), size, RS
    )


def test_mark_is_durable_once_and_dirty_regions_pay_nothing(tmp_path):
    d = new_drl(tmp_path)
    base = d.syncs
    d.mark(0, 4096)
    assert d.syncs == base + 1 and d.is_dirty(0)
    d.mark(512, 512)  # same region: nothing to write
    assert d.syncs == base + 1
    d.mark(RS - 512, 1024)  # spans regions 0 and 1: one write for region 1
    assert d.syncs == base + 2 and d.is_dirty(1)
    d.close()
    again = new_drl(tmp_path)
    assert set(again.dirty()) == {0, 1} and again.trusted
    again.close()


def test_concurrent_marks_share_syncs(tmp_path):
    d = new_drl(tmp_path, size=64 << 20)
    base = d.syncs
    threads = [threading.Thread(target=d.mark, args=(i * RS, 512)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.dirty_count() == 64
    assert d.syncs - base <= 64
    d.close()


def test_reset_keeps_pinned_regions_and_refuses_out_of_sync(tmp_path):
    d = new_drl(tmp_path)
    d.mark(0, 512)
    d.mark(RS, 512)
    d.unpin(RS, 512)  # region 1's write is durable in the journal now
    assert d.reset() == 1
    assert set(d.dirty()) == {0}
    d.set_out_of_sync(True)
    d.unpin(0, 512)
    assert d.reset() == 0  # no reset while out of sync ([0051])
    assert set(d.dirty()) == {0}
    d.close()
    again = new_drl(tmp_path)
    assert again.out_of_sync and set(again.dirty()) == {0}
    again.set_out_of_sync(False)
    assert again.reset() == 1 and again.dirty_count() == 0
    again.close()


@pytest.mark.parametrize("damage", ["garbage", "wrong-size", "other-volume", "torn-newest"])
def test_damaged_drl_is_never_trusted_clear(tmp_path, damage):
    d = new_drl(tmp_path)
    d.mark(3 * RS, 512)
    d.mark(5 * RS, 512)  # generation 3 (slot 1); generation 2 (slot 0) has only region 3
    d.close()
    path = tmp_path / "drl.bin"
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif damage == "wrong-size":
        path.write_bytes(bytes(raw[:1000]))
    elif damage == "other-volume":
        pass
    elif damage == "torn-newest":
        slot = len(raw) // 2
        raw[slot + 70] ^= 0xFF  # the newest slot's bitmap no longer matches its crc
        path.write_bytes(bytes(raw))
    d = new_drl(tmp_path, vol_uuid=uuid.UUID(int=8) if damage == "other-volume" else None)
    if damage == "torn-newest":
        # The previous generation.  Safe: the torn write was the mark of region 5,
        # and a write's primary I/O starts only after its mark is durable.
        assert d.trusted and set(d.dirty()) == {3}
    else:
        assert not d.trusted
        assert d.dirty_count() == d.nregions  # every region: a full resync
    d.close()


def test_write_path_marks_before_the_primary_and_unpins_when_durable(tmp_path):
    vol = make_volume(tmp_path, size=4 << 20, region_size=RS, drl_reset_interval=None)
    seen = {}

    def check(offset, length):
        seen["dirty"] = vol._drl.is_dirty(offset // RS)

    from appliance.engine import faults

    with faults.inject("write.after_primary", check):
        vol.write(7 * RS, pattern(1, 4096))
    assert seen["dirty"]
    vol.flush()
    assert 7 not in vol._drl._pins
    assert vol._drl.reset() >= 1 and vol.drl_dirty_regions() == 0
    vol.close()


def test_periodic_reset(tmp_path):
    vol = make_volume(tmp_path, size=4 << 20, region_size=RS, drl_reset_interval=0.2)
    for i in range(8):
        vol.write(i * RS, pattern(i, 512))
    assert vol.drl_dirty_regions() >= 8
    vol.flush()
    deadline = time.monotonic() + 10
    while vol.drl_dirty_regions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vol.drl_dirty_regions() == 0
    vol.close()


def test_async_mode_acknowledges_from_the_primary_and_the_drl_covers_the_gap(tmp_path):
    io = FlakyIO()
    vol = make_volume(
        tmp_path, size=4 << 20, region_size=RS, mode="async", io=io, drl_reset_interval=0.1
    )
    io.sync_delay = 0.5
    t0 = time.monotonic()
    s = vol.write(3 * RS, pattern(9, 4096), fua=True)
    vol.flush()
    assert time.monotonic() - t0 < 0.5  # did not wait for the journal's sync
    assert vol._drl.is_dirty(3)  # pinned until the journal holds it
    time.sleep(0.3)
    assert vol._drl.is_dirty(3)
    io.sync_delay = 0.0
    img = vol.image(seq=s)  # waits for the journal
    assert img.read(3 * RS, 4096) == pattern(9, 4096)
    deadline = time.monotonic() + 10
    while vol._drl.is_dirty(3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not vol._drl.is_dirty(3)
    vol.close()


def test_async_back_pressure_never_drops(tmp_path):
    vol = make_volume(tmp_path, size=8 << 20, region_size=RS, mode="async")
    vol._journal.max_pending_bytes = 64 << 10  # a tiny queue: writers must wait
    seqs = [vol.write(i * 8192, pattern(i, 8192)) for i in range(200)]
    vol.flush()
    img = vol.image(seq=seqs[-1])
    for i in range(200):
        assert img.read(i * 8192, 8192) == pattern(i, 8192)
    vol.close()


def test_region_size_validated(tmp_path):
    from appliance.engine import InvalidArgument

    with pytest.raises(InvalidArgument, match="region_size 5000"):
        make_volume(tmp_path, region_size=5000)
    with pytest.raises(InvalidArgument, match="mode 'fast'"):
        make_volume(tmp_path, mode="fast")


def test_state_and_mode_survive_reopen(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, region_size=RS, mode="async")
    vol.close()
    vol = reopen(tmp_path)
    assert vol.mode == "async" and vol.region_size == RS and vol.state == "in-sync"
    vol.close()


def test_enospc_errno_is_kept(tmp_path):
    io = FlakyIO()
    io.broken = errno.ENOSPC
    with pytest.raises(OSError):
        io.open(str(tmp_path / "x.seg"), os.O_CREAT | os.O_RDWR)
