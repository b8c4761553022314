"""EXTENDED COPY (LID1), RECEIVE COPY RESULTS and the third-party copy VPD page."""

import pytest

from appliance.scsi import DeviceIdentity, Limits, MemoryBackend, ScsiDevice
from appliance.scsi.inquiry import lu_designators

from .cdbs import BLOCKS, BS, assert_good, be, illegal, inquiry, rw10

COPY_ABORTED = 0x0A


def xcopy_cdb(length: int) -> bytes:
    return bytes([0x83, 0x00]) + bytes(8) + be(length, 4) + bytes(2)


def rcr_cdb(sa: int, list_id: int = 0, alloc: int = 1024) -> bytes:
    return bytes([0x84, sa, list_id]) + bytes(7) + be(alloc, 4) + bytes(2)


def cscd(dev: ScsiDevice, *, lu_id_type=0, nul=0, dtype=0, kind=0xE4, designator=None) -> bytes:
    d = designator or lu_designators(dev.identity)[0]
    desc = bytearray(32)
    desc[0] = kind
    desc[1] = (lu_id_type << 6) | (nul << 5) | dtype
    desc[4], desc[5], desc[7] = d[0] & 0x0F, d[1] & 0x3F, d[3]
    desc[8 : 8 + d[3]] = d[4:]
    desc[29:32] = be(BS, 3)
    return bytes(desc)


def b2b(src: int, dst: int, blocks: int, src_index=0, dst_index=0, kind=0x02) -> bytes:
    return (bytes([kind, 0]) + be(24, 2) + be(src_index, 2) + be(dst_index, 2) + bytes(2)
            + be(blocks, 2) + be(src, 8) + be(dst, 8))  # fmt: skip


def params(cscds: list[bytes], segments: list[bytes], list_id=1, usage=0, inline=0) -> bytes:
    c, s = b"".join(cscds), b"".join(segments)
    head = bytes([list_id, usage << 3]) + be(len(c), 2) + bytes(4) + be(len(s), 4)
    return head + be(inline, 4) + c + s


def run(dev, plist: bytes, length: int | None = None):
    return dev.execute(xcopy_cdb(len(plist) if length is None else length), plist)


def fill(dev, lba: int, data: bytes) -> None:
    assert_good(dev.execute(rw10(0x2A, lba, len(data) // BS), data))


def copy_aborted(result, asc: int, ascq: int) -> None:
    assert result.status == 0x02, result
    assert result.sense[2] & 0x0F == COPY_ABORTED and result.sense[12:14] == bytes([asc, ascq])


def test_copy_within_the_lun(dev, backend):
    pattern = bytes(range(256)) * (8 * BS // 256)
    fill(dev, 10, pattern)
    backend.ops.clear()
    assert_good(run(dev, params([cscd(dev)], [b2b(10, BLOCKS - 8, 8)], usage=0b10)))
    assert backend.data[(BLOCKS - 8) * BS :] == pattern
    assert [o[0] for o in backend.ops] == ["read", "write"]
    # Two segments, two CSCD descriptors naming the same LUN.
    plist = params([cscd(dev), cscd(dev)], [b2b(10, 100, 2), b2b(12, 200, 2, 1, 0)], usage=0b10)
    assert_good(run(dev, plist))
    assert backend.data[100 * BS : 102 * BS] == pattern[: 2 * BS]
    assert backend.data[200 * BS : 202 * BS] == pattern[2 * BS : 4 * BS]


def test_overlapping_copy_upwards_and_chunked(dev, backend):
    """300 blocks (more than the 128-block maximum transfer) moved up by 50."""
    data = b"".join(i.to_bytes(2, "big") * (BS // 2) for i in range(300))
    fill(dev, 0, data[: 128 * BS])
    fill(dev, 128, data[128 * BS : 256 * BS])
    fill(dev, 256, data[256 * BS :])
    assert_good(run(dev, params([cscd(dev)], [b2b(0, 50, 300)])))
    assert backend.data[50 * BS : 350 * BS] == data
    writes = [o for o in backend.ops if o[0] == "write" and o[1] >= 50 * BS]
    assert max(o[2] for o in writes) <= 128 * BS


def test_zero_length_parameter_list_is_a_no_op(dev, backend):
    assert_good(dev.execute(xcopy_cdb(0)))
    assert backend.ops == []


def test_parameter_list_length_errors(dev, backend):
    good = params([cscd(dev)], [b2b(0, 100, 4)])
    illegal(run(dev, good[: 16 + 31]), 0x1A)  # truncated CSCD descriptor
    illegal(run(dev, good[:-1]), 0x1A)  # truncated segment descriptor
    illegal(run(dev, good[:8]), 0x1A)  # shorter than the header
    illegal(dev.execute(xcopy_cdb(len(good)), good[:-4]), 0x1A)  # data-out short
    assert backend.ops == []


def test_descriptor_limits(dev, backend):
    op = bytes(assert_good(dev.execute(rcr_cdb(0x03))).data)
    max_cscd, max_seg = int.from_bytes(op[8:10], "big"), int.from_bytes(op[10:12], "big")
    max_list = int.from_bytes(op[12:16], "big")
    assert (max_cscd, max_seg, max_list) == (2, 16, 1024)
    illegal(run(dev, params([cscd(dev)] * 3, [b2b(0, 100, 1)])), 0x26, 0x06)
    illegal(run(dev, params([cscd(dev)], [b2b(0, 100, 1)] * 17)), 0x26, 0x08)
    illegal(run(dev, params([cscd(dev)] * 3, [b2b(0, 100, 1)] * 40)), 0x1A)  # > 1024 bytes
    assert backend.ops == []


def test_unsupported_descriptor_types(dev, backend):
    illegal(run(dev, params([cscd(dev, kind=0xE0)], [b2b(0, 100, 1)])), 0x26, 0x07, field=16)
    stream = b2b(0, 100, 1, kind=0x00)
    illegal(run(dev, params([cscd(dev)], [stream])), 0x26, 0x09, field=48)
    assert backend.ops == []


def test_target_descriptor_fields(dev, backend):
    seg = [b2b(0, 100, 1)]
    illegal(run(dev, params([cscd(dev, dtype=1)], seg)), 0x26, field=17, bit=4)
    copy_aborted(run(dev, params([cscd(dev, nul=1)], seg)), 0x08, 0x04)
    other = lu_designators(DeviceIdentity("another volume"))[0]
    copy_aborted(run(dev, params([cscd(dev, designator=other)], seg)), 0x08, 0x04)
    illegal(run(dev, params([cscd(dev)], seg, inline=4) + bytes(4)), 0x26, field=12)
    illegal(run(dev, params([cscd(dev)], seg, usage=0b01)), 0x26, field=1, bit=4)
    assert backend.ops == []


def test_identification_cscd_ignores_lu_id_type():
    """libiscsi ExtendedCopy.ValidTgtDescr on the 64 MiB LUN: an E4h CSCD with
    LU ID TYPE 10b (reserved) naming this LUN by its NAA designator, one
    segment copying 2048 blocks from LBA 0 to the last 2048; the target says
    SPC-4 (VERSION 06h), so the copy must run (GOOD)."""
    blocks = (64 << 20) // BS
    backend = MemoryBackend(blocks * BS, BS)
    dev = ScsiDevice(backend, DeviceIdentity("vol-0001"))
    assert bytes(assert_good(dev.execute(inquiry())).data)[2] == 0x06
    naa = lu_designators(dev.identity)[0]
    assert naa[1] & 0x0F == 0x03  # the NAA designator, the one libiscsi picks
    pattern = bytes(range(256)) * (2048 * BS // 256)
    backend.data[: 2048 * BS] = pattern
    for lu_id_type in (0b10, 0b11, 0b01):
        plist = params([cscd(dev, lu_id_type=lu_id_type)], [b2b(0, blocks - 2048, 2048)])
        assert plist[17] >> 6 == lu_id_type
        assert_good(run(dev, plist))
    assert backend.data[(blocks - 2048) * BS :] == pattern


def test_segment_descriptor_fields(dev, backend):
    copy_aborted(run(dev, params([cscd(dev)], [b2b(0, 100, 1, dst_index=1)])), 0x0D, 0x02)
    copy_aborted(run(dev, params([cscd(dev)], [b2b(0, BLOCKS - 1, 2)])), 0x0D, 0x02)
    copy_aborted(run(dev, params([cscd(dev)], [b2b(BLOCKS, 0, 1)])), 0x0D, 0x02)
    # A bad second segment refuses the whole list: the first one is not copied either.
    plist = params([cscd(dev)], [b2b(0, 100, 1), b2b(0, BLOCKS, 1)])
    copy_aborted(run(dev, plist), 0x0D, 0x02)
    assert backend.ops == []


def test_read_only_lun_refuses_copies(backend):
    dev = ScsiDevice(backend, DeviceIdentity("ro"), read_only=True)
    illegal_dp = dev.execute(xcopy_cdb(0))
    assert illegal_dp.sense[2] & 0x0F == 0x07 and illegal_dp.sense[12] == 0x27


def test_copy_status_held_only_with_list_id_usage_00(dev):
    illegal(dev.execute(rcr_cdb(0x00, list_id=1)), 0x24, field=2)  # nothing held yet
    assert_good(run(dev, params([cscd(dev)], [b2b(0, 100, 4)], list_id=7, usage=0b10)))
    illegal(dev.execute(rcr_cdb(0x00, list_id=7)), 0x24, field=2)  # "do not hold"
    assert_good(run(dev, params([cscd(dev)], [b2b(0, 100, 4), b2b(4, 200, 2)], list_id=1)))
    d = bytes(assert_good(dev.execute(rcr_cdb(0x00, list_id=1))).data)
    assert d == be(8, 4) + bytes([0x00]) + be(2, 2) + bytes([0x00]) + be(6 * BS, 4)
    assert bytes(assert_good(dev.execute(rcr_cdb(0x00, list_id=1, alloc=5))).data) == d[:5]


def test_receive_copy_results_bad_cdbs(dev):
    illegal(dev.execute(rcr_cdb(0x01)), 0x24, field=1, bit=4)  # RECEIVE DATA: not supported
    illegal(dev.execute(rcr_cdb(0x04)), 0x24, field=1, bit=4)  # FAILED SEGMENT DETAILS
    illegal(dev.execute(bytes([0x83, 0x01]) + bytes(14)), 0x24, field=1, bit=4)  # LID4
    illegal(dev.execute(rcr_cdb(0x03, list_id=1)), 0x24, field=2)  # reserved for op params
    illegal(dev.execute(xcopy_cdb(0)[:2] + b"\x01" + xcopy_cdb(0)[3:]), 0x24, field=2)


def test_operating_parameters_layout(dev):
    d = bytes(assert_good(dev.execute(rcr_cdb(0x03))).data)
    assert int.from_bytes(d[0:4], "big") == len(d) - 4 == 42
    assert int.from_bytes(d[16:20], "big") == 0xFFFF * BS  # maximum segment length
    assert d[20:24] == bytes(4)  # no inline data
    assert d[43] == 2 and d[44:46] == bytes([0x02, 0xE4])


def test_third_party_copy_vpd(dev):
    d = bytes(assert_good(dev.execute(inquiry(1, 0x8F, 1024))).data)
    assert d[1] == 0x8F and int.from_bytes(d[2:4], "big") == len(d) - 4
    pos, found = 4, {}
    while pos < len(d):
        kind, length = (
            int.from_bytes(d[pos : pos + 2], "big"),
            int.from_bytes(d[pos + 2 : pos + 4], "big"),
        )
        assert (length + 4) % 4 == 0
        found[kind] = d[pos + 4 : pos + 4 + length]
        pos += 4 + length
    assert set(found) == {0x0001, 0x0008, 0x0009}
    commands = found[0x0001]
    assert commands[1 : 1 + commands[0]] == bytes([0x83, 1, 0x00, 0x84, 2, 0x00, 0x03])
    assert found[0x0009][:3] == bytes([2, 0x02, 0xE4])


@pytest.mark.parametrize("block_size", [512, 4096])
def test_physical_block_exponent_and_write_same_cap(block_size):
    limits = Limits(max_transfer_bytes=64 << 10).in_blocks(block_size)
    assert limits.lbppbe == (3 if block_size == 512 else 0)
    assert limits.max_write_same == limits.max_transfer == (64 << 10) // block_size
    dev = ScsiDevice(MemoryBackend(1 << 20, block_size), DeviceIdentity("v"))
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + be(32, 4) + bytes(2)
    assert bytes(assert_good(dev.execute(rc16)).data)[13] == (3 if block_size == 512 else 0)
