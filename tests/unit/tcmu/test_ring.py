"""The command ring driven through the simulated kernel: the normal paths."""

import mmap

import pytest

from appliance.tcmu import (
    Command,
    CommandRing,
    CompletionError,
    Response,
    RingCorruptError,
    RingError,
    TmrNotification,
)
from appliance.tcmu import layout as L

from .sim_kernel import ALL_CAPS, PAGE, SimKernel, cdb_tag, pattern, tagged_cdb

CHECK = L.STATUS_CHECK_CONDITION
TUR = bytes(6)


def only_commands(items):
    return [i for i in items if isinstance(i, Command)]


def test_tur_round_trip(sim_ring):
    sim, ring = sim_ring()
    queued = sim.queue_cmd(TUR)
    [cmd] = ring.poll()
    assert cmd.cmd_id == queued.cmd_id and cmd.cdb == TUR
    assert cmd.iovecs == [] and cmd.data_length == 0
    assert ring.complete(cmd)
    assert sim.kicks == 0  # nothing is visible before the flush
    assert ring.flush() == 1
    assert sim.kicks == 1 and not sim.broken and sim.idle()
    [done] = sim.completions
    assert (done.seq, done.status, done.sense) == (queued.seq, L.STATUS_GOOD, None)


def test_write_data_is_zero_copy(sim_ring):
    sim, ring = sim_ring()
    payload = pattern(1, 3 * PAGE + 100)
    queued = sim.queue_cmd(tagged_cdb(1), data_out=payload)
    [cmd] = ring.poll()
    assert cmd.data_length == len(payload) and b"".join(cmd.iovecs) == payload
    assert len(cmd.iovecs) == 1  # adjacent blocks merged into one iovec, as the kernel does
    base = queued.iovs[0][0]
    cmd.iovecs[0][0] = 0xEE  # a view of the shared mapping, not a copy
    assert sim.mm[base] == 0xEE


def test_read_fills_the_data_area_and_read_len(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(tagged_cdb(2), data_in=2 * PAGE)
    [cmd] = ring.poll()
    fill = pattern(2, cmd.data_length)
    pos = 0
    for view in cmd.iovecs:
        view[:] = fill[pos : pos + len(view)]
        pos += len(view)
    ring.complete(cmd, read_len=1000)
    ring.flush()
    [done] = sim.completions
    assert done.read_len_valid and done.data == fill[:1000]


def test_read_len_ignored_without_the_capability(sim_ring):
    sim, ring = sim_ring(flags=ALL_CAPS & ~L.CAP_READ_LEN)
    sim.queue_cmd(tagged_cdb(3), data_in=PAGE)
    [cmd] = ring.poll()
    cmd.iovecs[0][:] = pattern(3, PAGE)
    ring.complete(cmd, read_len=10)
    ring.flush()
    [done] = sim.completions
    assert not done.read_len_valid and done.data == pattern(3, PAGE)
    assert sim.mm[sim.cmdr_off + 7] & L.UFLAG_READ_LEN == 0  # uflags of the only slot


def test_sense_is_written_and_stale_request_bytes_cleared(sim_ring):
    sim, ring = sim_ring()
    # Non-adjacent blocks give several iovecs, i.e. non-zero bytes where sense goes.
    holes = [sim.queue_cmd(tagged_cdb(i), data_in=PAGE) for i in range(4)]
    for item in ring.poll():
        if cdb_tag(item.cdb) in (0, 2):
            ring.complete(item)
    ring.flush()
    sim.queue_cmd(tagged_cdb(9), data_out=pattern(9, 3 * PAGE))  # blocks 0, 2, 4
    [cmd] = only_commands(ring.poll())
    assert len(cmd.iovecs) == 3
    sense = L.fixed_sense(0x3, 0x11, 0x00)  # MEDIUM ERROR / UNRECOVERED READ ERROR
    ring.complete(cmd, CHECK, sense)
    ring.flush()
    done = sim.completions[-1]
    assert done.seq == holes[-1].seq + 1
    assert done.status == CHECK and done.sense == sense + bytes(96 - len(sense))


def test_sense_longer_than_96_is_refused(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(TUR)
    [cmd] = ring.poll()
    with pytest.raises(ValueError):
        ring.complete(cmd, CHECK, bytes(97))
    ring.complete(cmd, CHECK, bytes(96))  # still outstanding, and 96 is fine


def test_batch_has_one_tail_store_and_one_kick(sim_ring):
    sim, ring = sim_ring()
    for i in range(8):
        sim.queue_cmd(tagged_cdb(i, 10))
    tails = []
    ring._words = _Recorder(ring._words, tails)  # observe stores to the mailbox
    assert ring.process(lambda cmd: Response()) == 8
    assert sim.kicks == 1 and ring.stats.batches == 1
    assert tails == [L.CMD_TAIL_WORD]
    assert [c.seq for c in sim.completions] == list(range(1, 9)) and sim.idle()


class _Recorder:
    def __init__(self, words, stores):
        self._words, self._stores = words, stores

    def __getitem__(self, i):
        return self._words[i]

    def __setitem__(self, i, v):
        self._stores.append(i)
        self._words[i] = v

    def release(self):
        self._words.release()


def test_flush_without_work_does_not_kick(sim_ring):
    sim, ring = sim_ring()
    assert ring.poll() == [] and ring.flush() == 0 and sim.kicks == 0
    sim.queue_cmd(TUR)
    ring.poll()
    assert ring.flush() == 0 and sim.kicks == 0  # the command is still outstanding


def test_out_of_order_completion_steals_slots(sim_ring):
    sim, ring = sim_ring()
    queued = [sim.queue_cmd(tagged_cdb(i)) for i in range(4)]
    cmds = {cdb_tag(c.cdb): c for c in ring.poll()}
    first_slot = sim.entry_start(queued[0])
    for n, tag in enumerate([2, 0, 3, 1], start=1):
        ring.complete(cmds[tag], CHECK, L.fixed_sense(0x5, 0x20 + tag, 0))
        assert ring.flush() == 1
        assert len(sim.completions) == n  # visible at once, not held behind tag 0
    assert [c.seq for c in sim.completions] == [queued[t].seq for t in (2, 0, 3, 1)]
    for done in sim.completions:
        tag = done.seq - 1
        assert done.sense[12] == 0x20 + tag
    # The oldest slot carried tag 2's completion, with its id rewritten.
    assert int.from_bytes(sim.mm[first_slot + 4 : first_slot + 6], "little") == queued[2].cmd_id
    assert not sim.broken and sim.idle() and sim.kicks == 4


def test_in_order_kernel_gets_completions_in_ring_order(sim_ring):
    sim, ring = sim_ring(flags=ALL_CAPS & ~L.CAP_OOOC)
    assert not ring.out_of_order
    queued = [sim.queue_cmd(tagged_cdb(i)) for i in range(4)]
    cmds = {cdb_tag(c.cdb): c for c in ring.poll()}
    ring.complete(cmds[2])
    assert ring.flush() == 0 and sim.kicks == 0  # held back behind tag 0
    ring.complete(cmds[0])
    assert ring.flush() == 1
    ring.complete(cmds[3])
    ring.complete(cmds[1])
    assert ring.flush() == 3
    assert [c.seq for c in sim.completions] == [q.seq for q in queued]
    assert not sim.broken and sim.idle() and sim.kicks == 2


def test_out_of_order_can_be_forced_off(sim_ring):
    sim, ring = sim_ring(out_of_order=False)
    [sim.queue_cmd(tagged_cdb(i)) for i in range(2)]
    a, b = ring.poll()
    ring.complete(b)
    assert ring.flush() == 0


def _fill_to(sim, ring, remaining):
    """Queue and complete TURs/TMRs until exactly ``remaining`` bytes precede the ring end."""
    while sim.cmdr_size - sim.head - remaining >= 120 + 32:
        assert sim.queue_cmd(TUR)
        ring.process(lambda c: Response())
    gap = sim.cmdr_size - sim.head - remaining
    assert gap % 8 == 0 and gap >= 32
    assert sim.queue_tmr(L.TMR_ABORT_TASK, [0] * ((gap - 32) // 2))
    ring.process(lambda c: Response())
    assert sim.cmdr_size - sim.head == remaining and sim.idle()


@pytest.mark.parametrize("remaining", [8, 16, 112])
def test_wrap_with_pad_reads_only_its_header(sim_ring, remaining):
    # The data area starts right after the ring and no command holds a data
    # block, so its pages are all PROT_NONE: reading a short PAD as a full
    # entry would crash the test.
    sim, ring = sim_ring()
    _fill_to(sim, ring, remaining)
    queued = sim.queue_cmd(tagged_cdb(5))
    assert sim.pads[-1] == (sim.cmdr_size - remaining, remaining) and queued.entry_off == 0
    [cmd] = ring.poll()
    assert cmd.cdb == tagged_cdb(5)
    ring.complete(cmd)
    ring.flush()
    assert sim.completions[-1].seq == queued.seq and sim.idle() and not sim.broken


def test_entry_ending_exactly_at_ring_end(sim_ring):
    sim, ring = sim_ring()
    _fill_to(sim, ring, 128)  # a 16-byte CDB entry is 112 + 16
    queued = sim.queue_cmd(tagged_cdb(6))
    assert queued.entry_off == sim.cmdr_size - 128 and sim.head == 0
    [cmd] = ring.poll()
    assert cmd.cdb == tagged_cdb(6)
    ring.complete(cmd)
    ring.flush()
    assert sim.idle() and ring._tail == 0


def test_many_wraps_under_load(sim_ring):
    sim, ring = sim_ring(mb_cmdr_size=PAGE, data_blocks=8)
    seen = 0
    for i in range(300):
        while sim.queue_cmd(tagged_cdb(i, [6, 10, 16, 32][i % 4]), data_in=(i % 3) * 1000) is None:
            ring.process(lambda c: Response(read_len=c.data_length))
        if i % 5 == 4:
            seen += ring.process(lambda c: Response())
    seen += ring.process(lambda c: Response())
    assert len(sim.pads) > 5 and seen == 300 == len(sim.completions)
    assert sorted(c.seq for c in sim.completions) == list(range(1, 301))
    assert sim.idle() and not sim.broken


def test_tmr_notifications(sim_ring):
    sim, ring = sim_ring()
    a, b = sim.queue_cmd(TUR), sim.queue_cmd(TUR)
    assert sim.queue_tmr(L.TMR_ABORT_TASK_SET, [a.cmd_id, b.cmd_id])
    sim.queue_cmd(TUR)
    items = ring.poll()
    assert [type(i) for i in items] == [Command, Command, TmrNotification, Command]
    assert items[2] == TmrNotification(L.TMR_ABORT_TASK_SET, (a.cmd_id, b.cmd_id))
    for cmd in only_commands(items):
        ring.complete(cmd, 0x40)  # TASK ABORTED, say
    assert ring.flush() == 3
    assert sim.idle() and not sim.broken


def test_tmr_alone_frees_ring_space(sim_ring):
    sim, ring = sim_ring()
    sim.queue_tmr(L.TMR_LUN_RESET)
    seen = []
    assert ring.process(lambda c: None, seen.append) == 0
    assert seen == [TmrNotification(L.TMR_LUN_RESET, ())]
    assert sim.kicks == 1 and sim.idle()


def test_double_completion_is_refused(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(TUR)
    [cmd] = ring.poll()
    ring.complete(cmd)
    with pytest.raises(CompletionError):
        ring.complete(cmd)
    ring.flush()
    with pytest.raises(CompletionError):
        ring.complete(cmd)
    assert not sim.broken


def test_reset_drops_stale_commands(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(tagged_cdb(1), data_in=PAGE)
    [old] = ring.poll()
    view = old.iovecs[0]
    sim.reset_ring()
    ring.reset()
    assert sim.completions[-1].status == 0x08 and sim.completions[-1].by_reset
    with pytest.raises(ValueError):
        view[0] = 1  # released: no ghost write into pages the kernel may reuse
    fresh = sim.queue_cmd(tagged_cdb(2))
    assert fresh.cmd_id == old.cmd_id  # the kernel reuses the id
    assert ring.complete(old) is False
    [new] = ring.poll()
    assert ring.complete(new) and ring.flush() == 1
    assert sim.completions[-1].seq == fresh.seq and not sim.broken


def test_reset_noticed_when_the_tail_moves(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(TUR)
    ring.process(lambda c: Response())
    sim.queue_cmd(TUR)
    [old] = ring.poll()
    sim.reset_ring()
    sim.queue_cmd(TUR)
    [new] = ring.poll()
    assert ring.generation == 1 and ring.complete(old) is False
    ring.complete(new)
    ring.flush()
    assert not sim.broken and sim.idle()


def test_keep_buf(sim_ring):
    sim, ring = sim_ring()
    queued = sim.queue_cmd(tagged_cdb(1), data_out=pattern(1, 100))
    [cmd] = ring.poll()
    ring.complete(cmd, keep_buf=True)
    ring.flush()
    assert sim.completions[-1].keep_buf and sim.commands[queued.cmd_id].kept
    assert bytes(cmd.iovecs[0]) == pattern(1, 100)  # still ours to read
    sim.free_kept_buf(queued.cmd_id)
    cmd.release()
    with pytest.raises(ValueError):
        len(cmd.iovecs[0])


def test_keep_buf_needs_the_capability(sim_ring):
    sim, ring = sim_ring(flags=L.CAP_OOOC)
    sim.queue_cmd(TUR)
    [cmd] = ring.poll()
    with pytest.raises(ValueError):
        ring.complete(cmd, keep_buf=True)


def test_views_released_on_completion(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(tagged_cdb(1), data_in=PAGE)
    [cmd] = ring.poll()
    view = cmd.iovecs[0]
    ring.complete(cmd)
    with pytest.raises(ValueError):
        view[0] = 1


def test_process_callback_failures_become_hardware_errors(sim_ring):
    sim, ring = sim_ring()
    for i in range(3):
        sim.queue_cmd(tagged_cdb(i))
    later = []

    def handler(cmd):
        tag = cdb_tag(cmd.cdb)
        if tag == 0:
            raise RuntimeError("backend exploded")
        if tag == 1:
            later.append(cmd)
            return None
        return Response(CHECK, L.fixed_sense(0x5, 0x24, 0))

    assert ring.process(handler) == 2
    assert ring.outstanding() == later
    ring.complete(later[0])
    assert ring.flush() == 1
    by_seq = {c.seq: c for c in sim.completions}
    assert by_seq[1].sense[:18] == L.HARDWARE_ERROR_SENSE
    assert by_seq[2].status == 0 and by_seq[3].sense[12] == 0x24


def test_bidi_iovecs_are_split(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(tagged_cdb(1), data_out=pattern(1, 500), data_in=PAGE + 1, bidi=True)
    [cmd] = ring.poll()
    assert cmd.data_length == 500 and cmd.bidi_length == PAGE + 1
    assert bytes(cmd.iovecs[0]) == pattern(1, 500)
    fill = pattern(7, PAGE + 1)
    cmd.bidi_iovecs[0][:] = fill
    ring.complete(cmd)
    ring.flush()
    assert sim.completions[-1].data == fill


def test_variable_length_cdb(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(tagged_cdb(77, 32))
    [cmd] = ring.poll()
    assert len(cmd.cdb) == 32 and cdb_tag(cmd.cdb) == 77


def test_close_lets_the_mapping_go():
    sim = SimKernel()
    ring = CommandRing(sim.mm, sim.irq)
    sim.queue_cmd(tagged_cdb(1), data_in=PAGE)
    ring.poll()
    ring.close()
    ring.close()  # idempotent
    with pytest.raises(RingError):
        ring.poll()
    sim.close()  # would raise BufferError if a view were left


def test_mailbox_validation():
    buf = bytearray(PAGE)
    L.MAILBOX.pack_into(buf, 0, 1, 0, 128, 1024, 0, 0)
    with pytest.raises(RingError, match="version"):
        CommandRing(buf)
    L.MAILBOX.pack_into(buf, 0, 2, 0, 128, PAGE, 0, 0)
    with pytest.raises(RingError, match="geometry"):
        CommandRing(buf)
    L.MAILBOX.pack_into(buf, 0, 2, 0, 128, 1024, 12, 0)
    with pytest.raises(RingCorruptError):
        CommandRing(buf)
    with pytest.raises(RingError, match="writable"):
        CommandRing(bytes(PAGE))


def test_ring_over_a_file_mapping(tmp_path):
    path = tmp_path / "uio"
    path.write_bytes(bytes(2 * PAGE))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 2 * PAGE) as mm:
        L.MAILBOX.pack_into(mm, 0, 2, ALL_CAPS, 128, PAGE - 128, 0, 0)
        ring = CommandRing(mm)
        assert ring.out_of_order and ring.supports_tmr and ring.data_off == PAGE
        ring.close()


def test_corrupt_head_is_reported(sim_ring):
    sim, ring = sim_ring()
    sim.head = 13
    with pytest.raises(RingCorruptError):
        ring.poll()
    sim.head = 0


def test_process_turns_an_invalid_response_into_a_hardware_error(sim_ring):
    sim, ring = sim_ring()
    sim.queue_cmd(TUR)
    assert ring.process(lambda cmd: Response(CHECK, bytes(200))) == 1
    assert sim.completions[-1].sense[:18] == L.HARDWARE_ERROR_SENSE
