"""MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 6.11-6.14, 7.5).

Mode pages served, in the order of "all pages" (3Fh):

* 08h caching (SBC-3 6.4.5), 20 bytes: only WCE (byte 2 bit 2) is set and
  only WCE is changeable.  MODE SELECT may clear it; from then on every
  write is handled as FUA (write-through), until it is set again.
* 0Ah control (SPC-4 7.5.8), 12 bytes: GLTSD, QUEUE ALGORITHM MODIFIER 1
  (unrestricted reordering), fixed-format sense (D_SENSE 0), nothing changeable.
* 1Ch informational exceptions control (SPC-4 7.5.12), 12 bytes: DEXCPT=1,
  nothing changeable.

Mode parameter header: the device-specific byte carries DPOFUA (bit 4: DPO
and FUA are honoured) and WP (bit 7) on a read-only LUN.  A block descriptor
(8 bytes, or 16 with LLBAA on MODE SENSE(10)) is returned unless DBD=1.

Page control: current, changeable and default are served; saved values do not
exist (SAVING PARAMETERS NOT SUPPORTED), and MODE SELECT with SP=1 is refused.
MODE SELECT validates the whole parameter list before changing anything:
a byte differing from the current value outside the changeable mask is
INVALID FIELD IN PARAMETER LIST with a pointer to it.
"""

from __future__ import annotations

from .buffer import DataOut
from .cdb import be
from .constants import SAVING_PARAMETERS_NOT_SUPPORTED, SenseKey
from .result import ScsiResult, data_in
from .sense import (
    CheckCondition,
    highest_bit,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = range(4)
ALL_PAGES = 0x3F
WCE = 0x04
DPOFUA = 0x10
WP = 0x80


def _caching(wce: bool) -> bytearray:
    page = bytearray(20)
    page[0:2] = b"\x08\x12"
    if wce:
        page[2] = WCE
    return page


def _control() -> bytearray:
    page = bytearray(12)
    page[0:2] = b"\x0a\x0a"
    page[2] = 0x02  # GLTSD: no log parameters are saved
    page[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1
    return page


def _informational_exceptions() -> bytearray:
    page = bytearray(12)
    page[0:2] = b"\x1c\x0a"
    page[2] = 0x08  # DEXCPT: informational exception reporting is off
    return page


PAGE_CODES = (0x08, 0x0A, 0x1C)


def page_bytes(code: int, pc: int, wce: bool) -> bytes:
    """One mode page for page control ``pc`` (current, changeable or default)."""
    if code == 0x08:
        page = _caching(wce if pc == PC_CURRENT else pc == PC_DEFAULT)
    elif code == 0x0A:
        page = _control()
    else:
        page = _informational_exceptions()
    if pc == PC_CHANGEABLE:
        page[2:] = bytes(len(page) - 2)
        if code == 0x08:
            page[2] = WCE
    return bytes(page)


def _block_descriptor(capacity: int, block_size: int, long_lba: bool) -> bytes:
    if long_lba:
        return capacity.to_bytes(8, "big") + bytes(4) + block_size.to_bytes(4, "big")
    return min(capacity, 0xFFFFFFFF).to_bytes(4, "big") + b"\0" + block_size.to_bytes(3, "big")


def mode_sense(
    cdb: bytes, *, wce: bool, capacity: int, block_size: int, read_only: bool
) -> ScsiResult:
    ten = cdb[0] == 0x5A
    dbd = cdb[1] & 0x08
    long_lba = ten and bool(cdb[1] & 0x10)
    pc, code, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    allocation_length = be(cdb, 7, 2) if ten else cdb[4]
    if pc == PC_SAVED:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, SAVING_PARAMETERS_NOT_SUPPORTED)
    if subpage not in (0x00, 0xFF):
        raise invalid_field_in_cdb(3)
    if code == ALL_PAGES:
        codes = PAGE_CODES
    elif code in PAGE_CODES:
        codes = (code,)
    else:
        raise invalid_field_in_cdb(2, 5)
    pages = b"".join(page_bytes(c, pc, wce) for c in codes)
    descriptor = b""
    if not dbd:
        descriptor = _block_descriptor(capacity, block_size, long_lba)
        if pc == PC_CHANGEABLE:
            descriptor = bytes(len(descriptor))
    device_specific = DPOFUA | (WP if read_only else 0)
    if ten:
        total = 8 + len(descriptor) + len(pages)
        header = (
            (total - 2).to_bytes(2, "big")
            + bytes([0, device_specific, 0x01 if long_lba and descriptor else 0, 0])
            + len(descriptor).to_bytes(2, "big")
        )
    else:
        total = 4 + len(descriptor) + len(pages)
        header = bytes([total - 1, 0, device_specific, len(descriptor)])
    return data_in(header + descriptor + pages, allocation_length)


def mode_select(cdb: bytes, data: DataOut, *, wce: bool, capacity: int, block_size: int) -> bool:
    """Validate a MODE SELECT and return the new WCE value (nothing else can
    change).  Raises CheckCondition without side effects on any error."""
    ten = cdb[0] == 0x55
    if cdb[1] & 0x01:
        raise invalid_field_in_cdb(1, 0)  # SP: pages cannot be saved
    length = be(cdb, 7, 2) if ten else cdb[4]
    if length == 0:
        return wce
    if not cdb[1] & 0x10:
        raise invalid_field_in_cdb(1, 4)  # PF=0: vendor-specific page format
    header_len = 8 if ten else 4
    if length < header_len or len(data) < length:
        raise parameter_list_length_error()
    params = data.get_bytes(0, length)
    medium_at, devspec_at = (2, 3) if ten else (1, 2)
    if params[medium_at]:
        raise invalid_field_in_parameter_list(medium_at, highest_bit(params[medium_at]))
    if params[devspec_at] & WP:
        raise invalid_field_in_parameter_list(devspec_at, 7)
    long_lba = ten and bool(params[4] & 0x01)
    descriptor_len = be(params, 6, 2) if ten else params[3]
    if descriptor_len not in (0, 16 if long_lba else 8):
        raise invalid_field_in_parameter_list(6 if ten else 3)
    if header_len + descriptor_len > length:
        raise parameter_list_length_error()
    if descriptor_len:
        _check_block_descriptor(params, header_len, long_lba, capacity, block_size)
    pos = header_len + descriptor_len
    new_wce = wce
    while pos < length:
        if length - pos < 2:
            raise parameter_list_length_error()
        code = params[pos] & 0x3F
        if params[pos] & 0x40:
            raise invalid_field_in_parameter_list(pos, 6)  # no subpages
        if code not in PAGE_CODES:
            raise invalid_field_in_parameter_list(pos, 5)
        current = page_bytes(code, PC_CURRENT, wce)
        if params[pos + 1] != current[1]:
            raise invalid_field_in_parameter_list(pos + 1)
        end = pos + len(current)
        if end > length:
            raise parameter_list_length_error()
        changeable = page_bytes(code, PC_CHANGEABLE, wce)
        for i in range(2, len(current)):
            diff = (params[pos + i] ^ current[i]) & ~changeable[i] & 0xFF
            if diff:
                raise invalid_field_in_parameter_list(pos + i, highest_bit(diff))
        if code == 0x08:
            new_wce = bool(params[pos + 2] & WCE)
        pos = end
    return new_wce


def _check_block_descriptor(
    params: bytes, at: int, long_lba: bool, capacity: int, block_size: int
) -> None:
    """A block descriptor may only restate the current geometry (or give 0
    blocks, meaning "unchanged"): formatting and resizing are not supported."""
    if long_lba:
        blocks, length_at, length_len = be(params, at, 8), at + 12, 4
        current_blocks = capacity
    else:
        blocks, length_at, length_len = be(params, at, 4), at + 5, 3
        current_blocks = min(capacity, 0xFFFFFFFF)
        if params[at + 4]:
            raise invalid_field_in_parameter_list(at + 4)
    if blocks not in (0, current_blocks):
        raise invalid_field_in_parameter_list(at)
    if be(params, length_at, length_len) != block_size:
        raise invalid_field_in_parameter_list(length_at)
