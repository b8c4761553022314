"""A late batch (``Journal.batch(late=True)``): its owner's ``write_run``
appends the run at once (seqs, addresses, Recs: ``pack_writes`` PLAN), and
packs and writes it at the batch's end (or at the owner's next journal call
or host write), so the handler's ring thread can publish the run's answers
in between.

What must hold: the same bytes on disk as an ordinary ``write_run``; nothing
written before the end; journal order kept against the owner's own later
calls and against other threads; no deadlock when the owner writes again;
a failed write, or a journal failed meanwhile, fails as ``write_run`` does
(``undelivered`` lists the run, nothing of it is durable); ``_io_lock``
always let go."""

from __future__ import annotations

import errno
import os
import threading
import uuid as uuidlib

import pytest

from appliance.engine import journal as J
from appliance.engine import record as R

from .helpers import make_volume, pattern
from .test_segfile import SEG, WriteLog, open_journal, scan

pytestmark = pytest.mark.skipif(
    J._writerun is None and os.environ.get("CDP_REQUIRE_FASTRING") != "1",
    reason="appliance.engine._writerun not built",
)
VOLUME = uuidlib.UUID(int=7)


def records_written(io: WriteLog) -> list[tuple[int, int]]:
    return [(off, n) for _, off, n, kind in io.writes if kind == "v"]


def test_the_run_is_appended_now_and_written_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(J.time, "time_ns", lambda: 10**18)  # the clock held still
    run = [(0, pattern(0, 4096)), (8192, pattern(1, 4096)), (4096, pattern(2, 512))]
    images = []
    for late in (False, True):
        io = WriteLog()
        j = J.Journal(io, str(tmp_path / str(late)), VOLUME, SEG)
        j.start(0, 0, clean=True)
        try:
            io.writes.clear()
            batch = j.batch(late=late)
            with batch:
                recs = j.write_run(run)
                assert [r.seq for r in recs] == [1, 2, 3]
                if late:  # appended (seqs, addresses), not written, the lock held
                    assert records_written(io) == [] and j._io_lock.locked()
                    assert j.last_seq == 3 and j._written_seq == 0
            assert records_written(io) and not j._io_lock.locked()
            j.sync()
            assert j.durable_seq == 3
        finally:
            j.close()
        seg = J.segment_path(j.folder, j.current_segment)
        with open(seg, "rb") as f:
            images.append(f.read(1 << 16))
        assert [(r.seq, r.offset) for r in scan(j).records] == [(1, 0), (2, 8192), (3, 4096)]
    assert images[0][4096:] == images[1][4096:]  # the records: the same bytes


def test_large_records_go_the_late_way_not_the_pending_way(tmp_path):
    j = open_journal(tmp_path)
    try:
        run = [(k << 16, pattern(k, 64 << 10)) for k in range(4)]
        assert j.write_run(run) is None  # outside a late batch: the pending path
        with j.batch(late=True):
            recs = j.write_run(run)
            assert recs is not None and j._late_run is not None and not j._pending
        j.sync()
        for r, (_, p) in zip(recs, run, strict=True):
            assert j.read_payload(r.payload_addr, r.payload_len) == p
    finally:
        j.close()


def test_the_owners_next_journal_call_writes_the_run_first(tmp_path):
    """Inside the batch the owner appends again (a bookmark, another run, a
    sync): the late run is written before, never after, what follows it."""
    io = WriteLog()
    j = open_journal(tmp_path, io)
    try:
        with j.batch(late=True):
            first = j.write_run([(0, pattern(0, 4096))])
            second = j.write_run([(4096, pattern(1, 4096))])  # writes `first` first
            assert first[0].seq < second[0].seq and j._late_run[3] == second
            mark = j.append(R.BOOKMARK, 0, 0, b"before-ransomware")
            assert j._late_run is None  # `second` written by the append
            j.sync()  # inside the batch: no deadlock with its own lock
            assert j.durable_seq == mark.seq
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == [first[0].seq, second[0].seq, mark.seq]
    offs = [off for off, _ in records_written(io)]
    assert offs == sorted(offs)


def test_another_threads_records_wait_for_the_late_run(tmp_path):
    """Appends of other threads get later seqs and are written after the late
    run (the writer thread waits for ``_io_lock``); a sync of theirs returns
    once the owner's batch ended."""
    j = open_journal(tmp_path)
    done = threading.Event()
    other = []

    def appender():
        other.append(j.append(R.WRITE, 65536, 512, pattern(9, 512)))
        j.sync()
        done.set()

    try:
        with j.batch(late=True):
            mine = j.write_run([(0, pattern(0, 4096))])
            t = threading.Thread(target=appender)
            t.start()
            assert not done.wait(0.3)  # its record waits behind the late run
        assert done.wait(10)
        t.join()
    finally:
        j.close()
    assert other[0].seq > mine[0].seq
    assert [r.seq for r in scan(j).records] == [mine[0].seq, other[0].seq]


def test_one_late_batch_at_a_time(tmp_path):
    """A late batch opened by another thread meanwhile is an ordinary one:
    its write_run writes at once."""
    j = open_journal(tmp_path)
    got = []
    try:
        with j.batch(late=True):

            def other():
                with j.batch(late=True):
                    assert j._late_owner != threading.get_ident()
                    got.append(j.write_run([(8192, pattern(1, 512))]))

            j.write_run([(0, pattern(0, 512))])
            t = threading.Thread(target=other)
            t.start()
            t.join()
            assert got == [None]  # _io_lock is the owner's: the pending way
        assert j._late_owner is None
        with j.batch(late=True):
            assert j._late_owner == threading.get_ident()
    finally:
        j.close()


def test_a_journal_failed_meanwhile_does_not_write_the_run(tmp_path):
    io = WriteLog()
    j = open_journal(tmp_path, io)
    try:
        with j.batch(late=True):
            recs = j.write_run([(0, pattern(0, 4096))])
            io.writes.clear()
            j._fail(OSError(errno.EIO, "the syncer's fdatasync"))
        assert records_written(io) == [] and not j._io_lock.locked()
        assert [r.seq for r in j.undelivered()] == [r.seq for r in recs]
    finally:
        j.close()


def test_close_by_the_owner_writes_the_run(tmp_path):
    j = open_journal(tmp_path)
    batch = j.batch(late=True)
    batch.__enter__()
    recs = j.write_run([(0, pattern(0, 4096))])
    j.close()  # no deadlock on its own _io_lock; the run is durable
    batch.end()
    assert [r.seq for r in scan(j).records] == [recs[0].seq]


def test_a_host_write_of_the_owner_writes_the_run_before_the_order_lock(tmp_path):
    """Inside a late batch the owner writes again (the handler's fallback
    after a refused write): the run is written first, so a journal restart
    waiting on the journal's lock while holding the order lock cannot
    deadlock with it, and the volume reads back both."""
    vol = make_volume(tmp_path, size=4 << 20)
    try:
        with vol.batch(late=True):
            seqs, error = vol.write_many([(0, pattern(0, 4096)), (8192, pattern(1, 4096))])
            assert error is None and vol._journal._late_run is not None
            held = []
            real = vol._order_lock.write_range

            def noting(*a, **kw):
                held.append(vol._journal._late_run)
                return real(*a, **kw)

            vol._order_lock.write_range = noting
            last = vol.write(4096, pattern(2, 4096))
            assert held == [None]
        vol.flush()
        assert seqs[1] < last
        assert vol.read(0, 12288) == pattern(0, 4096) + pattern(2, 4096) + pattern(1, 4096)
        assert vol.image(seq=seqs[1]).read(4096, 4096) == bytes(4096)
    finally:
        vol.close()
