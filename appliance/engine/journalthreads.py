"""The journal's two threads, and the hand-over between them (a mixin of Journal).

The **writer** (``_writer``) takes every pending record, in append order,
and writes it with one write per segment touched (``_write_batch``: the
headers' CRCs computed there, zeros written ahead, a rollover syncs the old
segment first); a batch owner (``Journal.batch``) does the same itself with
``_write_out``.  Whoever wrote records hands them to the **syncer** with
``_written``; the syncer runs one ``fdatasync`` for everything written so far
when anybody waits for durability (or ``SYNC_INTERVAL`` passed, or
``MAX_UNSYNCED_RECORDS`` are unsynced), then hands the records on
(``on_durable``: the map engine) and only then reports them durable.  Both
sync through ``_segment_sync``, which keeps a failed sync failed for good.
The semantics are the journal's module docstring (journal.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import faults
from . import record as R

if TYPE_CHECKING:
    from .journalscan import Rec

MAX_UNSYNCED_RECORDS = 1 << 16
SYNC_INTERVAL = 5.0


class JournalThreads:
    """Mixin of :class:`~appliance.engine.journal.Journal`: its writer and
    syncer threads (``start`` starts them), and what they share."""

    def _segment_sync(self, fd: int) -> None:
        """fdatasync a segment the writer wrote; raise if it or the other thread's failed.

        The writer (at a rollover) and the syncer sync the same file.  The kernel
        reports a writeback error once per open file, so a call that follows a
        failed one "succeeds" although the pages are gone.  Serialized here,
        with the failure recorded before the lock is let go, no sync can report
        success after another one failed (regressions:
        journal_failure_during_rollover, rollover_failure_then_syncer_success).
        """
        with self._sync_lock:
            try:
                self.io.fdatasync(fd)
            except Exception as exc:
                self._fail(exc)
                raise
            if self._failed is not None:
                raise self._failed

    def _writer(self) -> None:
        """Thread: pending records -> segment files (one pwritev per segment touched)."""
        while True:
            with self._cond:
                while (
                    not self._failed
                    and (not self._pending or self._unsynced >= 2 * MAX_UNSYNCED_RECORDS)
                    and not (self._closing and not self._pending)
                ):
                    self._writer_idle = True
                    try:
                        self._cond.wait()
                    finally:
                        self._writer_idle = False
                if self._failed or not self._pending:
                    return
            with self._io_lock:
                with self._cond:
                    if self._failed:
                        return
                    if not self._pending:  # a batch owner wrote them meanwhile
                        continue
                    batch, pad = self._take_pending()
                if not self._write_out(batch, pad):
                    return

    def _take_pending(self) -> tuple[list, bytes | None]:
        """Everything pending, in append order, and the PAD record that ends
        it on a block boundary (O_DIRECT: the next write starts on one and
        never rewrites these records' blocks; None when none is needed or
        fits, the segment then ends here).  ``_io_lock`` and ``_cond`` held."""
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        if self._held_back:
            self._cond.notify_all()
        pad = None
        if self._align and batch and self._pos % self._align:
            gap = -self._pos % self._align
            if gap < R.RECORD_HEADER_SIZE:
                gap += self._align
            if self._pos + gap <= self.segment_size:
                pad = R.pack_pad(gap, self._last_seq, self._last_time, self._segno, self.vtag)
                self._pos += gap
        return batch, pad

    def _write_out(self, batch: list, pad: bytes | None) -> bool:
        """Write ``batch`` and hand it to the syncer (``_io_lock`` held).
        False if the journal failed."""
        try:
            self._write_batch(batch, pad)
        except Exception as exc:
            with self._cond:
                self._lost.extend(rec for rec, _, _ in batch)
            self._fail(exc)
            return False
        self._written([rec for rec, _, _ in batch])
        return True

    def _written(self, recs: list[Rec], *, late: bool = False) -> None:
        """``recs`` are written (``_io_lock`` held): over to the syncer.
        ``late``: they are this thread's late run (settle)."""
        faults.point("journal.after_write", last_seq=recs[-1].seq)
        with self._mutex:
            if late:
                self._late_run = None  # (undelivered() finds them in _inflight now)
            syncer_idle = self._written_seq <= self._durable_seq  # waits with no timer
            self._inflight.extend(recs)
            self._written_seq = recs[-1].seq
            self._unsynced += len(recs)
            # Wake the syncer only when this changes what it waits for (a wake-up
            # per batch, and the GIL hand-offs it brings, is measurable).
            if (
                syncer_idle
                or self._sync_wanted > self._durable_seq
                or self._unsynced >= MAX_UNSYNCED_RECORDS
                or self._closing
            ):
                self._cond.notify_all()

    def _sync_due(self, last_sync: float) -> float | None:
        """0 when the syncer should sync now, else how long to wait (lock held)."""
        if self._written_seq <= self._durable_seq:
            return None
        if (
            self._sync_wanted > self._durable_seq
            or self._closing
            or self._unsynced >= MAX_UNSYNCED_RECORDS
        ):
            return 0.0
        return max(0.0, SYNC_INTERVAL - (time.monotonic() - last_sync))

    def _syncer(self) -> None:
        """Thread: fdatasync what the writer wrote; report it durable; hand it on.

        Runs beside the writer, so new records go to the page cache while the
        previous group is being synced (a pipelined group commit).
        """
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while True:
                    if self._failed:
                        return
                    wait = self._sync_due(last_sync)
                    if wait == 0.0:
                        break
                    if wait is None and self._closing and not self._pending:
                        return
                    self._cond.wait(wait)
                target, fd = self._written_seq, self._wfd
                recs, self._inflight = self._inflight, []
                old, self._old_fds = self._old_fds, []
            try:
                self._segment_sync(fd)
            except Exception:  # _segment_sync recorded the failure
                with self._cond:  # never durable: undelivered() must list them
                    self._lost[:0] = recs
                return
            last_sync = time.monotonic()
            faults.point("journal.after_sync", seq=target)
            # Hand on before reporting durable: once sync() returns, the map
            # engine (and so every image) already has the records.
            if self.on_durable and recs:
                self.on_durable(recs)
            with self._cond:
                if recs:
                    self.durable_end = recs[-1].end_addr
                self._durable_seq = target
                self._unsynced -= len(recs)
                self._cond.notify_all()
            for ofd in old:
                self.io.close(ofd)

    def _write_batch(self, batch: list[tuple[Rec, bytes, object]], pad: bytes | None) -> None:
        i = 0
        while i < len(batch):
            segno = batch[i][0].addr >> 32
            if segno != self._wsegno:
                self._segment_sync(self._wfd)  # the old segment is complete and durable
                self._open_segment(segno)
            bufs = []
            start = batch[i][0].addr & 0xFFFFFFFF
            while i < len(batch) and batch[i][0].addr >> 32 == segno:
                rec, header, payload = batch[i]
                if header.__class__ is tuple:  # appended without its crc (append)
                    header = R.pack_record_header(*header, R.payload_crc(payload))
                bufs.append(header)
                if rec.payload_len:
                    bufs.append(payload)
                i += 1
            if i == len(batch) and pad is not None:
                bufs.append(pad)
            end = start + sum(map(len, bufs))
            if end > self._zeroed:
                self._zero_ahead(end)
            if self._dw is not None:
                self._dw.write(self._wfd, bufs, start)
            else:
                self.io.pwritev_all(self._wfd, bufs, start)
