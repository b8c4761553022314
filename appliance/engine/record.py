"""Journal record and segment header: the byte layouts of docs/FORMAT.md.

Layouts are defined once as :class:`struct.Struct` constants and their sizes
asserted.  :func:`parse_record_header` never raises on bad bytes: it returns a
reason string, because recovery must log exactly why the journal ends where
it does.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass

from crc32c import crc32c

FORMAT_VERSION = 2  # written; 2 added PAD records (docs/FORMAT.md)
READ_VERSIONS = (1, 2)

SEGMENT_MAGIC = b"CDPJSEG\0"
SEGMENT_HEADER_SIZE = 4096
SEGMENT_HEADER = struct.Struct("<8sHHI16sQQQI")  # crc follows at 60
assert SEGMENT_HEADER.size == 60

RECORD_MAGIC = b"CDPR"
RECORD_HEADER = struct.Struct("<4sBBHQQQQII8sI")  # crc follows at 60
assert RECORD_HEADER.size == 60
RECORD_HEADER_SIZE = 64
CRC = struct.Struct("<I")

MAX_PAYLOAD = 8 << 20

# Record kinds.
WRITE = 1
ZERO = 2
BOOKMARK = 3
REF = 4  # an extent that re-uses data already in the journal (restore)
UNBOOKMARK = 5  # a bookmark deleted by the admin
PAD = 6  # zeros up to a block boundary (O_DIRECT writes never rewrite a block)
BASELINE_DONE = 16
IN_SYNC = 17
OUT_OF_SYNC = 18
FIXUP = 19
RESTORE = 20
KIND_NAMES = {
    WRITE: "write",
    ZERO: "zero",
    BOOKMARK: "bookmark",
    REF: "ref",
    UNBOOKMARK: "unbookmark",
    PAD: "pad",
    BASELINE_DONE: "baseline-done",
    IN_SYNC: "in-sync",
    OUT_OF_SYNC: "out-of-sync",
    FIXUP: "fix-up",
    RESTORE: "restore",
}
DATA_KINDS = (WRITE, ZERO, REF)
REF_ENTRY = struct.Struct("<qqq")  # p_start, p_end, journal address (or -1: zeros)

# Record flags.
FLAG_BASELINE = 1  # part of the initial copy of the primary
FLAG_FIXUP = 2  # copied from the primary by a re-baseline or resync
FLAG_RESTORE = 4  # written to the primary by a restore

MAX_BOOKMARK_NAME = 255


def volume_tag(volume_uuid: uuidlib.UUID) -> bytes:
    return volume_uuid.bytes[:8]


def pack_segment_header(
    volume_uuid: uuidlib.UUID, segno: int, prev_last_seq: int, created_ns: int
) -> bytes:
    head = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        SEGMENT_HEADER_SIZE,
        0,
        volume_uuid.bytes,
        segno,
        prev_last_seq,
        created_ns,
        0,
    )
    head += CRC.pack(crc32c(head))
    return head + bytes(SEGMENT_HEADER_SIZE - len(head))


@dataclass(frozen=True)
class SegmentHeader:
    volume_uuid: uuidlib.UUID
    segno: int
    prev_last_seq: int
    created_ns: int


def parse_segment_header(raw: bytes) -> SegmentHeader | str:
    """The header, or the reason it is not one."""
    if len(raw) < 64:
        return f"segment header truncated ({len(raw)} bytes)"
    magic, version, hsize, _r, vol, segno, prev, created, _r2 = SEGMENT_HEADER.unpack_from(raw)
    if magic != SEGMENT_MAGIC:
        return f"bad segment magic {magic!r}"
    (crc,) = CRC.unpack_from(raw, 60)
    if crc != crc32c(raw[:60]):
        return "segment header crc mismatch"
    if version not in READ_VERSIONS:
        return f"segment format version {version} not supported"
    if hsize != SEGMENT_HEADER_SIZE:
        return f"segment header size {hsize} not supported"
    return SegmentHeader(uuidlib.UUID(bytes=vol), segno, prev, created)


_PAD_CRC: dict[int, int] = {}


def pack_pad(size: int, seq: int, time_ns: int, segno: int, vtag: bytes) -> bytes:
    """A PAD record of ``size`` bytes in all (header included, >= 64): it
    carries the seq and time of the record before it, which it does not
    change for a reader."""
    plen = size - RECORD_HEADER_SIZE
    pcrc = _PAD_CRC.get(plen)
    if pcrc is None:
        pcrc = _PAD_CRC[plen] = payload_crc(bytes(plen))
    head = pack_record_header(PAD, 0, seq, time_ns, 0, 0, plen, segno, vtag, pcrc)
    return head + bytes(plen)


def payload_crc(payload) -> int:
    return crc32c(payload) if len(payload) else 0


def pack_record_header(
    kind: int,
    flags: int,
    seq: int,
    time_ns: int,
    offset: int,
    length: int,
    payload_len: int,
    segno: int,
    vtag: bytes,
    pcrc: int,
) -> bytes:
    head = RECORD_HEADER.pack(
        RECORD_MAGIC,
        FORMAT_VERSION,
        kind,
        flags,
        seq,
        time_ns,
        offset,
        length,
        payload_len,
        segno & 0xFFFFFFFF,
        vtag,
        0,
    )
    return head + CRC.pack(crc32c(head, pcrc))


@dataclass(frozen=True, slots=True)
class RecordHeader:
    kind: int
    flags: int
    seq: int
    time_ns: int
    offset: int
    length: int
    payload_len: int
    crc: int


def parse_record_header(raw: bytes, *, segno: int, vtag: bytes) -> RecordHeader | str:
    """Decode and check everything but the CRC (which needs the payload)."""
    if len(raw) < RECORD_HEADER_SIZE:
        return f"record header truncated ({len(raw)} of {RECORD_HEADER_SIZE} bytes)"
    (magic, version, kind, flags, seq, time_ns, offset, length, plen, seg32, tag, _res) = (
        RECORD_HEADER.unpack_from(raw)
    )
    if magic != RECORD_MAGIC:
        if magic == b"\0\0\0\0":
            return "zeroed record header"
        return f"bad record magic {magic!r}"
    if version not in READ_VERSIONS:
        return f"record format version {version} not supported"
    if kind not in KIND_NAMES:
        return f"unknown record kind {kind}"
    if tag != vtag:
        return "record belongs to another volume"
    if seg32 != segno & 0xFFFFFFFF:
        return f"record was written for segment {seg32}, found in segment {segno}"
    if plen > MAX_PAYLOAD:
        return f"payload length {plen} above the limit"
    if kind == WRITE and plen != length:
        return f"write record payload length {plen} != length {length}"
    if version < 2 and kind == PAD:
        return "pad record in a version 1 journal"
    if kind in (ZERO, BASELINE_DONE, IN_SYNC, OUT_OF_SYNC, FIXUP, RESTORE) and plen:
        return f"{KIND_NAMES[kind]} record with a payload"
    if kind == REF and (plen == 0 or plen % REF_ENTRY.size):
        return f"ref record payload length {plen} is not a positive multiple of 24"
    if kind in (BOOKMARK, UNBOOKMARK) and not 0 < plen <= MAX_BOOKMARK_NAME:
        return f"bookmark name length {plen} out of range"
    (crc,) = CRC.unpack_from(raw, 60)
    return RecordHeader(kind, flags, seq, time_ns, offset, length, plen, crc)


def record_crc_ok(raw_header: bytes, payload) -> bool:
    (crc,) = CRC.unpack_from(raw_header, 60)
    return crc == crc32c(raw_header[:60], payload_crc(payload))


def jaddr(segno: int, offset: int) -> int:
    """Journal address of byte ``offset`` of segment ``segno``."""
    return (segno << 32) | offset


def jsplit(addr: int) -> tuple[int, int]:
    return addr >> 32, addr & 0xFFFFFFFF


def pack_refs(triples) -> bytes:
    return b"".join(REF_ENTRY.pack(a, b, c) for a, b, c in triples)


def unpack_refs(payload) -> tuple:
    return tuple(REF_ENTRY.iter_unpack(bytes(payload)))
