"""INQUIRY: standard data and VPD pages, byte for byte."""

import hashlib

import pytest

from appliance.scsi import DeviceIdentity, Limits, MemoryBackend, ScsiDevice

from .cdbs import assert_good, illegal, inquiry


def test_standard_inquiry_layout(dev):
    res = assert_good(dev.execute(inquiry(alloc=260)))
    d = bytes(res.data)
    assert len(d) == 96 and d[4] == 96 - 5  # additional length matches (libiscsi)
    assert d[0] == 0x00  # qualifier 0, direct access block device
    assert d[1] == 0x00  # not removable
    assert d[2] == 0x06  # SPC-4
    assert d[3] == 0x12  # HiSup | response data format 2; no AERC/TrmTsk/NormACA
    assert d[5] == 0x08  # 3PC (EXTENDED COPY); no TPGS or PROTECT
    assert d[6] == 0x00
    assert d[7] == 0x02  # CmdQue
    assert d[8:16] == b"CDP     "
    assert d[16:32] == b"Test LUN        "
    assert d[32:36] == b"0.1 "
    assert d[36:58] == bytes(22)
    assert d[58:64] == bytes.fromhex("00a0 0460 04c0")  # SAM-5, SPC-4, SBC-3
    assert d[64:] == bytes(32)


@pytest.mark.parametrize("alloc", [0, 1, 5, 36, 95, 96, 255, 256, 4096])
def test_standard_inquiry_allocation_length(dev, alloc):
    full = bytes(dev.execute(inquiry(alloc=4096)).data)
    res = assert_good(dev.execute(inquiry(alloc=alloc)))
    assert bytes(res.data) == full[:alloc] and res.read_len == min(alloc, 96)


def test_evpd_zero_with_page_code_is_invalid(dev):
    illegal(dev.execute(inquiry(evpd=0, page=1)), 0x24, field=2, in_cdb=True)


def test_cmddt_bit_refused(dev):
    illegal(dev.execute(inquiry(evpd=0x02)), 0x24, field=1, bit=1)


@pytest.mark.parametrize("page", [0x01, 0x81, 0x86, 0x89, 0xB3, 0xFF])
def test_unsupported_vpd_page(dev, page):
    illegal(dev.execute(inquiry(evpd=1, page=page)), 0x24, field=2)


def vpd(dev, page, alloc=1024) -> bytes:
    d = bytes(assert_good(dev.execute(inquiry(evpd=1, page=page, alloc=alloc))).data)
    assert d[0] == 0 and d[1] == page
    assert int.from_bytes(d[2:4], "big") == len(d) - 4
    return d


def test_supported_pages(dev):
    assert vpd(dev, 0x00) == bytes.fromhex("00 00 0007 00 80 83 8f b0 b1 b2")


def test_unit_serial_is_stable_hash_of_volume_id(dev):
    serial = hashlib.sha256(b"cdp-serial\0vol-0001").hexdigest()[:32]
    assert vpd(dev, 0x80) == bytes.fromhex("00 80 0020") + serial.encode()
    explicit = ScsiDevice(MemoryBackend(4096), DeviceIdentity("x", serial="ABC123"))
    assert vpd(explicit, 0x80) == bytes.fromhex("00 80 0006") + b"ABC123"


def test_device_identification(dev):
    d = vpd(dev, 0x83)
    serial = hashlib.sha256(b"cdp-serial\0vol-0001").hexdigest()[:32].encode()
    # NAA designator: binary, LU association, type 3, 16 bytes, NAA 6, OUI 00-14-05.
    assert d[4:8] == bytes([0x01, 0x03, 0x00, 16])
    naa = d[8:24]
    assert naa[0] >> 4 == 6
    assert (int.from_bytes(naa, "big") >> 100) & 0xFFFFFF == 0x001405
    assert naa == DeviceIdentity("vol-0001").naa
    # T10 vendor id designator: ASCII, type 1: vendor (8 bytes) + serial.
    t10 = d[24:]
    assert t10[:4] == bytes([0x02, 0x01, 0x00, 8 + len(serial)])
    assert t10[4:] == b"CDP     " + serial


def test_naa_is_stable_and_distinct_per_volume():
    a1, a2, b = DeviceIdentity("vol-a"), DeviceIdentity("vol-a"), DeviceIdentity("vol-b")
    assert a1.naa == a2.naa and a1.naa != b.naa
    own = DeviceIdentity("vol-a", naa_oui=0xABCDEF)
    assert (int.from_bytes(own.naa, "big") >> 100) & 0xFFFFFF == 0xABCDEF
    assert int.from_bytes(own.naa, "big") & ((1 << 100) - 1) == int.from_bytes(a1.naa, "big") & (
        (1 << 100) - 1
    )


def test_block_limits(dev):
    d = vpd(dev, 0xB0)
    assert len(d) == 64 and d[3] == 0x3C  # SBC-3 page length (libiscsi)
    assert d[4] == 0x00  # WSNZ 0: WRITE SAME with 0 blocks runs to the end
    assert d[5] == 4  # max compare and write (fixture)
    assert int.from_bytes(d[6:8], "big") == 8  # 4 KiB granularity / 512
    assert int.from_bytes(d[8:12], "big") == 128  # 64 KiB max transfer / 512
    assert int.from_bytes(d[12:16], "big") == 128  # optimal <= max
    assert int.from_bytes(d[16:20], "big") == 0  # max prefetch: no limit
    assert int.from_bytes(d[20:24], "big") == (512 << 20) // 512  # max unmap LBA count
    assert int.from_bytes(d[24:28], "big") == 256  # max unmap descriptors
    assert int.from_bytes(d[28:32], "big") == 8  # optimal unmap granularity
    assert int.from_bytes(d[32:36], "big") == 0  # no UGAVALID
    assert int.from_bytes(d[36:44], "big") == 128  # max write same: capped at max transfer
    assert d[44:] == bytes(20)


def test_block_limits_defaults_4k():
    dev = ScsiDevice(MemoryBackend(1 << 20, 4096), DeviceIdentity("v"))
    d = vpd(dev, 0xB0)
    assert d[5] == 1
    assert int.from_bytes(d[6:8], "big") == 1
    assert int.from_bytes(d[8:12], "big") == 2048
    assert int.from_bytes(d[12:16], "big") == 256
    # libiscsi: max unmap LBA count must be <= 1M blocks unless unlimited.
    assert int.from_bytes(d[20:24], "big") <= 1024 * 1024


def test_block_device_characteristics(dev):
    d = vpd(dev, 0xB1)
    assert len(d) == 64 and d[4:6] == b"\x00\x01" and d[6:] == bytes(58)


def test_logical_block_provisioning(dev):
    # LBPU | LBPWS | LBPWS10 | LBPRZ=001b; provisioning type 2 (thin).
    assert vpd(dev, 0xB2) == bytes.fromhex("00 b2 0004 00 e4 02 00")


@pytest.mark.parametrize("page", [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])
def test_vpd_allocation_length_truncates(dev, page):
    full = vpd(dev, page)
    for alloc in (0, 1, 4, len(full) - 1):
        res = assert_good(dev.execute(inquiry(evpd=1, page=page, alloc=alloc)))
        assert bytes(res.data) == full[:alloc]


def test_identity_validation():
    with pytest.raises(ValueError):
        DeviceIdentity("")
    with pytest.raises(ValueError):
        DeviceIdentity("v", product="x" * 17)
    with pytest.raises(ValueError):
        DeviceIdentity("v", revision="\x01")
    with pytest.raises(ValueError):
        DeviceIdentity("v", serial="has space")
    with pytest.raises(ValueError):
        DeviceIdentity("v", naa_oui=1 << 24)
    with pytest.raises(ValueError):
        Limits(max_transfer_bytes=512)
    with pytest.raises(ValueError):
        Limits(max_compare_and_write_blocks=256)
