"""Third-party copy inside one LUN: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18).

What a disk array offers for VMware's XCOPY primitive and ``sg_xcopy``:
block-to-block copies whose source and destination are both this logical
unit.  Data moves through the backend (read, then write with the LUN's
write-cache rule), never through the initiator.

Parameter list (LID1, SPC-4 6.4.3): a 16-byte header -- byte 0 LIST
IDENTIFIER, byte 1 STR (bit 5) | LIST ID USAGE (bits 4-3) | PRIORITY
(2-0), bytes 2-3 CSCD DESCRIPTOR LIST LENGTH, 8-11 SEGMENT DESCRIPTOR LIST
LENGTH, 12-15 INLINE DATA LENGTH -- then the CSCD descriptors, then the
segment descriptors.

Supported descriptors: CSCD type E4h (identification descriptor, 32 bytes:
byte 1 LU ID TYPE (bits 7-6) | NUL (bit 5) | PERIPHERAL DEVICE TYPE (4-0),
bytes 4-7 a designator header as in VPD 83h, bytes 8-27 the designator,
bytes 29-31 DISK BLOCK LENGTH) naming this LUN by one of its VPD 83h
designators; segment type 02h (block device to block device, 28 bytes:
bytes 4-5 source CSCD index, 6-7 destination index, 10-11 BLOCK DEVICE
NUMBER OF BLOCKS, 12-19 source LBA, 20-27 destination LBA).

LU ID TYPE only says how to read an LU IDENTIFIER field, which an
identification descriptor does not have (it names the LU by its designator),
so it is ignored, whatever its value, as SPC-4 has it: libiscsi's
ExtendedCopy.ValidTgtDescr sends 10b (reserved) to an SPC-4 target and wants
GOOD, and LIO's own copy manager accepts it.

Every descriptor is validated before the first block moves, so a refused
copy changes nothing.  Sense data, in the order checked: PARAMETER LIST
LENGTH ERROR (lengths that do not add up, or above the advertised maximum
descriptor list length); TOO MANY TARGET / SEGMENT DESCRIPTORS;
UNSUPPORTED TARGET / SEGMENT DESCRIPTOR TYPE CODE; INVALID FIELD IN
PARAMETER LIST with a pointer (a peripheral type other than 0, another
block length, inline data, a bad descriptor length);
COPY ABORTED / UNREACHABLE COPY TARGET for a CSCD that names another LU or
sets NUL (no null device here); COPY ABORTED / COPY TARGET DEVICE NOT
REACHABLE for a segment whose index names no CSCD or whose range leaves the
LUN (the sense LIO's own copy manager gives).

Copy status (RECEIVE COPY RESULTS / COPY STATUS) is held for copies run
with LIST ID USAGE 00b, per logical unit: TCMU does not tell the handler
which I_T nexus sent a command, so one initiator could read another's
status for the same list identifier.  Only completed copies are ever held
(a copy runs to completion inside the command).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

from .buffer import DataOut
from .cdb import be
from .constants import (
    COPY_TARGET_DEVICE_NOT_REACHABLE,
    TOO_MANY_SEGMENT_DESCRIPTORS,
    TOO_MANY_TARGET_DESCRIPTORS,
    UNREACHABLE_COPY_TARGET,
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
    Op,
    SenseKey,
)
from .inquiry import lu_designators
from .result import GOOD, ScsiResult, data_in
from .sense import (
    CheckCondition,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

if TYPE_CHECKING:
    from .device import ScsiDevice

HEADER_LEN = 16
CSCD_LEN = 32
SEGMENT_B2B_LEN = 28
CSCD_IDENTIFICATION = 0xE4
SEGMENT_BLOCK_TO_BLOCK = 0x02
MAX_CSCD_DESCRIPTORS = 2
MAX_SEGMENT_DESCRIPTORS = 16
MAX_DESCRIPTOR_LIST_LENGTH = 1024
MAX_SEGMENT_BLOCKS = 0xFFFF  # the 2-byte BLOCK DEVICE NUMBER OF BLOCKS
HELD_LISTS = 16  # copy statuses kept (oldest dropped first)
IMPLEMENTED_DESCRIPTORS = bytes([SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION])
# LIST ID USAGE: 00b hold status, 10b do not hold, 11b do not hold and list id 0.
HOLD, NO_HOLD, NO_LIST_ID = 0b00, 0b10, 0b11


class Segment(NamedTuple):
    src_lba: int
    dst_lba: int
    blocks: int


class CopyStatus(NamedTuple):
    segments: int
    transferred_bytes: int


class CopyManager:
    """Per-LUN state of the copy manager: the held copy statuses."""

    def __init__(self) -> None:
        self._held: OrderedDict[int, CopyStatus] = OrderedDict()
        self._lock = threading.Lock()

    def hold(self, list_id: int, status: CopyStatus) -> None:
        with self._lock:
            self._held.pop(list_id, None)
            self._held[list_id] = status
            while len(self._held) > HELD_LISTS:
                self._held.popitem(last=False)

    def status(self, list_id: int) -> CopyStatus | None:
        with self._lock:
            return self._held.get(list_id)


def _copy_aborted(asc_ascq: tuple[int, int], pointer: int | None = None) -> CheckCondition:
    return CheckCondition.of(SenseKey.COPY_ABORTED, asc_ascq, field_pointer=pointer, in_cdb=False)


def _designators(dev: ScsiDevice) -> set[bytes]:
    """This LUN's VPD 83h designators as (code set, association|type, value)."""
    return {bytes([d[0] & 0x0F, d[1] & 0x3F]) + d[4:] for d in lu_designators(dev.identity)}


def _check_cscd(dev: ScsiDevice, params: bytes, at: int) -> bool:
    """Validate one CSCD descriptor; True if it names this LUN."""
    if params[at] != CSCD_IDENTIFICATION:
        raise CheckCondition.of(
            SenseKey.ILLEGAL_REQUEST,
            UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
            field_pointer=at,
            in_cdb=False,
        )
    # Byte 1 bits 7-6, LU ID TYPE: not checked (no LU IDENTIFIER field in E4h).
    if params[at + 1] & 0x1F:
        raise invalid_field_in_parameter_list(at + 1, 4)  # not a block device
    block_length = be(params, at + 29, 3)
    if block_length not in (0, dev.block_size):
        raise invalid_field_in_parameter_list(at + 29)
    length = params[at + 7]
    if length > 20:
        raise invalid_field_in_parameter_list(at + 7)
    if params[at + 1] & 0x20:  # NUL: a null device, which this copy manager has not
        return False
    header = bytes([params[at + 4] & 0x0F, params[at + 5] & 0x3F])
    wanted = header + params[at + 8 : at + 8 + length]
    return wanted in _designators(dev)


def _parse(dev: ScsiDevice, params: bytes) -> tuple[int, int, list[Segment]]:
    """Validate a parameter list; ``(list_id, list_id_usage, segments)``."""
    length = len(params)
    if length < HEADER_LEN:
        raise parameter_list_length_error()
    list_id, usage = params[0], (params[1] >> 3) & 0x3
    cscd_len, seg_len, inline_len = be(params, 2, 2), be(params, 8, 4), be(params, 12, 4)
    if usage == 0b01:
        raise invalid_field_in_parameter_list(1, 4)
    if usage == NO_LIST_ID and list_id:
        raise invalid_field_in_parameter_list(0)
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise parameter_list_length_error()
    if HEADER_LEN + cscd_len + seg_len + inline_len > length:
        raise parameter_list_length_error()
    if inline_len:
        raise invalid_field_in_parameter_list(12)  # MAXIMUM INLINE DATA LENGTH is 0
    if cscd_len % CSCD_LEN:
        raise parameter_list_length_error()
    if cscd_len // CSCD_LEN > MAX_CSCD_DESCRIPTORS:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, TOO_MANY_TARGET_DESCRIPTORS)
    seg_start = HEADER_LEN + cscd_len
    seg_at, seg_end = seg_start, seg_start + seg_len
    raw_segments: list[int] = []
    while seg_at < seg_end:
        if seg_end - seg_at < 4:
            raise parameter_list_length_error()
        size = be(params, seg_at + 2, 2) + 4
        if seg_at + size > seg_end:
            raise parameter_list_length_error()
        raw_segments.append(seg_at)
        seg_at += size
    if len(raw_segments) > MAX_SEGMENT_DESCRIPTORS:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, TOO_MANY_SEGMENT_DESCRIPTORS)
    reachable = [_check_cscd(dev, params, at) for at in range(HEADER_LEN, seg_start, CSCD_LEN)]
    capacity = dev.capacity()
    segments = []
    for at in raw_segments:
        if params[at] != SEGMENT_BLOCK_TO_BLOCK:
            raise CheckCondition.of(
                SenseKey.ILLEGAL_REQUEST,
                UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
                field_pointer=at,
                in_cdb=False,
            )
        if be(params, at + 2, 2) != SEGMENT_B2B_LEN - 4:
            raise invalid_field_in_parameter_list(at + 2)
        for index_at in (at + 4, at + 6):
            index = be(params, index_at, 2)
            if index >= len(reachable):
                raise _copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE, index_at)
            if not reachable[index]:
                raise _copy_aborted(UNREACHABLE_COPY_TARGET, HEADER_LEN + index * CSCD_LEN)
        blocks = be(params, at + 10, 2)
        src, dst = be(params, at + 12, 8), be(params, at + 20, 8)
        if src + blocks > capacity or dst + blocks > capacity:
            raise _copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE, at + 12)
        segments.append(Segment(src, dst, blocks))
    return list_id, usage, segments


def _copy(dev: ScsiDevice, seg: Segment) -> None:
    """Copy in chunks of at most the maximum transfer length; backwards when
    the destination overlaps the source from above, so no chunk is read
    after it was overwritten."""
    bs = dev.block_size
    chunk = max(1, dev.limits.max_transfer)
    starts = list(range(0, seg.blocks, chunk))
    if seg.src_lba < seg.dst_lba < seg.src_lba + seg.blocks:
        starts.reverse()
    fua = dev.fua(False)
    for start in starts:
        n = min(chunk, seg.blocks - start)
        data = dev.backend.read((seg.src_lba + start) * bs, n * bs)
        if len(data) != n * bs:
            raise RuntimeError(f"backend read returned {len(data)} of {n * bs} bytes")
        dev.backend.write((seg.dst_lba + start) * bs, data, fua=fua)


def extended_copy(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    length = be(cdb, 10, 4)
    if length == 0:
        return GOOD
    if len(data) < length:
        raise parameter_list_length_error()
    list_id, usage, segments = _parse(dev, data.get_bytes(0, length))
    moved = 0
    for seg in segments:
        _copy(dev, seg)
        moved += seg.blocks * dev.block_size
    if usage == HOLD:
        dev.copy_manager.hold(list_id, CopyStatus(len(segments), moved))
    return GOOD


def receive_copy_status(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """COPY STATUS (SPC-4 6.18.3), 12 bytes: AVAILABLE DATA 8, COPY MANAGER
    STATUS 00h (completed, HDD 0), SEGMENTS PROCESSED, TRANSFER COUNT UNITS
    00h (bytes), TRANSFER COUNT.  An unknown list identifier is INVALID
    FIELD IN CDB pointing at it."""
    status = dev.copy_manager.status(cdb[2])
    if status is None:
        raise invalid_field_in_cdb(2)
    payload = (8).to_bytes(4, "big") + bytes([0x00])
    payload += min(status.segments, 0xFFFF).to_bytes(2, "big") + bytes([0x00])
    payload += min(status.transferred_bytes, 0xFFFFFFFF).to_bytes(4, "big")
    return data_in(payload, be(cdb, 10, 4))


def operating_parameters_body() -> bytes:
    """Bytes 4 onwards of the OPERATING PARAMETERS reply (SPC-4 6.18.4)."""
    body = bytearray(40)  # bytes 4-43
    body[4:6] = MAX_CSCD_DESCRIPTORS.to_bytes(2, "big")
    body[6:8] = MAX_SEGMENT_DESCRIPTORS.to_bytes(2, "big")
    body[8:12] = MAX_DESCRIPTOR_LIST_LENGTH.to_bytes(4, "big")
    # reply bytes 16-19 MAXIMUM SEGMENT LENGTH (set by the caller), 20-23 MAXIMUM
    # INLINE DATA LENGTH 0, 24-27 HELD DATA LIMIT 0, 28-31 stream transfer size 0
    body[30:32] = (1).to_bytes(2, "big")  # TOTAL CONCURRENT COPIES
    body[32] = 1  # MAXIMUM CONCURRENT COPIES
    body[39] = len(IMPLEMENTED_DESCRIPTORS)
    return bytes(body) + IMPLEMENTED_DESCRIPTORS


def max_segment_bytes(dev: ScsiDevice) -> int:
    return MAX_SEGMENT_BLOCKS * dev.block_size


def receive_operating_parameters(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    body = bytearray(operating_parameters_body())
    body[12:16] = min(max_segment_bytes(dev), 0xFFFFFFFF).to_bytes(4, "big")
    payload = len(body).to_bytes(4, "big") + bytes(body)
    return data_in(payload, be(cdb, 10, 4))


def third_party_copy_vpd_body() -> bytes:
    """VPD 8Fh (SPC-4 7.8.17) descriptors: Supported Commands (0001h),
    Parameter Data (0008h), Supported Descriptors (0009h)."""

    def descriptor(kind: int, body: bytes) -> bytes:
        body += bytes(-(len(body) + 4) % 4)  # each descriptor is a multiple of 4 bytes
        return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body

    commands = bytes([Op.EXTENDED_COPY, 1, 0x00, Op.RECEIVE_COPY_RESULTS, 2, 0x00, 0x03])
    supported = descriptor(0x0001, bytes([len(commands)]) + commands)
    params = bytearray(28)
    params[4:6] = MAX_CSCD_DESCRIPTORS.to_bytes(2, "big")
    params[6:8] = MAX_SEGMENT_DESCRIPTORS.to_bytes(2, "big")
    params[8:12] = MAX_DESCRIPTOR_LIST_LENGTH.to_bytes(4, "big")
    parameter_data = descriptor(0x0008, bytes(params))
    codes = bytes([len(IMPLEMENTED_DESCRIPTORS)]) + IMPLEMENTED_DESCRIPTORS
    supported_descriptors = descriptor(0x0009, codes)
    return supported + parameter_data + supported_descriptors
