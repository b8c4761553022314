"""Malformed ring entries: failed with HARDWARE ERROR or skipped, never a crash.

The kernel never writes these; they stand for a corrupted shared mapping.  The
simulator's data pages are PROT_NONE unless allocated, so a ring that read
outside the entry it parses (or through a bad iovec) would crash the test.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.tcmu import CommandRing, Response
from appliance.tcmu import layout as L

from .sim_kernel import ALL_CAPS, PAGE, SimKernel, cdb_tag, pattern, tagged_cdb

CHECK = L.STATUS_CHECK_CONDITION
TUR = bytes(6)


def poke(sim, at, fmt, value):
    struct.pack_into(fmt, sim.mm, at, value)


def run_all(ring):
    """Complete every command GOOD, echoing nothing; returns the commands seen."""
    seen = []

    def handler(cmd):
        seen.append(cmd)
        return Response()

    ring.process(handler)
    return seen


def assert_failed(sim, queued):
    [done] = [c for c in sim.completions if c.seq == queued.seq]
    assert done.status == CHECK and done.sense[:18] == L.HARDWARE_ERROR_SENSE


def assert_healthy(sim, ring, *, expect_idle=True):
    """The ring still works: a fresh WRITE arrives intact and completes."""
    queued = sim.queue_cmd(tagged_cdb(4242), data_out=pattern(4242, 300))
    seen = run_all(ring)
    assert [cdb_tag(c.cdb) for c in seen][-1:] == [4242]
    assert sim.completions[-1].seq == queued.seq and sim.completions[-1].status == 0
    assert not sim.broken
    if expect_idle:
        assert sim.idle()


# (field offset in the entry, struct format, bad value) for one-iovec WRITEs
BAD_REQUESTS = {
    "iov_base_in_ring": (L.IOV_OFFSET, "<Q", 200),
    "iov_base_past_map": (L.IOV_OFFSET, "<Q", 1 << 40),
    "iov_len_past_map": (L.IOV_OFFSET + 8, "<Q", 1 << 30),
    "iov_cnt_huge": (8, "<I", 0xFFFFFFFF),
    "iov_bidi_cnt_overruns": (12, "<I", 5),
    "cdb_off_in_data_area": (L.CDB_OFF_OFFSET, "<Q", 2 * PAGE),
    "cdb_off_zero": (L.CDB_OFF_OFFSET, "<Q", 0),
    "cdb_off_past_map": (L.CDB_OFF_OFFSET, "<Q", 1 << 63),
}


@pytest.mark.parametrize("ooo", [True, False])
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_fields_fail_that_command(sim_ring, case, ooo):
    sim, ring = sim_ring(flags=ALL_CAPS if ooo else ALL_CAPS & ~L.CAP_OOOC)
    before = sim.queue_cmd(tagged_cdb(1), data_out=pattern(1, 100))
    bad = sim.queue_cmd(tagged_cdb(2), data_out=pattern(2, 100))
    after = sim.queue_cmd(tagged_cdb(3), data_out=pattern(3, 100))
    off, fmt, value = BAD_REQUESTS[case]
    poke(sim, sim.entry_start(bad) + off, fmt, value)
    seen = run_all(ring)
    assert [cdb_tag(c.cdb) for c in seen] == [1, 3]
    assert_failed(sim, bad)
    assert {c.seq for c in sim.completions} == {before.seq, bad.seq, after.seq}
    assert ring.stats.malformed == 1
    assert_healthy(sim, ring)


def test_cdb_off_pointing_at_the_iovec_array(sim_ring):
    sim, ring = sim_ring()
    bad = sim.queue_cmd(tagged_cdb(2), data_out=pattern(2, 100))
    start = sim.entry_start(bad)
    poke(sim, start + L.CDB_OFF_OFFSET, "<Q", start + L.IOV_OFFSET)
    run_all(ring)
    assert_failed(sim, bad)
    assert_healthy(sim, ring)


def test_variable_length_cdb_that_does_not_fit(sim_ring):
    sim, ring = sim_ring()
    bad = sim.queue_cmd(tagged_cdb(2, 32))
    start = sim.entry_start(bad)
    cdb_off = struct.unpack_from("<Q", sim.mm, start + L.CDB_OFF_OFFSET)[0]
    sim.mm[cdb_off + 7] = 0xF8  # 8 + 248 bytes claimed, 32 present
    assert run_all(ring) == []
    assert_failed(sim, bad)
    assert_healthy(sim, ring)


@pytest.mark.parametrize("where", ["last", "middle"])
def test_zero_length_entry(sim_ring, where):
    sim, ring = sim_ring()
    first = sim.queue_cmd(tagged_cdb(1))
    bad = sim.queue_cmd(tagged_cdb(2))
    swallowed = sim.queue_cmd(tagged_cdb(3)) if where == "middle" else None
    poke(sim, sim.entry_start(bad), "<I", 0 | L.OP_CMD)
    seen = run_all(ring)
    # The bad entry is taken to run up to cmd_head; anything after it is lost
    # (the kernel times it out) but the ring stays in step with the kernel.
    assert [cdb_tag(c.cdb) for c in seen] == [1]
    assert_failed(sim, bad)
    assert {c.seq for c in sim.completions} == {first.seq, bad.seq}
    assert_healthy(sim, ring, expect_idle=True)
    if swallowed:
        assert swallowed.cmd_id in sim.commands  # never completed, never completed twice


def test_length_past_cmd_head(sim_ring):
    sim, ring = sim_ring()
    bad = sim.queue_cmd(tagged_cdb(2))
    poke(sim, sim.entry_start(bad), "<I", 0x100000 | L.OP_CMD)
    run_all(ring)
    assert_failed(sim, bad)
    assert_healthy(sim, ring)


def test_length_past_ring_end_after_wrap(sim_ring):
    sim, ring = sim_ring(mb_cmdr_size=PAGE)
    while sim.head < sim.cmdr_size - 400:
        sim.queue_cmd(TUR)
        run_all(ring)
    bad = sim.queue_cmd(tagged_cdb(2))
    ok = sim.queue_cmd(TUR)
    while ok.entry_off != 0:  # queue until one entry sits past the wrap
        ok = sim.queue_cmd(TUR)
    poke(sim, sim.entry_start(bad), "<I", 0x7FF8 | L.OP_CMD)
    run_all(ring)
    assert_failed(sim, bad)  # resynchronised to the ring end ...
    assert ok.seq in {c.seq for c in sim.completions}  # ... and parsing resumed at 0
    assert_healthy(sim, ring)


@pytest.mark.parametrize("op", [3, 5, 7])
def test_unknown_opcode_becomes_padding(sim_ring, op):
    sim, ring = sim_ring()
    bad = sim.queue_cmd(tagged_cdb(2))
    poke(sim, sim.entry_start(bad), "<I", bad.entry_len | op)
    assert run_all(ring) == []
    assert not sim.broken and sim.idle()
    assert sim.mm[sim.entry_start(bad)] & L.OP_MASK == L.OP_PAD
    assert bad.cmd_id in sim.commands  # left to the kernel's timeout
    assert_healthy(sim, ring)


@pytest.mark.parametrize("bad_id", ["zero", "duplicate"])
def test_unusable_cmd_id_becomes_padding(sim_ring, bad_id):
    sim, ring = sim_ring()
    first = sim.queue_cmd(tagged_cdb(1))
    bad = sim.queue_cmd(tagged_cdb(2))
    new_id = 0 if bad_id == "zero" else first.cmd_id
    poke(sim, sim.entry_start(bad) + 4, "<H", new_id)
    seen = run_all(ring)
    assert [cdb_tag(c.cdb) for c in seen] == [1]
    assert not sim.broken and sim.idle()
    assert_healthy(sim, ring)


def test_short_cmd_entry_becomes_padding(sim_ring):
    sim, ring = sim_ring()
    # Act as a broken kernel: a 16-byte CMD entry cannot hold a response.
    start = sim.cmdr_off + sim.head
    L.ENTRY_HDR.pack_into(sim.mm, start, 16 | L.OP_CMD, 999, 0, 0)
    sim.head += 16
    assert run_all(ring) == []
    assert not sim.broken and sim.idle() and ring.stats.malformed == 1
    assert_healthy(sim, ring)


def test_tmr_with_too_many_ids_is_clipped(sim_ring):
    sim, ring = sim_ring()
    sim.queue_tmr(L.TMR_ABORT_TASK, [7, 8, 9])  # 40 bytes: room for 4 ids
    poke(sim, sim.cmdr_off + 12, "<I", 1000)
    seen = []
    ring.process(lambda c: None, seen.append)
    assert seen[0].cmd_ids == (7, 8, 9, 0)
    assert sim.idle() and ring.stats.malformed == 1


def test_short_tmr_entry_is_skipped(sim_ring):
    sim, ring = sim_ring()
    start = sim.cmdr_off + sim.head
    L.ENTRY_HDR.pack_into(sim.mm, start, 16 | L.OP_TMR, 0, 0, 0)
    sim.head += 16
    seen = []
    ring.process(lambda c: None, seen.append)
    assert seen == [] and sim.idle()
    assert_healthy(sim, ring)


# -- random corruption --------------------------------------------------------

U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
CORRUPTIONS = st.one_of(
    st.tuples(st.just("iov_cnt"), U32),
    st.tuples(st.just("iov_bidi_cnt"), U32),
    st.tuples(st.just("cdb_off"), U64 | st.integers(0, 3 * PAGE)),
    st.tuples(st.just("iov_base"), U64 | st.integers(0, 4 * PAGE)),
    st.tuples(st.just("iov_len"), U64 | st.integers(0, 4 * PAGE)),
    st.tuples(st.just("opcode"), st.integers(0, 255)),
    st.tuples(st.just("varlen"), st.integers(0, 255)),
    # Lengths the ring can detect: 0, or past cmd_head / the ring end.
    st.tuples(st.just("length"), st.just(0) | st.integers(PAGE, 1 << 28).map(lambda n: n * 8)),
    st.tuples(st.just("op"), st.integers(0, 7)),
    st.tuples(st.just("cmd_id"), st.sampled_from(["zero", "duplicate"])),
)


def corrupt(sim, victim, other, kind, value):
    start = sim.entry_start(victim)
    cdb_off = struct.unpack_from("<Q", sim.mm, start + L.CDB_OFF_OFFSET)[0]
    if kind == "iov_cnt":
        poke(sim, start + 8, "<I", value)
    elif kind == "iov_bidi_cnt":
        poke(sim, start + 12, "<I", value)
    elif kind == "cdb_off":
        poke(sim, start + L.CDB_OFF_OFFSET, "<Q", value)
    elif kind == "iov_base":
        poke(sim, start + L.IOV_OFFSET, "<Q", value)
    elif kind == "iov_len":
        poke(sim, start + L.IOV_OFFSET + 8, "<Q", value)
    elif kind == "opcode":
        sim.mm[cdb_off] = value
    elif kind == "varlen":
        sim.mm[cdb_off] = L.VARLEN_CDB
        sim.mm[cdb_off + 7] = value
    elif kind == "length":
        poke(sim, start, "<I", value | L.OP_CMD)
    elif kind == "op":
        poke(sim, start, "<I", victim.entry_len | value)
    elif kind == "cmd_id":
        poke(sim, start + 4, "<H", 0 if value == "zero" else other.cmd_id)


@settings(max_examples=300, deadline=None)
@given(
    n_before=st.integers(0, 3),
    n_after=st.integers(0, 3),
    corruption=CORRUPTIONS,
    ooo=st.booleans(),
    start_at=st.integers(0, 40),
)
def test_random_corruption_never_breaks_the_ring(n_before, n_after, corruption, ooo, start_at):
    sim = SimKernel(
        flags=ALL_CAPS if ooo else ALL_CAPS & ~L.CAP_OOOC, mb_cmdr_size=PAGE, data_blocks=16
    )
    ring = CommandRing(sim.mm, sim.irq)
    try:
        for _ in range(start_at):  # vary where in the ring (and around the wrap) we are
            sim.queue_cmd(TUR)
            run_all(ring)
        first = sim.queue_cmd(tagged_cdb(100), data_out=pattern(100, 64))
        before = [sim.queue_cmd(tagged_cdb(i), data_out=pattern(i, 700)) for i in range(n_before)]
        victim = sim.queue_cmd(tagged_cdb(50), data_out=pattern(50, 2 * PAGE + 8))
        after = [sim.queue_cmd(tagged_cdb(60 + i), data_in=500) for i in range(n_after)]
        assert all([first, victim, *before, *after])
        corrupt(sim, victim, first, *corruption)
        seen = run_all(ring)
        by_id = {c.cmd_id: c for c in [first, *before, *after]}
        for cmd in seen:  # whatever arrived is intact, or is the victim
            assert cmd.cmd_id == victim.cmd_id or cmd.cdb == by_id[cmd.cmd_id].cdb
        assert not sim.broken
        seqs = [c.seq for c in sim.completions]
        assert len(seqs) == len(set(seqs))  # never twice
        assert first.seq in seqs and all(b.seq in seqs for b in before)
        assert_healthy(sim, ring, expect_idle=True)
    finally:
        ring.close()
        sim.close()
