"""VERIFY, WRITE AND VERIFY, COMPARE AND WRITE and ORWRITE."""

import pytest

from appliance.scsi import DeviceIdentity, ScsiDevice

from .cdbs import BLOCKS, BS, assert_good, assert_sense, caw, illegal, rw10, rw12, rw16

VERIFY = [(rw10, 0x2F), (rw12, 0xAF), (rw16, 0x8F)]
WRITE_VERIFY = [(rw10, 0x2E), (rw12, 0xAE), (rw16, 0x8E)]
BYTCHK1 = 0x02
BYTCHK3 = 0x06


def fill(backend, lba, data):
    backend.data[lba * BS : lba * BS + len(data)] = data


@pytest.mark.parametrize("build,op", VERIFY)
def test_verify_bytchk0_is_range_check_only(dev, backend, build, op):
    assert_good(dev.execute(build(op, 0, 10)))
    assert_good(dev.execute(build(op, 0, BLOCKS)))  # no transfer, no max-transfer limit
    assert_good(dev.execute(build(op, BLOCKS, 0)))
    illegal(dev.execute(build(op, BLOCKS - 1, 2)), 0x21)
    assert backend.ops == []


@pytest.mark.parametrize("build,op", VERIFY)
def test_verify_bytchk1_match_and_miscompare_offset(dev, backend, build, op):
    data = bytes(range(256)) * (3 * BS // 256)
    fill(backend, 100, data)
    assert_good(dev.execute(build(op, 100, 3, byte1=BYTCHK1), data))
    bad = bytearray(data)
    bad[BS + 27] ^= 0xFF
    res = dev.execute(build(op, 100, 3, byte1=BYTCHK1), bytes(bad))
    assert_sense(res, 0xE, 0x1D, 0x00, info=BS + 27)
    assert backend.snapshot()[100 * BS : 103 * BS] == data


def test_verify_bytchk1_limits_and_short_data(dev):
    illegal(dev.execute(rw10(0x2F, 0, 129, byte1=BYTCHK1), bytes(129 * BS)), 0x24, field=7)
    illegal(dev.execute(rw10(0x2F, 0, 2, byte1=BYTCHK1), bytes(BS)), 0x0E, 0x03)


def test_verify_bytchk3_compares_every_block_with_one(dev, backend):
    block = b"AB" * (BS // 2)
    fill(backend, 10, block * 5)
    assert_good(dev.execute(rw16(0x8F, 10, 5, byte1=BYTCHK3), block))
    backend.data[13 * BS + 3] = 0
    assert_sense(dev.execute(rw16(0x8F, 10, 5, byte1=BYTCHK3), block), 0xE, 0x1D, info=3 * BS + 3)


def test_verify_bytchk2_reserved(dev):
    illegal(dev.execute(rw10(0x2F, 0, 1, byte1=0x04), bytes(BS)), 0x24, field=1, bit=2)


def test_verify_flags(dev, backend):
    assert_good(dev.execute(rw10(0x2F, 0, 1, byte1=0x10)))  # DPO
    illegal(dev.execute(rw10(0x2F, 0, 1, byte1=0x20)), 0x24, field=1, bit=5)  # VRPROTECT
    illegal(dev.execute(rw10(0x2F, 0, 1, byte1=0x08)), 0x24, field=1, bit=3)  # reserved


@pytest.mark.parametrize("build,op", WRITE_VERIFY)
def test_write_and_verify_writes_with_fua(dev, backend, build, op):
    data = b"V" * (2 * BS)
    assert_good(dev.execute(build(op, 8, 2), data))
    assert backend.ops == [("write", 8 * BS, 2 * BS, True)]
    assert backend.durable[8 * BS : 10 * BS] == data
    assert_good(dev.execute(build(op, 8, 2, byte1=BYTCHK1), data))
    illegal(dev.execute(build(op, 8, 2, byte1=0x04), data), 0x24, field=1, bit=2)
    illegal(dev.execute(build(op, 8, 2, byte1=0x08), data), 0x24, field=1, bit=3)  # no FUA bit
    illegal(dev.execute(build(op, BLOCKS - 1, 2), data), 0x21)
    assert_good(dev.execute(build(op, 0, 0)))


# -- COMPARE AND WRITE -------------------------------------------------------------


def test_caw_success_writes_new_data(dev, backend):
    fill(backend, 50, b"A" * 2 * BS)
    res = dev.execute(caw(50, 2), b"A" * 2 * BS + b"B" * 2 * BS)
    assert_good(res)
    assert backend.data[50 * BS : 52 * BS] == b"B" * 2 * BS
    assert backend.ops[-1] == ("compare_and_write", 50 * BS, 2 * BS, False)


def test_caw_miscompare_reports_offset_and_writes_nothing(dev, backend):
    fill(backend, 50, b"A" * 2 * BS)
    verify = bytearray(b"A" * 2 * BS)
    verify[2 * BS - 27] = ord("C")  # byte 27 from the end (libiscsi's Miscompare)
    res = dev.execute(caw(50, 2), bytes(verify) + b"B" * 2 * BS)
    assert_sense(res, 0xE, 0x1D, 0x00, info=2 * BS - 27)
    assert backend.data[50 * BS : 52 * BS] == b"A" * 2 * BS


def test_caw_fua_and_wce(dev, backend):
    assert_good(dev.execute(caw(0, 1, byte1=0x08), bytes(BS) + b"x" * BS))
    assert backend.ops[-1][3] is True and backend.durable[:BS] == b"x" * BS
    dev.write_cache = False
    assert_good(dev.execute(caw(0, 1), b"x" * BS + b"y" * BS))
    assert backend.ops[-1][3] is True


def test_caw_limits(dev, backend):
    before = backend.snapshot()
    illegal(dev.execute(caw(0, 5), bytes(10 * BS)), 0x24, field=13)  # fixture max is 4
    illegal(dev.execute(caw(BLOCKS - 1, 2), bytes(4 * BS)), 0x21)
    illegal(dev.execute(caw(0, 2), bytes(3 * BS)), 0x0E, 0x03)  # data-out too short
    illegal(dev.execute(caw(0, 1, byte1=0x04), bytes(2 * BS)), 0x24, field=1, bit=2)
    assert_good(dev.execute(caw(0, 0)))  # zero blocks: nothing to do
    assert backend.snapshot() == before and backend.ops == []


def test_caw_default_max_is_one_block(backend):
    dev = ScsiDevice(backend, DeviceIdentity("v"))
    illegal(dev.execute(caw(0, 2), bytes(4 * BS)), 0x24, field=13)
    assert_good(dev.execute(caw(0, 1), bytes(2 * BS)))


# -- ORWRITE --------------------------------------------------------------------------


def test_orwrite_ors_into_the_medium(dev, backend):
    fill(backend, 3, bytes([0x0F]) * BS)
    assert_good(dev.execute(rw16(0x8B, 3, 1), bytes([0xF0]) * BS))
    assert backend.data[3 * BS : 4 * BS] == b"\xff" * BS
    assert_good(dev.execute(rw16(0x8B, 3, 1, byte1=0x08), bytes([0x01]) * BS))  # unchanged
    assert backend.ops[-1] == ("flush",)  # FUA on an unchanged range still makes it durable
    illegal(dev.execute(rw16(0x8B, BLOCKS, 1), bytes(BS)), 0x21)
    illegal(dev.execute(rw16(0x8B, 0, 1, byte1=0x20), bytes(BS)), 0x24, field=1, bit=5)


def test_orwrite_gives_busy_when_it_keeps_losing_the_race(dev, backend):
    real = backend.compare_and_write
    calls = []

    def always_changed(offset, expected, new, *, fua):
        calls.append(offset)
        return 0

    backend.compare_and_write = always_changed
    res = dev.execute(rw16(0x8B, 0, 1), b"\x01" * BS)
    assert res.status == 0x08 and res.sense == b""
    assert len(calls) == 8
    backend.compare_and_write = real


def test_caw_with_more_data_than_the_cdb_names_is_refused(dev, backend):
    """libiscsi sends 256 blocks: the one-byte count wraps to 0 (regression from the VM run)."""
    before = backend.snapshot()
    illegal(dev.execute(caw(0, 0), bytes(2 * BS)), 0x24, field=13)
    illegal(dev.execute(caw(0, 1), bytes(4 * BS)), 0x24, field=13)
    assert backend.snapshot() == before and backend.ops == []
