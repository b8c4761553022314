"""A run of WRITE records packed in one compiled call (engine/_writerun.c) and
written at once (``Journal.write_run``): the bytes are exactly those of the
Python reference (record.pack_record_header, record.pack_pad), the Recs are
those ``append_many`` makes, and the journal reads them back as before."""

from __future__ import annotations

import errno
import os
import threading
import uuid as uuidlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.engine import journal as J
from appliance.engine import record as R
from appliance.engine.errors import JournalFailed
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, Rec

from .helpers import make_volume, pattern
from .test_segfile import WriteLog, open_journal, scan

# `make test` sets CDP_REQUIRE_FASTRING=1: there a missing extension fails.
pytestmark = pytest.mark.skipif(
    J._writerun is None and os.environ.get("CDP_REQUIRE_FASTRING") != "1",
    reason="appliance.engine._writerun not built",
)
VTAG = bytes(range(8))


def reference(pos, items, seq, time_ns, segno, align, limit):
    """What the Python path writes for these records, and their Recs."""
    out, recs = [], []
    for i, (off, payload) in enumerate(items):
        n = len(payload)
        crc = R.payload_crc(payload)
        out.append(R.pack_record_header(R.WRITE, 0, seq + i, time_ns, off, n, n, segno, VTAG, crc))
        out.append(payload)
        recs.append(Rec(seq + i, time_ns, R.WRITE, 0, off, n, R.jaddr(segno, pos), n))
        pos += R.RECORD_HEADER_SIZE + n
    if align and pos % align:
        gap = -pos % align
        if gap < R.RECORD_HEADER_SIZE:
            gap += align
        if pos + gap <= limit:
            out.append(R.pack_pad(gap, seq + len(items) - 1, time_ns, segno, VTAG))
            pos += gap
    return b"".join(out), pos, recs


def pack(buf, used, pos, items, seq=7, time_ns=123456789, segno=3, align=512, limit=1 << 30,
         most=R.MAX_PAYLOAD, mode=0):  # fmt: skip
    return J._writerun.pack_writes(
        buf, used, pos, items, seq, time_ns, segno, VTAG, align, limit, most, R.crc32c, Rec, mode
    )


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 20) .map(lambda k: k * 512) | st.integers(1, 3000), min_size=1,
                   max_size=12),
    pos=st.integers(1, 64).map(lambda k: k * 512),
    align=st.sampled_from([0, 512, 4096]),
    used=st.integers(0, 4096),
    segno=st.integers(1, (1 << 32) - 1),
)  # fmt: skip
def test_the_bytes_and_recs_are_the_python_paths(sizes, pos, align, used, segno):
    items = [(i * 4096, pattern(i, n)) for i, n in enumerate(sizes)]
    want, end, recs = reference(pos, items, 7, 123456789, segno, align, 1 << 30)
    buf = bytearray(b"\xee" * (used + len(want) + 100))
    got = pack(buf, used, pos, items, segno=segno, align=align)
    assert got == (used + len(want), end, recs)
    assert buf[used : used + len(want)] == want
    assert buf[:used] == b"\xee" * used and buf[used + len(want) :] == b"\xee" * 100


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    pos=st.integers(1, 64).map(lambda k: k * 512),
    align=st.sampled_from([0, 512, 4096]),
    limit=st.integers(0, 40000),
)
def test_plan_then_pack_bytes_is_pack_all_in_two_steps(sizes, pos, align, limit):
    """The late batch's two steps (Journal.write_run, Journal.settle): PLAN
    decides and makes the Recs without touching the buffer, PACK_BYTES with
    the same arguments writes exactly PACK_ALL's bytes and makes no Recs."""
    items = [(i * 4096, pattern(i, n)) for i, n in enumerate(sizes)]
    limit += pos
    whole, plan, two = (bytearray(b"\xee" * 50000) for _ in range(3))
    want = pack(whole, 0, pos, items, align=align, limit=limit)
    got = pack(plan, 0, pos, items, align=align, limit=limit, mode=J._writerun.PLAN)
    assert got == want and plan == b"\xee" * 50000
    if want is not None:
        two_step = pack(two, 0, pos, items, align=align, limit=limit, mode=J._writerun.PACK_BYTES)
        assert two_step == (want[0], want[1], None)
        assert two == whole


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        pack(bytearray(4096), 0, 512, [(0, b"x" * 512)], mode=3)


def test_a_pad_that_would_pass_the_segment_end_is_left_out():
    items = [(0, pattern(1, 1000))]
    end = 4096 + 64 + 1000
    want, _, _ = reference(4096, items, 7, 123456789, 3, 4096, end + 10)
    assert len(want) == 1064  # no PAD: the segment ends with the record
    buf = bytearray(8192)
    assert pack(buf, 0, 4096, items, limit=end + 10)[:2] == (1064, end)
    assert bytes(buf[:1064]) == want


@pytest.mark.parametrize("why", ["segment", "buffer", "size"])
def test_records_that_do_not_fit_pack_nothing(why):
    items = [(0, pattern(1, 4096)), (4096, pattern(2, 4096))]
    buf = bytearray(b"\xee" * (8000 if why == "buffer" else 8192 * 2))
    limit = 4096 + 8000 if why == "segment" else 1 << 30
    most = 4095 if why == "size" else 4096
    assert pack(buf, 0, 4096, items, limit=limit, most=most) is None
    assert buf == b"\xee" * len(buf)


@pytest.mark.parametrize(
    "items, error",
    [
        ([(0, b"x" * 512, 1)], TypeError),
        ([[0, b"x" * 512]], TypeError),
        ([(-512, b"x" * 512)], OverflowError),
        ([("0", b"x" * 512)], TypeError),
        ([(0, 512)], TypeError),
        ([(0, bytes(R.MAX_PAYLOAD + 1))], ValueError),
    ],
)
def test_bad_items_are_refused_and_pack_nothing(items, error):
    buf = bytearray(b"\xee" * 4096)
    with pytest.raises(error):
        pack(buf, 0, 4096, [(0, b"y" * 512)] + items)
    assert buf == b"\xee" * 4096


def test_a_bad_vtag_or_start_is_refused():
    buf = bytearray(4096)
    with pytest.raises(ValueError):
        J._writerun.pack_writes(buf, 0, 0, [], 1, 0, 1, b"short", 0, 1 << 30, 1, R.crc32c, Rec)
    with pytest.raises(ValueError):
        pack(buf, 5000, 0, [(0, b"x")])


# ------------------------------------------------------------ Journal.write_run


def test_write_run_writes_what_append_many_would(tmp_path, monkeypatch):
    """Same records, same bytes on disk, with the clock held still."""
    monkeypatch.setattr(J.time, "time_ns", lambda: 10**18)
    runs = [[(i * 4096, pattern(k * 10 + i, 512 * (1 + (k + i) % 9))) for i in range(k + 1)]
            for k in range(6)]  # fmt: skip
    files = []
    for fast in (True, False):
        j = Journal(OsFileIO(), str(tmp_path / f"j{fast}"), uuidlib.UUID(int=5), 1 << 20)
        j.start(0, 0, clean=True)
        try:
            assert j._align  # this file system takes O_DIRECT
            for run in runs:
                with j.batch():
                    recs = j.write_run(run) if fast else j.append_many(run)
                    assert recs is not None
                    assert [(r.offset, r.length) for r in recs] == [(o, len(p)) for o, p in run]
            j.sync()
        finally:
            j.close()
        [seg] = sorted(os.listdir(j.folder))
        with open(os.path.join(j.folder, seg), "rb") as f:
            files.append(f.read(j._pos)[64:])  # the header's creation time differs
        assert [r.seq for r in scan(j).records] == list(range(1, 22))
    assert files[0] == files[1]


def test_write_run_steps_aside_when_something_could_come_between(tmp_path):
    j = open_journal(tmp_path)
    try:
        with j.batch():
            first = j.append(R.WRITE, 0, 512, pattern(0, 512))  # pending
            assert j.write_run([(512, pattern(1, 512))]) is None
        assert j._io_lock.acquire()
        try:  # someone is writing
            assert j.write_run([(512, pattern(1, 512))]) is None
        finally:
            j._io_lock.release()
        # A run larger than the buffer, or past the segment's end.
        assert j.write_run([(0, pattern(2, 8192))] * 200) is None
        # A large record: the pending path (WRITE_RUN_MAX_PAYLOAD says why),
        # also when it comes after a small one.
        assert j.write_run([(0, pattern(4, J.WRITE_RUN_MAX_PAYLOAD + 512))]) is None
        big = [(0, pattern(5, 512)), (512, pattern(6, J.WRITE_RUN_MAX_PAYLOAD + 512))]
        assert j.write_run(big) is None
        assert j.write_run([]) is None
        later = j.write_run([(1024, pattern(3, 4096))])
        assert later is not None and later[0].seq == first.seq + 1
        j.sync()
    finally:
        j.close()
    found = scan(j).records
    assert [r.seq for r in found] == [first.seq, later[0].seq]


def test_write_run_stepping_aside_writes_no_zeros(tmp_path):
    """With records pending, write_run returns before it writes anything,
    the zeros ahead included (the pending path writes them when needed)."""
    io = WriteLog()
    j = open_journal(tmp_path, io)
    try:
        with j.batch():
            j.append(R.WRITE, 0, 512, pattern(0, 512))
            zeroed, io.writes[:] = j._zeroed, []
            j._zeroed = j._pos  # as if the zeros ahead were used up
            assert j.write_run([(512, pattern(1, 512))]) is None
            assert io.writes == [] and j._zeroed == j._pos
            j._zeroed = zeroed
        j.sync()
    finally:
        j.close()
    assert [r.offset for r in scan(j).records] == [0]


def test_write_run_then_rollover_and_every_block_written_once(tmp_path):
    io = WriteLog()
    j = open_journal(tmp_path, io)  # 1 MiB segments
    recs, payloads = [], []
    try:
        io.writes.clear()
        for k in range(120):
            sizes = [4096 * (1 + (k + i) % 4) for i in range(k % 5 + 1)]
            run = [(i * 4096, pattern(k * 100 + i, n)) for i, n in enumerate(sizes)]
            with j.batch():
                got = j.write_run(run)
                if got is None:  # the segment is full: the usual path rolls over
                    got = j.append_many(run)
            recs += got
            payloads += [p for _, p in run]
        j.sync()
        blocks: set[tuple[str, int]] = set()
        for path, offset, n, kind in io.writes:
            assert offset % j._align == 0 and n % j._align == 0
            if kind == "v":
                mine = {(path, b) for b in range(offset // j._align, (offset + n) // j._align)}
                assert not mine & blocks, "a block holding records was written again"
                blocks |= mine
        assert j.current_segment > 2
        for r, p in zip(recs, payloads, strict=True):
            assert j.read_payload(r.payload_addr, r.payload_len) == p
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == [r.seq for r in recs]


class FailRecords(OsFileIO):
    """EIO on the first record write after ``armed`` is set."""

    armed = False

    def pwritev_all(self, fd, buffers, offset):
        if self.armed:
            raise OSError(errno.EIO, "injected", "seg")
        return super().pwritev_all(fd, buffers, offset)


@pytest.mark.parametrize("late", [False, True])
def test_a_failed_write_fails_the_journal_and_nothing_is_reported_durable(tmp_path, late):
    """Written at once, or at a late batch's end (test_laterun.py): the
    journal fails, lets go of its lock, and undelivered() lists the run."""
    io = FailRecords()
    j = open_journal(tmp_path, io)
    try:
        before = j.write_run([(0, pattern(0, 4096))])
        j.sync()
        io.armed = True
        with j.batch(late=late):
            recs = j.write_run([(4096, pattern(1, 4096)), (8192, pattern(2, 4096))])
            assert recs is not None and (j._late_run is not None) == late
        assert j.failed is not None and not j._io_lock.locked() and j._late_run is None
        with pytest.raises(JournalFailed):
            j.sync()
        assert [r.seq for r in j.undelivered()] == [r.seq for r in recs]
        assert j.durable_seq == before[0].seq
    finally:
        io.armed = False
        j.close()


def test_write_many_goes_through_write_run_and_reads_back(tmp_path):
    vol = make_volume(tmp_path, size=4 << 20)
    calls = []
    real = vol._journal.write_run
    vol._journal.write_run = lambda run: calls.append(len(run)) or real(run)
    try:
        data = [pattern(i, 4096) for i in range(16)]
        with vol.batch():
            seqs, error = vol.write_many([(i * 8192, d) for i, d in enumerate(data)])
        assert error is None and calls == [16]
        vol.flush()
        for i, d in enumerate(data):
            assert vol.read(i * 8192, 4096) == d
            assert vol.image(seq=seqs[i]).read(i * 8192, 4096) == d
    finally:
        vol.close()


def test_write_run_beside_a_writer_thread_keeps_append_order(tmp_path):
    """Another thread appends (its records go through the writer thread) while
    runs are written at once: one journal, seqs and addresses in one order."""
    j = open_journal(tmp_path)
    stop = threading.Event()
    other: list = []

    def appender():
        i = 0
        while not stop.is_set() and i < 400:
            other.append(j.append(R.WRITE, 0, 512, pattern(10_000 + i, 512)))
            i += 1

    t = threading.Thread(target=appender)
    t.start()
    mine = []
    try:
        for k in range(200):
            run = [(k * 512, pattern(k, 512))]
            with j.batch():
                got = j.write_run(run)
                mine += got if got is not None else j.append_many(run)
        stop.set()
        t.join()
        j.sync()
    finally:
        stop.set()
        j.close()
    found = scan(j).records
    want = sorted(mine + other, key=lambda r: r.seq)
    assert [(r.seq, r.addr) for r in found] == [(r.seq, r.addr) for r in want]
    assert all(a.addr < b.addr for a, b in zip(found, found[1:], strict=False))


# ------------------------------------------------------------ pwrite_pieces


def _file(tmp_path, name):
    return os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o600)


@settings(max_examples=40, deadline=None)
@given(
    plan=st.lists(st.tuples(st.booleans(), st.integers(1, 9)), min_size=1, max_size=20),
    cut=st.integers(0, 20),
)
def test_pwrite_pieces_writes_what_the_python_loop_writes(tmp_path_factory, plan, cut):
    tmp_path = tmp_path_factory.mktemp("pp")
    pieces, off = [], 0
    for i, (gap, n) in enumerate(plan):  # adjacent stretches, with gaps between some
        off += 512 * 3 if gap else 0
        data = pattern(i, 512 * n)
        pieces.append((off, data if i % 2 else memoryview(data), i))
        off += len(data)
    stop = min(cut, len(pieces))
    fds = [_file(tmp_path, "c"), _file(tmp_path, "py")]
    try:
        assert J._writerun.pwrite_pieces(fds[0], pieces, stop) == stop
        assert super(OsFileIO, OsFileIO()).pwrite_pieces(fds[1], pieces, stop) == stop
        c, py = (os.pread(fd, off + 4096, 0) for fd in fds)
        assert c == py
        for o, d, _ in pieces[:stop]:
            assert c[o : o + len(d)] == bytes(d)
    finally:
        for fd in fds:
            os.close(fd)


def test_pwrite_pieces_stops_before_the_stretch_that_fails(tmp_path):
    fd = _file(tmp_path, "f")
    try:
        pieces = [(0, pattern(0, 512)), (512, pattern(1, 512)),
                  (1 << 63, pattern(2, 512)), (4096, pattern(3, 512))]  # fmt: skip
        assert J._writerun.pwrite_pieces(fd, pieces, 4) == 2  # the offset is refused
        assert os.pread(fd, 1024, 0) == pattern(0, 512) + pattern(1, 512)
        assert os.pread(fd, 512, 4096) == b""  # nothing after it was tried
    finally:
        os.close(fd)
    ro = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert J._writerun.pwrite_pieces(ro, [(0, b"x" * 512)], 1) == 0  # EBADF
    finally:
        os.close(ro)


@pytest.mark.parametrize(
    "pieces, stop, error",
    [
        ([(0, b"x")], 2, ValueError),
        ([(0,)], 1, TypeError),
        ([(-1, b"x")], 1, OverflowError),
        ([(0, 5)], 1, TypeError),
    ],
)
def test_pwrite_pieces_refuses_bad_arguments_and_writes_nothing(tmp_path, pieces, stop, error):
    fd = _file(tmp_path, "f")
    try:
        with pytest.raises(error):
            J._writerun.pwrite_pieces(fd, [(0, b"y" * 512)] + pieces, stop + 1)
        assert os.pread(fd, 10, 0) == b""
    finally:
        os.close(fd)


def test_a_subclass_that_changes_pwritev_all_is_called_for_the_primary(tmp_path):
    seen = []

    class Noting(OsFileIO):
        def pwritev_all(self, fd, buffers, offset):
            seen.append(offset)
            return super().pwritev_all(fd, buffers, offset)

    fd = _file(tmp_path, "f")
    try:
        pieces = [(0, b"a" * 512), (512, b"b" * 512), (4096, b"c" * 512)]
        assert Noting().pwrite_pieces(fd, pieces, 3) == 3
        assert seen == [0, 4096]
    finally:
        os.close(fd)
