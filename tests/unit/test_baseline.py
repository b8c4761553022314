"""Protecting a primary that already holds data: the background baseline ([0055])."""

import os
import random
import threading
import time

import pytest

from appliance.engine import PointNotAvailable, faults
from appliance.engine import protection as volume

from .helpers import make_volume, reopen


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(volume, "BASELINE_CHUNK", 64 << 10)


def fill_primary(tmp_path, size):
    data = bytearray(os.urandom(size))
    data[size // 4 : size // 2] = bytes(size // 4)  # a zero run: journaled as a ZERO record
    (tmp_path / "primary.img").write_bytes(data)
    return data


def test_baseline_copies_while_io_continues(tmp_path, small_chunks):
    size = 4 << 20
    model = fill_primary(tmp_path, size)
    gate = threading.Event()
    steps = []

    def hold(pos, job):
        steps.append(pos)
        if len(steps) == 8:
            gate.wait(10)

    with faults.inject("baseline.chunk", hold):
        vol = make_volume(tmp_path, size=None)
        while len(steps) < 8:
            threading.Event().wait(0.01)
        # Mid-baseline: no point is offered, the state says so, writes go on.
        assert vol.state == "baselining"
        with pytest.raises(PointNotAvailable, match="baseline in progress"):
            vol.image()
        with pytest.raises(PointNotAvailable):
            vol.bookmark("early")
        assert vol.points() == []
        for off in (0, 100 * 512, size - 4096, size // 2):
            data = os.urandom(4096)
            vol.write(off, data)
            model[off : off + 4096] = data
        gate.set()
        vol.wait_baseline(30)
    assert vol.state == "in-sync"
    assert vol.read(0, size) == bytes(model)
    assert vol.image().read(0, size) == bytes(model)
    result = vol.baseline_job.result
    assert result["bytes_zero"] >= size // 4
    assert result["bytes_copied"] >= size // 2
    done = vol.points()[0]
    assert done.kind == "baseline"
    vol.close()


def test_baseline_resumes_after_restart(tmp_path, small_chunks):
    size = 2 << 20
    model = fill_primary(tmp_path, size)
    stop = threading.Event()

    def slow(pos, job):
        if pos >= size // 2:
            stop.set()
            job.cancel()

    with faults.inject("baseline.chunk", slow):
        vol = make_volume(tmp_path, size=None)
        stop.wait(10)
        vol.close()
    vol = reopen(tmp_path)
    assert vol.baseline_job.done_units >= size // 2  # resumed, not restarted
    vol.wait_baseline(30)
    assert vol.image().read(0, size) == bytes(model)
    vol.close()


def test_baseline_chunk_holds_only_its_own_range(tmp_path, small_chunks):
    """While the baseline reads a chunk, a write elsewhere completes; one into
    the chunk waits until the chunk is journaled (and so lands after it)."""
    size = 2 << 20
    model = fill_primary(tmp_path, size)
    at_first = threading.Event()
    release = threading.Event()
    reading = threading.Event()

    def hold(pos, job):
        if not at_first.is_set():
            at_first.set()
            release.wait(10)

    with faults.inject("baseline.chunk", hold):
        vol = make_volume(tmp_path, size=None)
        assert at_first.wait(10)
        chunk = volume.BASELINE_CHUNK
        real_read = vol.read
        me = threading.current_thread()  # the baseline reads in its own thread

        def slow_read(offset, length):
            if threading.current_thread() is not me and offset == chunk:
                reading.set()
                threading.Event().wait(1.0)  # the chunk's read takes a while
            return real_read(offset, length)

        vol.read = slow_read
        release.set()
        assert reading.wait(10)
        far = os.urandom(4096)
        t0 = time.monotonic()
        vol.write(size - 4096, far)  # outside the chunk being read
        assert time.monotonic() - t0 < 0.5, "a write outside the chunk waited for it"
        near = os.urandom(4096)
        vol.write(chunk, near)  # inside it: ordered after the chunk's record
        model[size - 4096 :] = far
        model[chunk : chunk + 4096] = near
        vol.wait_baseline(30)
    del vol.read
    assert vol.read(0, size) == bytes(model)
    assert vol.image().read(0, size) == bytes(model)
    vol.close()
    vol = reopen(tmp_path)
    assert vol.image().read(0, size) == bytes(model)
    vol.close()


def test_baseline_under_random_writes_matches_the_live_volume(tmp_path, small_chunks):
    """Writers race the baseline over data, zero runs and holes: the first
    image equals the live volume, byte for byte."""
    size = 4 << 20
    with open(tmp_path / "primary.img", "wb") as f:  # sparse: holes, data, zeros
        f.truncate(size)
        for off in range(0, size, 512 << 10):
            f.seek(off)
            f.write(os.urandom(64 << 10) if off % (1 << 20) else bytes(64 << 10))
    stop = threading.Event()
    errors = []

    def writer(seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                off = rng.randrange(0, size // 512 - 16) * 512
                vol.write(off, os.urandom(rng.choice((512, 4096, 8192))))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    vol = make_volume(tmp_path, size=None)
    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    vol.wait_baseline(60)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    vol.flush()
    live = vol.read(0, size)
    assert vol.image().read(0, size) == live
    vol.close()
    vol = reopen(tmp_path)
    assert vol.image().read(0, size) == live == vol.read(0, size)
    vol.close()
