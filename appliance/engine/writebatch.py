"""Runs of plain host writes in one pass: ``ProtectedVolume.write_many``.

The handler's ring thread hands over the plain (non-FUA) writes of one ring
poll in one call.  The call takes the write path's steps (volume.py's module
docstring) once for the run instead of once per write:

W1. every item is validated, and its payload copied, before anything is
    touched: a refused call changes nothing;
W2. one DRL pass marks every item's regions (``DirtyRegionLog.mark_many``:
    one DRL sync at most), durable before the primary is touched;
W3. one order-lock acquisition holds every item's range at once
    (``OrderLock.write_ranges``: all or none, exclusive during a restore);
    the primary writes run in run order, then one journal append
    (``Journal.write_run``, or ``Journal.append_many`` when the journal
    cannot write at once) queues their records, in the same order, with
    consecutive sequence numbers (in a late batch, the handler's compiled
    loop, ``write_run`` lays them out and the batch's end writes them, after
    the caller answered: ``Journal.batch``);
W4. every item's sequence number is returned.

Towards everything else the run is that many ``write()`` calls in a row:
overlapping items reach the primary, the journal and every image in run
order; DRL pins, records, out-of-sync transitions, restore-before-write and
primary errors come out as one of the orders those calls could have taken.
The pin rules are ``_host_write``'s: whether the marks pin is decided before
the order lock (``not _oos``); if they did not pin and the journal came back
meanwhile (a journal restart holds the order lock exclusively), they pin
under the lock before any record is appended, since a durable record unpins
(regression: unpinned_write_across_journal_restart).  A journal failure at
the append (all or none) is one that happened before the run's first record:
no record, every pin of the run released, the volume out of sync.
"""

from __future__ import annotations

from . import faults
from . import record as R
from .errors import InvalidRange, JournalFailed, PrimaryIOError


class BatchWrites:
    """Mixin of ProtectedVolume: :meth:`write_many`."""

    def write_many(self, items) -> tuple[list[int | None], Exception | None]:
        """Write ``items``, ``(offset, data)`` pairs, in order, as that many
        ``write(offset, data)`` calls without FUA would, in one pass (the
        handler's ring thread: one call per run of plain writes in a ring poll).

        Per call instead of per write: one DRL mark pass (at most one DRL
        sync), one order-lock acquisition holding every item's range, one
        journal append for all the records.  Overlapping items reach the
        primary and the journal in list order.

        Returns ``(seqs, error)``.  ``error`` None: every item was written and
        ``seqs[i]`` is what ``write`` would have returned for item ``i``.
        Otherwise ``seqs`` covers the items before the one that failed, which
        are written and journaled as by ``write``; the failed item fails as
        ``write`` would have (``error`` is what it raised); the items after it
        were not attempted -- the caller decides (the handler runs them one by
        one, as it would have without this call).  A refused call (W1: a bad
        range, nothing to write) raises and changes nothing.
        """
        self._check_open()
        pieces = []  # (offset, bytes, item index), each at most R.MAX_PAYLOAD
        bs, size, most = self.block_size, self.size, R.MAX_PAYLOAD
        for i, (offset, data) in enumerate(items):
            length = len(data)
            # The common case in one expression (a step per write counts under
            # emulation); anything else takes the checks that name the error.
            # The copy (of a payload that is not bytes) comes after the checks.
            if (
                offset.__class__ is int
                and 0 < length <= most
                and 0 <= offset
                and offset + length <= size
                and not (offset % bs or length % bs)
            ):
                pieces.append((offset, data if data.__class__ is bytes else bytes(data), i))
                continue
            self._check_range(offset, length)
            if length == 0:
                raise InvalidRange("length 0: nothing to write")
            payload = data if data.__class__ is bytes else bytes(data)
            if length <= most:
                pieces.append((offset, payload, i))
            else:
                pieces.extend(
                    (off, payload[off - offset : off - offset + R.MAX_PAYLOAD], i)
                    for off in range(offset, offset + length, R.MAX_PAYLOAD)
                )
        if not pieces:
            return [], None
        return self._host_write_many(pieces)

    def _host_write_many(self, pieces) -> tuple[list[int | None], Exception | None]:
        """W2-W4 for a run of write pieces (the module docstring)."""
        journal = self._journal
        if journal._late_run is not None:
            journal.settle()  # a late batch's run, before the order lock
        if self._primary_failed is not None:
            return [], self._primary_failed
        drl = self._drl
        ranges = [(off, len(piece)) for off, piece, _ in pieces]
        pinned = not self._oos  # before the lock, as in _host_write
        npinned = 0  # pieces[:npinned] hold a pin taken by this call
        stop, error = len(pieces), None  # pieces[:stop] are attempted
        try:
            drl.mark_many(ranges, pin=pinned)
        except Exception as exc:  # write() fails here keeping its pins
            npinned = len(pieces) if pinned else 0
            return [], self._release_pins(pieces, 0, npinned, False, exc)
        if pinned:
            npinned = len(pieces)
        armed = faults.armed()
        for k, (off, _, i) in enumerate(pieces if armed else ()):
            if k == 0 or pieces[k - 1][2] != i:  # an item's first piece
                try:
                    faults.point("write.after_drl", offset=off)
                except Exception as exc:
                    stop, error = k, exc
                    break
        written = 0  # pieces on the primary
        recs = None
        if stop:
            # Writes disjoint from the run overlap it; during a restore the run
            # is exclusive (restore-before-write works on whole regions).
            with self._order_lock.write_ranges(
                [(off, off + n) for off, n in ranges[:stop]], self._restoring
            ):
                if not pinned and not self._oos:
                    # The journal came back since the marks above: the records
                    # appended below unpin when durable, so they pin now (see
                    # _host_write).  Under the lock ``_oos`` can only become true.
                    npinned = stop
                    try:
                        drl.mark_many(ranges[:stop])
                    except Exception as exc:  # as write() when this mark fails
                        stop, error = 0, exc
                if self._restore is None and not armed:
                    written = self._io.pwrite_pieces(self._pfd, pieces, stop)
                for off, piece, _ in pieces[written:stop]:
                    n = len(piece)
                    try:
                        if self._restore is not None:
                            self._restore.before_write(off, n)
                        try:
                            self._pwrite(off, piece)
                        except PrimaryIOError:
                            self._primary_write_failed(off, n)
                            raise
                        faults.point("write.after_primary", offset=off, length=n)
                    except Exception as exc:
                        error = exc  # this item keeps its pins, as in write()
                        break
                    written += 1
                if written and not self._oos:
                    run = [(off, piece) for off, piece, _ in pieces[:written]]
                    try:
                        recs = self._journal.write_run(run)  # one step, when it can
                        if recs is None:
                            recs = self._journal.append_many(run)
                    except JournalFailed as exc:
                        self._go_out_of_sync(exc)
        lost = written > 0 and recs is None  # out of sync: no record will unpin
        self._release_pins(pieces, written, npinned, lost, error)
        done = pieces[written][2] if error is not None else pieces[-1][2] + 1
        if recs is not None and len(recs) == done == len(pieces):  # one piece per item
            return [rec.seq for rec in recs], error
        seqs: list[int | None] = [None] * done
        if recs is not None:
            for (_, _, i), rec in zip(pieces, recs, strict=False):
                if i < done:
                    seqs[i] = rec.seq  # an item's last piece: what write() returns
        return seqs, error

    def _release_pins(self, pieces, failed: int, npinned: int, lost: bool, error):
        """Unpin what no journal record will ever unpin, of ``pieces[:npinned]``
        (pinned by this call).  ``lost``: the run went without records, every
        pin goes.  Otherwise the pieces before ``failed`` have records, and
        the item ``pieces[failed]`` is of, if ``error``, keeps its pins as in
        ``write()`` (its regions stay dirty); the items after it go.
        Returns ``error``."""
        if lost:
            first = 0
        elif error is None:
            first = npinned
        else:
            item = pieces[failed][2]
            first = failed
            while first < npinned and pieces[first][2] == item:
                first += 1
        for off, piece, _ in pieces[first:npinned]:
            self._drl.unpin(off, len(piece))
        return error
