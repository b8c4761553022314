"""CDB decoding: the command table, reserved-bit checks and field readers.

Every implemented command has one :class:`CommandSpec` whose ``usage`` is the
CDB USAGE DATA of SPC-4 6.35.3 (REPORT SUPPORTED OPERATION CODES): byte 0 is
the opcode, byte 1 of a service-action command holds the service action, and
every other bit is 1 where this device server interprets the CDB bit.  The
same bitmap drives validation: a bit outside it (a reserved bit, RDPROTECT /
WRPROTECT without protection information, ANCHOR without anchor support...)
ends the command with INVALID FIELD IN CDB and a field pointer to it.  So
what REPORT SUPPORTED OPERATION CODES says and what the dispatcher accepts
cannot drift apart.

The control byte (last CDB byte) is reported as unused; only its NACA bit is
checked (ACA is not supported, NormACA=0), the others are ignored.

CDBs longer than the command's length are accepted and the tail ignored: the
ring hands the handler a fixed-size CDB area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import (
    INVALID_COMMAND_OPERATION_CODE,
    MI_REPORT_SUPPORTED_OPCODES,
    RCR_COPY_STATUS,
    RCR_OPERATING_PARAMETERS,
    SAI_GET_LBA_STATUS,
    SAI_READ_CAPACITY_16,
    XCOPY_LID1,
    Op,
    SenseKey,
)
from .sense import (
    CheckCondition,
    highest_bit,
    invalid_field_in_cdb,
    lba_out_of_range,
)

NACA = 0x04
SERVICE_ACTION_OPCODES = frozenset(
    {Op.EXTENDED_COPY, Op.RECEIVE_COPY_RESULTS, Op.SERVICE_ACTION_IN_16, Op.MAINTENANCE_IN}
)


@dataclass(frozen=True)
class CommandSpec:
    opcode: int
    service_action: int | None
    name: str
    usage: bytes
    writes: bool = False  # changes the medium: refused on a read-only LUN
    check_mask: bytes = field(init=False, repr=False)
    checked: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self):
        mask = bytearray(self.usage)
        mask[0] = 0xFF
        if self.service_action is not None:
            mask[1] = 0x1F
        mask[-1] = 0xFF & ~NACA
        object.__setattr__(self, "check_mask", bytes(mask))
        object.__setattr__(self, "checked", tuple(i for i, m in enumerate(mask) if m != 0xFF))

    @property
    def cdb_len(self) -> int:
        return len(self.usage)

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.opcode, self.service_action)


def _spec(op: int, usage: str, name: str, *, sa: int | None = None, writes=False):
    return CommandSpec(op, sa, name, bytes.fromhex(usage), writes)


_LBA4 = "ff ff ff ff"
_LBA8 = f"{_LBA4} {_LBA4}"

COMMANDS: tuple[CommandSpec, ...] = (
    _spec(Op.TEST_UNIT_READY, "00 00 00 00 00 00", "TEST UNIT READY"),
    _spec(Op.REQUEST_SENSE, "03 01 00 00 ff 00", "REQUEST SENSE"),
    _spec(Op.READ_6, "08 1f ff ff ff 00", "READ(6)"),
    _spec(Op.WRITE_6, "0a 1f ff ff ff 00", "WRITE(6)", writes=True),
    _spec(Op.INQUIRY, "12 01 ff ff ff 00", "INQUIRY"),
    _spec(Op.MODE_SELECT_6, "15 11 00 00 ff 00", "MODE SELECT(6)"),
    _spec(Op.MODE_SENSE_6, "1a 08 ff ff ff 00", "MODE SENSE(6)"),
    _spec(Op.START_STOP_UNIT, "1b 01 00 0f f7 00", "START STOP UNIT"),
    _spec(Op.READ_CAPACITY_10, f"25 00 {_LBA4} 00 00 01 00", "READ CAPACITY(10)"),
    _spec(Op.READ_10, f"28 1e {_LBA4} 3f ff ff 00", "READ(10)"),
    _spec(Op.WRITE_10, f"2a 1a {_LBA4} 3f ff ff 00", "WRITE(10)", writes=True),
    _spec(
        Op.WRITE_AND_VERIFY_10, f"2e 16 {_LBA4} 3f ff ff 00", "WRITE AND VERIFY(10)", writes=True
    ),
    _spec(Op.VERIFY_10, f"2f 16 {_LBA4} 3f ff ff 00", "VERIFY(10)"),
    _spec(Op.PRE_FETCH_10, f"34 02 {_LBA4} 3f ff ff 00", "PRE-FETCH(10)"),
    _spec(Op.SYNCHRONIZE_CACHE_10, f"35 06 {_LBA4} 3f ff ff 00", "SYNCHRONIZE CACHE(10)"),
    _spec(Op.READ_DEFECT_DATA_10, "37 00 1f 00 00 00 00 ff ff 00", "READ DEFECT DATA(10)"),
    _spec(Op.WRITE_SAME_10, f"41 08 {_LBA4} 3f ff ff 00", "WRITE SAME(10)", writes=True),
    _spec(Op.UNMAP, "42 00 00 00 00 00 3f ff ff 00", "UNMAP", writes=True),
    _spec(Op.MODE_SELECT_10, "55 11 00 00 00 00 00 ff ff 00", "MODE SELECT(10)"),
    _spec(Op.MODE_SENSE_10, "5a 18 ff ff 00 00 00 ff ff 00", "MODE SENSE(10)"),
    _spec(
        Op.EXTENDED_COPY,
        f"83 00 00 00 00 00 00 00 00 00 {_LBA4} 00 00",
        "EXTENDED COPY(LID1)",
        sa=XCOPY_LID1,
        writes=True,
    ),
    _spec(
        Op.RECEIVE_COPY_RESULTS,
        f"84 00 ff 00 00 00 00 00 00 00 {_LBA4} 00 00",
        "RECEIVE COPY STATUS(LID1)",
        sa=RCR_COPY_STATUS,
    ),
    _spec(
        Op.RECEIVE_COPY_RESULTS,
        f"84 03 00 00 00 00 00 00 00 00 {_LBA4} 00 00",
        "RECEIVE COPY OPERATING PARAMETERS",
        sa=RCR_OPERATING_PARAMETERS,
    ),
    _spec(Op.READ_16, f"88 1e {_LBA8} {_LBA4} 3f 00", "READ(16)"),
    _spec(
        Op.COMPARE_AND_WRITE, f"89 1a {_LBA8} 00 00 00 ff 3f 00", "COMPARE AND WRITE", writes=True
    ),
    _spec(Op.WRITE_16, f"8a 1a {_LBA8} {_LBA4} 3f 00", "WRITE(16)", writes=True),
    _spec(Op.ORWRITE_16, f"8b 1a {_LBA8} {_LBA4} 3f 00", "ORWRITE(16)", writes=True),
    _spec(
        Op.WRITE_AND_VERIFY_16, f"8e 16 {_LBA8} {_LBA4} 3f 00", "WRITE AND VERIFY(16)", writes=True
    ),
    _spec(Op.VERIFY_16, f"8f 16 {_LBA8} {_LBA4} 3f 00", "VERIFY(16)"),
    _spec(Op.PRE_FETCH_16, f"90 02 {_LBA8} {_LBA4} 3f 00", "PRE-FETCH(16)"),
    _spec(Op.SYNCHRONIZE_CACHE_16, f"91 06 {_LBA8} {_LBA4} 3f 00", "SYNCHRONIZE CACHE(16)"),
    _spec(Op.WRITE_SAME_16, f"93 09 {_LBA8} {_LBA4} 3f 00", "WRITE SAME(16)", writes=True),
    _spec(
        Op.SERVICE_ACTION_IN_16,
        f"9e 10 {_LBA8} {_LBA4} 01 00",
        "READ CAPACITY(16)",
        sa=SAI_READ_CAPACITY_16,
    ),
    _spec(
        Op.SERVICE_ACTION_IN_16,
        f"9e 12 {_LBA8} {_LBA4} 00 00",
        "GET LBA STATUS",
        sa=SAI_GET_LBA_STATUS,
    ),
    _spec(
        Op.MAINTENANCE_IN,
        f"a3 0c 87 ff ff ff {_LBA4} 00 00",
        "REPORT SUPPORTED OPERATION CODES",
        sa=MI_REPORT_SUPPORTED_OPCODES,
    ),
    _spec(Op.READ_12, f"a8 1e {_LBA4} {_LBA4} 3f 00", "READ(12)"),
    _spec(Op.WRITE_12, f"aa 1a {_LBA4} {_LBA4} 3f 00", "WRITE(12)", writes=True),
    _spec(
        Op.WRITE_AND_VERIFY_12, f"ae 16 {_LBA4} {_LBA4} 3f 00", "WRITE AND VERIFY(12)", writes=True
    ),
    _spec(Op.VERIFY_12, f"af 16 {_LBA4} {_LBA4} 3f 00", "VERIFY(12)"),
    _spec(Op.READ_DEFECT_DATA_12, f"b7 1f {_LBA4} {_LBA4} 00 00", "READ DEFECT DATA(12)"),
)

BY_KEY: dict[tuple[int, int | None], CommandSpec] = {c.key: c for c in COMMANDS}


def lookup(cdb: bytes) -> CommandSpec:
    """The spec for ``cdb``, or CheckCondition: INVALID COMMAND OPERATION CODE
    for an unknown opcode, INVALID FIELD IN CDB for an unknown service action."""
    if not cdb:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
    opcode = cdb[0]
    if opcode in SERVICE_ACTION_OPCODES:
        if len(cdb) < 2:
            raise invalid_field_in_cdb()
        spec = BY_KEY.get((opcode, cdb[1] & 0x1F))
        if spec is None:
            raise invalid_field_in_cdb(1, 4)
        return spec
    spec = BY_KEY.get((opcode, None))
    if spec is None:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
    return spec


def check_cdb(spec: CommandSpec, cdb: bytes) -> None:
    """Refuse a CDB that is too short or sets a bit outside the usage bitmap."""
    if len(cdb) < spec.cdb_len:
        raise invalid_field_in_cdb()
    mask = spec.check_mask
    for i in spec.checked:
        bad = cdb[i] & ~mask[i]
        if bad:
            raise invalid_field_in_cdb(i, highest_bit(bad))


def be(cdb: bytes, start: int, length: int) -> int:
    """Big-endian unsigned field of ``length`` bytes at ``start``."""
    return int.from_bytes(cdb[start : start + length], "big")


# (LBA offset, LBA length, transfer-length offset, transfer-length length)
# of the commands laid out like READ(10/12/16).
_LBA_TL = {10: (2, 4, 7, 2), 12: (2, 4, 6, 4), 16: (2, 8, 10, 4)}


_GROUP_LEN = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}


def lba_and_length(cdb: bytes) -> tuple[int, int, int]:
    """``(lba, blocks, byte offset of the length field)`` of a block command
    laid out like READ(6/10/12/16); the CDB length follows from the opcode's
    group code.  READ/WRITE(6): a length of 0 means 256 blocks."""
    cdb_len = _GROUP_LEN[cdb[0] >> 5]
    if cdb_len == 6:
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        return lba, cdb[4] or 256, 4
    lba_off, lba_len, tl_off, tl_len = _LBA_TL[cdb_len]
    return be(cdb, lba_off, lba_len), be(cdb, tl_off, tl_len), tl_off


def check_range(lba: int, blocks: int, capacity: int) -> None:
    """LOGICAL BLOCK ADDRESS OUT OF RANGE unless ``[lba, lba+blocks)`` fits.
    With ``blocks == 0`` an LBA equal to the capacity is accepted (as LIO does)."""
    if lba + blocks > capacity:
        raise lba_out_of_range()
