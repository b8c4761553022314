"""Protecting a primary that already holds data: the background baseline ([0055])."""

import os
import threading

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
