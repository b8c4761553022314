"""Re-baseline: the equations, the suspect walk-back, and the Fig. 4 story."""

import os
import threading
import time

from pyroaring import BitMap

from appliance.engine import faults
from appliance.engine.extents import ExtentMap
from appliance.engine.rebaseline import eq1_copy, eq2_fixup, eq3_walk, walk_back

from .helpers import make_volume, pattern

RS = 64 << 10  # region size in these tests
SIZE = 4 << 20  # 64 regions


def test_equation_1_removes_scan_interval_writes():
    mc = BitMap([1, 2, 3, 5])
    scan = BitMap([2, 5, 9])
    assert eq1_copy(mc, scan) == BitMap([1, 3])
    assert eq1_copy(mc, BitMap()) == mc
    assert eq1_copy(BitMap(), scan) == BitMap()


def test_equation_2_host_changes_win_over_the_copy():
    assert eq2_fixup(BitMap([1, 4]), BitMap([2, 4])) == BitMap([1, 2, 4])
    copy = ExtentMap.from_records([(0, 100, 1000)])
    host = ExtentMap.from_records([(40, 10, 5000)])
    fix = eq2_fixup(host, copy)
    assert fix.lookup(0, 100) == [(0, 40, 1000), (40, 50, 5000), (50, 100, 1050)]


def test_equation_3_and_walk_back_stop_at_the_map_that_explains_the_error():
    chain = {
        0: BitMap(range(10)),
        1: BitMap([1]),
        2: BitMap([2, 3]),
        3: BitMap([4]),
        4: BitMap([5]),
    }
    assert eq3_walk(BitMap([2, 7]), chain[2]) == BitMap([7])

    def newest_first():
        for i in range(4, -1, -1):
            yield i, chain[i]

    assert walk_back(BitMap([2]), newest_first()) == [4, 3, 2]
    assert walk_back(BitMap([7]), newest_first()) == [4, 3, 2, 1, 0]
    assert walk_back(BitMap([5]), newest_first()) == [4]
    assert walk_back(BitMap(), newest_first()) == []


def build_chain(tmp_path):
    """Ten delta maps: map i (after the baseline map) writes region i and region 20 + i."""
    vol = make_volume(
        tmp_path,
        size=SIZE,
        region_size=RS,
        map_records=10_000,
        map_seconds=3600,
        drl_reset_interval=None,
    )
    vol.close_map()
    first = len(vol._maps.level0)
    for i in range(10):
        vol.write(i * RS, pattern(i, 4096))
        vol.write((20 + i) * RS + 8192, pattern(100 + i, 4096))
        vol.close_map()
    return vol, first


def corrupt_primary(tmp_path, offset, data):
    """A write that bypassed the engine: the journal never saw it."""
    with open(tmp_path / "primary.img", "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_fig4_story_lost_write_marks_exactly_the_maps_since_its_region_was_written(tmp_path):
    vol, first = build_chain(tmp_path)
    # Region 23 was last written by map first+3; a lost write hits it now.
    corrupt_primary(tmp_path, 23 * RS + 100 * 512, b"\xee" * 512)
    before = vol.image()
    assert before.read(23 * RS, RS) != vol.read(23 * RS, RS)
    nmaps = len(vol._maps.level0)

    # Host writes during the scan: region 50 (not yet scanned: a false miscompare)
    # and region 2 (already scanned).  Neither may be reported as an error.
    states = []

    def during_scan(index, job):
        states.append(vol.state)
        if index == 10:
            vol.write(50 * RS, pattern(500, 4096))
            vol.write(2 * RS, pattern(501, 4096))

    with faults.inject("rebaseline.scan", during_scan):
        job = vol.rebaseline()
        result = job.wait(60)
    assert states and set(states) == {"rebaselining"}
    assert result["regions_compared"] == SIZE // RS
    assert result["miscompares"] == 2  # region 23 and region 50
    assert result["miscompares_eq1"] == 1  # equation 1 removed region 50
    assert result["rechecked_true"] == 0
    assert result["regions_copied"] == 1
    assert result["bytes_copied"] == RS
    maps = vol._maps.level0
    fix = next(m for m in maps if m.fixup)
    suspect = [m.idx for m in maps if m.suspect]
    # Exactly the map that last wrote region 23, every later one, and the scan
    # interval's maps: up to (not including) the fix-up.
    assert suspect == list(range(first + 3, fix.idx))
    assert not maps[first + 2].suspect and nmaps <= fix.idx
    # Points: before map first+3 clean; inside the interval suspect (readable);
    # at and after the fix-up clean and equal to the primary.
    assert not vol.image(seq=maps[first + 2].last_seq).suspect
    bad = vol.image(seq=maps[first + 5].last_seq)
    assert bad.suspect
    assert bad.read(0, 4096) == pattern(0, 4096)  # still readable
    present = vol.image()
    assert not present.suspect
    assert present.read(0, SIZE) == vol.read(0, SIZE)
    assert vol.state == "in-sync"
    vol.close()


def test_rebaseline_of_a_healthy_volume_changes_nothing(tmp_path):
    vol, first = build_chain(tmp_path)
    n = len(vol._maps.level0)
    result = vol.rebaseline().wait(60)
    assert result["miscompares"] == 0 and result["regions_copied"] == 0
    assert not any(m.suspect or m.fixup for m in vol._maps.level0)
    assert len(vol._maps.level0) == n
    vol.close()


def test_recheck_catches_an_error_in_a_region_written_during_the_scan(tmp_path):
    """Equation 1 alone would drop it: the region was both corrupt and written."""
    vol, first = build_chain(tmp_path)
    corrupt_primary(tmp_path, 40 * RS + 4096, b"\xab" * 512)  # never journaled

    def during_scan(index, job):
        if index == 5:
            vol.write(40 * RS, pattern(777, 512))  # same region, other bytes

    with faults.inject("rebaseline.scan", during_scan):
        result = vol.rebaseline().wait(60)
    assert result["miscompares_eq1"] == 0
    assert result["rechecked_true"] == 1 and result["regions_copied"] == 1
    assert vol.image().read(0, SIZE) == vol.read(0, SIZE)
    vol.close()


def test_suspect_flags_survive_reopen_and_merged_maps_follow_newest_child(tmp_path):
    vol, first = build_chain(tmp_path)
    corrupt_primary(tmp_path, 25 * RS, os.urandom(512))
    vol.rebaseline().wait(60)
    suspect = [m.idx for m in vol._maps.level0 if m.suspect]
    vol.close()
    from .helpers import reopen

    vol = reopen(tmp_path, map_seconds=3600)
    assert [m.idx for m in vol._maps.level0 if m.suspect] == suspect
    for (level, idx), info in vol._maps.merged.items():
        newest = vol._maps.level0[(idx + 1) * 8**level - 1]
        assert info.suspect == newest.suspect
    vol.close()


def test_the_fix_up_copy_holds_only_its_own_region(tmp_path):
    """While the fix-up reads a region to copy it, a host write elsewhere
    completes at once; one into that region waits until the region's FIXUP
    record is journaled, so it lands after it and wins in every image."""
    vol, _ = build_chain(tmp_path)
    corrupt_primary(tmp_path, 33 * RS, b"\xcd" * 512)  # the one region to copy
    reading = threading.Event()
    real_read = vol.read
    copier: list[int] = []  # the job's thread
    reads = []  # of the region, by it: the scan's, then the fix-up's

    def slow_read(offset, length):
        if offset == 33 * RS and length == RS and copier == [threading.get_ident()]:
            reads.append(offset)
            if len(reads) == 2:
                reading.set()
                time.sleep(1.0)  # the fix-up's read takes a while
        return real_read(offset, length)

    def note_thread(index, job):
        if not copier:
            copier.append(threading.get_ident())

    vol.read = slow_read
    with faults.inject("rebaseline.scan", note_thread):
        job = vol.rebaseline()
        assert reading.wait(30)
        far = pattern(901, 4096)
        t0 = time.monotonic()
        vol.write(60 * RS, far)  # another region: not held
        assert time.monotonic() - t0 < 0.5, "a write outside the region waited for the fix-up"
        near = pattern(902, 512)
        vol.write(33 * RS + 512, near)  # the region being copied: after its record
        result = job.wait(60)
    del vol.read
    assert result["regions_copied"] == 1
    primary = vol.read(0, SIZE)
    assert primary[60 * RS : 60 * RS + 4096] == far
    assert primary[33 * RS + 512 : 33 * RS + 1024] == near
    assert primary[33 * RS : 33 * RS + 512] == b"\xcd" * 512
    assert vol.image().read(0, SIZE) == primary
    vol.close()
