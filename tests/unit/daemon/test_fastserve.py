"""The compiled wait-and-read loop (``_fastring.serve``, ``CommandRing.serve_fast``).

On an idle ring the device's ring thread hands the waiting to C: it clears
the uio event, answers the plain READs at the tail in place, publishes them
(``cmd_tail``, one kick per run) and waits again, until an entry needs the
Python path, the wake fd fires, the wait times out or the ring was reset.
These tests drive it against the simulated kernel: the kernel's completions
(status, data, read_len), where the tail is left, what it hands back, and,
through the device's own thread, mixes of reads, writes and other commands
against the volume's bytes.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from appliance.daemon.backend import VolumeBackend
from appliance.daemon.device import DeviceOptions, TcmuDevice
from appliance.scsi import DeviceIdentity, Limits, ScsiDevice
from appliance.scsi.constants import Status
from appliance.scsi.memory import MemoryBackend
from appliance.tcmu import CommandRing, RingError, fastpath
from appliance.tcmu import layout as L
from tests.unit.scsi.cdbs import inquiry, rw10, rw16
from tests.unit.tcmu.sim_kernel import SimKernel

from .harness import SimUio, wait_until

pytestmark = pytest.mark.skipif(
    not fastpath.AVAILABLE and os.environ.get("CDP_REQUIRE_FASTRING") != "1",
    reason="the C extension is not built",
)

BS = 512
SIZE = 256 * 1024
READ_10, WRITE_10, READ_16 = 0x28, 0x2A, 0x88


class Loop:
    """A simulated kernel, a ring over it, a primary, an event pipe, a wake fd."""

    def __init__(self, tmp_path, **sim) -> None:
        self.data = random.Random(5).randbytes(SIZE)
        primary = tmp_path / "p.img"
        primary.write_bytes(self.data)
        self.fd = os.open(str(primary), os.O_RDONLY)
        self.read_fd = lambda: self.fd
        self.sim = SimKernel(**sim)
        self.kick = self.sim.irq
        self.ring = CommandRing(self.sim.mm, self.sim.irq, out_of_order=True)
        self.ev_r, self.ev_w = os.pipe()
        os.set_blocking(self.ev_r, False)
        self.wake = os.eventfd(0, os.EFD_NONBLOCK)

    def serve(self, timeout_ms=20, on_writes=None):
        def state():
            fd = self.read_fd()
            return -1 if fd is None else fd, on_writes is not None

        loop = fastpath.server(
            state=state,
            on_writes=on_writes or (lambda writes: None),
            block_size=BS,
            size=SIZE,
            max_blocks=64,
            uio_fd=self.ev_r,
            wake_fd=self.wake,
            kick=lambda: self.kick(),
            timeout_ms=timeout_ms,
        )
        return self.ring.serve_fast(loop)

    def read(self, lba, blocks=1, cdb=rw10):
        return self.sim.queue_cmd(cdb(READ_10 if cdb is rw10 else READ_16, lba, blocks),
                                  data_in=blocks * BS)  # fmt: skip

    def event(self):
        os.write(self.ev_w, b"\1")

    def done(self):
        return {c.cmd_id: c for c in self.sim.completions}

    def close(self):
        self.ring.close()
        self.sim.close()
        for fd in (self.fd, self.ev_r, self.ev_w, self.wake):
            os.close(fd)


@pytest.fixture
def loop(tmp_path):
    made = []

    def make(**sim):
        made.append(Loop(tmp_path, **sim))
        return made[-1]

    yield make
    for x in made:
        x.close()


def test_reads_are_answered_published_and_kicked_then_it_waits(loop):
    x = loop()
    reads = [(0, 1, rw10), (9, 8, rw16), (500, 12, rw10)]
    cmds = [x.read(lba, n, cdb) for lba, n, cdb in reads]
    x.event()
    assert x.serve() == (fastpath.TIMEOUT, 0)  # answered, then waited 20 ms for more
    done = x.done()
    for cmd, (lba, n, _) in zip(cmds, reads, strict=True):
        got = done[cmd.cmd_id]
        assert got.status == Status.GOOD and got.data == x.data[lba * BS : (lba + n) * BS]
    assert x.sim.idle() and not x.sim.broken and x.ring.idle
    assert x.sim.kicks == 1  # one run, one kick
    s = x.ring.stats
    assert (s.commands, s.fast, s.completions, s.kicks) == (3, 3, 3, 1)
    with pytest.raises(BlockingIOError):  # the event was consumed
        os.read(x.ev_r, 10)


def test_commands_queued_without_an_event_are_served_first(loop):
    """The Python path may have consumed the event already: the loop looks
    at cmd_head before it waits."""
    x = loop()
    cmd = x.read(3)
    assert x.serve() == (fastpath.TIMEOUT, 0)
    assert x.done()[cmd.cmd_id].data == x.data[3 * BS : 4 * BS]


def test_an_entry_for_python_ends_the_loop_at_its_slot(loop):
    x = loop()
    first = x.read(1)
    inq = x.sim.queue_cmd(inquiry(), data_in=96)
    x.read(2)
    reason, _ = x.serve()
    assert reason == fastpath.ENTRIES
    assert set(x.done()) == {first.cmd_id}  # the read before it went out
    assert x.ring.idle and x.ring._tail == x.sim.entry_start(inq) - x.sim.cmdr_off
    items = x.ring.poll()  # the Python path takes over from there
    assert [c.cdb[0] for c in items] == [0x12, READ_10]


@pytest.mark.parametrize(
    "cdb",
    [
        rw10(WRITE_10, 0, 1),  # writes need the engine
        rw10(READ_10, 0, 1, byte1=0x20),  # RDPROTECT
        rw10(READ_10, SIZE // BS, 1),  # past the end
        rw10(READ_10, 0, 65),  # over the transfer limit
    ],
)
def test_anything_but_a_plain_read_goes_to_python_untouched(loop, cdb):
    x = loop()
    n = 65 * BS if cdb[8] == 65 else BS
    if cdb[0] == WRITE_10:
        x.sim.queue_cmd(cdb, data_out=bytes(BS))
    else:
        x.sim.queue_cmd(cdb, data_in=n)
    assert x.serve() == (fastpath.ENTRIES, 0)
    assert not x.sim.completions and x.ring._tail == 0 and x.sim.tail == 0


def test_no_direct_reads_during_a_restore(loop):
    """state() is asked before every run: no fd (a restore began) hands over."""
    x = loop()
    fds = iter([x.fd, None])
    x.read_fd = lambda: next(fds)
    a = x.read(1)
    x.event()
    # the first run goes out; the loop then waits: queue the second meanwhile
    assert x.serve() == (fastpath.TIMEOUT, 0)
    b = x.read(2)
    assert x.serve() == (fastpath.ENTRIES, 0)
    assert set(x.done()) == {a.cmd_id}
    assert x.ring.poll()[0].cmd_id == b.cmd_id


def test_the_wake_fd_ends_the_wait_and_stays_readable(loop):
    x = loop()
    os.eventfd_write(x.wake, 1)
    assert x.serve(timeout_ms=5000) == (fastpath.WAKE, 0)
    assert os.eventfd_read(x.wake) == 1  # left for the device to drain


def test_a_reset_ring_is_handed_back(loop):
    x = loop()
    x.read(1)
    x.sim.words[L.CMD_TAIL_WORD] = 64  # the kernel's reset_ring moved the tail
    assert x.serve() == (fastpath.RESET, 0)
    assert not x.sim.completions


def test_a_failing_kick_is_raised_after_the_tail_is_taken_over(loop):
    x = loop()
    x.read(1)
    x.read(2)

    def kick():
        raise OSError(5, "kick failed")

    x.kick = kick
    with pytest.raises(OSError, match="kick failed"):
        x.serve()
    # published before the kick: the ring follows the mailbox, no reset seen
    assert x.ring._tail == x.sim.tail == x.sim.head
    assert x.ring.stats.completions == 2
    x.sim.irq()
    assert len(x.sim.completions) == 2 and not x.sim.broken


def test_writes_run_through_on_writes_before_they_are_published(loop):
    x = loop()
    a = x.sim.queue_cmd(rw10(WRITE_10, 4, 1), data_out=b"a" * BS)
    b = x.sim.queue_cmd(rw10(WRITE_10, 9, 2), data_out=b"b" * 2 * BS)
    r = x.read(20)
    seen = []

    def on_writes(writes):
        assert x.sim.tail == 0 and not x.sim.completions  # not published yet
        seen.append([(off, payload) for _, off, payload in writes])
        # the engine refuses the second: its answer is rewritten in its slot
        x.ring.fail_served(x.ring.generation, writes[1][0], 2, b"\x70\x00\x03" + bytes(15))

    assert x.serve(on_writes=on_writes) == (fastpath.TIMEOUT, 0)
    assert seen == [[(4 * BS, b"a" * BS), (9 * BS, b"b" * 2 * BS)]]
    done = x.done()
    assert done[a.cmd_id].status == Status.GOOD
    assert done[b.cmd_id].status == 2 and done[b.cmd_id].sense[2] == 3
    assert done[r.cmd_id].data == x.data[20 * BS : 21 * BS]  # the read after them: a run of its own
    assert x.sim.kicks == 2 and x.sim.idle() and not x.sim.broken


def test_what_on_writes_returns_is_called_once_the_run_is_published(loop):
    """The device's late journal batch: on_writes hands back its end, which
    the loop calls after the run's answers are in the mailbox and kicked."""
    x = loop()
    a = x.sim.queue_cmd(rw10(WRITE_10, 4, 1), data_out=b"a" * BS)
    b = x.sim.queue_cmd(rw10(WRITE_10, 9, 2), data_out=b"b" * 2 * BS)
    seen = []

    def then():  # what the kernel has seen by now (the loop's kick is sim.irq)
        seen.append((x.sim.tail, x.sim.kicks, {c.cmd_id: c.status for c in x.sim.completions}))

    assert x.serve(on_writes=lambda writes: then) == (fastpath.TIMEOUT, 0)
    assert seen == [(x.sim.head, 1, {a.cmd_id: Status.GOOD, b.cmd_id: Status.GOOD})]
    assert x.sim.idle() and not x.sim.broken


def test_a_failing_then_is_raised_after_the_run_stands_published(loop):
    x = loop()
    w = [x.sim.queue_cmd(rw10(WRITE_10, i, 1), data_out=bytes(BS)) for i in (5, 6)]

    def then():
        raise RuntimeError("journal bug")

    with pytest.raises(RuntimeError, match="journal bug"):
        x.serve(on_writes=lambda writes: then)
    x.sim.irq()
    assert [x.done()[c.cmd_id].status for c in w] == [Status.GOOD, Status.GOOD]
    assert x.ring._tail == x.sim.tail == x.sim.head and x.ring.stats.fast == 2


def test_then_is_called_when_the_kick_fails_and_the_kick_is_reported(loop):
    x = loop()
    x.sim.queue_cmd(rw10(WRITE_10, 5, 1), data_out=bytes(BS))
    called = []

    def kick():
        raise OSError(errno.EIO, "kick")

    x.kick = kick
    with pytest.raises(OSError, match="kick"):
        x.serve(on_writes=lambda writes: lambda: called.append(x.sim.tail))
    assert called == [x.sim.head]  # published, and the journal's write not skipped


def test_a_none_or_uncallable_result_of_on_writes_is_ignored(loop):
    x = loop()
    x.sim.queue_cmd(rw10(WRITE_10, 5, 1), data_out=bytes(BS))
    x.sim.queue_cmd(rw10(WRITE_10, 6, 1), data_out=bytes(BS))
    assert x.serve(on_writes=lambda writes: 42) == (fastpath.TIMEOUT, 0)
    x.sim.irq()
    assert len(x.sim.completions) == 2 and x.sim.idle()


def test_writes_go_to_python_without_on_writes(loop):
    x = loop()
    x.sim.queue_cmd(rw10(WRITE_10, 4, 1), data_out=b"a" * BS)
    assert x.serve() == (fastpath.ENTRIES, 0)
    assert x.sim.tail == 0 and x.ring.poll()[0].cdb[0] == WRITE_10


def test_fua_writes_go_to_python(loop):
    x = loop()
    x.sim.queue_cmd(rw10(WRITE_10, 4, 1, byte1=0x08), data_out=b"a" * BS)
    assert x.serve(on_writes=lambda w: None) == (fastpath.ENTRIES, 0)
    assert x.sim.tail == 0


def test_an_on_writes_that_raises_answers_its_run_busy(loop):
    """A bug in the engine call must not acknowledge writes it may not have
    done: the run is answered BUSY (the initiator sends it again), published,
    and the exception raised."""
    x = loop()
    a = x.read(1)
    w = [x.sim.queue_cmd(rw10(WRITE_10, i, 1), data_out=bytes(BS)) for i in (5, 6)]

    def on_writes(writes):
        raise RuntimeError("engine bug")

    with pytest.raises(RuntimeError, match="engine bug"):
        x.serve(on_writes=on_writes)
    done = x.done()
    assert done[a.cmd_id].status == Status.GOOD
    assert [done[c.cmd_id].status for c in w] == [Status.BUSY, Status.BUSY]
    assert x.ring._tail == x.sim.tail == x.sim.head and x.sim.idle() and not x.sim.broken
    s = x.ring.stats
    assert (s.completions, s.fast, s.fast_busy) == (3, 3, 2)


def test_a_busy_ring_is_refused(loop):
    x = loop()
    x.sim.queue_cmd(inquiry(), data_in=96)
    x.ring.poll()  # parsed, not answered
    with pytest.raises(RingError):
        x.serve()


def test_a_command_whose_slot_was_stolen_keeps_the_ring_busy(loop):
    """OOOC: a worker's command (SYNCHRONIZE CACHE) whose slot carried a later
    read's answer still needs a slot (the read's): the ring is not idle, the
    loop is refused (it would publish the later slots itself)."""
    x = loop()
    x.sim.queue_cmd(bytes([0x35]) + bytes(9))
    (slow,) = x.ring.poll()
    read = x.read(1)
    for item in x.ring.poll():
        x.ring.complete(item, read_len=BS)
    assert x.ring.flush() == 1 and set(x.done()) == {read.cmd_id}
    assert not x.ring.idle
    with pytest.raises(RingError):
        x.serve()
    x.ring.complete(slow)
    assert x.ring.flush() == 1 and x.ring.idle and x.sim.idle() and not x.sim.broken
    assert x.serve() == (fastpath.TIMEOUT, 0)


def test_reads_across_the_ring_end(loop):
    """Small ring: runs wrap around its end many times, all answered."""
    x = loop(mb_cmdr_size=4096, data_blocks=8)
    rng = random.Random(2)
    want, wraps = {}, 0
    for _ in range(100):
        before = x.sim.head
        for _ in range(rng.randrange(1, 5)):
            lba, n = rng.randrange(0, SIZE // BS - 24), rng.choice([1, 8, 17, 24])
            cmd = x.read(lba, n, rng.choice([rw10, rw16]))
            if cmd is None:
                break
            want[cmd.seq] = x.data[lba * BS : (lba + n) * BS]
        wraps += x.sim.head < before
        x.serve(timeout_ms=1)
        assert x.sim.idle() and not x.sim.broken
    assert wraps > 2
    assert {c.seq: c.data for c in x.sim.completions} == want
    assert all(c.status == Status.GOOD for c in x.sim.completions)


# -- through the device's own ring thread --------------------------------------


def make_device(vol):
    """A device with workers over ``vol`` (conftest's ``volume``: 1 MiB)."""
    uio = SimUio(data_blocks=64, mb_cmdr_size=4 * 4096)
    scsi = ScsiDevice(VolumeBackend(vol), DeviceIdentity(str(vol.uuid)), limits=Limits(64 * BS))
    dev = TcmuDevice("t", uio.ring(), uio, scsi, DeviceOptions(workers=2))
    assert dev._fast and dev._fast_loop
    return uio, scsi, dev


def close_device(uio, dev):
    assert dev.stop()
    dev.ring.close()
    uio.close()
    uio.sim.close()


def test_write_cache_turned_off_meanwhile_is_honoured(volume):
    """A netlink reconfigure (another thread) turns the write cache off while
    the loop waits: the next plain write is made durable before GOOD
    (the write path's FUA), never acknowledged from the cache (review of the
    loop: it had taken the setting once per turn)."""
    vol = volume
    uio, scsi, dev = make_device(vol)
    syncs = []
    real = vol._sync
    vol._sync = lambda seq: (syncs.append(seq), real(seq))[1]
    dev.start()
    try:
        cmd = uio.queue(rw10(READ_10, 0, 1), data_in=BS)
        uio.completion(cmd)
        wait_until(lambda: dev.ring.idle)  # the ring thread is in the loop now
        scsi.write_cache = False  # what DeviceManager.reconfigure does
        cmd = uio.queue(rw10(WRITE_10, 3, 1), data_out=b"x" * BS)
        assert uio.completion(cmd).status == Status.GOOD
        assert syncs, "GOOD with the write cache off and no sync"
    finally:
        close_device(uio, dev)


def test_the_device_thread_serves_a_random_mix(volume):
    """Reads and plain writes (in C), FUA writes, INQUIRY and bad reads,
    queued from another thread in bursts: every read returns the volume's
    bytes as of its turn, every command is answered once, the loop really
    served."""
    vol = volume
    uio, _, dev = make_device(vol)
    turns = []
    real = dev.ring.serve_fast

    def serve_fast(serve):
        turns.append(real(serve))
        return turns[-1]

    dev.ring.serve_fast = serve_fast
    model = bytearray(SIZE)
    rng = random.Random(11)
    dev.start()
    try:
        for _ in range(80):
            expect = []
            for _ in range(rng.randrange(1, 6)):
                lba, n = rng.randrange(0, SIZE // BS - 16), rng.choice([1, 8, 16])
                roll = rng.random()
                if roll < 0.5:
                    cmd = uio.queue(rw10(READ_10, lba, n), data_in=n * BS)
                    expect.append((cmd, Status.GOOD, bytes(model[lba * BS : (lba + n) * BS])))
                elif roll < 0.8:
                    data = rng.randbytes(n * BS)
                    fua = 0x08 if rng.random() < 0.3 else 0
                    cmd = uio.queue(rw10(WRITE_10, lba, n, byte1=fua), data_out=data)
                    model[lba * BS : (lba + n) * BS] = data
                    expect.append((cmd, Status.GOOD, None))
                elif roll < 0.9:
                    cmd = uio.queue(inquiry(), data_in=96)
                    expect.append((cmd, Status.GOOD, None))
                else:
                    cmd = uio.queue(rw10(READ_10, vol.size // BS, 1), data_in=BS)
                    expect.append((cmd, Status.CHECK_CONDITION, None))
                # a write's completion is awaited before reading behind it
                # (the initiator's ordering: nothing else orders them)
                if roll >= 0.5:
                    uio.completion(cmd)
            for cmd, status, data in expect:
                got = uio.completion(cmd)
                assert got.status == status
                if data is not None:
                    assert got.data == data
        wait_until(lambda: dev.ring.idle)
        assert not uio.sim.broken and uio.sim.idle()
        assert dev.ring.stats.fast > 50  # the reads went the compiled way
        # the loop ran, and handed over for what it cannot take (FUA, INQUIRY)
        assert len(turns) > 40 and fastpath.ENTRIES in {reason for reason, _ in turns}
        assert vol.read(0, SIZE) == bytes(model)
    finally:
        close_device(uio, dev)


def test_the_devices_run_is_journaled_after_its_answers_went_out(volume):
    """The device's loop: each run of plain writes goes through the engine
    before its answers are published (the primary holds it: a read after the
    answer sees it), and its journal records are written just after, by the
    ring thread, before it looks at the ring again."""
    vol = volume
    uio, _, dev = make_device(vol)
    journal = vol._journal
    seen = []
    real = journal.settle

    def settle():
        if journal._late_run is not None:
            seen.append((uio.sim.tail, journal._written_seq, journal._late_run[3][-1].seq))
        real()

    journal.settle = settle
    dev.start()
    try:
        data = [random.Random(i).randbytes(8 * BS) for i in range(6)]
        for i, d in enumerate(data):
            cmd = uio.queue(rw10(WRITE_10, i * 8, 8), data_out=d)
            assert uio.completion(cmd).status == Status.GOOD
        wait_until(lambda: dev.ring.idle)
        assert seen and all(tail != 0 and written < seq for tail, written, seq in seen)
        vol.flush()
        assert vol.read(0, 48 * BS) == b"".join(data)
        assert vol.image(seq=journal.durable_seq).read(0, 48 * BS) == b"".join(data)
        assert journal._late_run is None and not journal._io_lock.locked()
    finally:
        close_device(uio, dev)


def test_a_run_over_a_backend_without_a_journal_ends_at_once():
    """Nothing to write after the answers: ``_loop_writes`` ends its batch
    (a no-op context) itself and hands the loop nothing to call."""
    backend = MemoryBackend(SIZE)
    uio = SimUio(data_blocks=64, mb_cmdr_size=4 * 4096)
    scsi = ScsiDevice(backend, DeviceIdentity("m"), limits=Limits(64 * BS))
    dev = TcmuDevice("m", uio.ring(), uio, scsi, DeviceOptions(workers=0))
    try:
        assert dev._loop_writes([(0, 4 * BS, b"w" * BS), (0, 9 * BS, b"x" * BS)]) is None
        assert backend.data[4 * BS : 5 * BS] == b"w" * BS
        assert backend.data[9 * BS : 10 * BS] == b"x" * BS
    finally:
        dev.ring.close()
        uio.close()
        uio.sim.close()
