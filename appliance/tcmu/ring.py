"""The TCMU command ring: parse what the kernel queued, publish completions.

A :class:`CommandRing` sits over the shared mapping of one TCMU device (an
``mmap`` of ``/dev/uioN`` in production, any writable buffer in tests).  It has
no SCSI knowledge: :meth:`CommandRing.poll` returns :class:`Command` and
:class:`TmrNotification` objects, :meth:`CommandRing.complete` stages a
response, and :meth:`CommandRing.flush` publishes every staged response with
one ``cmd_tail`` store and one kick (``os.write(fd, 4 bytes)``) per batch.

What the kernel really does with completions (``tcmu_handle_completions`` in
``target_core_user.c``), and therefore what this module does:

* The kernel walks its private ``cmdr_last_cleaned`` forward to ``cmd_tail``,
  entry by entry, **in ring order**, advancing by the ``len_op`` it finds in
  each slot.  PAD and TMR slots are just skipped.  For every other slot it
  looks up the ``cmd_id`` **written in the slot** and completes that command
  with the slot's ``rsp``; an id it does not know marks the ring BROKEN.
* So ``cmd_tail`` may only ever sit on an entry boundary, every command slot
  the tail passes must carry the id of a distinct, not yet completed command,
  and the tail can never pass the parse cursor.
* Out-of-order completion (``CAP_OOOC``) is therefore *slot stealing*, as
  libtcmu does it: a finished command's response is written into the next
  command slot at the tail, whichever command the kernel originally put there,
  with ``hdr.cmd_id`` overwritten.  The number of command slots between the
  tail and the parse cursor always equals the number of live commands, so every
  completion finds a slot and the tail never waits for a slow command.  Because
  the slot's ``req`` part is overwritten, the CDB and iovec list are copied out
  when the entry is parsed (the iovecs become memoryviews of the data area,
  which slot stealing never touches).
* Without ``CAP_OOOC`` (old kernels, or ``out_of_order=False``) each response
  is written into the command's own slot and published only when every earlier
  command has completed: the caller may still complete in any order, the ring
  holds the later ones back.

Malformed entries (the kernel never writes them, but a shared mapping is not
trusted): a CMD whose iovecs leave the data area, whose ``cdb_off`` is not
inside the entry after the iovec array, or whose CDB would not fit, is
completed by the ring itself with CHECK CONDITION / HARDWARE ERROR.  A header
whose length is 0 or runs past ``cmd_head`` or the ring end is resynchronised:
the entry is taken to end at ``cmd_head`` (or the ring end), its ``len_op`` is
rewritten to match before the tail passes it, and a CMD there is failed the
same way.  Slots that cannot hold a response or carry no usable id (unknown
opcode, id 0, an id already live) are rewritten as PAD.  Nothing is read
outside the entry being parsed: the data area is only ever sliced, never read.

The ring is not thread-safe: one thread or event loop owns it.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import structlog

from . import layout as L
from .command import (
    Command,
    CompletionError,
    Response,
    RingCorruptError,
    RingError,
    RingStats,
    TmrNotification,
)

log = structlog.get_logger("cdp.tcmu.ring")

__all__ = [
    "Command",
    "CommandRing",
    "CompletionError",
    "FastScan",
    "FastWrites",
    "Response",
    "RingCorruptError",
    "RingError",
    "RingStats",
    "TmrNotification",
]


# Slot kinds.
_SKIP = 0  # PAD or TMR: the kernel skips it by its own len_op
_VOID = 1  # unusable: rewritten as PAD before the tail passes it
_CMD = 2  # needs exactly one response
_RUN = 3  # entries a FastScan answered in place (cmd_id holds how many)


@dataclass(slots=True)
class _Slot:
    offset: int  # ring offset
    length: int
    kind: int
    op: int
    cmd_id: int
    kflags: int
    rewrite: bool  # len_op must be rewritten (length was resynchronised)
    ids: bytes = b""  # _RUN: its commands' ids (u16 each), live until published


class FastWrites(NamedTuple):
    """Writes a :data:`FastScan` took: ``(slot, offset, payload)`` each, already
    answered GOOD in their slots.  Run them before the next :meth:`CommandRing.flush`;
    :meth:`CommandRing.fail_served` answers one that failed."""

    generation: int
    writes: list[tuple[int, int, bytes]]


#: ``scan(mv, cmdr_off, cmdr_size, pos, head, data_off, read_len, live, reads)
#: -> (end, count, writes, ids)``: answers the run of entries from ``pos`` it
#: can (``appliance.tcmu._fastring.scan`` with the device's parameters bound),
#: returns the position after them (``pos``: none), how many commands they
#: were, the writes it took (or None) and their ids (u16 each, which it also
#: put into ``live``: a repeated id is voided until the run is published).
#: ``reads`` is False once the poll has handed out anything (a command, a run
#: of writes): those run after the poll, and a read answered during it must
#: not overtake them.
FastScan = Callable[..., tuple[int, int, "list[tuple[int, int, bytes]] | None", bytes]]
# The compiled serving loop (fastpath.server): called with the ring's mapping,
# geometry, tail, read_len capability, live table and mailbox offsets; returns
# (reason, tail, served, busy, kicks, errno, exception).
FastServe = Callable[..., tuple[int, int, int, int, int, int, "BaseException | None"]]


class _Pending(NamedTuple):
    cmd_id: int
    status: int
    sense: bytes
    read_len: int
    uflags: int


class CommandRing:
    """The handler side of one TCMU command ring.

    :param buf: the whole shared mapping (writable buffer).
    :param kick: called once per published batch; in production
        ``lambda: os.write(uio_fd, b"\\0\\0\\0\\0")``.
    :param out_of_order: use slot stealing; ``None`` follows ``CAP_OOOC``.
    :raises RingError: wrong mailbox version or impossible geometry.
    """

    def __init__(
        self,
        buf,
        kick: Callable[[], object] | None = None,
        *,
        out_of_order: bool | None = None,
    ) -> None:
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise RingError("the ring mapping must be writable")
        if len(mv) < L.MAILBOX_SIZE:
            raise RingError(f"mapping of {len(mv)} bytes cannot hold a mailbox")
        version, flags, cmdr_off, cmdr_size, head, tail = L.MAILBOX.unpack_from(mv, 0)
        if version != L.MAILBOX_VERSION:
            raise RingError(f"mailbox version {version}, expected {L.MAILBOX_VERSION}")
        if (
            cmdr_off < L.MAILBOX_SIZE
            or cmdr_off % L.ALIGN
            or cmdr_size < L.CMD_ENTRY_SIZE
            or cmdr_size % L.ALIGN
            or cmdr_off + cmdr_size > len(mv)
        ):
            raise RingError(
                f"impossible ring geometry: cmdr_off={cmdr_off} cmdr_size={cmdr_size} map={len(mv)}"
            )
        self._mv = mv
        self._words = mv[: L.MAILBOX_SIZE].cast("I")
        self.flags = flags
        self.cmdr_off = cmdr_off
        self.cmdr_size = cmdr_size
        self.data_off = cmdr_off + cmdr_size
        self.map_size = len(mv)
        self.out_of_order = bool(flags & L.CAP_OOOC) if out_of_order is None else out_of_order
        self._kick = kick
        self.stats = RingStats()
        self._generation = 0
        self._slots: deque[_Slot] = deque()
        self._live: dict[int, Command | None] = {}  # parsed, response not yet published
        self._staged: dict[int, _Pending] = {}  # responses waiting for a slot
        self._check_index(head, "cmd_head")
        self._check_index(tail, "cmd_tail")
        self._read = self._tail = tail

    # -- capabilities -------------------------------------------------------

    @property
    def supports_read_len(self) -> bool:
        return bool(self.flags & L.CAP_READ_LEN)

    @property
    def supports_tmr(self) -> bool:
        return bool(self.flags & L.CAP_TMR)

    @property
    def supports_keep_buf(self) -> bool:
        return bool(self.flags & L.CAP_KEEP_BUF)

    @property
    def generation(self) -> int:
        """Bumped by :meth:`reset`; commands from older generations are stale."""
        return self._generation

    def outstanding(self) -> list[Command]:
        """Commands handed out by :meth:`poll` and not yet completed."""
        return [c for i, c in self._live.items() if c is not None and i not in self._staged]

    # -- parsing ------------------------------------------------------------

    def poll(self, fast: FastScan | None = None) -> list[Command | TmrNotification | FastWrites]:
        """Parse every entry the kernel queued since the last call.

        Malformed commands are failed internally and not returned; their
        responses go out with the next :meth:`flush`.  With ``fast``, every
        run of entries it answers in place becomes one slot (published by the
        next flush like any other), and the writes it took come back as a
        :class:`FastWrites` in their place among the commands.
        """
        self._require_open()
        # Best effort: a reset_ring we were not told about shows as a moved tail.
        tail = self._words[L.CMD_TAIL_WORD]
        head = self._words[L.CMD_HEAD_WORD]
        self._check_index(head, "cmd_head")
        if tail != self._tail:
            log.warning("tcmu.ring_reset_detected", ours=self._tail, mailbox=tail)
            self.reset()
        out: list[Command | TmrNotification] = []
        pos = self._read
        while pos != head:
            if fast is not None:
                end, count, writes, ids = fast(
                    self._mv,
                    self.cmdr_off,
                    self.cmdr_size,
                    pos,
                    head,
                    self.data_off,
                    self.supports_read_len,
                    self._live,
                    not out,  # reads only before anything that runs after the poll
                )
                if end != pos:
                    self._slots.append(_Slot(pos, end - pos, _RUN, 0, count, 0, False, ids))
                    self.stats.commands += count
                    self.stats.fast += count
                    if writes:
                        out.append(FastWrites(self._generation, writes))
                    pos = self._read = end % self.cmdr_size
                    continue
            slot, item = self._parse(pos, head)
            self._slots.append(slot)
            pos = self._read = (pos + slot.length) % self.cmdr_size
            if item is not None:
                out.append(item)
        return out

    @property
    def kick(self) -> Callable[[], None] | None:
        """What :meth:`flush` calls to tell the kernel (None: nothing)."""
        return self._kick

    @property
    def idle(self) -> bool:
        """Every command parsed so far is answered and published: no slot
        waits and no command is live (with OOOC a worker's command can be live
        with its slot stolen: its answer then needs a later slot)."""
        return not self._slots and not self._live

    def serve_fast(self, serve: FastServe) -> tuple[int, int]:
        """Let the compiled loop ``serve`` (fastpath.server) run the idle ring:
        it waits for the kernel, answers plain READs and WRITEs in place and
        publishes them (``cmd_tail`` and the kick) itself, until something
        needs this class.  Returns its ``(reason, errno)``; what it answered
        is counted in :attr:`stats` (``fast``; ``fast_busy``: answered BUSY
        because its write callback raised).  Re-raises what its callbacks
        raised, after taking over the tail it got to.

        :raises RingError: the ring is not idle.
        """
        self._require_open()
        if not self.idle or self._read != self._tail:
            raise RingError("serve_fast on a ring with unpublished entries")
        reason, tail, served, busy, kicks, err, exc = serve(
            self._mv,
            self.cmdr_off,
            self.cmdr_size,
            self._tail,
            self.data_off,
            self.supports_read_len,
            self._live,
            L.CMD_HEAD_OFFSET,
            L.CMD_TAIL_OFFSET,
        )
        self._read = self._tail = tail
        stats = self.stats
        stats.commands += served + busy
        stats.fast += served + busy
        stats.fast_busy += busy
        stats.completions += served + busy
        stats.batches += kicks
        stats.kicks += kicks
        if exc is not None:
            raise exc
        return reason, err

    def _parse(self, pos: int, head: int) -> tuple[_Slot, Command | TmrNotification | None]:
        start = self.cmdr_off + pos
        room = (head if head > pos else self.cmdr_size) - pos  # >= 8: both are aligned
        len_op, cmd_id, kflags, _uflags = L.ENTRY_HDR.unpack_from(self._mv, start)
        op, length = L.entry_op(len_op), L.entry_len(len_op)
        resync = length == 0 or length > room
        if resync:
            log.error("tcmu.entry_bad_length", offset=pos, length=length, room=room)
            length = room
        slot = _Slot(pos, length, _SKIP, op, cmd_id, kflags, resync)
        if op == L.OP_PAD:
            return slot, None
        if op == L.OP_TMR:
            return slot, self._parse_tmr(start, length)
        if op != L.OP_CMD or cmd_id == 0 or cmd_id in self._live or length < L.CMD_ENTRY_SIZE:
            log.error("tcmu.entry_unusable", offset=pos, op=op, cmd_id=cmd_id)
            self.stats.malformed += 1
            slot.kind = _VOID
            return slot, None
        slot.kind = _CMD
        if resync:
            self._fail(cmd_id, "entry length runs past cmd_head or the ring end")
            return slot, None
        cmd = self._parse_cmd(start, length, cmd_id, kflags)
        if isinstance(cmd, str):
            self._fail(cmd_id, cmd)
            return slot, None
        self._live[cmd_id] = cmd
        self.stats.commands += 1
        return slot, cmd

    def _parse_cmd(self, start: int, length: int, cmd_id: int, kflags: int) -> Command | str:
        """A :class:`Command`, or the reason the entry is malformed."""
        mv = self._mv
        _, _, _, _, iov_cnt, bidi_cnt, _dif, cdb_off = L.CMD_REQUEST.unpack_from(mv, start)
        iov_end = L.IOV_OFFSET + L.IOVEC.size * (iov_cnt + bidi_cnt)
        if iov_end > length:
            return f"{iov_cnt}+{bidi_cnt} iovecs do not fit a {length}-byte entry"
        end = start + length
        if not start + iov_end <= cdb_off < end:
            return f"cdb_off {cdb_off} outside the entry [{start + iov_end}, {end})"
        avail = end - cdb_off
        opcode = mv[cdb_off]
        if opcode == L.VARLEN_CDB and avail < 8:
            return "variable-length CDB header does not fit the entry"
        cdb_len = L.cdb_length(opcode, mv[cdb_off + 7] if opcode == L.VARLEN_CDB else 0)
        if cdb_len > avail:
            return f"{cdb_len}-byte CDB does not fit the entry"
        views: list[memoryview] = []
        total = [0, 0]
        for i in range(iov_cnt + bidi_cnt):
            base, size = L.IOVEC.unpack_from(mv, start + L.IOV_OFFSET + L.IOVEC.size * i)
            if base < self.data_off or base + size > self.map_size:
                return f"iovec {i} [{base}, +{size}) outside the data area"
            views.append(mv[base : base + size])
            total[i >= iov_cnt] += size
        return Command(
            cmd_id=cmd_id,
            cdb=bytes(mv[cdb_off : cdb_off + cdb_len]),
            iovecs=views[:iov_cnt],
            data_length=total[0],
            bidi_iovecs=views[iov_cnt:],
            bidi_length=total[1],
            kflags=kflags,
            generation=self._generation,
        )

    def _parse_tmr(self, start: int, length: int) -> TmrNotification | None:
        if length < L.TMR_ENTRY.size:
            log.error("tcmu.tmr_too_short", length=length)
            self.stats.malformed += 1
            return None
        _, _, _, _, tmr_type, cmd_cnt = L.TMR_ENTRY.unpack_from(self._mv, start)
        fits = (length - L.TMR_IDS_OFFSET) // 2
        if cmd_cnt > fits:
            log.error("tcmu.tmr_ids_clipped", claimed=cmd_cnt, fit=fits)
            self.stats.malformed += 1
            cmd_cnt = fits
        ids = struct.unpack_from(f"<{cmd_cnt}H", self._mv, start + L.TMR_IDS_OFFSET)
        self.stats.tmrs += 1
        return TmrNotification(tmr_type, ids)

    def _fail(self, cmd_id: int, reason: str) -> None:
        log.error("tcmu.cmd_malformed", cmd_id=cmd_id, reason=reason)
        self.stats.malformed += 1
        self._live[cmd_id] = None
        self._staged[cmd_id] = _Pending(
            cmd_id, L.STATUS_CHECK_CONDITION, L.HARDWARE_ERROR_SENSE, 0, 0
        )

    # -- completion ---------------------------------------------------------

    def complete(
        self,
        cmd: Command,
        status: int = L.STATUS_GOOD,
        sense: bytes = b"",
        read_len: int | None = None,
        keep_buf: bool = False,
    ) -> bool:
        """Stage the response of ``cmd``; :meth:`flush` publishes it.

        ``sense`` (at most 96 bytes) matters with CHECK CONDITION.  ``read_len``
        is the number of Data-In bytes produced; it is only sent when the kernel
        offers ``CAP_READ_LEN`` (0 means "all" to the kernel).  ``keep_buf``
        keeps the data pages (and the views) until ``free_kept_buf``.

        :returns: False for a command from before a :meth:`reset` (dropped).
        :raises CompletionError: the command is not outstanding (completed twice).
        :raises ValueError: bad status, sense, read_len, or unsupported keep_buf.
        """
        self._require_open()
        if cmd.generation != self._generation:
            log.info("tcmu.stale_completion_dropped", cmd_id=cmd.cmd_id)
            return False
        if self._live.get(cmd.cmd_id) is not cmd or cmd.cmd_id in self._staged:
            raise CompletionError(f"command {cmd.cmd_id} is not outstanding")
        if not 0 <= status <= 0xFF:
            raise ValueError(f"status {status} is not a byte")
        if len(sense) > L.SENSE_BUFFER_SIZE:
            raise ValueError(f"sense of {len(sense)} bytes exceeds {L.SENSE_BUFFER_SIZE}")
        uflags, rlen = 0, 0
        if read_len is not None:
            if not 0 <= read_len <= 0xFFFFFFFF:
                raise ValueError(f"read_len {read_len} out of range")
            if self.supports_read_len:
                uflags |= L.UFLAG_READ_LEN
                rlen = read_len
        if keep_buf:
            if not self.supports_keep_buf:
                raise ValueError("the kernel does not offer KEEP_BUF")
            uflags |= L.UFLAG_KEEP_BUF
        else:
            cmd.release()
        self._staged[cmd.cmd_id] = _Pending(cmd.cmd_id, status, bytes(sense), rlen, uflags)
        return True

    def flush(self) -> int:
        """Publish staged responses: one ``cmd_tail`` store, one kick.

        The tail advances over PAD/TMR/void slots and over command slots for
        which a response is available (any staged response with OOOC, the
        slot's own otherwise), and stops at the first command slot still
        waiting, or at the parse cursor.

        :returns: the number of responses published.
        """
        self._require_open()
        published = 0
        moved = False
        slots = self._slots
        while slots:
            slot = slots[0]
            if slot.kind == _CMD:
                pending = self._take(slot)
                if pending is None:
                    if self._split_runs():
                        continue  # their answers are staged now: look again
                    break
                self._write_response(slot, pending)
                del self._live[pending.cmd_id]
                published += 1
            elif slot.kind == _RUN:
                published += slot.cmd_id
                deque(map(self._live.pop, memoryview(slot.ids).cast("H")), maxlen=0)
            elif slot.kind == _VOID:
                start = self.cmdr_off + slot.offset
                L.ENTRY_HDR.pack_into(self._mv, start, slot.length | L.OP_PAD, 0, 0, 0)
            elif slot.rewrite:
                self._store_len_op(slot, slot.op)
            slots.popleft()
            self._tail = (slot.offset + slot.length) % self.cmdr_size
            moved = True
        if moved:
            # One aligned 4-byte store, after every response byte (x86-64 TSO).
            self._words[L.CMD_TAIL_WORD] = self._tail
            self.stats.completions += published
            self.stats.batches += 1
            if self._kick is not None:
                self._kick()
                self.stats.kicks += 1
        return published

    def fail_served(self, generation: int, slot: int, status: int, sense: bytes) -> bool:
        """Answer a command of a :class:`FastWrites` with ``status`` and
        ``sense`` instead of GOOD (its write failed).  ``slot``: its mapping
        offset.  :returns: False for a run from before a :meth:`reset`."""
        self._require_open()
        if generation != self._generation:
            log.info("tcmu.stale_completion_dropped", slot=slot)
            return False
        if len(sense) > L.SENSE_BUFFER_SIZE:
            raise ValueError(f"sense of {len(sense)} bytes exceeds {L.SENSE_BUFFER_SIZE}")
        L.RESPONSE.pack_into(self._mv, slot + L.RESPONSE_OFFSET, status, 0, 0, 0, bytes(sense))
        self._mv[slot + 7] = 0  # uflags
        return True

    def _split_runs(self) -> bool:
        """With OOOC, a command slot waiting at the tail (a worker's command)
        must not hold back the answers a FastScan wrote in place behind it:
        each run becomes its entries' own slots, with their answers staged
        (read back from the slots), and slot stealing publishes them as any
        other.  :returns: whether there was a run to split."""
        if not self.out_of_order or not any(s.kind == _RUN for s in self._slots):
            return False
        mv, split = self._mv, []
        for slot in self._slots:
            pos, stop = slot.offset, slot.offset + slot.length
            if slot.kind != _RUN:
                split.append(slot)
                continue
            staged = 0
            while pos < stop:  # entries the scan walked: the kernel does not rewrite them
                start = self.cmdr_off + pos
                len_op, cmd_id, kflags, uflags = L.ENTRY_HDR.unpack_from(mv, start)
                op, length = L.entry_op(len_op), L.entry_len(len_op)
                if length == 0 or pos + length > stop or staged == slot.cmd_id:
                    # rewritten under us: the rest stays one run
                    left = slot.cmd_id - staged
                    split.append(
                        _Slot(pos, stop - pos, _RUN, 0, left, 0, False, slot.ids[2 * staged :])
                    )
                    break
                if op == L.OP_CMD:
                    staged += 1
                    status, _, _, rlen, sense = L.RESPONSE.unpack_from(
                        mv, start + L.RESPONSE_OFFSET
                    )
                    self._staged[cmd_id] = _Pending(cmd_id, status, sense, rlen, uflags)
                    split.append(_Slot(pos, length, _CMD, op, cmd_id, kflags, False))
                else:
                    split.append(_Slot(pos, length, _SKIP, op, 0, 0, False))
                pos += length
        self._slots.clear()
        self._slots.extend(split)
        return True

    def _take(self, slot: _Slot) -> _Pending | None:
        if not self.out_of_order:
            return self._staged.pop(slot.cmd_id, None)
        if not self._staged:
            return None
        return self._staged.pop(next(iter(self._staged)))

    def _write_response(self, slot: _Slot, p: _Pending) -> None:
        start = self.cmdr_off + slot.offset
        L.RESPONSE.pack_into(
            self._mv, start + L.RESPONSE_OFFSET, p.status, 0, 0, p.read_len, p.sense
        )
        L.ENTRY_HDR.pack_into(
            self._mv, start, slot.length | L.OP_CMD, p.cmd_id, slot.kflags, p.uflags
        )

    def _store_len_op(self, slot: _Slot, op: int) -> None:
        struct.pack_into("<I", self._mv, self.cmdr_off + slot.offset, slot.length | op)

    def process(
        self,
        on_command: Callable[[Command], Response | None],
        on_tmr: Callable[[TmrNotification], object] | None = None,
    ) -> int:
        """Poll, hand each command to ``on_command``, flush once.

        ``on_command`` returns a :class:`Response` (or a tuple of its fields)
        to complete the command now, or ``None`` if it will call
        :meth:`complete` later.  An exception, or an invalid response, fails
        the command with HARDWARE ERROR.  :returns: responses published.
        """
        for item in self.poll():
            if isinstance(item, TmrNotification):
                if on_tmr is not None:
                    on_tmr(item)
                continue
            try:
                resp = on_command(item)
            except Exception:
                log.exception("tcmu.handler_failed", cmd_id=item.cmd_id)
                resp = Response(L.STATUS_CHECK_CONDITION, L.HARDWARE_ERROR_SENSE)
            if resp is not None:
                try:
                    self.complete(item, *resp)
                except ValueError:
                    log.exception("tcmu.bad_response", cmd_id=item.cmd_id)
                    self.complete(item, L.STATUS_CHECK_CONDITION, L.HARDWARE_ERROR_SENSE)
        return self.flush()

    # -- lifecycle ----------------------------------------------------------

    def reset(self) -> None:
        """Forget every in-flight command; call after writing ``action/reset_ring``.

        The kernel has already completed them (BUSY or CHECK CONDITION) and may
        reuse their ids and pages, so their views are released and late
        :meth:`complete` calls for them return False.
        """
        self._require_open()
        self._drop_all()
        tail = self._words[L.CMD_TAIL_WORD]
        self._check_index(tail, "cmd_tail")
        self._read = self._tail = tail

    def _drop_all(self) -> None:
        self._generation += 1
        for cmd in self._live.values():
            if cmd is not None:
                cmd.release()
        self._live.clear()
        self._staged.clear()
        self._slots.clear()

    def close(self) -> None:
        """Release every view of the mapping so it can be unmapped."""
        if self._mv is None:
            return
        self._drop_all()
        self._words.release()
        self._mv.release()
        self._mv = None

    def __enter__(self) -> CommandRing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._mv is None:
            raise RingError("the ring is closed")

    def _check_index(self, value: int, name: str) -> None:
        if value >= self.cmdr_size or value % L.ALIGN:
            raise RingCorruptError(
                f"{name}={value} is not an entry boundary of a {self.cmdr_size}-byte ring"
            )
