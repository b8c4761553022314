"""MODE SENSE / MODE SELECT: page layouts, page control, DBD/LLBAA, WCE toggling."""

import pytest

from appliance.scsi import DeviceIdentity, ScsiDevice

from .cdbs import (
    BLOCKS,
    BS,
    assert_good,
    assert_sense,
    illegal,
    mode_select6,
    mode_select10,
    mode_sense6,
    mode_sense10,
    rw10,
)

CACHING_WCE = bytes.fromhex("08 12 04") + bytes(17)
CACHING_NO_WCE = bytes.fromhex("08 12 00") + bytes(17)
CONTROL = bytes.fromhex("0a 0a 02 10") + bytes(8)
IEC = bytes.fromhex("1c 0a 08") + bytes(9)
SHORT_DESCRIPTOR = BLOCKS.to_bytes(4, "big") + b"\0" + BS.to_bytes(3, "big")


def test_mode_sense6_all_pages_exact(dev):
    d = bytes(assert_good(dev.execute(mode_sense6(0x3F))).data)
    body = SHORT_DESCRIPTOR + CACHING_WCE + CONTROL + IEC
    assert d == bytes([3 + len(body), 0x00, 0x10, 8]) + body  # DPOFUA, no WP


def test_mode_sense6_dbd_and_single_page(dev):
    d = bytes(assert_good(dev.execute(mode_sense6(0x08, dbd=True))).data)
    assert d == bytes([3 + 20, 0, 0x10, 0]) + CACHING_WCE
    d = bytes(assert_good(dev.execute(mode_sense6(0x0A, dbd=True))).data)
    assert d == bytes([3 + 12, 0, 0x10, 0]) + CONTROL
    d = bytes(assert_good(dev.execute(mode_sense6(0x1C, dbd=True))).data)
    assert d == bytes([3 + 12, 0, 0x10, 0]) + IEC


def test_mode_sense10_header_and_long_lba_descriptor(dev):
    d = bytes(assert_good(dev.execute(mode_sense10(0x08))).data)
    assert d == (8 + 8 + 20 - 2).to_bytes(2, "big") + bytes([0, 0x10, 0, 0, 0, 8]) + (
        SHORT_DESCRIPTOR + CACHING_WCE
    )
    d = bytes(assert_good(dev.execute(mode_sense10(0x08, llbaa=True))).data)
    long_descriptor = BLOCKS.to_bytes(8, "big") + bytes(4) + BS.to_bytes(4, "big")
    assert d == (8 + 16 + 20 - 2).to_bytes(2, "big") + bytes([0, 0x10, 1, 0, 0, 16]) + (
        long_descriptor + CACHING_WCE
    )
    d = bytes(assert_good(dev.execute(mode_sense10(0x08, dbd=True, llbaa=True))).data)
    assert d == (8 + 20 - 2).to_bytes(2, "big") + bytes([0, 0x10, 0, 0, 0, 0]) + CACHING_WCE


def test_mode_sense6_rejects_llbaa_bit(dev):
    illegal(dev.execute(bytes([0x1A, 0x10, 0x3F, 0, 255, 0])), 0x24, field=1, bit=4)


def test_page_control_changeable_and_default(dev):
    d = bytes(assert_good(dev.execute(mode_sense6(0x3F, pc=1, dbd=True))).data)
    changeable = (
        (bytes.fromhex("08 12 04") + bytes(17) + bytes.fromhex("0a 0a") + bytes(10))
        + bytes.fromhex("1c 0a")
        + bytes(10)
    )
    assert d[4:] == changeable
    dev.write_cache = False
    d = bytes(assert_good(dev.execute(mode_sense6(0x08, pc=2, dbd=True))).data)
    assert d[4:] == CACHING_WCE  # default is WCE=1 whatever the current value
    d = bytes(assert_good(dev.execute(mode_sense6(0x08, pc=0, dbd=True))).data)
    assert d[4:] == CACHING_NO_WCE


def test_saved_values_not_supported(dev):
    illegal(dev.execute(mode_sense6(0x3F, pc=3)), 0x39)
    illegal(dev.execute(mode_sense10(0x08, pc=3)), 0x39)


@pytest.mark.parametrize("page", [0x00, 0x01, 0x02, 0x19, 0x3E])
def test_unsupported_page(dev, page):
    illegal(dev.execute(mode_sense6(page)), 0x24, field=2, bit=5)


def test_subpages(dev):
    all_sub = bytes(assert_good(dev.execute(mode_sense6(0x3F, subpage=0xFF))).data)
    assert all_sub == bytes(dev.execute(mode_sense6(0x3F)).data)
    illegal(dev.execute(mode_sense6(0x08, subpage=0x01)), 0x24, field=3)


@pytest.mark.parametrize("alloc", [0, 1, 4, 12, 55])
def test_mode_sense_allocation_length(dev, alloc):
    full = bytes(dev.execute(mode_sense6(0x3F)).data)
    res = assert_good(dev.execute(mode_sense6(0x3F, alloc=alloc)))
    assert bytes(res.data) == full[:alloc]  # no overflow: at most alloc bytes


def test_read_only_sets_wp(backend):
    ro = ScsiDevice(backend, DeviceIdentity("ro"), read_only=True)
    assert bytes(ro.execute(mode_sense6(0x08)).data)[2] == 0x90
    assert bytes(ro.execute(mode_sense10(0x08)).data)[3] == 0x90


# -- MODE SELECT -----------------------------------------------------------------


def select6_params(page: bytes, descriptor: bytes = b"") -> bytes:
    return bytes([0, 0, 0, len(descriptor)]) + descriptor + page


def select10_params(page: bytes, descriptor: bytes = b"", longlba: bool = False) -> bytes:
    head = bytes([0, 0, 0, 0, 1 if longlba else 0, 0]) + len(descriptor).to_bytes(2, "big")
    return head + descriptor + page


def test_mode_select6_toggles_wce_and_writes_become_fua(dev, backend):
    params = select6_params(CACHING_NO_WCE)
    assert_good(dev.execute(mode_select6(len(params)), params))
    assert dev.write_cache is False
    d = bytes(dev.execute(mode_sense6(0x08, dbd=True)).data)
    assert d[4:] == CACHING_NO_WCE
    assert_good(dev.execute(rw10(0x2A, 0, 1), b"w" * BS))
    assert backend.ops[-1] == ("write", 0, BS, True)
    params = select6_params(CACHING_WCE)
    assert_good(dev.execute(mode_select6(len(params)), params))
    assert dev.write_cache is True
    assert_good(dev.execute(rw10(0x2A, 0, 1), b"w" * BS))
    assert backend.ops[-1] == ("write", 0, BS, False)


def test_mode_select10_with_block_descriptors(dev):
    params = select10_params(CACHING_NO_WCE, SHORT_DESCRIPTOR)
    assert_good(dev.execute(mode_select10(len(params)), params))
    assert dev.write_cache is False
    long_descriptor = bytes(8) + bytes(4) + BS.to_bytes(4, "big")  # 0 blocks: unchanged
    params = select10_params(CACHING_WCE, long_descriptor, longlba=True)
    assert_good(dev.execute(mode_select10(len(params)), params))
    assert dev.write_cache is True


def test_mode_select_accepts_what_linux_sd_sends(dev):
    # sd_cache_type_store: MODE SENSE page 8 with DBD, flip WCE, clear PS,
    # MODE SELECT(10) with PF=1, a zero header and no block descriptor.
    page = bytearray(bytes(dev.execute(mode_sense10(0x08, dbd=True)).data)[8:])
    page[2] &= ~0x05
    params = bytes(8) + bytes(page)
    assert_good(dev.execute(mode_select10(len(params)), params))
    assert dev.write_cache is False


def test_mode_select_several_pages_and_empty_list(dev):
    params = select6_params(CONTROL + CACHING_NO_WCE + IEC)
    assert_good(dev.execute(mode_select6(len(params)), params))
    assert dev.write_cache is False
    assert_good(dev.execute(mode_select6(0)))  # nothing to do
    assert_good(dev.execute(mode_select6(4), bytes(4)))  # header only
    assert dev.write_cache is False


def test_mode_select_refuses_non_changeable_bits(dev):
    rcd = bytearray(CACHING_WCE)
    rcd[2] |= 0x01  # RCD: not changeable
    params = select6_params(bytes(rcd))
    illegal(dev.execute(mode_select6(len(params)), params), 0x26, field=6, bit=0, in_cdb=False)
    d_sense = bytearray(CONTROL)
    d_sense[2] |= 0x04
    params = select6_params(CACHING_NO_WCE + bytes(d_sense))
    illegal(dev.execute(mode_select6(len(params)), params), 0x26, field=4 + 20 + 2, bit=2)
    assert dev.write_cache is True  # nothing applied from a refused list


@pytest.mark.parametrize(
    "params,field",
    [
        (bytes([0, 1, 0, 0]) + CACHING_WCE, 1),  # medium type
        (bytes([0, 0, 0x80, 0]) + CACHING_WCE, 2),  # WP
        (bytes([0, 0, 0, 4]) + bytes(4) + CACHING_WCE, 3),  # descriptor length 4
        (select6_params(bytes.fromhex("01 0a") + bytes(10)), 4),  # unsupported page
        (select6_params(bytes.fromhex("48 12") + bytes(18)), 4),  # SPF subpage format
        (select6_params(bytes.fromhex("08 10") + bytes(16)), 5),  # wrong page length
        (select6_params(CACHING_WCE, (1).to_bytes(4, "big") + bytes([0, 0, 2, 0])), 4),
        (select6_params(CACHING_WCE, SHORT_DESCRIPTOR[:5] + bytes([0, 0x10, 0])), 9),
    ],
)
def test_mode_select_invalid_parameter_list(dev, params, field):
    illegal(dev.execute(mode_select6(len(params)), params), 0x26, field=field, in_cdb=False)
    assert dev.write_cache is True


def test_mode_select_length_errors(dev):
    illegal(dev.execute(mode_select6(3), bytes(3)), 0x1A)  # shorter than the header
    params = select6_params(CACHING_NO_WCE)
    illegal(dev.execute(mode_select6(len(params)), params[:-1]), 0x1A)  # short data-out
    illegal(dev.execute(mode_select6(len(params) - 1), params), 0x1A)  # page cut off
    illegal(dev.execute(mode_select6(5), bytes(5)), 0x1A)  # one stray byte
    illegal(dev.execute(mode_select6(12), bytes([0, 0, 0, 16]) + bytes(8)), 0x26, field=3)
    assert dev.write_cache is True


def test_mode_select_cdb_checks(dev):
    params = select6_params(CACHING_NO_WCE)
    illegal(dev.execute(mode_select6(len(params), sp=True), params), 0x24, field=1, bit=0)
    illegal(dev.execute(mode_select6(len(params), pf=False), params), 0x24, field=1, bit=4)
    illegal(dev.execute(mode_select10(len(params), sp=True), params), 0x24, field=1, bit=0)
    assert dev.write_cache is True


def test_write_cache_state_is_per_device(backend):
    a = ScsiDevice(backend, DeviceIdentity("a"))
    b = ScsiDevice(backend, DeviceIdentity("b"), write_cache=False)
    params = select6_params(CACHING_NO_WCE)
    assert_good(a.execute(mode_select6(len(params)), params))
    assert not a.write_cache and not b.write_cache
    params = select6_params(CACHING_WCE)
    assert_good(b.execute(mode_select6(len(params)), params))
    assert not a.write_cache and b.write_cache
    sense = assert_sense(a.execute(mode_sense6(0x08, pc=3)), 0x5, 0x39)
    assert sense[15] == 0  # no field pointer
