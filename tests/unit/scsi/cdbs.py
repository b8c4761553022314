"""CDB builders and sense assertions shared by the SCSI layer tests."""

from __future__ import annotations

from appliance.scsi import ScsiResult, Status

BS = 512
BLOCKS = 2048  # 1 MiB test volume


def be(value: int, n: int) -> bytes:
    return value.to_bytes(n, "big")


def rw6(op: int, lba: int, blocks: int) -> bytes:
    return bytes([op, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, blocks & 0xFF, 0])


def rw10(op: int, lba: int, blocks: int, byte1: int = 0, group: int = 0) -> bytes:
    return bytes([op, byte1]) + be(lba, 4) + bytes([group]) + be(blocks, 2) + b"\0"


def rw12(op: int, lba: int, blocks: int, byte1: int = 0, group: int = 0) -> bytes:
    return bytes([op, byte1]) + be(lba, 4) + be(blocks, 4) + bytes([group, 0])


def rw16(op: int, lba: int, blocks: int, byte1: int = 0, group: int = 0) -> bytes:
    return bytes([op, byte1]) + be(lba, 8) + be(blocks, 4) + bytes([group, 0])


def caw(lba: int, blocks: int, byte1: int = 0) -> bytes:
    return bytes([0x89, byte1]) + be(lba, 8) + bytes([0, 0, 0, blocks, 0, 0])


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return bytes([0x12, evpd, page]) + be(alloc, 2) + b"\0"


def mode_sense6(page: int, pc: int = 0, dbd: bool = False, subpage: int = 0, alloc=255):
    return bytes([0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0])


def mode_sense10(page, pc=0, dbd=False, llbaa=False, subpage=0, alloc=1024):
    byte1 = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return bytes([0x5A, byte1, (pc << 6) | page, subpage, 0, 0, 0]) + be(alloc, 2) + b"\0"


def mode_select6(length: int, pf: bool = True, sp: bool = False) -> bytes:
    return bytes([0x15, (0x10 if pf else 0) | (0x01 if sp else 0), 0, 0, length, 0])


def mode_select10(length: int, pf: bool = True, sp: bool = False) -> bytes:
    byte1 = (0x10 if pf else 0) | (0x01 if sp else 0)
    return bytes([0x55, byte1, 0, 0, 0, 0, 0]) + be(length, 2) + b"\0"


def unmap_cdb(length: int, byte1: int = 0) -> bytes:
    return bytes([0x42, byte1, 0, 0, 0, 0, 0]) + be(length, 2) + b"\0"


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    descriptors = b"".join(be(lba, 8) + be(n, 4) + bytes(4) for lba, n in ranges)
    return be(6 + len(descriptors), 2) + be(len(descriptors), 2) + bytes(4) + descriptors


def read_capacity16(alloc: int = 32, lba: int = 0, pmi: int = 0) -> bytes:
    return bytes([0x9E, 0x10]) + be(lba, 8) + be(alloc, 4) + bytes([pmi, 0])


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    return bytes([0x9E, 0x12]) + be(lba, 8) + be(alloc, 4) + b"\0\0"


def rsoc(options: int = 0, opcode: int = 0, sa: int = 0, alloc: int = 65535, rctd=False):
    byte2 = (0x80 if rctd else 0) | options
    return bytes([0xA3, 0x0C, byte2, opcode]) + be(sa, 2) + be(alloc, 4) + b"\0\0"


def assert_good(res: ScsiResult) -> ScsiResult:
    assert res.status == Status.GOOD, f"expected GOOD, got {res}"
    assert res.sense == b""
    return res


def assert_sense(
    res: ScsiResult,
    key: int,
    asc: int,
    ascq: int = 0,
    *,
    field: int | None = None,
    bit: int | None = None,
    in_cdb: bool | None = None,
    info: int | None = None,
) -> bytes:
    """Check CHECK CONDITION with fixed-format sense and the given codes."""
    assert res.status == Status.CHECK_CONDITION, f"expected CHECK CONDITION, got {res}"
    assert res.read_len == 0
    s = res.sense
    assert len(s) >= 18 and s[0] & 0x7F == 0x70 and s[7] == len(s) - 8
    assert (s[2] & 0x0F, s[12], s[13]) == (key, asc, ascq), s.hex()
    if field is not None:
        assert s[15] & 0x80, "SKSV not set"
        assert int.from_bytes(s[16:18], "big") == field
        if in_cdb is not None:
            assert bool(s[15] & 0x40) == in_cdb
        if bit is not None:
            assert s[15] & 0x08 and s[15] & 0x07 == bit
    if info is not None:
        assert s[0] & 0x80, "VALID not set"
        assert int.from_bytes(s[3:7], "big") == info
    return s


def illegal(res: ScsiResult, asc: int, ascq: int = 0, **kw) -> bytes:
    return assert_sense(res, 0x5, asc, ascq, **kw)
