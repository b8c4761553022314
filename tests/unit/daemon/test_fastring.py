"""The compiled fast path (``appliance/tcmu/_fastring.c``) against the Python path.

Two devices, each over its own simulated kernel and its own volume, get the
same commands in the same polls: one with the fast path, one without.  After
every poll the ring area of the two mappings (responses, cmd_ids, uflags),
the simulated kernel's completions (status, sense, data-in, read_len) and the
device statistics must be equal byte for byte, and at the end so must the
volumes (primary bytes, journal sequence).  The commands are a random mix of
what the fast path takes and what it must leave alone.
"""

from __future__ import annotations

import logging
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.daemon.backend import VolumeBackend
from appliance.daemon.device import DeviceOptions, TcmuDevice
from appliance.engine import ProtectedVolume
from appliance.scsi import DeviceIdentity, Limits, MediumError, ScsiDevice
from appliance.scsi.constants import Status
from appliance.tcmu import CommandRing, fastpath
from appliance.tcmu import layout as L
from tests.unit.scsi.cdbs import inquiry, rw10, rw16
from tests.unit.tcmu.sim_kernel import SimKernel

from .harness import SimUio

# `make test` sets CDP_REQUIRE_FASTRING=1: there a missing extension fails.
pytestmark = pytest.mark.skipif(
    not fastpath.AVAILABLE and os.environ.get("CDP_REQUIRE_FASTRING") != "1",
    reason="the C extension is not built",
)

BS = 512
SIZE = 256 * 1024
BLOCKS = SIZE // BS
MAX_BLOCKS = 64
READ_10, WRITE_10, READ_16, WRITE_16 = 0x28, 0x2A, 0x88, 0x8A


def test_the_extension_is_built():
    assert fastpath.AVAILABLE, "appliance/tcmu/_fastring.c did not build (gcc, Python.h?)"


class Side:
    """One device over its own simulated kernel and volume."""

    def __init__(self, root, *, fast: bool, seed_data: bytes, backend=None, **sim) -> None:
        self.vol = ProtectedVolume.create(
            str(root / "state"),
            primary=str(root / "primary.img"),
            secondary=str(root / "secondary"),
            size=SIZE,
            block_size=BS,
            segment_size=1 << 20,
        )
        self.vol.write(0, seed_data)
        self.uio = SimUio(**sim)
        self.backend = backend(self.vol) if backend else VolumeBackend(self.vol)
        scsi = ScsiDevice(
            self.backend, DeviceIdentity(str(self.vol.uuid)), limits=Limits(MAX_BLOCKS * BS)
        )
        self.dev = TcmuDevice("t", self.uio.ring(), self.uio, scsi, DeviceOptions(workers=0))
        assert self.dev._fast  # the extension is built: on unless told otherwise
        self.dev._fast = fast

    def queue(self, kind, cdb, n):
        sim = self.uio.sim
        if kind == "tmr":
            assert sim.queue_tmr(L.TMR_ABORT_TASK, [1, 2])
        elif kind == "out":
            assert sim.queue_cmd(cdb, data_out=n) is not None
        else:
            assert sim.queue_cmd(cdb, data_in=n) is not None

    def serve(self):
        self.dev._serve_once()  # (its kick takes the uio lock)

    def ring_bytes(self) -> bytes:
        return bytes(self.uio.sim.mm[: self.uio.sim.data_off])

    def completions(self):
        return [
            (c.cmd_id, c.status, c.sense, c.data, c.read_len_valid)
            for c in self.uio.sim.completions
        ]

    def close(self):
        self.dev.ring.close()
        self.uio.sim.close()
        self.uio.close()
        self.vol.close()


def command(rng: random.Random):
    """(kind, cdb, data_out bytes or data_in length): mostly fast, some not."""
    roll = rng.random()
    if roll < 0.05:
        return "tmr", b"", 0
    if roll < 0.10:
        return "in", inquiry(), 96
    op = rng.choice([READ_10, WRITE_10, READ_16, WRITE_16])
    blocks = rng.choice([1, 1, 8, 8, 16, 33, MAX_BLOCKS, MAX_BLOCKS + 1, 0])
    lba = rng.randrange(0, BLOCKS)
    if rng.random() < 0.1:
        lba = BLOCKS - rng.randrange(0, 4)  # around the end
    byte1 = 0
    if rng.random() < 0.15:
        byte1 = rng.choice([0x08, 0x10, 0x20, 0x01, 0x04, 0x02, 0x18])  # FUA, DPO, protect...
    group = 0x40 if rng.random() < 0.03 else 0
    cdb = (rw16 if op & 0x80 else rw10)(op, lba, blocks, byte1=byte1, group=group)
    if rng.random() < 0.03:
        cdb = cdb[:-1] + b"\x01"  # control byte: NACA etc.
    n = max(blocks, 1) * BS
    if op in (WRITE_10, WRITE_16):
        extra = rng.choice([0, 0, 0, BS, -BS]) if n > BS else 0
        return "out", cdb, rng.randbytes(n + extra)
    return "in", cdb, n + rng.choice([0, 0, 0, BS, 3 * BS, -BS] if n > BS else [0, 0, BS])


def run_same(tmp_path, seed: int, polls: int, *, flags=None, backend=None, **sim):
    rng = random.Random(seed)
    seed_data = rng.randbytes(SIZE)
    kw = dict(data_blocks=80, mb_cmdr_size=4 * 4096, **sim)
    if flags is not None:
        kw["flags"] = flags
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fast = Side(tmp_path / "a", fast=True, seed_data=seed_data, backend=backend, **kw)
    slow = Side(tmp_path / "b", fast=False, seed_data=seed_data, backend=backend, **kw)
    try:
        for _ in range(polls):
            pages = 0  # every poll completes all it gets: the data area starts empty
            for _ in range(rng.randrange(1, 12)):
                kind, cdb, n = command(rng)
                pages += -(-(len(n) if isinstance(n, bytes) else n) // 4096)
                if pages > kw["data_blocks"]:
                    break
                fast.queue(kind, cdb, n)
                slow.queue(kind, cdb, n)
            fast.serve()
            slow.serve()
            assert fast.ring_bytes() == slow.ring_bytes()
            assert fast.completions() == slow.completions()
            assert fast.dev.stats == slow.dev.stats
            assert not fast.uio.sim.broken and not slow.uio.sim.broken
        assert fast.uio.sim.idle() and slow.uio.sim.idle()
        assert fast.vol.read(0, SIZE) == slow.vol.read(0, SIZE)
        assert fast.vol.last_seq == slow.vol.last_seq
        return fast.dev.ring.stats.fast, fast.dev.stats
    finally:
        fast.close()
        slow.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_fast_and_python_paths_give_the_same_bytes(tmp_path_factory, seed):
    taken, _ = run_same(tmp_path_factory.mktemp("fr"), seed, polls=12)
    assert taken >= 0


@pytest.mark.parametrize("flags", [0, L.CAP_OOOC, L.CAP_READ_LEN, L.CAP_OOOC | L.CAP_READ_LEN])
def test_same_bytes_with_every_capability_set(tmp_path, flags):
    taken, stats = run_same(tmp_path, 7, polls=40, flags=flags)
    assert taken > 30  # the mix is mostly fast commands: they really went the fast way
    assert stats.by_status[Status.GOOD] > taken


class DirectScan:
    """A simulated ring and a primary, for calling the C scan directly."""

    def __init__(self, primary) -> None:
        self.sim = SimKernel(data_blocks=16)
        self.mv = memoryview(self.sim.mm)
        self.fd = os.open(str(primary), os.O_RDONLY)
        self.scan = fastpath.scanner(
            fd=self.fd, block_size=BS, size=SIZE, max_blocks=64, writes=False
        )

    def __call__(self, live=None):
        s = self.sim
        live = {} if live is None else live
        return self.scan(self.mv, s.cmdr_off, s.cmdr_size, 0, s.head, s.data_off, True, live)

    def close(self) -> None:
        os.close(self.fd)
        self.mv.release()
        self.sim.close()


@pytest.fixture
def direct():
    """direct(primary path) -> DirectScan; closed after the test."""
    made = []

    def make(primary):
        made.append(DirectScan(primary))
        return made[-1]

    yield make
    for d in made:
        d.close()


def test_a_read_failing_in_c_is_answered_by_the_python_path(tmp_path, direct):
    """EIO in the C read ends the run before that command; Python reads it
    again and reports the error (here: a primary fd that cannot be read)."""
    d = direct(tmp_path)  # a directory: pread gives EISDIR
    for lba in (0, 8):
        d.sim.queue_cmd(rw10(READ_10, lba, 8), data_in=8 * BS)
    end, count, writes, ids = d()
    assert (end, count, writes, ids) == (0, 0, None, b"")  # nothing taken, nothing answered


def test_a_short_primary_reads_zeros_past_its_end(tmp_path, direct):
    primary = tmp_path / "short.img"
    primary.write_bytes(b"\xab" * (4 * BS))
    d = direct(primary)
    cmd = d.sim.queue_cmd(rw10(READ_10, 0, 8), data_in=8 * BS)
    end, count, _, _ = d()
    assert (end, count) == (d.sim.head, 1)
    d.sim.words[L.CMD_TAIL_WORD] = end
    d.sim.handle_completions()
    (done,) = d.sim.completions
    assert done.cmd_id == cmd.cmd_id and done.status == Status.GOOD
    assert done.data == b"\xab" * (4 * BS) + bytes(4 * BS)


def test_live_and_repeated_ids_are_left_to_the_python_ring(tmp_path, direct):
    primary = tmp_path / "p.img"
    primary.write_bytes(bytes(SIZE))
    d = direct(primary)
    a = d.sim.queue_cmd(rw10(READ_10, 0, 1), data_in=BS)
    b = d.sim.queue_cmd(rw10(READ_10, 1, 1), data_in=BS)
    # a live id (an outstanding command of the Python ring) is not taken
    assert d({a.cmd_id: None})[:2] == (0, 0)
    # the same id twice in one run: the second is left for the ring to void
    start_b = d.sim.cmdr_off + b.entry_off
    d.mv[start_b + 4 : start_b + 6] = a.cmd_id.to_bytes(2, "little")
    live = {}
    end, count, _, ids = d(live)
    assert (end, count, ids) == (b.entry_off, 1, a.cmd_id.to_bytes(2, "little"))
    assert live == {a.cmd_id: None}  # live until the ring publishes the run


class FailingWrites(VolumeBackend):
    """Every write to the second half fails as a bad disk would; a run
    (``write_many``) stops at the first such write, as the engine's does."""

    def write(self, offset, data, *, fua=False):
        if offset >= SIZE // 2:
            raise MediumError("write: injected", offset=offset)
        return super().write(offset, data, fua=fua)

    def write_many(self, items):
        bad = next((k for k, (off, _) in enumerate(items) if off >= SIZE // 2), len(items))
        done, error = super().write_many(items[:bad]) if bad else (0, None)
        assert done == bad and error is None
        if bad == len(items):
            return done, None
        return done, MediumError("write: injected", offset=items[bad][0])


class FailingWritesOneByOne(FailingWrites):
    write_many = None  # a backend without runs: every write alone


@pytest.mark.parametrize("backend", [FailingWrites, FailingWritesOneByOne])
def test_a_write_the_engine_refuses_gets_the_same_sense(tmp_path, caplog, backend):
    # (a captured "backend error" record would keep the Python path's ring
    # views alive through the exception's traceback, and the mapping open)
    caplog.set_level(logging.ERROR, logger="appliance.scsi.device")
    taken, stats = run_same(tmp_path, 11, polls=30, backend=backend)
    assert taken > 20
    assert stats.by_status[Status.CHECK_CONDITION] > 0


def test_a_read_queued_after_the_fd_was_handed_out_goes_the_python_way(tmp_path):
    """The fast path asks for the primary's fd only after the ring read
    ``cmd_head``.  Here a restore begins the moment the fd is handed out
    (direct_read_fd gives None from then on) and the host queues a read at
    once: that read must not be answered from the primary directly with the
    fd taken before it was queued (regression: the fd used to be taken before
    ``cmd_head``, so it could), but by the engine, in the next poll."""
    side = Side(tmp_path, fast=True, seed_data=bytes(range(256)) * 2)
    engine_reads = []
    backend = side.backend
    real_read = backend.read

    def read(offset, length):
        engine_reads.append(offset)
        return real_read(offset, length)

    handed = []

    def direct_read_fd():
        if handed:
            return None  # the restore is running
        handed.append(side.uio.sim.queue_cmd(rw10(READ_10, 7, 1), data_in=BS))
        return side.vol.direct_read_fd()

    backend.read = read
    backend.direct_read_fd = direct_read_fd
    try:
        first = side.uio.sim.queue_cmd(rw10(READ_10, 3, 1), data_in=BS)
        side.serve()
        done = {c.cmd_id: c for c in side.uio.sim.completions}
        assert list(done) == [first.cmd_id] and engine_reads == []  # direct, alone
        assert done[first.cmd_id].data == side.vol.read(3 * BS, BS)
        side.serve()
        late = handed[0]
        done = {c.cmd_id: c for c in side.uio.sim.completions}
        assert done[late.cmd_id].status == Status.GOOD
        assert done[late.cmd_id].data == side.vol.read(7 * BS, BS)
        assert engine_reads == [7 * BS]  # through the engine (restore-aware)
    finally:
        side.close()


def test_empty_iovecs_are_stepped_over(tmp_path, direct):
    """A ring the kernel never writes, but a shared mapping is not trusted: an
    iovec of length 0 (here before the real one) must not stall the reader."""
    primary = tmp_path / "p.img"
    primary.write_bytes(bytes(range(256)) * (SIZE // 256))
    d = direct(primary)
    cmd = d.sim.queue_cmd(rw10(READ_10, 8, 8), data_in=8 * BS)
    start = d.sim.cmdr_off + cmd.entry_off
    (base, size), *_ = cmd.iovs
    L.IOVEC.pack_into(d.mv, start + L.IOV_OFFSET, base, 0)
    L.IOVEC.pack_into(d.mv, start + L.IOV_OFFSET + L.IOVEC.size, base, size)
    d.mv[start + 8 : start + 12] = (2).to_bytes(4, "little")  # iov_cnt (the CDB is at +112)
    end, count, _, _ = d()
    assert (end, count) == (d.sim.head, 1)
    assert bytes(d.mv[base : base + size]) == primary.read_bytes()[8 * BS : 16 * BS]


def _ring_pair(tmp_path):
    primary = tmp_path / "p.img"
    primary.write_bytes(bytes(SIZE))
    return os.open(str(primary), os.O_RDWR)


@pytest.mark.parametrize("fast", [False, True])
def test_answers_behind_a_waiting_worker_command_are_published(tmp_path, fast):
    """With OOOC, reads answered in place must not wait behind an earlier
    command a worker still runs (SYNCHRONIZE CACHE here): the run is split
    and its answers stolen into the waiting slot, as the Python path does."""
    fd = _ring_pair(tmp_path)
    sim = SimKernel()
    ring = CommandRing(sim.mm, sim.irq, out_of_order=True)
    try:
        sync = sim.queue_cmd(bytes([0x35]) + bytes(9))
        (slow,) = ring.poll()  # handed to a worker, not answered yet
        reads = [sim.queue_cmd(rw10(READ_10, i, 1), data_in=BS) for i in range(3)]
        scan = fastpath.scanner(fd=fd, block_size=BS, size=SIZE, max_blocks=64, writes=True)
        for item in ring.poll(scan if fast else None):
            ring.complete(item, read_len=BS)
        assert ring.flush() == 3
        assert sorted(c.cmd_id for c in sim.completions) == sorted(r.cmd_id for r in reads)
        assert all(c.status == Status.GOOD and c.data == bytes(BS) for c in sim.completions)
        ring.complete(slow)  # the worker ends: its answer goes into the last slot
        assert ring.flush() == 1 and sim.completions[-1].cmd_id == sync.cmd_id
        assert sim.idle() and not sim.broken and not ring._live
    finally:
        ring.close()
        sim.close()
        os.close(fd)


@pytest.mark.parametrize("fast", [False, True])
def test_an_id_repeated_after_a_run_is_voided(tmp_path, fast):
    """A corrupt ring that reuses the id of a command answered by a run (not
    yet published): both paths make the second entry a PAD, so the kernel
    never sees one id completed twice."""
    fd = _ring_pair(tmp_path)
    sim = SimKernel()
    ring = CommandRing(sim.mm, sim.irq, out_of_order=True)
    try:
        a = sim.queue_cmd(rw10(READ_10, 0, 1), data_in=BS)
        sim.queue_cmd(inquiry(), data_in=96)
        c = sim.queue_cmd(rw10(READ_10, 1, 1), data_in=BS)
        struct.pack_into("<H", sim.mm, sim.entry_start(c) + 4, a.cmd_id)
        scan = fastpath.scanner(fd=fd, block_size=BS, size=SIZE, max_blocks=64, writes=True)
        items = ring.poll(scan if fast else None)
        assert ring.stats.malformed == 1  # the repeated id, voided
        for item in items:
            ring.complete(item, read_len=BS)
        assert ring.flush() == 2
        assert sorted(x.cmd_id for x in sim.completions) == sorted({a.cmd_id, a.cmd_id + 1})
        assert not ring._live
    finally:
        ring.close()
        sim.close()
        os.close(fd)
