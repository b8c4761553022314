"""The write journal: an append-only, group-committed log of records in segments.

Semantics (the byte layouts are in docs/FORMAT.md):

* A **record** is a 64-byte header plus a payload: a host write, a zeroed
  extent, a bookmark, or a marker.  Every record gets the next sequence
  number and a timestamp that never goes backwards.
* ``append`` assigns the sequence number and the record's journal address at
  once, under one lock, so journal order *is* sequence order.  The record then
  waits in memory for the committer.
* The **writer** thread takes everything pending and writes it with one
  write per segment touched.  A caller that appends a burst (the
  handler's ring thread, one burst per ring poll) may instead write the burst
  itself when it ends (:meth:`Journal.batch`): no thread hand-off per burst,
  which under emulation costs more than the write.  In a *late* batch (the
  handler's compiled loop) the owner's run is laid out at once and packed
  and written when the batch ends, after the caller answered it.  One writer at a time
  (``_io_lock``), always in append order.  The **syncer** thread, beside it, runs one
  ``fdatasync`` for everything written so far whenever anybody waits for
  durability (or 5 s passed, or 65,536 records are unsynced), while the writer
  goes on filling the page cache: a pipelined group commit.  A record is
  **durable** once an ``fdatasync`` that started after its write returned;
  ``sync(seq)`` returns only then, and only after the map engine got it.
* **Fail-stop**: if a write or ``fdatasync`` of the journal fails, the journal
  is failed for good.  Nothing at or after the failed group is ever reported
  durable (a retried fdatasync may "succeed" after the kernel dropped the
  pages: PostgreSQL's lesson); every waiter and every later append gets
  :class:`JournalFailed`.  Reopening the volume replays up to the last durable
  group.
* **Blocks**: where the file system takes O_DIRECT, records are written with
  it, in whole blocks of the device (segfile.py): every write ends with a PAD
  record on a block boundary, so no write rewrites a block that holds records
  (docs/FORMAT.md, "Alignment"), and zeros are written ahead of the records so
  that their writes change no file-system metadata.  Otherwise through the
  page cache, back to back.
* **Segments** roll over when the next record would not fit.  The previous
  segment is fdatasynced before the first write to the new one, and the new
  file's name is made durable (fsync of the folder) before any of its records
  can be reported durable.  Every open starts a new segment, so the torn tail
  of an unclean stop is left behind, never overwritten and never read past;
  the zeros written ahead in the segments left behind are given back
  (:meth:`Journal.trim_zero_tails`).
* **Recovery** (``scan``) reads segments in order and stops a segment at its
  first invalid record (the reason is logged); a later segment whose
  ``prev_last_seq`` disagrees with what was found means durable records are
  missing, and the journal is refused (:class:`JournalCorrupt`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable

import structlog

from . import faults, segfile
from . import record as R
from .errors import InvalidArgument, JournalFailed
from .fileio import FileIO

try:  # compiled at install (setup.py); without it every record goes through _put
    from . import _writerun
except ImportError:  # pragma: no cover - a build without a C compiler
    _writerun = None
from .journalscan import (  # noqa: F401  (re-exported: the journal's names)
    SEGMENT_NAME,
    JournalReader,
    Rec,
    ScanResult,
    list_segments,
    segment_path,
)
from .journalthreads import MAX_UNSYNCED_RECORDS, JournalThreads

log = structlog.get_logger("cdp.journal")

# After an unclean stop the next sequence number skips this many numbers, so
# that numbers handed out for writes lost before they were durable are never
# reused.  The bounds below keep fewer than that in flight.
SEQ_GAP = 1 << 21
MAX_PENDING_RECORDS = 1 << 19
DEFAULT_MAX_PENDING_BYTES = 64 << 20
# write_run takes records up to this size; larger ones go through the pending
# path.  Measured in the test VM (fio, cdp only, one boot each): with 64 KiB
# records written at once, 64 KiB writes fell to 649 and 705 IOPS against 869
# and 865 before, with fewer context switches per write (1.1-1.5 against
# 1.7-1.8): on the pending path the writer thread often takes a large run's
# records while the ring thread finishes the run, and the answers go out
# meanwhile (allowed: a write without FUA is durable at the next flush).
# With the limit at 16 KiB: 4 KiB writes 1,738 IOPS, 64 KiB writes 934.
WRITE_RUN_MAX_PAYLOAD = 16 << 10
# ... and in a late batch (batch(late=True)), where packing and writing come
# after the answers, as on the pending path: any size up to the buffer.
# Measured (fio, cdp only, one boot each, session 15): 4 KiB writes 1,814,
# 1,705 and 1,751 IOPS against 1,542 before; 64 KiB writes 881, 917 and 769
# against 836.  Handing large late runs to the writer thread instead was
# slower (843 and 717; more CPU per write).
LATE_RUN_MAX_PAYLOAD = segfile.CHUNK


class _Batch:
    """``with journal.batch():`` (a class, not a generator: dropping one that
    was never left writes nothing).  ``end()`` is ``__exit__``."""

    __slots__ = ("_journal", "_late")

    def __init__(self, journal: Journal, late: bool) -> None:
        self._journal = journal
        self._late = late

    def __enter__(self) -> None:
        self._journal._hold(1, self._late)

    def __exit__(self, *exc) -> None:
        self.end()

    def end(self) -> None:
        journal = self._journal
        journal._hold(-1, self._late)
        journal.write_out()  # (settles the late run first)


class Journal(JournalThreads, JournalReader):
    """See the module docstring (the writer and syncer threads are in
    journalthreads.py).  Thread-safe; one instance per volume."""

    def __init__(
        self,
        io: FileIO,
        folder: str,
        volume_uuid: uuidlib.UUID,
        segment_size: int,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        direct: bool = True,
    ):
        self.io = io
        self.folder = folder
        self.uuid = volume_uuid
        self.vtag = R.volume_tag(volume_uuid)
        self.segment_size = segment_size
        self.max_pending_bytes = max_pending_bytes
        # ``_mutex`` is the Condition's lock, taken by itself on the hot paths
        # (a C call, where the Condition's ``with`` is two interpreted calls).
        self._mutex = threading.RLock()
        self._cond = threading.Condition(self._mutex)
        self._pending: list[tuple[Rec, bytes | tuple, object]] = []  # header or its fields
        self._pending_bytes = 0
        self._writer_idle = False  # the writer waits for records (append wakes it)
        self._holders = 0  # open batch() blocks: their owners write the records out
        # A late batch (batch(late=True)): its owner's thread, and the run
        # write_run laid out for it and left to pack and write: (thread, used,
        # start, recs, (writes, seq, time)), ``_io_lock`` held by that thread
        # until settle() writes it.
        self._late_owner: int | None = None
        self._late_run: tuple | None = None
        self._held_back = 0  # appenders waiting for the pending records to drain
        # One writer of segment files at a time, the writer thread or a batch
        # owner; taken before _cond, never while holding it.
        self._io_lock = threading.Lock()
        self._next_seq = 1
        self._last_seq = 0  # last assigned
        self._last_time = 0
        self._segno = 0  # segment that receives the next append
        self._pos = 0
        self._segment_prev: dict[int, int] = {}
        self._written_seq = 0
        self._durable_seq = 0
        self._sync_wanted = 0
        self._unsynced = 0
        self._failed: JournalFailed | None = None
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._old_fds: list[int] = []
        self._lost: list[Rec] = []
        self.durable_end = 0  # journal address just past the last durable record
        self._sync_lock = threading.Lock()  # see _segment_sync
        self._wfd: int | None = None
        self._wsegno = 0
        self._inflight: list[Rec] = []
        self._rfds: dict[int, int] = {}
        self._rlock = threading.Lock()
        self._retired_fds: list[int] = []
        self.on_durable: Callable[[list[Rec]], None] | None = None
        # O_DIRECT appends in whole blocks (segfile.py): the writer's aligned
        # buffer, the block size (0: through the page cache, no PAD records),
        # and how far the segment being written holds zeros or records.
        self._direct = direct
        self._dw: segfile.DirectWriter | None = None
        self._wdirect = False
        self._align = 0
        self._zeroed = 0

    # ------------------------------------------------------------------ writing

    def start(
        self, last_seq: int, last_time_ns: int, *, clean: bool, durable_floor: int | None = None
    ) -> None:
        """Begin appending after a scan: a new segment, the writer and syncer threads.

        ``durable_floor`` (default ``last_seq``) goes into the new segment's
        ``prev_last_seq``: the journal before it holds at least that much
        durably.  After a failed sync it is the last seq known durable, since
        records found past it may still vanish.
        """
        os.makedirs(self.folder, exist_ok=True)
        segnos = list_segments(self.folder)
        self._segno = (segnos[-1] + 1) if segnos else 1
        self._pos = R.SEGMENT_HEADER_SIZE
        self._segment_prev[self._segno] = last_seq if durable_floor is None else durable_floor
        # Everything before the new segment is durable (the open made it so):
        # a failure before the first group commit cuts back to here
        # (regression: journal_eio_before_first_durable_group).
        self.durable_end = R.jaddr(self._segno, R.SEGMENT_HEADER_SIZE)
        self._last_seq = last_seq
        self._next_seq = last_seq + 1 + (0 if clean or last_seq == 0 else SEQ_GAP)
        self._last_time = last_time_ns
        self._written_seq = self._durable_seq = self._sync_wanted = last_seq
        if self._direct:
            self._dw = segfile.DirectWriter(self.io)
        self._open_segment(self._segno)
        if self._dw is not None:
            if self._wdirect:
                self._align = segfile.probe_align(
                    self.io, self._dw, self._wfd, R.SEGMENT_HEADER_SIZE
                )
            if not self._align:  # the file system refuses O_DIRECT: the page cache
                self._dw.close()
                self._dw = None
        self._threads = [
            threading.Thread(target=self._writer, name="cdp-journal-writer", daemon=True),
            threading.Thread(target=self._syncer, name="cdp-journal-syncer", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def make_durable(self, from_addr: int) -> None:
        """fdatasync every segment from ``from_addr``'s on: records a scan found in
        the page cache after a kill are durable before anything relies on them
        (regression: unsynced_tail_after_kill)."""
        for segno in list_segments(self.folder):
            if segno >= from_addr >> 32:
                fd = self.io.open(segment_path(self.folder, segno), os.O_RDWR)
                try:
                    self.io.fdatasync(fd)
                finally:
                    self.io.close(fd)
        self.io.fsync_dir(self.folder)

    def cut_after(self, end_addr: int) -> None:
        """Drop everything past ``end_addr`` (records never known durable).

        After a failed sync the page cache may still show records the disk
        never got; they must not be replayed (regression: journal_eio_then_restart).
        """
        keep = end_addr >> 32
        for segno in list_segments(self.folder):
            path = segment_path(self.folder, segno)
            if segno > keep:
                os.unlink(path)
            elif segno == keep:
                fd = self.io.open(path, os.O_RDWR)
                try:
                    self.io.truncate(fd, max(end_addr & 0xFFFFFFFF, R.SEGMENT_HEADER_SIZE))
                    self.io.fdatasync(fd)
                finally:
                    self.io.close(fd)
        self.io.fsync_dir(self.folder)

    def trim_zero_tails(self, end_addr: int, start_addr: int = 0) -> int:
        """Give back the zeros written ahead of records that will never come.

        Every open starts a new segment (module docstring), so the segment a
        scan ended in (``end_addr``: just past its last record; 0: none found
        from ``start_addr`` on) and any segment after it take no more records,
        yet each holds up to ``segfile.ZERO_AHEAD`` of zeros: without this,
        every restart kept ~8 MiB per volume for as long as the segment
        lives.  Each of them is cut at the block after its last record (after
        its header if it holds none), but only where everything past that
        reads as zeros; anything else there (a torn record) is left as it is.
        Before ``start``; only space is at stake: a cut that a crash loses
        leaves the zeros, which read as the end of the records just the same.
        Returns the bytes given back."""
        block = R.SEGMENT_HEADER_SIZE  # a multiple of every O_DIRECT block
        end_seg = end_addr >> 32
        first = end_seg if end_addr else start_addr >> 32
        zeros = memoryview(bytes(segfile.CHUNK))
        freed = 0
        for segno in list_segments(self.folder):
            if segno < first:
                continue
            cut = block
            if end_addr and segno == end_seg:
                cut = max(block, -(-(end_addr & 0xFFFFFFFF) // block) * block)
            fd = self.io.open(segment_path(self.folder, segno), os.O_RDWR)
            try:
                size = self.io.size(fd)
                pos = cut
                while pos < size:
                    n = min(len(zeros), size - pos)
                    if self.io.pread_exact(fd, n, pos) != zeros[:n]:
                        break
                    pos += n
                else:
                    if size > cut:
                        self.io.truncate(fd, cut)
                        freed += size - cut
            finally:
                self.io.close(fd)
        return freed

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def failed(self) -> JournalFailed | None:
        return self._failed

    def append(self, kind: int, offset: int, length: int, payload=b"", *, flags: int = 0) -> Rec:
        """Queue one record; returns it with its sequence number and address.

        The payload must not change afterwards (pass ``bytes``).  Blocks while
        too much is pending (back-pressure); raises :class:`JournalFailed`
        after a failure.
        """
        plen = len(payload)
        if plen > R.MAX_PAYLOAD:
            raise InvalidArgument(f"record payload of {plen} bytes above {R.MAX_PAYLOAD}")
        if self._late_run is not None:
            self.settle()
        with self._cond:
            self._admit(R.RECORD_HEADER_SIZE + plen, 1)
            rec = self._put(kind, flags, offset, length, payload)
            if self._writer_idle and not self._holders:  # a batch owner writes it
                self._cond.notify_all()
            return rec

    def append_many(self, writes) -> list[Rec]:
        """A WRITE record per ``(offset, payload)``, in order, under one lock hold:
        consecutive seqs and addresses.  All or none: back-pressure waits for room
        for them all; :class:`JournalFailed` is raised before any is queued."""
        total = 0
        for _, payload in writes:
            if (plen := len(payload)) > R.MAX_PAYLOAD:
                raise InvalidArgument(f"record payload of {plen} bytes above {R.MAX_PAYLOAD}")
            total += R.RECORD_HEADER_SIZE + plen
        if self._late_run is not None:
            self.settle()
        with self._cond:
            self._admit(total, len(writes))
            recs = [self._put(R.WRITE, 0, off, len(payload), payload) for off, payload in writes]
            if self._writer_idle and not self._holders:
                self._cond.notify_all()
            return recs

    def write_run(self, writes) -> list[Rec] | None:
        """:meth:`append_many`'s records appended and written now, by the
        caller, in one step: seqs and addresses assigned, the records and
        their PAD laid out in the O_DIRECT buffer by one compiled call
        (``_writerun.pack_writes``), one write.  What the syncer then does
        with them is unchanged.  ``writes`` is a list of ``(offset, payload)``.

        Only when nothing can come between: O_DIRECT on, nobody writing
        (``_io_lock`` free), nothing pending, the records in the segment being
        written and in one buffer; and only for small records (at most
        :data:`WRITE_RUN_MAX_PAYLOAD`, which says why) unless the caller owns
        a late batch (:meth:`batch`), whose run is laid out now, and packed
        and written at the batch's end (:data:`LATE_RUN_MAX_PAYLOAD`).  Otherwise None and
        nothing was done: the caller appends them (``append_many``).  A
        failed write fails the journal, as the writer's would, and the records
        are returned as ``append_many`` returns them (``undelivered`` lists
        them).  The zeros ahead (segfile.py) cover the whole buffer's reach
        before it is filled, so the records always land in written blocks.
        """
        if self._late_run is not None:
            self.settle()  # this thread's earlier run first (journal order)
        dw = self._dw
        late = self._late_owner is not None and self._late_owner == threading.get_ident()
        most = LATE_RUN_MAX_PAYLOAD if late else WRITE_RUN_MAX_PAYLOAD
        if (
            _writerun is None
            or dw is None
            or not writes
            or len(writes[0][1]) > most  # large records: no need to look further
        ):
            return None
        if not self._io_lock.acquire(blocking=False):
            return None
        keep = False  # _io_lock stays held for settle()
        try:
            if self._pending or self._failed:  # (checked again below, under the mutex)
                return None
            # Zeros ahead first: they go out through the same buffer.
            upto = min(self._pos + segfile.CHUNK, self.segment_size)
            if self._segno == self._wsegno and upto > self._zeroed < self.segment_size:
                self._zero_ahead(upto)
            with self._mutex:
                start = self._pos
                if (
                    self._pending
                    or self._failed
                    or self._closing
                    or self._segno != self._wsegno
                    or start % self._align
                    or self._unsynced >= 2 * MAX_UNSYNCED_RECORDS
                ):
                    return None
                seq, now = self._next_seq, max(time.time_ns(), self._last_time)
                packed = _writerun.pack_writes(
                    dw.buffer, 0, start, writes, seq, now, self._segno, self.vtag,
                    self._align, self.segment_size, most, R.crc32c, Rec,
                    _writerun.PLAN if late else _writerun.PACK_ALL,
                )  # fmt: skip
                if packed is None:
                    return None
                used, self._pos, recs = packed
                self._next_seq = seq + len(recs)
                self._last_seq, self._last_time = seq + len(recs) - 1, now
                if late:  # laid out; packed (CRCs, copies) and written by settle()
                    self._late_run = (threading.get_ident(), used, start, recs, (writes, seq, now))
                    keep = True
                    return recs
            try:
                dw.write_prepared(self._wfd, used, start)
            except Exception as exc:
                with self._mutex:
                    self._lost.extend(recs)
                self._fail(exc)
                return recs
            self._written(recs)
            return recs
        finally:
            if not keep:
                self._io_lock.release()

    def _admit(self, size: int, n: int) -> None:
        """``_cond`` held: wait for room for ``n`` records of ``size`` bytes in all."""
        max_bytes, max_recs = self.max_pending_bytes - size, MAX_PENDING_RECORDS - n
        while self._pending and (self._pending_bytes > max_bytes or len(self._pending) > max_recs):
            if self._failed:
                break
            self._cond.notify_all()  # a batch owner waiting here needs the writer
            self._held_back += 1
            try:
                self._cond.wait()
            finally:
                self._held_back -= 1
        if self._failed:
            raise self._failed
        if self._closing:
            raise JournalFailed(self._durable_seq, "journal is closed")

    def _put(self, kind: int, flags: int, offset: int, length: int, payload) -> Rec:
        """``_cond`` held, room made: queue one record."""
        plen = len(payload)
        size = R.RECORD_HEADER_SIZE + plen
        if self._pos + size > self.segment_size:
            self._segment_prev[self._segno + 1] = self._last_seq
            self._segno, self._pos = self._segno + 1, R.SEGMENT_HEADER_SIZE
        seq = self._next_seq
        self._next_seq += 1
        now = max(time.time_ns(), self._last_time)
        addr = R.jaddr(self._segno, self._pos)
        fields = (kind, flags, seq, now, offset, length, plen, self._segno, self.vtag)
        # With a payload, the writer thread computes its crc and packs the
        # header: off the caller's path (the handler's ring thread).
        header = fields if plen else R.pack_record_header(*fields, 0)
        name = payload.decode("utf-8") if kind in (R.BOOKMARK, R.UNBOOKMARK) else None
        refs = R.unpack_refs(payload) if kind == R.REF else None
        rec = Rec(seq, now, kind, flags, offset, length, addr, plen, name, refs)
        self._pending.append((rec, header, payload))
        self._pending_bytes += size
        self._pos += size
        self._last_seq, self._last_time = seq, now
        return rec

    def batch(self, *, late: bool = False) -> _Batch:
        """Context manager: records appended inside (by any thread) are written
        on leaving, by the caller, with one ``pwritev`` (:meth:`write_out`),
        instead of waking the writer thread.  A ``sync`` inside still wakes it.

        ``late``: the caller's :meth:`write_run` inside appends its run (seqs,
        addresses, Recs: laid out in the buffer) but leaves packing it (CRCs,
        copies) and writing it to the batch's end, or to :meth:`settle`,
        whichever comes first, so that
        the caller can answer the writes in between (the handler's ring
        thread: a write without FUA is durable at the next flush, not at its
        answer).  Until then the caller holds the journal's writing
        (``_io_lock``): it must only publish its answers meanwhile.  Every
        journal call of that thread writes the run first, as do the volume's
        host writes.  One late batch at a time; another one inside or beside
        it is an ordinary batch.
        """
        return _Batch(self, late)

    def _hold(self, delta: int, late: bool = False) -> None:
        with self._mutex:
            self._holders += delta
            if late:
                me = threading.get_ident()
                if delta > 0 and self._late_owner is None:
                    self._late_owner = me
                elif delta < 0 and self._late_owner == me:
                    self._late_owner = None

    def settle(self) -> None:
        """Write the run this thread's late batch left to write, if any (see
        :meth:`batch`): pack its bytes and write them.  Never raises for a
        failed write: that fails the journal, as in :meth:`write_run`."""
        late = self._late_run
        if late is None or late[0] != threading.get_ident():
            return
        _, used, start, recs, (writes, seq, now) = late  # (_io_lock held: released here)
        try:
            faults.point("journal.late_write", last_seq=recs[-1].seq)  # answered, not written
            error = self._failed
            if error is None:
                try:
                    # The bytes write_run laid out: the same call, the same
                    # arguments, packing this time (a sized-up check: the
                    # layout cannot differ).
                    dw = self._dw
                    again = _writerun.pack_writes(
                        dw.buffer, 0, start, writes, seq, now, recs[0].addr >> 32, self.vtag,
                        self._align, self.segment_size, LATE_RUN_MAX_PAYLOAD, R.crc32c, None,
                        _writerun.PACK_BYTES,
                    )  # fmt: skip
                    if again is None or again[0] != used:
                        raise JournalFailed(self._durable_seq, "a late run packed differently")
                    dw.write_prepared(self._wfd, used, start)
                except Exception as exc:
                    error = exc
            if error is not None:  # never written: never durable
                with self._mutex:
                    self._late_run = None
                    self._lost.extend(recs)
                if error is not self._failed:
                    self._fail(error)
                return
            self._written(recs, late=True)
        finally:
            self._late_run = None
            self._io_lock.release()

    def write_out(self) -> None:
        """Write every pending record now, on the caller's thread.

        Never raises: a failed write fails the journal (fail-stop, as in the
        writer thread) and the next ``append`` or ``sync`` reports it.  Never
        waits either: the records are left to the writer thread when it is
        writing already, when they start a new segment (the rollover
        fdatasyncs the old one), or when the syncer is far behind.
        """
        if self._late_run is not None:
            self.settle()
        if not self._io_lock.acquire(blocking=False):
            with self._mutex:
                if self._pending:
                    self._cond.notify_all()  # the writer looks again when done
            return
        try:
            with self._mutex:
                if not self._pending or self._failed:
                    return
                if (
                    self._pending[-1][0].addr >> 32 != self._wsegno
                    or self._unsynced >= 2 * MAX_UNSYNCED_RECORDS
                ):
                    self._cond.notify_all()
                    return
                batch, pad = self._take_pending()
            self._write_out(batch, pad)
        finally:
            self._io_lock.release()

    def undelivered(self) -> list[Rec]:
        """After a failure: records appended but never reported durable."""
        with self._cond:
            late = list(self._late_run[3]) if self._late_run is not None else []
            return list(self._inflight) + late + self._lost + [rec for rec, _, _ in self._pending]

    def request_sync(self, seq: int) -> None:
        """Ask the committer to make ``seq`` durable soon, without waiting."""
        with self._cond:
            if seq > self._sync_wanted:
                self._sync_wanted = seq
                self._cond.notify_all()

    def sync(self, seq: int | None = None) -> int:
        """Wait until every record up to ``seq`` (default: all appended) is durable."""
        if self._late_run is not None:
            self.settle()
        with self._cond:
            target = self._last_seq if seq is None else seq
            if self._durable_seq >= target:
                return self._durable_seq
            self._sync_wanted = max(self._sync_wanted, target)
            self._cond.notify_all()
            while self._durable_seq < target and not self._failed:
                self._cond.wait()
            if self._durable_seq < target:
                raise self._failed
            return self._durable_seq

    def close(self) -> None:
        """Make everything durable and stop; safe to call twice."""
        if self._late_run is not None:
            self.settle()
        if self._threads:
            try:
                if not self._failed:
                    self.sync()
            finally:
                with self._cond:
                    self._closing = True
                    self._cond.notify_all()
                for t in self._threads:
                    t.join()
                self._threads = []
        # A batch owner (another thread) may still be in write_out: let it
        # finish, and make what it wrote durable, before the fds go away (a
        # closed fd number could be reused by the next open under its pwritev).
        with self._io_lock:
            if self._failed is None and self._wfd is not None:
                with self._cond:
                    late = self._written_seq > self._durable_seq
                if late:
                    try:
                        self._segment_sync(self._wfd)
                    except Exception:
                        pass  # _segment_sync failed the journal: nothing more is durable
                    else:
                        with self._cond:
                            self._durable_seq = self._written_seq
                            self._inflight = []
            for fd in self._old_fds + ([self._wfd] if self._wfd is not None else []):
                self.io.close(fd)
            self._old_fds, self._wfd = [], None
            if self._dw is not None:
                self._dw.close()
                self._dw = None
        with self._rlock:
            for fd in list(self._rfds.values()) + self._retired_fds:
                self.io.close(fd)
            self._rfds.clear()
            self._retired_fds = []

    @property
    def current_segment(self) -> int:
        return self._segno

    def _open_segment(self, segno: int) -> None:
        path = segment_path(self.folder, segno)
        pooled = segfile.pooled(self.folder)
        header = R.pack_segment_header(
            self.uuid, segno, self._segment_prev.pop(segno), time.time_ns()
        )
        flags = os.O_RDWR if pooled else os.O_RDWR | os.O_CREAT | os.O_EXCL
        fd = None
        if self._dw is not None:
            fd = segfile.open_direct(self.io, pooled or path, flags)
        self._wdirect = fd is not None
        if fd is None:
            fd = self.io.open(pooled or path, flags, 0o600)
        # The header is one 4096-byte block: an aligned write either way.
        if self._dw is not None:
            self._dw.write_block(fd, header, 0)
        else:
            self.io.pwrite_all(fd, header, 0)
        if pooled:
            # [0042]: a reclaimed segment's blocks are reused.  The new header is
            # written and made durable *before* the file takes its new name, so a
            # crash never leaves a segment whose header names another (regression:
            # pooled_segment_reused_then_power_loss).  Its old records carry their
            # old segment number, so a scan never takes them.
            self.io.fdatasync(fd)
            os.replace(pooled, path)
        else:
            # The header is durable before the segment is used, even if no record
            # ever follows (regression: segment_header_never_synced).
            self.io.fdatasync(fd)
        self.io.fsync_dir(self.folder)
        with self._cond:
            if self._wfd is not None:
                self._old_fds.append(self._wfd)  # the syncer may still use it
            self._wfd, self._wsegno = fd, segno
        # A pooled file holds written blocks already (old records: never read).
        size = self.io.size(fd) if pooled else R.SEGMENT_HEADER_SIZE
        self._zeroed = size - size % R.SEGMENT_HEADER_SIZE

    def _zero_ahead(self, end: int) -> None:
        """Before records are written up to ``end``: the segment's blocks from
        its end to ``ZERO_AHEAD`` past it, written with zeros (O_DIRECT) or
        allocated (through the page cache: no delayed allocation per write).
        Only a matter of speed (segfile.py): a failure (ENOSPC) is logged
        and the records go on without."""
        align = self._align or R.SEGMENT_HEADER_SIZE
        end = -(-end // align) * align
        upto = min(self.segment_size, max(end, self._zeroed + segfile.ZERO_AHEAD))
        try:
            if self._dw is not None:
                self._dw.write_zeros(self._wfd, self._zeroed, upto - self._zeroed)
            else:
                os.posix_fallocate(self._wfd, self._zeroed, upto - self._zeroed)
        except OSError as exc:
            log.warning("journal.zero_ahead_failed", segment=self._wsegno, error=str(exc))
            upto = self.segment_size  # not again in this segment
        self._zeroed = upto

    def _fail(self, exc: Exception) -> None:
        """Fail-stop: see the module docstring."""
        with self._cond:
            if self._failed is None:
                self._failed = JournalFailed(self._durable_seq, f"{type(exc).__name__}: {exc}")
                log.error("journal.failed", durable_seq=self._durable_seq, error=str(exc))
            self._lost.extend(rec for rec, _, _ in self._pending)
            self._pending = []
            self._cond.notify_all()
