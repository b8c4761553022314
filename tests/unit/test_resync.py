"""Secondary failure (EIO, ENOSPC) under load: host writes never fail; resync heals."""

import errno
import threading
import time

import pytest

from appliance.engine import faults

from .helpers import FlakyIO, make_volume, pattern

RS = 64 << 10
SIZE = 4 << 20


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_secondary_failure_mid_stream_then_resync_touches_only_dirty_regions(tmp_path, err):
    io = FlakyIO()
    vol = make_volume(
        tmp_path,
        size=SIZE,
        region_size=RS,
        io=io,
        map_records=50,
        drl_reset_interval=0.1,
        secondary_retry=0.2,
    )
    for i in range(SIZE // RS):  # history before the outage, everywhere
        vol.write(i * RS, pattern(i, 4096))
    vol.flush()
    wait_for(lambda: vol.drl_dirty_regions() == 0)
    good = vol.bookmark("before-outage")

    errors, written = [], set()
    stop = threading.Event()

    def host():
        k = 0
        while not stop.is_set():
            region = k % 10  # the outage touches regions 0-9 only
            try:
                vol.write(region * RS + (k % 16) * 4096, pattern(1000 + k, 4096))
                if k % 8 == 0:
                    vol.flush()
                written.add(region)
            except Exception as exc:  # a host write must never fail
                errors.append(exc)
            k += 1
            time.sleep(0.001)

    io.broken = err
    t = threading.Thread(target=host)
    t.start()
    wait_for(lambda: vol.state == "out-of-sync")
    time.sleep(0.3)
    assert vol.state == "out-of-sync" and io.failures > 0
    with pytest.raises(LookupError, match="out of sync"):
        vol.image(seq=vol.last_seq + 0)  # points after the failure are not offered
    assert vol.image(bookmark="before-outage").read(0, 4096) == pattern(0, 4096)
    dirty_during = vol.drl_dirty_regions()
    assert 1 <= dirty_during <= 10
    io.broken = None  # the secondary is back; the retry timer notices
    wait_for(lambda: vol._proc_job is not None)
    job = vol._proc_job
    result = job.wait(60)
    stop.set()
    t.join()
    assert not errors
    assert job.kind == "resync"
    assert result["regions_compared"] <= 10  # only DRL-dirty regions were scanned
    assert result["regions_compared"] >= dirty_during
    vol.flush()
    wait_for(lambda: vol.state == "in-sync")
    present = vol.image()
    assert not present.suspect
    assert present.read(0, SIZE) == vol.read(0, SIZE)
    # Points from before the outage are untouched and not suspect.
    old = vol.image(seq=good.seq)
    assert not old.suspect and old.read(20 * RS, 4096) == pattern(20, 4096)
    vol.close()


def test_manual_resync_while_secondary_still_down_says_so(tmp_path):
    io = FlakyIO()
    vol = make_volume(tmp_path, size=SIZE, region_size=RS, io=io, secondary_retry=3600)
    io.broken = errno.EIO
    vol.write(0, pattern(1, 4096))  # succeeds: primary only
    vol.flush()
    assert vol.state == "out-of-sync"
    from appliance.engine.protection import Busy

    with pytest.raises(Busy, match="still unavailable"):
        vol.resync()
    io.broken = None
    job = vol.resync()
    job.wait(30)
    assert vol.state == "in-sync"
    assert vol.image().read(0, 4096) == pattern(1, 4096)
    vol.close()


def test_out_of_sync_survives_restart_and_resyncs_at_open(tmp_path):
    io = FlakyIO()
    vol = make_volume(tmp_path, size=SIZE, region_size=RS, io=io, secondary_retry=3600)
    io.broken = errno.EIO
    vol.write(5 * RS, pattern(5, 4096))
    vol.flush()
    assert vol.state == "out-of-sync"
    vol.close()
    from .helpers import reopen

    gate = threading.Event()
    with faults.inject("resync.scan", lambda index, job: gate.wait(30)):
        vol = reopen(tmp_path)
        assert vol.state == "resyncing"
        gate.set()
        vol._proc_job.wait(30)
    assert vol.state == "in-sync"
    assert vol.image().read(5 * RS, 4096) == pattern(5, 4096)
    vol.close()
