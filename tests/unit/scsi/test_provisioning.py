"""WRITE SAME, UNMAP and GET LBA STATUS against the thin in-memory volume."""

import pytest

from appliance.scsi import (
    DeviceIdentity,
    LbaRun,
    MemoryBackend,
    ProvisioningStatus,
    ScsiDevice,
)
from appliance.scsi.provisioning import lba_descriptors

from .cdbs import (
    BLOCKS,
    BS,
    assert_good,
    be,
    get_lba_status,
    illegal,
    rw10,
    rw16,
    unmap_cdb,
    unmap_params,
)

WS = [(rw10, 0x41, 7), (rw16, 0x93, 10)]  # builder, opcode, NUMBER OF BLOCKS field
UNMAP = 0x08


def write(dev, lba, data):
    assert_good(dev.execute(rw10(0x2A, lba, len(data) // BS), data))


# -- WRITE SAME --------------------------------------------------------------------


@pytest.mark.parametrize("build,op,_", WS)
def test_write_same_replicates_the_block(dev, backend, build, op, _):
    block = bytes(range(256)) * (BS // 256)
    assert_good(dev.execute(build(op, 20, 100), block))
    assert backend.data[20 * BS : 120 * BS] == block * 100
    assert backend.data[19 * BS : 20 * BS] == bytes(BS)
    assert backend.data[120 * BS : 121 * BS] == bytes(BS)
    assert all(o[0] == "write" and o[3] is False for o in backend.ops)


def test_write_same_in_chunks_beyond_one_mib(backend):
    dev = ScsiDevice(backend, DeviceIdentity("v"))
    assert_good(dev.execute(rw16(0x93, 0, BLOCKS), b"\x5a" * BS))
    assert backend.data == b"\x5a" * (BLOCKS * BS)
    assert [o[2] for o in backend.ops] == [1 << 20]


@pytest.mark.parametrize("build,op,_", WS)
@pytest.mark.parametrize("unmap", [False, True])
def test_write_same_zero_block_is_write_zeros(dev, backend, build, op, _, unmap):
    write(dev, 0, b"x" * (8 * BS))
    backend.ops.clear()
    assert_good(dev.execute(build(op, 2, 4, byte1=UNMAP if unmap else 0), bytes(BS)))
    assert backend.ops == [("write_zeros", 2 * BS, 4 * BS, unmap)]
    assert backend.data[: 8 * BS] == b"x" * (2 * BS) + bytes(4 * BS) + b"x" * (2 * BS)
    assert backend.deallocated[2:6] == (b"\x01" * 4 if unmap else bytes(4))


@pytest.mark.parametrize("build,op,_", WS)
def test_write_same_unmap_with_nonzero_data_unmaps(dev, backend, build, op, _):
    """UNMAP=1 is an unmap operation whatever the data-out block holds: the
    LBAs are deallocated and read as zeros (LBPRZ=1)."""
    write(dev, 0, b"x" * (4 * BS))
    backend.ops.clear()
    assert_good(dev.execute(build(op, 0, 2, byte1=UNMAP), b"d" * BS))
    assert backend.ops == [("write_zeros", 0, 2 * BS, True)]
    assert backend.data[: 4 * BS] == bytes(2 * BS) + b"x" * (2 * BS)
    assert backend.deallocated[:4] == b"\1\1\0\0"


def test_write_same10_unmap_until_end_reads_zeros():
    """libiscsi WriteSame10.UnmapUntilEnd on the 64 MiB LUN: WRITE(10) i blocks
    of 0xFF at the end, then WRITE SAME(10) at num_blocks - i with UNMAP=1,
    NUMBER OF LOGICAL BLOCKS 0 (to the end: WSNZ=0) and the first 0xFF block
    as data-out, then READ(10): all zeros (LBPRZ=1)."""
    blocks = (64 << 20) // BS
    backend = MemoryBackend(blocks * BS, BS)
    dev = ScsiDevice(backend, DeviceIdentity("v"))
    for i in (1, 2, 255, 256):
        ones = b"\xff" * (i * BS)
        write(dev, blocks - i, ones)
        cdb = rw10(0x41, blocks - i, 0, byte1=UNMAP)
        assert cdb[1] == 0x08 and cdb[7:9] == b"\0\0"
        assert_good(dev.execute(cdb, ones[:BS]))
        assert backend.ops[-1] == ("write_zeros", (blocks - i) * BS, i * BS, True)
        read = assert_good(dev.execute(rw10(0x28, blocks - i, i)))
        assert bytes(read.data) == bytes(i * BS)
    assert backend.deallocated[blocks - 256 :] == b"\1" * 256


def test_write_same16_ndob(dev, backend):
    write(dev, 0, b"x" * (4 * BS))
    backend.ops.clear()
    assert_good(dev.execute(rw16(0x93, 1, 2, byte1=UNMAP | 0x01)))  # no data-out at all
    assert backend.ops == [("write_zeros", BS, 2 * BS, True)]
    assert_good(dev.execute(rw16(0x93, 0, 1, byte1=0x01)))
    assert backend.ops[-1] == ("write_zeros", 0, BS, False)
    # NDOB with a data-out buffer is a transfer the CDB does not describe.
    illegal(dev.execute(rw16(0x93, 0, 1, byte1=0x01), bytes(BS)), 0x0E, 0x03)
    assert len(backend.ops) == 2
    # NDOB exists only in the 16-byte form.
    illegal(dev.execute(rw10(0x41, 0, 1, byte1=0x01), bytes(BS)), 0x24, field=1, bit=0)


@pytest.mark.parametrize("build,op,field", WS)
def test_write_same_zero_blocks_runs_to_the_end(dev, backend, build, op, field):
    """WSNZ=0: 0 blocks means LBA..end, within MAXIMUM WRITE SAME LENGTH (128)."""
    max_ws = dev.limits.max_write_same
    assert max_ws == 128
    illegal(dev.execute(build(op, 0, 0), bytes(BS)), 0x24, field=field)  # 2048 > 128
    illegal(dev.execute(build(op, BLOCKS - max_ws - 1, 0), bytes(BS)), 0x24, field=field)
    illegal(dev.execute(build(op, BLOCKS + 1, 0), bytes(BS)), 0x21)  # range first
    illegal(dev.execute(build(op, 0x80000000, 0), bytes(BS)), 0x21)
    assert backend.ops == []
    assert_good(dev.execute(build(op, BLOCKS, 0), bytes(BS)))  # nothing left to write
    assert backend.ops == []
    assert_good(dev.execute(build(op, BLOCKS - max_ws, 0), b"\x77" * BS))
    assert backend.data[(BLOCKS - max_ws) * BS :] == b"\x77" * (max_ws * BS)
    assert backend.data[(BLOCKS - max_ws - 1) * BS : (BLOCKS - max_ws) * BS] == bytes(BS)
    assert_good(dev.execute(build(op, BLOCKS - 3, 0, byte1=UNMAP), bytes(BS)))
    assert backend.ops[-1] == ("write_zeros", (BLOCKS - 3) * BS, 3 * BS, True)


@pytest.mark.parametrize("build,op,_", WS)
def test_write_same_data_out_must_be_one_block(dev, backend, build, op, _):
    illegal(dev.execute(build(op, 0, 1, byte1=UNMAP), bytes(BS // 2)), 0x0E, 0x03)
    illegal(dev.execute(build(op, 0, 1, byte1=UNMAP), bytes(2 * BS)), 0x0E, 0x03)
    illegal(dev.execute(build(op, 0, 1), b"x" * (2 * BS)), 0x0E, 0x03)
    assert backend.ops == []


@pytest.mark.parametrize("build,op,field", WS)
def test_write_same_limits_and_flags(dev, backend, build, op, field):
    max_ws = dev.limits.max_write_same
    big = min(max_ws + 1, 0xFFFF) if op == 0x41 else max_ws + 1
    if big > max_ws:
        illegal(dev.execute(build(op, 0, big), b"x" * BS), 0x24, field=field)
    illegal(dev.execute(build(op, BLOCKS - 2, 3), b"x" * BS), 0x21)
    illegal(dev.execute(build(op, 0, 1, byte1=0x10), b"x" * BS), 0x24, field=1, bit=4)  # ANCHOR
    illegal(dev.execute(build(op, 0, 1, byte1=0x02), b"x" * BS), 0x24, field=1, bit=1)  # LBDATA
    illegal(dev.execute(build(op, 0, 1, byte1=0x20), b"x" * BS), 0x24, field=1, bit=5)  # WRPROT
    illegal(dev.execute(build(op, 0, 1), b"x" * (BS - 1)), 0x0E, 0x03)
    assert backend.ops == []


def test_write_same_huge_count_bounded():
    backend = MemoryBackend(1 << 20)
    dev = ScsiDevice(backend, DeviceIdentity("v"))
    illegal(dev.execute(rw16(0x93, 0, 0xFFFFFFFF), b"x" * BS), 0x24, field=10)
    illegal(dev.execute(rw16(0x93, 0, 0xFFFFFFFF, byte1=UNMAP), bytes(BS)), 0x24, field=10)


def test_write_same_with_write_cache_off(dev, backend):
    dev.write_cache = False
    assert_good(dev.execute(rw16(0x93, 0, 3), b"r" * BS))
    assert all(o[3] is True for o in backend.ops)
    backend.ops.clear()
    assert_good(dev.execute(rw16(0x93, 0, 3, byte1=UNMAP), bytes(BS)))
    assert backend.ops == [("write_zeros", 0, 3 * BS, True), ("flush",)]


# -- UNMAP -------------------------------------------------------------------------


def test_unmap_then_read_zeros(dev, backend):
    write(dev, 0, b"u" * (16 * BS))
    params = unmap_params((2, 3), (10, 2))
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    assert backend.ops[-2:] == [
        ("write_zeros", 2 * BS, 3 * BS, True),
        ("write_zeros", 10 * BS, 2 * BS, True),
    ]
    res = assert_good(dev.execute(rw10(0x28, 0, 16)))
    expect = bytearray(b"u" * (16 * BS))
    expect[2 * BS : 5 * BS] = bytes(3 * BS)
    expect[10 * BS : 12 * BS] = bytes(2 * BS)
    assert bytes(res.data) == bytes(expect)


def test_unmap_overlapping_and_zero_count_descriptors(dev, backend):
    params = unmap_params(*[(i // 2, 0) for i in range(256)])
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    params = unmap_params((BLOCKS, 0))  # zero blocks at the end of the LUN
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    params = unmap_params((0, 4), (2, 4))
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    assert_good(dev.execute(unmap_cdb(8), unmap_params()))  # no descriptors
    assert_good(dev.execute(unmap_cdb(0)))  # no parameter list
    assert [o[0] for o in backend.ops] == ["write_zeros", "write_zeros"]


def test_unmap_out_of_range_changes_nothing(dev, backend):
    write(dev, 0, b"u" * (4 * BS))
    before = backend.snapshot()
    params = unmap_params((0, 2), (BLOCKS - 1, 2))
    illegal(dev.execute(unmap_cdb(len(params)), params), 0x21)
    params = unmap_params((0, 2), (BLOCKS + 1, 0))
    illegal(dev.execute(unmap_cdb(len(params)), params), 0x21)
    assert backend.snapshot() == before


@pytest.mark.parametrize(
    "params,length,asc,field",
    [
        (bytes(4), 4, 0x1A, None),  # 1..7 bytes: parameter list length error
        (unmap_params((0, 1))[:20], 24, 0x1A, None),  # data-out shorter than the CDB says
        (be(100, 2) + be(16, 2) + bytes(4) + bytes(16), 24, 0x1A, None),  # data length
        (be(22, 2) + be(32, 2) + bytes(4) + bytes(16), 24, 0x1A, None),  # descriptor length
        (be(6, 2) + be(16, 2) + bytes(4) + bytes(16), 24, 0x26, 0),  # inconsistent lengths
        (unmap_params(*[(0, 1)] * 257), 8 + 16 * 257, 0x26, 2),  # too many descriptors
        (unmap_params((0, (512 << 20) // BS + 1)), 24, 0x26, 16),  # too many blocks
    ],
)
def test_unmap_bad_parameter_lists(dev, backend, params, length, asc, field):
    res = dev.execute(unmap_cdb(length), params)
    if field is None:
        illegal(res, asc)
    else:
        illegal(res, asc, field=field, in_cdb=False)
    assert backend.ops == []


def test_unmap_incomplete_last_descriptor_is_ignored(dev, backend):
    params = unmap_params((4, 1))
    params = be(6 + 24, 2) + be(24, 2) + params[4:] + bytes(8)
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    assert backend.ops == [("write_zeros", 4 * BS, BS, True)]


def test_unmap_anchor_refused_and_wce_off_flushes(dev, backend):
    params = unmap_params((0, 1))
    illegal(dev.execute(unmap_cdb(len(params), byte1=1), params), 0x24, field=1, bit=0)
    dev.write_cache = False
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    assert backend.ops == [("write_zeros", 0, BS, True), ("flush",)]


# -- GET LBA STATUS ----------------------------------------------------------------


def descriptors(data: bytes) -> list[tuple[int, int, int]]:
    assert int.from_bytes(data[0:4], "big") == len(data) - 4
    return [
        (
            int.from_bytes(data[i : i + 8], "big"),
            int.from_bytes(data[i + 8 : i + 12], "big"),
            data[i + 12],
        )
        for i in range(8, len(data), 16)
    ]


def test_get_lba_status_after_writes_and_unmap(dev, backend):
    d = bytes(assert_good(dev.execute(get_lba_status(0))).data)
    assert descriptors(d) == [(0, BLOCKS, 1)]  # a new thin volume is all deallocated
    write(dev, 0, b"m" * (10 * BS))
    params = unmap_params((4, 2))
    assert_good(dev.execute(unmap_cdb(len(params)), params))
    d = bytes(assert_good(dev.execute(get_lba_status(0))).data)
    assert descriptors(d) == [(0, 4, 0), (4, 2, 1), (6, 4, 0), (10, BLOCKS - 10, 1)]
    d = bytes(assert_good(dev.execute(get_lba_status(5))).data)
    assert descriptors(d)[0] == (5, 1, 1)


def test_get_lba_status_unmap_single_first_descriptor_is_the_starting_lba():
    """libiscsi GetLBAStatus.UnmapSingle on the 64 MiB LUN (LBPPBE 3: 8 blocks
    per physical block): write 264 blocks, UNMAP ranges, GET LBA STATUS with
    allocation length 24.  The first descriptor starts at the STARTING LOGICAL
    BLOCK ADDRESS (SBC-4 GET LBA STATUS descriptor relationships).  libiscsi's
    second loop asks for LBA i+1 but compares against i+8, which only an LU with
    LBPPBE 0 can satisfy; the descriptor it gets here is the one SBC requires."""
    blocks = (64 << 20) // BS
    backend = MemoryBackend(blocks * BS, BS)
    dev = ScsiDevice(backend, DeviceIdentity("v"))
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + be(32, 4) + bytes(2)
    lbppb = 1 << bytes(assert_good(dev.execute(rc16)).data)[13]
    assert lbppb == 8
    mapped = 256 + lbppb

    def status(lba: int) -> tuple[int, int, int]:
        d = bytes(assert_good(dev.execute(get_lba_status(lba, alloc=24))).data)
        assert d[:4] == be(20, 4) and len(d) == 24
        return descriptors(d)[0]

    write(dev, 0, b"A" * (mapped * BS))
    for i in range(0, 256 - lbppb + 1, lbppb):  # one physical block at a time
        params = unmap_params((i, lbppb))
        assert_good(dev.execute(unmap_cdb(len(params)), params))
        assert status(i) == (i, lbppb, 1)
        assert status(i + lbppb) == (i + lbppb, mapped - i - lbppb, 0)
    for i in range(lbppb, 256 - lbppb + 1, lbppb):  # 0..i unmapped
        write(dev, 0, b"A" * (mapped * BS))
        params = unmap_params((0, i))
        assert_good(dev.execute(unmap_cdb(len(params)), params))
        assert status(0) == (0, i, 1)
        assert status(i + 1) == (i + 1, mapped - i - 1, 0)


def test_get_lba_status_allocation_length(dev):
    write(dev, 0, b"m" * BS)
    d = bytes(assert_good(dev.execute(get_lba_status(0, alloc=24))).data)
    assert d == be(20, 4) + bytes(4) + be(0, 8) + be(1, 4) + bytes(4)
    d = bytes(assert_good(dev.execute(get_lba_status(0, alloc=16))).data)
    assert len(d) == 16 and d[:4] == be(20, 4)
    assert dev.execute(get_lba_status(0, alloc=0)).read_len == 0


def test_get_lba_status_range(dev):
    illegal(dev.execute(get_lba_status(BLOCKS)), 0x21)
    illegal(dev.execute(get_lba_status(2**64 - 1)), 0x21)
    assert_good(dev.execute(get_lba_status(BLOCKS - 1)))
    illegal(dev.execute(get_lba_status(0)[:14] + b"\x01\x00"), 0x24, field=14, bit=0)


def test_get_lba_status_without_backend_support_reports_mapped():
    class Plain:
        size, block_size = 8 * BS, BS

    dev = ScsiDevice(Plain(), DeviceIdentity("v"))
    d = bytes(assert_good(dev.execute(get_lba_status(3))).data)
    assert descriptors(d) == [(3, 5, 0)]


def test_lba_descriptors_rounds_deallocated_inward():
    D = ProvisioningStatus.DEALLOCATED
    runs = [LbaRun(100, 1000, D), LbaRun(2048, 512, ProvisioningStatus.MAPPED)]
    # bytes 100..1100 cover block 1 (512..1024) wholly, blocks 0 and 2 partly.
    assert lba_descriptors(runs, 0, 8, BS, 10) == [(0, 1, 0), (1, 1, 1), (2, 6, 0)]
    assert lba_descriptors(iter(runs), 0, 8, BS, 1) == [(0, 1, 0)]
    runs = [LbaRun(0, 8 * BS, D), LbaRun(0, 8 * BS, D)]  # overlapping / repeated
    assert lba_descriptors(runs, 2, 8, BS, 10) == [(2, 6, 1)]
    assert lba_descriptors([], 0, 2**40, BS, 10) == [(0, 0xFFFFFFFF, 0)] + [
        (0xFFFFFFFF * i, 0xFFFFFFFF, 0) for i in range(1, 10)
    ]
