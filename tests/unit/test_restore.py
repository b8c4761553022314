"""Full restore while serving reads; undo; roll-forward; crash mid-restore."""

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.engine import faults
from appliance.engine.protection import Busy

from .helpers import make_volume, pattern, reopen

RS = 64 << 10
SIZE = 4 << 20  # 64 regions
ROOT = Path(__file__).resolve().parents[2]


def history(vol):
    """Good data, a bookmark, then 'ransomware' over most of the volume."""
    for i in range(SIZE // RS):
        vol.write(i * RS, pattern(i, RS))
    good = vol.bookmark("good")
    good_data = vol.read(0, SIZE)
    for i in range(0, SIZE // RS, 2):
        vol.write(i * RS + 4096, os.urandom(8192))
    vol.flush()
    return good, good_data


def test_restore_while_reading_every_read_returns_the_point(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, region_size=RS, map_records=16)
    good, good_data = history(vol)
    rnd = random.Random(5)
    checks = []

    def slow_and_check(region, job):
        # At many progress steps, random reads must return the point's data.
        for _ in range(3):
            off = rnd.randrange(0, SIZE // 512 - 16) * 512
            ln = rnd.randrange(1, 16) * 512
            checks.append(vol.read(off, ln) == good_data[off : off + ln])
        checks.append(vol.state == "restoring")

    with faults.inject("restore.copy", slow_and_check):
        job = vol.restore(bookmark="good")
        # The first read right after restore() returned: already the point's data.
        assert vol.read(0, 4096) == good_data[:4096]
        result = job.wait(60)
    assert all(checks) and len(checks) >= 4 * (SIZE // RS)
    assert vol.state == "in-sync"
    assert vol.read(0, SIZE) == good_data
    assert result["bytes_copied"] == (SIZE // RS // 2) * RS  # only the changed regions
    assert result["regions_unchanged"] == SIZE // RS // 2
    # Journaled: the present image is the restored volume, not suspect.
    present = vol.image()
    assert present.read(0, SIZE) == good_data and not present.suspect
    vol.close()


def test_host_writes_during_restore_win_and_undo_returns_pre_restore_state(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, region_size=RS, map_records=16)
    good, good_data = history(vol)
    before = vol.read(0, SIZE)
    gate = threading.Event()
    started = threading.Event()

    def hold(region, job):
        if region == 3:
            started.set()
            gate.wait(10)

    with faults.inject("restore.copy", hold):
        job = vol.restore(bookmark="good")
        started.wait(10)
        # Regions 10 and 40 are not restored yet: the host writes land there.
        vol.write(10 * RS + 512, b"H" * 1024)
        vol.write(40 * RS, b"I" * 4096, fua=True)
        gate.set()
        job.wait(60)
    expect = bytearray(good_data)
    expect[10 * RS + 512 : 10 * RS + 1536] = b"H" * 1024
    expect[40 * RS : 40 * RS + 4096] = b"I" * 4096
    assert vol.read(0, SIZE) == bytes(expect)
    assert vol.image().read(0, SIZE) == bytes(expect)
    # Undo: restore the point just before the restore marker.
    marker = job.result["marker_seq"]
    vol.restore(seq=marker - 1).wait(60)
    assert vol.read(0, SIZE) == before
    vol.close()


def test_roll_forward_equals_the_image_at_t2(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, region_size=RS, map_records=16)
    t1 = None
    for step in range(3):
        for i in range(step, SIZE // RS, 3):
            vol.write(i * RS + step * 512, pattern(100 * step + i, 2048))
        p = vol.bookmark(f"t{step}")
        t1 = t1 or p
    vol.write(0, os.urandom(RS))  # after t2: must not come back
    t2_image = vol.image(bookmark="t2").read(0, SIZE)
    job = vol.restore(bookmark="t0", roll_forward_to="t2")
    result = job.wait(60)
    assert result["roll_forward_from"] == t1.seq
    assert vol.read(0, SIZE) == t2_image
    with pytest.raises(ValueError, match="before the restore point"):
        vol.restore(bookmark="t2", roll_forward_to="t0")
    vol.close()


def test_restore_refusals(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, region_size=RS)
    vol.write(0, b"a" * 512)
    gate = threading.Event()
    with faults.inject("restore.copy", lambda region, job: gate.wait(10)):
        job = vol.restore(seq=vol.last_seq)
        with pytest.raises(Busy, match="restore is in progress"):
            vol.restore(seq=vol.last_seq)
        with pytest.raises(Busy, match="restore is already running"):
            vol.rebaseline()
        gate.set()
        job.wait(30)
    with pytest.raises(KeyError):
        vol.restore(bookmark="nope")
    vol.close()


@pytest.mark.parametrize("kill_at", [5, 30])
def test_crash_mid_restore_resumes_and_reads_stay_correct(tmp_path, kill_at):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.restore_child", str(tmp_path), str(kill_at)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    good_data = (tmp_path / "good.bin").read_bytes()
    host = (tmp_path / "host.bin").read_bytes()  # a FUA write made mid-restore
    expect = bytearray(good_data)
    expect[20 * RS : 20 * RS + len(host)] = host
    gate = threading.Event()
    with faults.inject("restore.copy", lambda region, job: gate.wait(30)):
        vol = reopen(tmp_path)
        assert vol.state == "restoring"
        # Correct before the copier makes any progress, and until it ends.
        assert vol.read(0, SIZE) == bytes(expect)
        gate.set()
        vol._restore_job.wait(60)
    assert vol.read(0, SIZE) == bytes(expect)
    if vol._proc_job is not None:  # the resync an unclean stop calls for
        vol._proc_job.wait(60)
    assert vol.image().read(0, SIZE) == bytes(expect)
    assert vol.state == "in-sync"
    vol.close()


def test_writable_image_overlay_and_discard(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, region_size=RS)
    vol.write(0, b"a" * 8192)
    p = vol.bookmark("p")
    vol.write(0, b"b" * 8192)
    journal_end = vol.last_seq
    img = vol.image(bookmark="p", writable=True, scratch="fsck-test")
    assert img.read(0, 8192) == b"a" * 8192
    img.write(512, b"X" * 1024)
    assert img.read(0, 2048) == b"a" * 512 + b"X" * 1024 + b"a" * 512
    img.flush()
    img.close()
    # Reattach after a "restart": the overlay is still there.
    again = vol.image(seq=p.seq, writable=True, scratch="fsck-test")
    assert again.read(512, 1024) == b"X" * 1024
    again.discard()
    # The volume and the journal never saw those writes.
    assert vol.read(0, 8192) == b"b" * 8192
    assert vol.last_seq == journal_end
    assert vol.image(bookmark="p").read(0, 8192) == b"a" * 8192
    fresh = vol.image(bookmark="p", writable=True, scratch="fsck-test")
    assert fresh.read(512, 1024) == b"a" * 1024
    fresh.discard()
    vol.close()


def test_restore_journals_references_not_bytes(tmp_path):
    from .test_retention import live_segment_bytes

    vol = make_volume(tmp_path, size=SIZE, region_size=RS, map_records=16)
    good, good_data = history(vol)
    before = live_segment_bytes(tmp_path)
    vol.restore(bookmark="good").wait(60)
    grown = live_segment_bytes(tmp_path) - before
    assert grown < SIZE // 16  # 32 regions restored: metadata only
    vol.close()
    for suffix in ("", "-wal", "-shm"):  # and a rebuilt catalog reads REF records right
        p = tmp_path / "state" / f"catalog.sqlite{suffix}"
        if p.exists():
            p.unlink()
    vol = reopen(tmp_path)
    assert vol.image().read(0, SIZE) == good_data == vol.read(0, SIZE)
    vol.close()
