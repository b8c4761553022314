"""Reading the journal: recovery's scan and payload reads.

The byte layouts are docs/FORMAT.md's; the writing side and the journal's
semantics are journal.py's.  :class:`JournalReader` is a mixin of
:class:`~appliance.engine.journal.Journal` (it uses its ``io``, ``folder``,
``uuid``, ``vtag`` and read-fd cache).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from . import record as R
from .errors import JournalCorrupt
from .fileio import FileIO

SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})\.seg$")


@dataclass(slots=True)
class Rec:
    """A journal record as the map engine and the readers see it."""

    seq: int
    time_ns: int
    kind: int
    flags: int
    offset: int
    length: int
    addr: int  # journal address of the record header
    payload_len: int
    name: str | None = None  # bookmark name
    refs: tuple | None = None  # REF records: (p_start, p_end, addr) triples

    @property
    def payload_addr(self) -> int:
        return self.addr + R.RECORD_HEADER_SIZE

    @property
    def end_addr(self) -> int:
        return self.addr + R.RECORD_HEADER_SIZE + self.payload_len


@dataclass
class ScanResult:
    records: list[Rec]
    last_seq: int
    last_time_ns: int
    end_addr: int  # just past the last valid record (0 if none)
    last_segno: int
    end_reason: str
    torn_segment: int | None = None


def segment_path(folder: str, segno: int) -> str:
    return os.path.join(folder, f"{segno:016x}.seg")


def list_segments(folder: str) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1), 16) for n in names if (m := SEGMENT_NAME.match(n)))


class _SegmentReader:
    """Sequential reader over one segment file, in large chunks."""

    CHUNK = 8 << 20

    def __init__(self, io: FileIO, fd: int, start: int):
        self.io, self.fd = io, fd
        self.buf = b""
        self.buf_off = start

    def get(self, off: int, n: int) -> bytes:
        rel = off - self.buf_off
        if rel < 0 or rel + n > len(self.buf):
            self.buf = self.io.pread_exact(self.fd, max(n, self.CHUNK), off)
            self.buf_off = off
            rel = 0
        return self.buf[rel : rel + n]


class JournalReader:
    """Mixin of Journal: recovery's :meth:`scan` and reads of payloads."""

    def scan(
        self,
        start_addr: int = 0,
        prev_seq: int = 0,
        prev_time_ns: int = 0,
        stop_addr: int | None = None,
    ) -> ScanResult:
        """Read valid records from ``start_addr`` (0: the beginning) to the end.

        ``prev_seq``/``prev_time_ns`` describe the record just before
        ``start_addr``.  With ``stop_addr`` only records before it are read,
        and no continuity check is made past it.
        """
        segnos = list_segments(self.folder)
        first_seg = start_addr >> 32 if start_addr else 0
        segnos = [s for s in segnos if s >= first_seg]
        if stop_addr is not None:
            segnos = [s for s in segnos if s <= stop_addr >> 32]
        records: list[Rec] = []
        last_seq, last_time = prev_seq, prev_time_ns
        end_addr = start_addr
        last_segno = first_seg
        reason = "end of journal"
        torn_segment = None
        for i, segno in enumerate(segnos):
            path = segment_path(self.folder, segno)
            fd = self.io.open(path, os.O_RDONLY)
            try:
                raw = self.io.pread_exact(fd, R.SEGMENT_HEADER_SIZE, 0)
                hdr = R.parse_segment_header(raw)
                if isinstance(hdr, str):
                    if stop_addr is None and i == len(segnos) - 1 and segno != first_seg:
                        # Created, but its header never made durable: no record in it
                        # was ever acknowledged.  The caller removes it.
                        reason = f"segment {segno}: {hdr}"
                        torn_segment = segno
                        break
                    raise JournalCorrupt(f"segment {segno}: {hdr}")
                if hdr.volume_uuid != self.uuid:
                    raise JournalCorrupt(
                        f"segment {segno} belongs to volume {hdr.volume_uuid}, not {self.uuid}"
                    )
                if hdr.segno != segno:
                    raise JournalCorrupt(f"segment file {segno} says it is segment {hdr.segno}")
                if segno != first_seg and last_seq < hdr.prev_last_seq:
                    raise JournalCorrupt(
                        f"segment {segno} follows seq {hdr.prev_last_seq} but the journal "
                        f"before it ends at seq {last_seq}: durable records are missing"
                    )
                pos = start_addr & 0xFFFFFFFF if segno == first_seg and start_addr else 0
                pos = max(pos, R.SEGMENT_HEADER_SIZE)
                limit = self.io.size(fd)
                if stop_addr is not None and segno == stop_addr >> 32:
                    limit = min(limit, stop_addr & 0xFFFFFFFF)
                reader = _SegmentReader(self.io, fd, pos)
                last_segno = segno
                if segno != first_seg or not start_addr:
                    end_addr = R.jaddr(segno, pos)
                seg_reason = "end of segment"
                while pos < limit:
                    why = None
                    if pos + R.RECORD_HEADER_SIZE > limit:
                        seg_reason = f"at {segno}:{pos}: record header truncated"
                        break
                    raw = reader.get(pos, R.RECORD_HEADER_SIZE)
                    h = R.parse_record_header(raw, segno=segno, vtag=self.vtag)
                    if isinstance(h, str):
                        why = h
                    elif h.kind == R.PAD:  # carries the seq before it: no order check
                        pass
                    elif h.seq <= last_seq:
                        why = f"sequence {h.seq} not after {last_seq}"
                    elif h.time_ns < last_time:
                        why = f"timestamp of seq {h.seq} goes backwards"
                    elif pos + R.RECORD_HEADER_SIZE + h.payload_len > limit:
                        why = f"payload of seq {h.seq} truncated"
                    if why is None:
                        payload = reader.get(pos + R.RECORD_HEADER_SIZE, h.payload_len)
                        if not R.record_crc_ok(raw, payload):
                            why = f"crc mismatch in record seq {h.seq}"
                    if why is not None:
                        seg_reason = f"at {segno}:{pos}: {why}"
                        break
                    if h.kind == R.PAD:
                        pos += R.RECORD_HEADER_SIZE + h.payload_len
                        continue
                    bookmark = h.kind in (R.BOOKMARK, R.UNBOOKMARK)
                    name = payload.decode("utf-8", "replace") if bookmark else None
                    refs = R.unpack_refs(payload) if h.kind == R.REF else None
                    fields = (h.seq, h.time_ns, h.kind, h.flags, h.offset, h.length)
                    records.append(Rec(*fields, R.jaddr(segno, pos), h.payload_len, name, refs))
                    last_seq, last_time = h.seq, h.time_ns
                    pos += R.RECORD_HEADER_SIZE + h.payload_len
                    end_addr = R.jaddr(segno, pos)
                reason = f"segment {segno}: {seg_reason}"
            finally:
                self.io.close(fd)
        return ScanResult(records, last_seq, last_time, end_addr, last_segno, reason, torn_segment)

    def read_payload(self, addr: int, length: int) -> bytes:
        """Bytes of the journal at a payload address (durable records only)."""
        segno, off = R.jsplit(addr)
        with self._rlock:
            fd = self._rfds.get(segno)
            if fd is None:
                if len(self._rfds) > 256:
                    # Another thread may be reading through an evicted fd right
                    # now: retire it (closed at close()), never close it here.
                    for old in list(self._rfds)[:128]:
                        self._retired_fds.append(self._rfds.pop(old))
                fd = self.io.open(segment_path(self.folder, segno), os.O_RDONLY)
                self._rfds[segno] = fd
        data = self.io.pread_exact(fd, length, off)
        if len(data) != length:
            raise JournalCorrupt(f"short read of {length} bytes at {segno}:{off}")
        return data

    def forget_segment(self, segno: int) -> None:
        """Retention reclaimed a segment: close its read fd so the space comes back."""
        with self._rlock:
            fd = self._rfds.pop(segno, None)
        if fd is not None:
            self.io.close(fd)

    def read_into(self, addr: int, view: memoryview) -> None:
        """Fill ``view`` from the journal at a payload address (no extra copy)."""
        segno, off = R.jsplit(addr)
        with self._rlock:
            fd = self._rfds.get(segno)
        if fd is None:
            self.read_payload(addr, 0)  # opens and caches the segment
            with self._rlock:
                fd = self._rfds[segno]
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], off + got)
            if n <= 0:
                raise JournalCorrupt(f"short read of {len(view)} bytes at {segno}:{off}")
            got += n

    def iter_records(self, first_addr: int, end_addr: int) -> Iterator[Rec]:
        """Records with headers in [first_addr, end_addr) (already validated once)."""
        res = self.scan(first_addr, 0, 0, stop_addr=end_addr)
        yield from res.records
