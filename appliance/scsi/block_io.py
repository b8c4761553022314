"""Block I/O commands (SBC-3/4): READ, WRITE, VERIFY, WRITE AND VERIFY,
COMPARE AND WRITE, ORWRITE, SYNCHRONIZE CACHE, PRE-FETCH.

Check order, as LIO's own backstores do it: CDB fields (done by the
dispatcher), transfer length against the Block Limits maximum (INVALID FIELD
IN CDB pointing at the length), LBA range (LOGICAL BLOCK ADDRESS OUT OF
RANGE), then the data-out buffer (INVALID FIELD IN COMMAND INFORMATION UNIT
when shorter than the CDB says: LIO rejects that mismatch before us, so it
only happens with a broken transport).  Nothing reaches the backend before
every check has passed.

Write cache (decided model): WCE=1 by default with DPOFUA; a write's FUA bit
becomes ``fua=True`` at the backend, and with WCE=0 (MODE SELECT) every write
is FUA.  WRITE AND VERIFY always writes with FUA: "verify" means the data is
on the medium.  Its BYTCHK=1 comparison is not done by reading back, which
could race with a later overlapping write and report a false miscompare: the
data written is the data-out buffer by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .buffer import DataOut
from .cdb import be, check_range, lba_and_length
from .constants import INVALID_FIELD_IN_COMMAND_IU, Op, SenseKey, Status
from .errors import BackendBusy
from .result import GOOD, ScsiResult, data_in
from .sense import CheckCondition, invalid_field_in_cdb, miscompare

if TYPE_CHECKING:
    from .device import ScsiDevice

FUA = 0x08
CHUNK_BYTES = 1 << 20  # unit of chunked reads/writes for VERIFY and WRITE SAME
ORWRITE_RETRIES = 8


def data_out(data: DataOut, length: int):
    """The first ``length`` bytes of data-out, or CHECK CONDITION if short."""
    if len(data) < length:
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_COMMAND_IU)
    return data.get(0, length)


def _transfer(dev: ScsiDevice, cdb: bytes, limit: int) -> tuple[int, int]:
    lba, blocks, length_at = lba_and_length(cdb)
    if blocks > limit:
        raise invalid_field_in_cdb(length_at)
    check_range(lba, blocks, dev.capacity())
    return lba, blocks


def first_difference(a, b) -> int | None:
    """Offset of the first differing byte of two equal-length buffers, or None."""
    a, b = memoryview(a), memoryview(b)
    if a == b:
        return None
    step = 4096
    for start in range(0, len(a), step):
        if a[start : start + step] != b[start : start + step]:
            for i in range(start, min(start + step, len(a))):
                if a[i] != b[i]:
                    return i
    return None  # pragma: no cover - a != b guarantees a hit


# -- the fast path: plain READ/WRITE(10/16), the commands that carry the data --
#
# ``ScsiDevice.execute`` tries these before the generic dispatch.  They take
# only CDBs the generic path would run without complaint -- no bit outside the
# usage bitmap, a non-zero length within the transfer limit and the capacity,
# all data-out present, a writable LUN -- and return None for anything else, so
# the generic path produces the exact error.  What they skip is the cost of
# the generality (table lookup, bitmap walk, DataOut), not a check:
# ``tests/unit/scsi/test_fast_path.py`` runs both on the same CDBs.


def _plain(cdb: bytes, reserved: int) -> tuple[int, int] | None:
    """``(lba, blocks)`` of a READ/WRITE(10/16) with no bit set outside the
    usage bitmap (``reserved``: byte 1's forbidden bits), else None."""
    if cdb[0] & 0x80:  # (16)
        if len(cdb) < 16 or cdb[1] & reserved or cdb[14] & 0xC0 or cdb[15]:
            return None
        return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    if len(cdb) < 10 or cdb[1] & reserved or cdb[6] & 0xC0 or cdb[9]:
        return None
    return int.from_bytes(cdb[2:6], "big"), (cdb[7] << 8) | cdb[8]


def _fits(dev: ScsiDevice, lba: int, blocks: int) -> bool:
    return 0 < blocks <= dev.limits.max_transfer and (lba + blocks) * dev.block_size <= (
        dev.backend.size
    )


def fast_read(dev: ScsiDevice, cdb: bytes, data_out) -> ScsiResult | None:
    where = _plain(cdb, 0xE1)  # RDPROTECT, bit 0
    if where is None or not _fits(dev, *where):
        return None
    lba, blocks = where
    bs = dev.block_size
    payload = dev.backend.read(lba * bs, blocks * bs)
    if len(payload) != blocks * bs:
        raise RuntimeError(f"backend read returned {len(payload)} of {blocks * bs} bytes")
    return ScsiResult(Status.GOOD, payload)


def fast_write(dev: ScsiDevice, cdb: bytes, data_out) -> ScsiResult | None:
    where = _plain(cdb, 0xE5)  # WRPROTECT, bits 2 and 0
    if where is None or dev.read_only or data_out is None or not _fits(dev, *where):
        return None
    lba, blocks = where
    n = blocks * dev.block_size
    if isinstance(data_out, bytes | bytearray | memoryview):
        payload = data_out
    elif len(data_out) == 1:
        payload = data_out[0]
    else:
        payload = b"".join(data_out)  # the engine copies the payload anyway
    if isinstance(payload, memoryview) and (payload.itemsize != 1 or payload.ndim != 1):
        return None  # DataOut counts such views in bytes
    if len(payload) < n:
        return None  # short data-out: the generic path says so
    if len(payload) > n:
        payload = memoryview(payload)[:n]
    dev.backend.write(lba * dev.block_size, payload, fua=bool(cdb[1] & FUA) or not dev.write_cache)
    return GOOD


FAST_PATH = {
    Op.READ_10: fast_read,
    Op.READ_16: fast_read,
    Op.WRITE_10: fast_write,
    Op.WRITE_16: fast_write,
}


def read(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    lba, blocks = _transfer(dev, cdb, dev.limits.max_transfer)
    if blocks == 0:
        return GOOD
    bs = dev.block_size
    payload = dev.backend.read(lba * bs, blocks * bs)
    if len(payload) != blocks * bs:
        raise RuntimeError(f"backend read returned {len(payload)} of {blocks * bs} bytes")
    return data_in(payload)


def write(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    lba, blocks = _transfer(dev, cdb, dev.limits.max_transfer)
    if blocks == 0:
        return GOOD
    bs = dev.block_size
    fua_bit = cdb[0] != Op.WRITE_6 and bool(cdb[1] & FUA)
    dev.backend.write(lba * bs, data_out(data, blocks * bs), fua=dev.fua(fua_bit))
    return GOOD


def write_and_verify(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    if (cdb[1] >> 1) & 0x3 > 1:
        raise invalid_field_in_cdb(1, 2)  # BYTCHK 10b/11b are reserved here
    lba, blocks = _transfer(dev, cdb, dev.limits.max_transfer)
    if blocks == 0:
        return GOOD
    bs = dev.block_size
    dev.backend.write(lba * bs, data_out(data, blocks * bs), fua=True)
    return GOOD


def verify(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """BYTCHK 00b: range check only (the medium cannot be unreadable short of
    a backend error).  01b: compare with the data-out buffer.  11b: compare
    every block with the single data-out block.  A miscompare reports the byte
    offset from the start of the verified range in INFORMATION."""
    bytchk = (cdb[1] >> 1) & 0x3
    if bytchk == 0b10:
        raise invalid_field_in_cdb(1, 2)
    limits = dev.limits
    limit = {0b00: 0xFFFFFFFF, 0b01: limits.max_transfer, 0b11: limits.max_write_same}[bytchk]
    lba, blocks = _transfer(dev, cdb, limit)
    if blocks == 0 or bytchk == 0b00:
        return GOOD
    bs = dev.block_size
    if bytchk == 0b01:
        expected = memoryview(data_out(data, blocks * bs))
        pattern = None
    else:
        expected = None
        pattern = bytes(data_out(data, bs))
    chunk = max(1, CHUNK_BYTES // bs) * bs
    for start in range(0, blocks * bs, chunk):
        length = min(chunk, blocks * bs - start)
        actual = dev.backend.read(lba * bs + start, length)
        if len(actual) != length:
            raise RuntimeError(f"backend read returned {len(actual)} of {length} bytes")
        if expected is not None:
            want = expected[start : start + length]
        else:
            want = pattern * (length // bs)
        diff = first_difference(actual, want)
        if diff is not None:
            raise miscompare(start + diff)
    return GOOD


def compare_and_write(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """Data-out: the verify blocks, then the write blocks (SBC-3 5.2)."""
    lba, blocks = be(cdb, 2, 8), cdb[13]
    if blocks > dev.limits.max_compare_and_write:
        raise invalid_field_in_cdb(13)
    check_range(lba, blocks, dev.capacity())
    bs = dev.block_size
    length = blocks * bs
    if len(data) > 2 * length:
        # The initiator sent another amount than the CDB names (e.g. 256 blocks,
        # whose count wrapped to 0 in the one-byte field): refuse, touch nothing.
        raise invalid_field_in_cdb(13)
    if blocks == 0:
        return GOOD
    payload = data_out(data, 2 * length)
    verify_data, write_data = bytes(payload[:length]), bytes(payload[length:])
    diff = dev.backend.compare_and_write(
        lba * bs, verify_data, write_data, fua=dev.fua(bool(cdb[1] & FUA))
    )
    if diff is not None:
        raise miscompare(diff)
    return GOOD


def orwrite(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """ORWRITE(16): medium |= data-out, made atomic by compare-and-write on
    the value just read (retried a few times under contention, then BUSY)."""
    lba, blocks = _transfer(dev, cdb, dev.limits.max_transfer)
    if blocks == 0:
        return GOOD
    bs = dev.block_size
    length = blocks * bs
    mask = int.from_bytes(data_out(data, length), "big")
    fua = dev.fua(bool(cdb[1] & FUA))
    for _ in range(ORWRITE_RETRIES):
        old = bytes(dev.backend.read(lba * bs, length))
        if len(old) != length:
            raise RuntimeError(f"backend read returned {len(old)} of {length} bytes")
        new = (int.from_bytes(old, "big") | mask).to_bytes(length, "big")
        if new == old or dev.backend.compare_and_write(lba * bs, old, new, fua=fua) is None:
            if new == old and fua:
                dev.backend.flush()
            return GOOD
    raise BackendBusy("ORWRITE lost the compare-and-write race repeatedly")


def synchronize_cache(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """Range checked, then everything is flushed (the backend has no
    per-range flush); IMMED is accepted and the flush still completes first."""
    lba, blocks, _ = lba_and_length(cdb)
    check_range(lba, blocks, dev.capacity())
    dev.backend.flush()
    return GOOD


def pre_fetch(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """GOOD after the range check (CONDITION MET is not required)."""
    lba, blocks, _ = lba_and_length(cdb)
    check_range(lba, blocks, dev.capacity())
    return GOOD
