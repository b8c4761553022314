"""Thin-provisioning commands (SBC-3/4): WRITE SAME(10/16), UNMAP, GET LBA STATUS.

WRITE SAME: a NUMBER OF LOGICAL BLOCKS of 0 means "from the LBA to the end
of the medium" (WSNZ=0).  The count (given or implied) may not exceed the
Block Limits MAXIMUM WRITE SAME LENGTH (INVALID FIELD IN CDB pointing at
the count), checked after the LBA (an LBA past the end is LOGICAL BLOCK
ADDRESS OUT OF RANGE whatever the count).  The data-out buffer must be
exactly one block, or empty with NDOB=1 on the 16-byte form; any other
length is refused before anything is written.  With the UNMAP bit set
(ANCHOR is refused by the CDB check) every LBA of the range is unmapped:
``write_zeros(unmap=True)`` whatever the data-out block holds.  SBC-4's
WRITE SAME table (UNMAP=1, ANCHOR=0) makes that an unmap operation on a
thin provisioned LU, not a write, and with LBPRZ=1 an unmapped LBA reads as
zeros, so the data-out block is not what is read back (libiscsi's
WriteSame10.UnmapUntilEnd sends its 0xFF block with UNMAP=1).  Without
UNMAP, a zero data block (or NDOB=1) becomes ``write_zeros(unmap=False)``;
any other block is replicated in chunks of :data:`CHUNK_BYTES`.

UNMAP parameter list (SBC-3 5.28.2): bytes 0-1 UNMAP DATA LENGTH (n-1),
2-3 UNMAP BLOCK DESCRIPTOR DATA LENGTH, 4-7 reserved, then 16-byte
descriptors (LBA 8 bytes, block count 4 bytes, 4 reserved).  Every
descriptor is validated before the first one is applied, so a refused UNMAP
changes nothing.  Overlapping descriptors and zero counts are allowed; an
incomplete last descriptor is ignored, as SBC says.

Neither ``write_zeros`` nor UNMAP carries FUA: with WCE=0 they are followed by
a flush, so completion still means durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .backend import LbaRun, ProvisioningStatus, SupportsLbaStatus
from .block_io import CHUNK_BYTES, data_out
from .buffer import DataOut
from .cdb import be, check_range, lba_and_length
from .constants import INVALID_FIELD_IN_COMMAND_IU, Op, SenseKey
from .result import GOOD, ScsiResult, data_in
from .sense import (
    CheckCondition,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    lba_out_of_range,
    parameter_list_length_error,
)

if TYPE_CHECKING:
    from .device import ScsiDevice

UNMAP_BIT = 0x08
NDOB = 0x01
MAX_LBA_STATUS_DESCRIPTORS = 4096
MAX_DESCRIPTOR_BLOCKS = 0xFFFFFFFF


def write_same(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    lba, blocks, count_at = lba_and_length(cdb)
    unmap = bool(cdb[1] & UNMAP_BIT)
    ndob = cdb[0] == Op.WRITE_SAME_16 and bool(cdb[1] & NDOB)
    capacity = dev.capacity()
    if lba > capacity:
        raise lba_out_of_range()
    if blocks == 0:
        blocks = capacity - lba  # WSNZ=0: to the end of the medium
    if blocks > dev.limits.max_write_same:
        raise invalid_field_in_cdb(count_at)
    check_range(lba, blocks, capacity)
    bs = dev.block_size
    if len(data) != (0 if ndob else bs):
        # One logical block of data-out (none with NDOB): anything else is a
        # transfer that does not match the CDB.
        raise CheckCondition.of(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_COMMAND_IU)
    if blocks == 0:
        return GOOD  # the LBA is the capacity: nothing to the end
    block = bytes(bs) if ndob else bytes(data_out(data, bs))
    backend = dev.backend
    if unmap or block == bytes(bs):
        backend.write_zeros(lba * bs, blocks * bs, unmap=unmap)
        if not dev.write_cache:
            backend.flush()
        return GOOD
    fua = dev.fua(False)
    chunk_blocks = max(1, CHUNK_BYTES // bs)
    pattern = block * min(chunk_blocks, blocks)
    done = 0
    while done < blocks:
        n = min(chunk_blocks, blocks - done)
        backend.write((lba + done) * bs, memoryview(pattern)[: n * bs], fua=fua)
        done += n
    return GOOD


def unmap(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    length = be(cdb, 7, 2)
    if length == 0:
        return GOOD
    if length < 8 or len(data) < length:
        raise parameter_list_length_error()
    params = data.get_bytes(0, length)
    unmap_data_len, descriptors_len = be(params, 0, 2), be(params, 2, 2)
    if unmap_data_len + 2 > length or descriptors_len + 8 > length:
        raise parameter_list_length_error()
    if descriptors_len + 6 > unmap_data_len:
        raise invalid_field_in_parameter_list(0)
    count = descriptors_len // 16
    limits = dev.limits
    if count > limits.max_unmap_descriptors:
        raise invalid_field_in_parameter_list(2)
    capacity = dev.capacity()
    ranges = []
    for i in range(count):
        at = 8 + 16 * i
        lba, blocks = be(params, at, 8), be(params, at + 8, 4)
        if blocks > limits.max_unmap:
            raise invalid_field_in_parameter_list(at + 8)
        check_range(lba, blocks, capacity)
        if blocks:
            ranges.append((lba, blocks))
    bs = dev.block_size
    for lba, blocks in ranges:
        dev.backend.write_zeros(lba * bs, blocks * bs, unmap=True)
    if ranges and not dev.write_cache:
        dev.backend.flush()
    return GOOD


def get_lba_status(dev: ScsiDevice, cdb: bytes, data: DataOut) -> ScsiResult:
    """Reply: 4-byte PARAMETER DATA LENGTH, 4 reserved, then 16-byte
    descriptors (LBA, block count, provisioning status) from the starting LBA
    on, as many as the allocation length holds (at least one)."""
    lba, allocation_length = be(cdb, 2, 8), be(cdb, 10, 4)
    capacity = dev.capacity()
    if lba >= capacity:
        raise lba_out_of_range()
    limit = min(MAX_LBA_STATUS_DESCRIPTORS, max(1, (allocation_length - 8) // 16))
    bs = dev.block_size
    backend = dev.backend
    if isinstance(backend, SupportsLbaStatus):
        runs = backend.lba_status(lba * bs, (capacity - lba) * bs)
    else:
        runs = ()
    body = b"".join(
        start.to_bytes(8, "big") + count.to_bytes(4, "big") + bytes([status, 0, 0, 0])
        for start, count, status in lba_descriptors(runs, lba, capacity, bs, limit)
    )
    payload = (len(body) + 4).to_bytes(4, "big") + bytes(4) + body
    return data_in(payload, allocation_length)


def lba_descriptors(
    runs: Iterable[LbaRun], start: int, end: int, block_size: int, limit: int
) -> list[tuple[int, int, int]]:
    """Turn byte runs into at most ``limit`` block descriptors covering
    ``[start, end)`` from ``start``.  A block counts as deallocated (or
    anchored) only if wholly inside such a run; gaps and partial blocks are
    mapped (never claiming a block reads as zeros when it may not)."""
    out: list[list[int]] = []

    def emit(first: int, stop: int, status: int) -> None:
        while first < stop and len(out) <= limit:
            if out and out[-1][2] == status and out[-1][0] + out[-1][1] == first:
                take = min(stop - first, MAX_DESCRIPTOR_BLOCKS - out[-1][1])
                if take:
                    out[-1][1] += take
                    first += take
                    continue
            take = min(stop - first, MAX_DESCRIPTOR_BLOCKS)
            out.append([first, take, status])
            first += take

    cursor = start
    for offset, length, raw_status in runs:
        status = ProvisioningStatus(raw_status)  # a bogus value is a backend bug
        if status == ProvisioningStatus.MAPPED or length <= 0:
            continue
        first = max(-(-offset // block_size), cursor)
        stop = min((offset + length) // block_size, end)
        if stop <= first:
            continue
        emit(cursor, first, ProvisioningStatus.MAPPED)
        emit(first, stop, int(status))
        cursor = stop
        if len(out) > limit:
            break
    if cursor < end and len(out) <= limit:
        emit(cursor, end, ProvisioningStatus.MAPPED)
    return [(s, n, st) for s, n, st in out[:limit]]
