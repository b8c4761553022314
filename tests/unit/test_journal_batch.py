"""Journal.batch(): the caller writes a burst of records itself (the handler's
ring thread, once per ring poll), never waits for the writer thread, and
leaves segment rollovers and back-pressure to it.  Order and durability are
the same as through the writer thread."""

from __future__ import annotations

import os
import threading

from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal

from .helpers import make_volume, pattern, reopen


class ThreadLog(OsFileIO):
    """OsFileIO that notes which thread wrote and which synced journal segments."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.syncs: list[str] = []

    def pwritev_all(self, fd, buffers, offset):
        self.writes.append(threading.current_thread().name)
        return super().pwritev_all(fd, buffers, offset)

    def fdatasync(self, fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".seg"):  # journal segments only
            self.syncs.append(threading.current_thread().name)
        return super().fdatasync(fd)


def journal_of(vol) -> Journal:
    return vol._journal


def scan_seqs(tmp_path, vol) -> list[int]:
    j = journal_of(vol)
    fresh = Journal(OsFileIO(), j.folder, j.uuid, j.segment_size)
    return [r.seq for r in fresh.scan().records]


def test_batch_records_are_written_by_the_caller_in_one_pwritev(tmp_path):
    io = ThreadLog()
    vol = make_volume(tmp_path, io=io)
    try:
        vol.flush()
        io.writes.clear()
        with vol.batch():
            seqs = [vol.write(i * 4096, pattern(i, 4096)) for i in range(8)]
            assert io.writes == []  # nothing written, nobody woken, while inside
        assert io.writes == ["MainThread"]  # one pwritev, on the caller's thread
        assert journal_of(vol)._written_seq == seqs[-1]
        # In the page cache now, in order (a fresh scan reads them back).
        assert scan_seqs(tmp_path, vol)[-8:] == seqs
        vol.flush()
    finally:
        vol.close()
    vol = reopen(tmp_path)
    try:
        for i in range(8):
            assert vol.read(i * 4096, 4096) == pattern(i, 4096)
        assert vol.image(seqs[-1]).read(0, 8 * 4096) == b"".join(pattern(i, 4096) for i in range(8))
    finally:
        vol.close()


def test_fua_write_inside_a_batch_is_durable_on_return(tmp_path):
    vol = make_volume(tmp_path)
    try:
        with vol.batch():
            seq = vol.write(0, pattern(1, 4096), fua=True)
            assert journal_of(vol).durable_seq >= seq  # the writer thread did it
    finally:
        vol.close()


def test_back_pressure_inside_a_batch_does_not_deadlock(tmp_path):
    vol = make_volume(tmp_path)
    journal_of(vol).max_pending_bytes = 64 << 10  # 16 records of 4 KiB
    done = threading.Event()

    def burst():
        with vol.batch():
            for i in range(200):
                vol.write((i % 512) * 4096, pattern(i, 4096))
        done.set()

    t = threading.Thread(target=burst)
    t.start()
    t.join(60)
    try:
        assert done.is_set(), "a batch owner blocked by back-pressure never got the writer"
        vol.flush()
        assert vol.read(199 * 4096, 4096) == pattern(199, 4096)
    finally:
        vol.close()


def test_a_rollover_is_left_to_the_writer_thread(tmp_path):
    io = ThreadLog()
    vol = make_volume(tmp_path, io=io, segment_size=1 << 20)
    try:
        vol.flush()
        io.writes.clear()
        io.syncs.clear()
        seqs = []
        for burst in range(6):  # 6 x 64 x 4 KiB = 1.5 MiB: crosses a segment
            with vol.batch():
                for i in range(64):
                    n = burst * 64 + i
                    seqs.append(vol.write((n % 1024) * 4096, pattern(n, 4096)))
        vol.flush()  # (from the syncer thread: the rollover is done once it returns)
        # The rollover (fdatasync of the full segment, then the new one's
        # header) ran on the writer thread: the ring thread never waits for it.
        assert "MainThread" not in io.syncs and "cdp-journal-writer" in io.syncs
        assert "cdp-journal-writer" in io.writes and "MainThread" in io.writes
        assert scan_seqs(tmp_path, vol)[-len(seqs) :] == seqs
    finally:
        vol.close()


def test_write_out_never_waits_for_a_busy_writer(tmp_path):
    vol = make_volume(tmp_path)
    j = journal_of(vol)
    try:
        with j._io_lock:  # as if the writer thread were in a long pwritev
            with vol.batch():
                seq = vol.write(0, pattern(7, 4096))
            assert j._written_seq < seq  # left pending, the caller went on
        assert j.sync(seq) >= seq  # the writer thread took it afterwards
    finally:
        vol.close()


class GatedIO(OsFileIO):
    """pwritev_all on one thread waits for ``release`` (a ring thread caught
    in the middle of a batch's write-out)."""

    def __init__(self) -> None:
        self.thread = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def pwritev_all(self, fd, buffers, offset):
        if threading.current_thread().name == self.thread:
            self.entered.set()
            self.release.wait(30)
        return super().pwritev_all(fd, buffers, offset)


def test_close_waits_for_a_batch_write_out_in_flight_and_makes_it_durable(tmp_path):
    """A write racing close(): appended after close's final sync, taken by its
    batch owner, its pwritev not done when the writer and syncer have stopped.
    close() must neither close the fd under it nor leave it unsynced."""
    io = GatedIO()
    vol = make_volume(tmp_path, io=io)
    j = journal_of(vol)
    vol.flush()
    seqs = []

    def ring_thread():
        with vol.batch():
            seqs.append(vol.write(8192, pattern(5, 4096)))

    io.thread = "ring"
    ring = threading.Thread(target=ring_thread, name="ring")
    real_sync = j.sync

    def sync_then_race(seq=None):
        out = real_sync(seq)
        ring.start()
        assert io.entered.wait(10)  # taken, its pwritev not done
        return out

    j.sync = sync_then_race
    closer = threading.Thread(target=j.close)
    closer.start()
    closer.join(1.0)
    assert closer.is_alive()  # close waits for the write-out, not closing the fd under it
    io.release.set()
    ring.join(10)
    closer.join(10)
    assert not closer.is_alive()
    assert j.failed is None
    assert j.durable_seq >= seqs[0]  # written after the syncer stopped: synced by close
    assert scan_seqs(tmp_path, vol)[-1] == seqs[0]
    vol.close()
    vol = reopen(tmp_path)
    try:
        assert vol.read(8192, 4096) == pattern(5, 4096)
    finally:
        vol.close()
