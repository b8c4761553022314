"""A device served end to end: simulated kernel -> ring -> SCSI -> engine."""

import threading
import time

import pytest

from appliance.scsi.constants import Status
from appliance.tcmu import layout as L
from tests.unit.scsi.cdbs import inquiry, rw10, rw16

from .conftest import BS
from .harness import wait_until

WRITE_10, READ_10, WRITE_16, READ_16 = 0x2A, 0x28, 0x8A, 0x88
SYNC_CACHE_10 = bytes([0x35]) + bytes(9)
FUA = 0x08


def sense_key(done) -> tuple[int, int, int]:
    return done.sense[2] & 0x0F, done.sense[12], done.sense[13]


def data(n: int, seed: int = 1) -> bytes:
    return bytes((i * seed + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize("workers", [0, 3])
def test_write_then_read_back(served, workers):
    uio, dev, spy = served(workers)
    payload = data(8 * BS)
    w = uio.queue(rw10(WRITE_10, 16, 8), data_out=payload)
    assert uio.completion(w).status == Status.GOOD
    r = uio.queue(rw10(READ_10, 16, 8), data_in=8 * BS)
    done = uio.completion(r)
    assert done.status == Status.GOOD and done.data == payload and done.read_len_valid
    assert spy.read(16 * BS, 8 * BS) == payload  # it reached the engine
    assert ("write", 16 * BS, 8 * BS, False) in spy.calls
    assert not uio.sim.broken


def test_fua_reaches_the_engine_and_sync_cache_flushes(served):
    uio, dev, spy = served()
    w = uio.queue(rw16(WRITE_16, 0, 1, byte1=FUA), data_out=data(BS, 3))
    assert uio.completion(w).status == Status.GOOD
    assert spy.calls[-1] == ("write", 0, BS, True)
    s = uio.queue(SYNC_CACHE_10)
    assert uio.completion(s).status == Status.GOOD
    assert spy.calls[-1] == ("flush",)


def test_inquiry_identifies_the_volume(served, volume):
    uio, dev, _ = served()
    q = uio.queue(inquiry(), data_in=96)
    done = uio.completion(q)
    assert done.status == Status.GOOD
    assert done.data[8:16] == b"CDP     " and done.data[16:26] == b"CDP volume"
    q = uio.queue(inquiry(evpd=1, page=0x83), data_in=255)
    done = uio.completion(q)
    assert done.status == Status.GOOD and done.data[1] == 0x83
    assert done.read_len_valid and len(done.data) < 255  # the residual reaches the kernel


def test_bad_cdb_is_check_condition(served):
    uio, dev, spy = served()
    bad = uio.queue(bytes([0xC7]) + bytes(15))  # vendor-specific opcode, group 6 -> 10 bytes
    done = uio.completion(bad)
    assert done.status == Status.CHECK_CONDITION
    assert sense_key(done) == (0x5, 0x20, 0x00)  # ILLEGAL REQUEST / INVALID COMMAND OPCODE
    past_end = uio.queue(rw10(READ_10, (1 << 20) // BS, 1), data_in=BS)
    done = uio.completion(past_end)
    assert done.status == Status.CHECK_CONDITION and sense_key(done)[:2] == (0x5, 0x21)
    assert not [c for c in spy.calls if c[0] == "write"]


def test_out_of_order_completion_with_workers(served):
    uio, dev, spy = served(workers=2)
    gate = threading.Event()
    real_write = spy.write

    def slow_write(offset, data, *, fua=False):
        if offset == 0:
            gate.wait(5)
        return real_write(offset, data, fua=fua)

    spy.write = slow_write
    slow = uio.queue(rw10(WRITE_10, 0, 1), data_out=data(BS))
    fast = uio.queue(rw10(READ_10, 8, 1), data_in=BS)
    assert uio.completion(fast).status == Status.GOOD  # not held behind the slow write
    gate.set()
    assert uio.completion(slow).status == Status.GOOD
    wait_until(lambda: uio.sim.idle())
    assert not uio.sim.broken


def test_queue_full_is_task_set_full(served):
    uio, dev, spy = served(workers=1, max_queued=1, inline=False)
    gate = threading.Event()
    real_write = spy.write
    spy.write = lambda o, d, *, fua=False: (gate.wait(5), real_write(o, d, fua=fua))[1]
    first = uio.queue(rw10(WRITE_10, 0, 1), data_out=data(BS))
    wait_until(lambda: dev.stats.commands == 1)
    second = uio.queue(rw10(WRITE_10, 8, 1), data_out=data(BS))
    assert uio.completion(second).status == Status.TASK_SET_FULL
    gate.set()
    assert uio.completion(first).status == Status.GOOD
    assert dev.stats.queue_full == 1


def test_command_waiting_too_long_is_busy_and_not_executed(served):
    now = [0.0]
    uio, dev, spy = served(workers=1, queue_timeout=5.0, clock=lambda: now[0], inline=False)
    gate = threading.Event()
    real_write = spy.write
    spy.write = lambda o, d, *, fua=False: (gate.wait(5), real_write(o, d, fua=fua))[1]
    first = uio.queue(rw10(WRITE_10, 0, 1), data_out=data(BS))
    wait_until(lambda: dev.stats.commands == 1)
    late = uio.queue(rw10(WRITE_10, 8, 1), data_out=data(BS, 9))
    wait_until(lambda: dev.stats.commands == 2)
    now[0] = 10.0  # the second command has waited past queue_timeout
    gate.set()
    assert uio.completion(first).status == Status.GOOD
    assert uio.completion(late).status == Status.BUSY
    assert spy.read(8 * BS, BS) == bytes(BS)  # never applied: no ghost write


def test_tmr_abort_is_harmless(served):
    uio, dev, spy = served(workers=1, inline=False)
    gate = threading.Event()
    real_write = spy.write
    spy.write = lambda o, d, *, fua=False: (gate.wait(5), real_write(o, d, fua=fua))[1]
    running = uio.queue(rw10(WRITE_10, 0, 1), data_out=data(BS))
    wait_until(lambda: dev.stats.commands == 1)
    waiting = uio.queue(rw10(WRITE_10, 8, 1), data_out=data(BS, 5))
    wait_until(lambda: dev.stats.commands == 2)
    with uio.lock:
        assert uio.sim.queue_tmr(L.TMR_ABORT_TASK, [waiting.cmd_id])
        assert uio.sim.queue_tmr(L.TMR_LUN_RESET, [running.cmd_id, 999])
    uio.notify()
    wait_until(lambda: dev.stats.tmrs == 2)
    gate.set()
    uio.completion(running)
    uio.completion(waiting)
    wait_until(lambda: uio.sim.idle())
    assert not uio.sim.broken and dev.running
    assert dev.stats.aborted == 1
    assert spy.read(8 * BS, BS) == bytes(BS)  # the aborted one never ran


def test_reads_and_writes_without_fua_run_on_the_ring_thread(served):
    """No worker hop for page-cache commands; FUA writes and flushes go to a worker."""
    uio, dev, spy = served(workers=2)
    where = {}
    real_write, real_many, real_flush = spy.write, spy.write_many, spy.flush

    def write(o, d, *, fua=False):
        where[("write", fua)] = threading.current_thread().name
        return real_write(o, d, fua=fua)

    def write_many(items):  # the fast path's run of plain writes
        where[("write", False)] = threading.current_thread().name
        return real_many(items)

    def flush():
        where["flush"] = threading.current_thread().name
        return real_flush()

    spy.write, spy.write_many, spy.flush = write, write_many, flush
    for cdb, out in (
        (rw10(WRITE_10, 0, 1), data(BS)),
        (rw16(WRITE_16, 8, 1, byte1=FUA), data(BS, 2)),
        (SYNC_CACHE_10, None),
    ):
        q = uio.queue(cdb, data_out=out) if out else uio.queue(cdb)
        assert uio.completion(q).status == Status.GOOD
    r = uio.queue(rw10(READ_10, 8, 1), data_in=BS)
    assert uio.completion(r).data == data(BS, 2)
    assert where[("write", False)] == "tcmu-t0"  # the ring thread
    assert where[("write", True)] != "tcmu-t0" and where["flush"] != "tcmu-t0"


def test_stop_drains_what_is_in_flight(served):
    uio, dev, spy = served(workers=2)
    queued = [uio.queue(rw10(WRITE_10, 8 * i, 1), data_out=data(BS, i)) for i in range(5)]
    assert dev.stop(5)
    for q in queued:
        assert uio.completion(q, timeout=1).status == Status.GOOD
    assert not dev.running


def test_many_commands_wrap_the_ring(served):
    uio, dev, spy = served(workers=3)
    t0 = time.monotonic()
    for i in range(300):
        lba = (i * 8) % 2000
        w = uio.queue(rw10(WRITE_10, lba, 2), data_out=data(2 * BS, i))
        assert uio.completion(w).status == Status.GOOD  # concurrent ones may reorder (SAM)
        r = uio.queue(rw10(READ_10, lba, 2), data_in=2 * BS)
        assert uio.completion(r).data == data(2 * BS, i)
        if i % 7 == 0:  # a 6-byte CDB: entries of another size, so PADs appear
            assert uio.completion(uio.queue(inquiry(alloc=36), data_in=36)).status == 0
    assert uio.sim.pads, "the ring never wrapped"
    assert not uio.sim.broken
    assert time.monotonic() - t0 < 60


def test_without_read_len_the_rest_of_the_buffer_is_zeroed(served):
    from tests.unit.tcmu.sim_kernel import ALL_CAPS

    uio, dev, _ = served(sim={"flags": ALL_CAPS & ~L.CAP_READ_LEN})
    # Leave stale bytes in the data area, as an earlier command would.
    w = uio.queue(rw10(WRITE_10, 0, 1), data_out=b"\xee" * BS)
    assert uio.completion(w).status == Status.GOOD
    q = uio.queue(inquiry(alloc=255), data_in=255)
    done = uio.completion(q)
    assert done.status == Status.GOOD and not done.read_len_valid
    assert len(done.data) == 255 and b"\xee" not in done.data  # no stale page content
    assert done.data[8:11] == b"CDP"


def test_writes_leave_the_ring_thread_when_they_must_wait_for_a_disk():
    from appliance.daemon.device import _runs_inline

    plain, fua = rw10(WRITE_10, 0, 1), rw10(WRITE_10, 0, 1, byte1=FUA)
    write6 = bytes([0x0A, 0, 0, 0, 1, 0])
    assert _runs_inline(plain, True) and _runs_inline(write6, True)
    assert not _runs_inline(fua, True)
    # WCE=0 (MODE SELECT): every write is FUA, so none waits on the ring thread.
    assert not _runs_inline(plain, False) and not _runs_inline(write6, False)
    assert _runs_inline(rw10(READ_10, 0, 1), False) and _runs_inline(inquiry(), False)
