"""ProtectedVolume.write_many: a run of writes in one pass (the handler's ring
thread, one call per run of plain writes in a ring poll) has the outcome of
that many write() calls: same bytes, same records in the same order, the
same DRL pins; a failure stops the run at the failed item."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from appliance.engine import InvalidArgument, InvalidRange, JournalFailed, PrimaryIOError, faults
from appliance.engine import record as R
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal

from .helpers import FlakyIO, make_volume, pattern, reopen

BS = 512


def records(vol):
    """(kind, offset, length, payload) of every WRITE record, and their seqs."""
    j = vol._journal
    j.sync()
    fresh = Journal(OsFileIO(), j.folder, j.uuid, j.segment_size)
    recs = [r for r in fresh.scan().records if r.kind == R.WRITE]
    out = [
        (r.kind, r.offset, r.length, j.read_payload(r.payload_addr, r.payload_len)) for r in recs
    ]
    return out, [r.seq for r in recs]


def primary(vol) -> bytes:
    with open(vol.primary_path, "rb") as f:
        return f.read()


# Overlapping, adjacent, repeated, and 4 KiB / 512 B items.
ITEMS = [
    (0, pattern(1, 4096)),
    (2048, pattern(2, 4096)),  # overlaps the first
    (65536, pattern(3, BS)),
    (0, pattern(4, BS)),  # rewrites the start again
    (70 * BS, pattern(5, 8 * BS)),
    (65536, pattern(6, 2 * BS)),
]


def test_same_bytes_records_and_order_as_single_writes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_volume(tmp_path / "a")
    b = make_volume(tmp_path / "b")
    try:
        singles = [a.write(off, data) for off, data in ITEMS]
        with b.batch():
            seqs, error = b.write_many([(off, memoryview(data)) for off, data in ITEMS])
        assert error is None
        assert primary(a) == primary(b)
        ra, sa = records(a)
        rb, sb = records(b)
        assert ra == rb  # same records, in the same order
        assert sb == seqs and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert sb == [s - singles[0] + seqs[0] for s in sa]  # consecutive, like the singles
        # Every point in the run shows the run up to it (overlaps in list order).
        for k, seq in enumerate(seqs):
            img = b.image(seq)
            want = bytearray(140 * BS)
            for off, data in ITEMS[: k + 1]:
                want[off : off + len(data)] = data
            assert img.read(0, 140 * BS) == bytes(want)
    finally:
        a.close()
        b.close()
    b = reopen(tmp_path / "b")
    try:
        assert records(b)[1] == seqs  # durable, found again after a reopen
    finally:
        b.close()


def test_pins_are_released_when_the_records_are_durable(tmp_path):
    vol = make_volume(tmp_path)
    try:
        with vol.batch():
            vol.write_many([(off, data) for off, data in ITEMS])
        vol.flush()
        assert vol._drl._pins == {}
    finally:
        vol.close()


def test_the_data_is_copied_before_returning(tmp_path):
    vol = make_volume(tmp_path)
    try:
        buf = bytearray(pattern(7, 4096))
        with vol.batch():
            seqs, _ = vol.write_many([(0, memoryview(buf)), (8192, memoryview(buf))])
            buf[:] = bytes(4096)  # the ring reuses the pages after completion
        assert vol.image(seqs[-1]).read(0, 4096) == pattern(7, 4096)
        assert vol.read(8192, 4096) == pattern(7, 4096)
    finally:
        vol.close()


def test_a_bad_item_refuses_the_whole_call(tmp_path):
    vol = make_volume(tmp_path)
    try:
        last = vol.last_seq
        before = primary(vol)
        for bad in [(vol.size, pattern(1, BS)), (100, pattern(1, BS)), (0, b"")]:
            with pytest.raises(InvalidRange):
                vol.write_many([(0, pattern(2, BS)), bad])
        assert vol.last_seq == last and primary(vol) == before
        assert vol._drl._pins == {}
    finally:
        vol.close()


class NoBuffer:
    """A payload that has a length but that ``bytes()`` cannot copy."""

    def __len__(self) -> int:
        return BS


def test_an_item_is_range_checked_before_its_payload_is_copied(tmp_path):
    vol = make_volume(tmp_path)
    try:
        last = vol.last_seq
        with pytest.raises(InvalidRange):  # not bytes()'s TypeError
            vol.write_many([(0, pattern(2, BS)), (vol.size, NoBuffer())])
        with pytest.raises(TypeError):  # in range: the copy is what fails
            vol.write_many([(0, NoBuffer())])
        assert vol.last_seq == last and vol._drl._pins == {}
    finally:
        vol.close()


def test_items_above_the_record_limit_are_split(tmp_path):
    vol = make_volume(tmp_path, size=20 << 20, segment_size=32 << 20)
    try:
        big = os.urandom(R.MAX_PAYLOAD + 4096)
        seqs, error = vol.write_many([(0, pattern(1, BS)), (4096, big), (0, pattern(2, BS))])
        assert error is None and seqs[1] == seqs[0] + 2 and seqs[2] == seqs[1] + 1
        assert vol.read(4096, len(big)) == big and vol.read(0, BS) == pattern(2, BS)
    finally:
        vol.close()


def test_a_segment_rollover_inside_the_run(tmp_path):
    vol = make_volume(tmp_path, size=8 << 20, segment_size=1 << 20)
    try:
        items = [(i * 65536, pattern(i, 65536)) for i in range(40)]  # 2.5 MiB of records
        with vol.batch():
            seqs, error = vol.write_many(items)
        assert error is None
        assert vol._journal.current_segment > 1
    finally:
        vol.close()
    vol = reopen(tmp_path)
    try:
        recs, found = records(vol)
        assert found[-40:] == seqs
        assert [(o, p) for _, o, _, p in recs[-40:]] == items
    finally:
        vol.close()


class FailPrimaryAt(OsFileIO):
    """Notes the primary's writes, ``(offset, length)`` each (a ``pwritev`` is a
    run of adjacent writes: FileIO.pwrite_pieces), and fails one that covers
    ``fail_at`` (EIO)."""

    def __init__(self) -> None:
        self.fail_at: int | None = None
        self.primary_fd: int | None = None
        self.calls: list[tuple[int, int]] = []

    def _check(self, fd, offset: int, n: int) -> None:
        if fd != self.primary_fd:
            return
        if self.fail_at is not None and offset <= self.fail_at < offset + n:
            raise OSError(errno.EIO, "injected")
        self.calls.append((offset, n))

    def pwrite_all(self, fd, data, offset):
        self._check(fd, offset, len(data))
        return super().pwrite_all(fd, data, offset)

    def pwritev_all(self, fd, buffers, offset):
        self._check(fd, offset, sum(len(b) for b in buffers))
        return super().pwritev_all(fd, buffers, offset)


def test_a_failed_primary_write_stops_the_run(tmp_path):
    io = FailPrimaryAt()
    vol = make_volume(tmp_path, io=io)
    try:
        io.primary_fd = vol._pfd
        io.fail_at = 8192
        last = vol.last_seq
        items = [(0, pattern(1, 4096)), (4096, pattern(2, 4096)), (8192, pattern(3, 4096)),
                 (12288, pattern(4, 4096)), (1 << 20, pattern(5, 4096))]  # fmt: skip
        with vol.batch():
            seqs, error = vol.write_many(items)
        assert isinstance(error, PrimaryIOError)
        assert seqs == [last + 1, last + 2]  # acknowledged: the two before it, nothing after
        assert vol.last_seq == last + 2
        assert vol.read(0, 8192) == pattern(1, 4096) + pattern(2, 4096)
        assert vol.read(12288, 4096) == bytes(4096)  # never attempted
        assert vol.read(1 << 20, 4096) == bytes(4096)
        assert vol._drl.out_of_sync  # resync at the next open, as for write()
        vol.flush()
        # The failed item keeps its pin (its region stays dirty); the items
        # never attempted and those journaled hold none.
        assert vol._drl._pins == {r: 1 for r in vol._drl.regions(8192, 4096)}
    finally:
        vol.close()


def test_a_failed_journal_leaves_the_run_out_of_sync(tmp_path):
    io = FlakyIO()
    vol = make_volume(tmp_path, io=io)
    try:
        vol.flush()
        io.broken = errno.EIO
        vol.write(0, pattern(9, BS))
        try:
            vol.flush()  # the journal fails
        except Exception:
            pass
        assert vol._journal.failed is not None
        seqs, error = vol.write_many([(4096, pattern(1, BS)), (8192, pattern(2, BS))])
        assert error is None and seqs == [None, None]  # as write() returns then
        assert vol.state == "out-of-sync"
        assert vol.read(4096, BS) == pattern(1, BS) and vol.read(8192, BS) == pattern(2, BS)
        assert vol._drl.is_dirty(0)
    finally:
        io.broken = None
        vol.close()


def test_a_failed_drl_step_stops_the_run_at_that_item(tmp_path):
    vol = make_volume(tmp_path, region_size=64 << 10)
    try:
        last = vol.last_seq

        def fail(offset, **_):
            if offset == 3 << 16:
                raise OSError(errno.EIO, "injected after the DRL mark")

        items = [(0, pattern(1, 4096)), (1 << 16, pattern(2, BS)), (3 << 16, pattern(3, BS)),
                 (5 << 16, pattern(4, BS))]  # fmt: skip
        with faults.inject("write.after_drl", fail):
            seqs, error = vol.write_many(items)
        assert isinstance(error, OSError) and seqs == [last + 1, last + 2]
        assert vol.read(3 << 16, BS) == bytes(BS) and vol.read(5 << 16, BS) == bytes(BS)
        vol.flush()
        # As write(): the failed item keeps its pin (its region stays dirty);
        # the item never attempted holds none.
        assert vol._drl._pins == {3: 1}
    finally:
        vol.close()


def test_a_journal_failing_at_the_append_unpins_like_single_writes(tmp_path):
    pins = []
    for many in (False, True):
        (tmp_path / str(many)).mkdir()
        vol = make_volume(tmp_path / str(many), region_size=64 << 10)
        try:
            vol.write(0, pattern(1, BS))
            vol.flush()
            # The journal fails; the volume learns it at its next append.
            vol._journal._fail(OSError(errno.EIO, "injected"))
            assert vol.state != "out-of-sync"
            items = [(1 << 16, pattern(2, BS)), (2 << 16, pattern(3, 4096))]
            if many:
                seqs, error = vol.write_many(items)
                assert error is None and seqs == [None, None]
            else:
                assert [vol.write(off, data) for off, data in items] == [None, None]
            assert vol.state == "out-of-sync"
            assert vol.read(1 << 16, BS) == pattern(2, BS)
            assert vol._drl.is_dirty(1) and vol._drl.is_dirty(2)
            pins.append(dict(vol._drl._pins))
        finally:
            vol.close()
    assert pins[0] == pins[1] == {}


def test_a_run_during_a_restore_wins_like_writes(tmp_path):
    rs, size = 64 << 10, 4 << 20
    vol = make_volume(tmp_path, size=size, region_size=rs, map_records=16)
    for i in range(size // rs):
        vol.write(i * rs, pattern(i, rs))
    vol.bookmark("good")
    good = vol.read(0, size)
    for i in range(0, size // rs, 2):
        vol.write(i * rs + 4096, os.urandom(8192))
    vol.flush()
    gate, started = threading.Event(), threading.Event()

    def hold(region, job):
        if region == 3:
            started.set()
            gate.wait(10)

    items = [(10 * rs + 512, b"H" * 1024), (40 * rs, b"I" * 4096), (10 * rs + 1024, b"J" * 512),
             (2 * rs + 4096, b"K" * 512)]  # fmt: skip
    try:
        with faults.inject("restore.copy", hold):
            job = vol.restore(bookmark="good")
            assert started.wait(10)
            seqs, error = vol.write_many(items)  # regions not restored yet, and one that is
            gate.set()
            job.wait(60)
        assert error is None and None not in seqs
        expect = bytearray(good)
        for off, data in items:
            expect[off : off + len(data)] = data
        assert vol.read(0, size) == bytes(expect)
        assert vol.image().read(0, size) == bytes(expect)
        vol.flush()
        assert vol._drl._pins == {}
    finally:
        gate.set()
        vol.close()


def test_journal_append_many_is_consecutive_and_all_or_none(tmp_path):
    vol = make_volume(tmp_path)
    try:
        j = vol._journal
        last = j.last_seq
        recs = j.append_many([(0, pattern(1, BS)), (BS, pattern(2, BS))])
        assert [r.seq for r in recs] == [last + 1, last + 2] and j.last_seq == last + 2
        assert recs[1].addr == recs[0].end_addr
        with pytest.raises(InvalidArgument):
            j.append_many([(0, pattern(3, BS)), (0, bytes(R.MAX_PAYLOAD + BS))])
        j._fail(OSError(errno.EIO, "injected"))
        with pytest.raises(JournalFailed):
            j.append_many([(0, pattern(4, BS))])
        assert j.last_seq == last + 2  # nothing of either refused call was queued
    finally:
        vol.close()


def test_a_run_of_adjacent_items_is_one_primary_write(tmp_path):
    io = FailPrimaryAt()
    vol = make_volume(tmp_path, io=io)
    try:
        io.primary_fd = vol._pfd
        items = [(i * 4096, pattern(i, 4096)) for i in range(8)]
        items += [((1 << 20) + 4096, pattern(9, 4096)), ((1 << 20) + 8192, pattern(10, BS))]
        items += [(4096, pattern(11, BS))]  # overlaps the first run: written after it
        with vol.batch():
            seqs, error = vol.write_many(items)
        assert error is None and len(seqs) == len(items)
        assert io.calls == [(0, 8 * 4096), ((1 << 20) + 4096, 4096 + BS), (4096, BS)]
        assert vol.read(0, 4096) == pattern(0, 4096)
        assert vol.read(4096, 4096) == pattern(11, BS) + pattern(1, 4096)[BS:]
        assert vol.read((1 << 20) + 4096, 4096 + BS) == pattern(9, 4096) + pattern(10, BS)
        recs, rseqs = records(vol)
        assert rseqs[-len(items) :] == seqs  # one record per item, in order
        assert [(o, d) for _, o, _, d in recs[-len(items) :]] == items
    finally:
        vol.close()
