"""INQUIRY: standard data (SPC-4 6.6.2) and the VPD pages (SPC-4 7.8, SBC-3 6.6).

Standard data, 96 bytes:

=====  =====================================================================
byte   content
=====  =====================================================================
0      peripheral qualifier 0, device type 00h (direct access block device)
2      VERSION 06h (SPC-4)
3      HISUP (bit 4) | RESPONSE DATA FORMAT 2
4      ADDITIONAL LENGTH (91)
5      3PC (bit 3: EXTENDED COPY); no TPGS (ALUA is not advertised), no PROTECT
7      CMDQUE (bit 1)
8-15   vendor ``CDP``, 16-31 product, 32-35 revision (ASCII, space padded)
58-73  version descriptors: SAM-5, SPC-4, SBC-3 (libiscsi keys SBC-3 tests
       on the last one)
=====  =====================================================================

VPD pages: 00h supported pages, 80h unit serial, 83h device identification
(NAA type 6 + T10 vendor id), 8Fh third-party copy (see :mod:`.xcopy`),
B0h block limits, B1h block device characteristics (non-rotating), B2h
logical block provisioning (thin, UNMAP and WRITE SAME unmap, deallocated
blocks read as zeros).
"""

from __future__ import annotations

from collections.abc import Callable

from .cdb import be
from .config import VENDOR, BlockLimits, DeviceIdentity
from .constants import VERSION_SAM5, VERSION_SBC3, VERSION_SPC4
from .result import ScsiResult, data_in
from .sense import invalid_field_in_cdb

STANDARD_INQUIRY_LEN = 96


def standard_inquiry(identity: DeviceIdentity) -> bytes:
    buf = bytearray(STANDARD_INQUIRY_LEN)
    buf[2] = 0x06
    buf[3] = 0x10 | 0x02
    buf[4] = STANDARD_INQUIRY_LEN - 5
    buf[5] = 0x08  # 3PC
    buf[7] = 0x02
    buf[8:16] = VENDOR.ljust(8).encode()
    buf[16:32] = identity.product.ljust(16).encode()
    buf[32:36] = identity.revision.ljust(4).encode()
    for i, version in enumerate((VERSION_SAM5, VERSION_SPC4, VERSION_SBC3)):
        buf[58 + 2 * i : 60 + 2 * i] = version.to_bytes(2, "big")
    return bytes(buf)


def _page(code: int, body: bytes) -> bytes:
    return bytes([0x00, code]) + len(body).to_bytes(2, "big") + body


def _designator(code_set: int, kind: int, value: bytes) -> bytes:
    # protocol id 0 | code set; PIV 0, association 0 (the LU) | designator type
    return bytes([code_set, kind, 0, len(value)]) + value


def _supported_pages(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    return _page(0x00, bytes(sorted(VPD_PAGES)))


def _unit_serial(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    return _page(0x80, identity.unit_serial.encode())


def lu_designators(identity: DeviceIdentity) -> list[bytes]:
    """The logical unit's designators (4-byte header + value) as VPD 83h lists
    them; EXTENDED COPY recognises this LUN by any of them."""
    naa = _designator(0x01, 0x03, identity.naa)
    t10 = _designator(0x02, 0x01, VENDOR.ljust(8).encode() + identity.unit_serial.encode())
    return [naa, t10]


def _device_identification(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    return _page(0x83, b"".join(lu_designators(identity)))


def _third_party_copy(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    from .xcopy import third_party_copy_vpd_body  # xcopy imports this module

    return _page(0x8F, third_party_copy_vpd_body())


def _block_limits(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    body = bytearray(0x3C)  # page length 3Ch: the SBC-3 layout
    body[0] = 0x00  # WSNZ 0: WRITE SAME with 0 blocks runs to the end of the medium
    body[1] = limits.max_compare_and_write
    body[2:4] = limits.granularity.to_bytes(2, "big")
    body[4:8] = limits.max_transfer.to_bytes(4, "big")
    body[8:12] = limits.optimal_transfer.to_bytes(4, "big")
    # 12-15 MAXIMUM PREFETCH LENGTH 0: no limit (PRE-FETCH only checks ranges)
    body[16:20] = limits.max_unmap.to_bytes(4, "big")
    body[20:24] = limits.max_unmap_descriptors.to_bytes(4, "big")
    body[24:28] = limits.granularity.to_bytes(4, "big")
    body[32:40] = limits.max_write_same.to_bytes(8, "big")
    return _page(0xB0, bytes(body))


def _block_device_characteristics(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    body = bytearray(0x3C)
    body[0:2] = (1).to_bytes(2, "big")  # MEDIUM ROTATION RATE 1: non-rotating
    return _page(0xB1, bytes(body))


def _logical_block_provisioning(identity: DeviceIdentity, limits: BlockLimits) -> bytes:
    body = bytearray(4)
    # LBPU | LBPWS | LBPWS10 | LBPRZ=001b (bits 4-2); no anchors, no descriptor
    body[1] = 0x80 | 0x40 | 0x20 | 0x04
    body[2] = 0x02  # PROVISIONING TYPE: thin
    return _page(0xB2, bytes(body))


VPD_PAGES: dict[int, Callable[[DeviceIdentity, BlockLimits], bytes]] = {
    0x00: _supported_pages,
    0x80: _unit_serial,
    0x83: _device_identification,
    0x8F: _third_party_copy,
    0xB0: _block_limits,
    0xB1: _block_device_characteristics,
    0xB2: _logical_block_provisioning,
}


def inquiry(cdb: bytes, identity: DeviceIdentity, limits: BlockLimits) -> ScsiResult:
    evpd = cdb[1] & 0x01
    page = cdb[2]
    allocation_length = be(cdb, 3, 2)
    if not evpd:
        if page:
            raise invalid_field_in_cdb(2)
        return data_in(standard_inquiry(identity), allocation_length)
    build = VPD_PAGES.get(page)
    if build is None:
        raise invalid_field_in_cdb(2)
    return data_in(build(identity, limits), allocation_length)
