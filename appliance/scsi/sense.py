"""Fixed-format sense data (SPC-4 4.5.3) and the exception that carries it.

Handlers signal a refused or failed command by raising :class:`CheckCondition`;
the dispatcher turns it into CHECK CONDITION plus these bytes.  Layout of the
18 bytes built here:

====  ==========================================================
byte  field
====  ==========================================================
0     VALID (bit 7, INFORMATION is meaningful) | response code 70h
2     sense key (bits 3-0)
3-6   INFORMATION (big-endian; LBA or miscompare offset)
7     additional sense length (10)
12    ASC
13    ASCQ
15    SKSV (bit 7) | C/D (bit 6) | BPV (bit 3) | bit pointer (2-0)
16-17 field pointer (byte index into the CDB or parameter list)
====  ==========================================================
"""

from __future__ import annotations

from .constants import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    LBA_OUT_OF_RANGE,
    MISCOMPARE_DURING_VERIFY,
    PARAMETER_LIST_LENGTH_ERROR,
    SenseKey,
)

FIXED_SENSE_LEN = 18


def fixed_sense(
    key: int,
    asc_ascq: tuple[int, int],
    *,
    information: int | None = None,
    field_pointer: int | None = None,
    in_cdb: bool = True,
    bit: int | None = None,
) -> bytes:
    """Build 18 bytes of current, fixed-format sense data.

    ``information`` sets VALID and the INFORMATION field when it fits in
    32 bits (SPC-4: otherwise VALID stays 0).  ``field_pointer`` sets the
    sense-key specific field pointer (SKSV=1), pointing into the CDB when
    ``in_cdb`` else into the parameter list; ``bit`` adds a bit pointer.
    """
    sense = bytearray(FIXED_SENSE_LEN)
    sense[0] = 0x70
    sense[2] = key & 0x0F
    sense[7] = FIXED_SENSE_LEN - 8
    sense[12], sense[13] = asc_ascq
    if information is not None and 0 <= information <= 0xFFFFFFFF:
        sense[0] |= 0x80
        sense[3:7] = information.to_bytes(4, "big")
    if field_pointer is not None and 0 <= field_pointer <= 0xFFFF:
        sks = 0x80
        if in_cdb:
            sks |= 0x40
        if bit is not None:
            sks |= 0x08 | (bit & 0x07)
        sense[15] = sks
        sense[16:18] = field_pointer.to_bytes(2, "big")
    return bytes(sense)


def no_sense_descriptor() -> bytes:
    """Descriptor-format (72h) NO SENSE, for REQUEST SENSE with DESC=1."""
    return bytes([0x72, 0, 0, 0, 0, 0, 0, 0])


class CheckCondition(Exception):
    """A command ends in CHECK CONDITION with ``sense`` (fixed format)."""

    def __init__(self, sense: bytes):
        super().__init__(f"key={sense[2] & 0xF:#x} asc={sense[12]:#04x} ascq={sense[13]:#04x}")
        self.sense = sense

    @classmethod
    def of(cls, key: int, asc_ascq: tuple[int, int], **kw) -> CheckCondition:
        return cls(fixed_sense(key, asc_ascq, **kw))


def invalid_field_in_cdb(byte: int | None = None, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB, pointing at ``byte`` (and ``bit``)."""
    return CheckCondition.of(
        SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, field_pointer=byte, bit=bit
    )


def invalid_field_in_parameter_list(
    byte: int | None = None, bit: int | None = None
) -> CheckCondition:
    return CheckCondition.of(
        SenseKey.ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
        field_pointer=byte,
        in_cdb=False,
        bit=bit,
    )


def parameter_list_length_error() -> CheckCondition:
    return CheckCondition.of(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)


def lba_out_of_range() -> CheckCondition:
    return CheckCondition.of(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)


def miscompare(offset: int) -> CheckCondition:
    """MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION; INFORMATION = byte offset."""
    return CheckCondition.of(SenseKey.MISCOMPARE, MISCOMPARE_DURING_VERIFY, information=offset)


def highest_bit(value: int) -> int:
    """Index (0-7) of the most significant set bit of a nonzero byte."""
    return value.bit_length() - 1
