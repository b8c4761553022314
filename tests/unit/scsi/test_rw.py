"""READ/WRITE 6/10/12/16: decoding, ranges, limits, FUA and the write cache."""

import pytest

from appliance.scsi import DeviceIdentity, MemoryBackend, ScsiDevice

from .cdbs import BLOCKS, BS, assert_good, illegal, rw6, rw10, rw12, rw16

MAX_BLOCKS = 128  # the fixture's 64 KiB max transfer

READS = [(rw10, 0x28), (rw12, 0xA8), (rw16, 0x88)]
WRITES = [(rw10, 0x2A), (rw12, 0xAA), (rw16, 0x8A)]
TL_FIELD = {0x28: 7, 0x2A: 7, 0xA8: 6, 0xAA: 6, 0x88: 10, 0x8A: 10}


def pattern(blocks: int, seed: int = 1) -> bytes:
    return bytes((seed * 7 + i) % 251 for i in range(blocks * BS))


@pytest.mark.parametrize("build,op", WRITES)
def test_write_then_read_every_size(dev, backend, build, op):
    data = pattern(3)
    assert_good(dev.execute(build(op, 10, 3), data))
    assert backend.data[10 * BS : 13 * BS] == data
    read_op = op - 2
    res = assert_good(dev.execute(build(read_op, 10, 3)))
    assert bytes(res.data) == data and res.read_len == 3 * BS


def test_read6_write6_and_zero_means_256(backend):
    dev = ScsiDevice(backend, DeviceIdentity("v"))  # default 8 MiB max transfer
    data = pattern(256)
    assert_good(dev.execute(rw6(0x0A, 5, 0), data))
    assert backend.data[5 * BS : 261 * BS] == data
    res = assert_good(dev.execute(rw6(0x08, 5, 0)))
    assert res.read_len == 256 * BS
    res = assert_good(dev.execute(rw6(0x08, 6, 1)))
    assert bytes(res.data) == data[BS : 2 * BS]


def test_read6_zero_means_256_and_is_checked_against_max_transfer(dev):
    illegal(dev.execute(rw6(0x08, 0, 0)), 0x24, field=4)


def test_read6_lba_is_21_bits(dev):
    # LBA 0x1F0000 is beyond the 2048-block volume: out of range, not truncated.
    illegal(dev.execute(rw6(0x08, 0x1F0000, 1)), 0x21)
    # The top three bits of byte 1 are reserved (old LUN field).
    illegal(dev.execute(bytes([0x08, 0x20, 0, 0, 1, 0])), 0x24, field=1, bit=5, in_cdb=True)


@pytest.mark.parametrize("build,op", READS + WRITES)
def test_zero_length_is_a_noop(dev, backend, build, op):
    assert_good(dev.execute(build(op, 0, 0)))
    assert_good(dev.execute(build(op, BLOCKS, 0)))  # LBA == capacity, no blocks
    assert [o for o in backend.ops if o[0] != "read"] == []
    illegal(dev.execute(build(op, BLOCKS + 1, 0)), 0x21)


@pytest.mark.parametrize("build,op", READS + WRITES)
def test_lba_out_of_range(dev, backend, build, op):
    data = pattern(2)
    illegal(dev.execute(build(op, BLOCKS - 1, 2), data), 0x21)
    illegal(dev.execute(build(op, BLOCKS, 1), data), 0x21)
    assert_good(dev.execute(build(op, BLOCKS - 2, 2), data))


def test_lba_out_of_range_huge_lba16(dev):
    illegal(dev.execute(rw16(0x88, 2**64 - 1, 1)), 0x21)
    illegal(dev.execute(rw16(0x8A, 2**63, 1), bytes(BS)), 0x21)


@pytest.mark.parametrize("build,op", READS + WRITES)
def test_transfer_beyond_max_is_invalid_field(dev, backend, build, op):
    res = dev.execute(build(op, 0, MAX_BLOCKS + 1), bytes((MAX_BLOCKS + 1) * BS))
    illegal(res, 0x24, field=TL_FIELD[op], in_cdb=True)
    assert_good(dev.execute(build(op, 0, MAX_BLOCKS), bytes(MAX_BLOCKS * BS)))


def test_max_transfer_is_checked_before_range(dev):
    illegal(dev.execute(rw10(0x28, BLOCKS + 5, MAX_BLOCKS + 1)), 0x24, field=7)


@pytest.mark.parametrize("build,op", READS + WRITES)
@pytest.mark.parametrize("protect", [1, 4, 7])
def test_rdprotect_wrprotect_refused(dev, backend, build, op, protect):
    before = backend.snapshot()
    res = dev.execute(build(op, 0, 1, byte1=protect << 5), bytes(BS))
    illegal(res, 0x24, field=1, bit=7 if protect >= 4 else 5, in_cdb=True)
    assert backend.snapshot() == before


@pytest.mark.parametrize("build,op", READS + WRITES)
def test_dpo_fua_and_group_accepted(dev, build, op):
    assert_good(dev.execute(build(op, 0, 1, byte1=0x18, group=0x3F), bytes(BS)))


def test_reserved_bit_in_write10_byte1(dev, backend):
    # WRITE(10) byte 1 bit 2 is reserved (RARC exists only on reads).
    illegal(dev.execute(rw10(0x2A, 0, 1, byte1=0x04), bytes(BS)), 0x24, field=1, bit=2)
    assert_good(dev.execute(rw10(0x28, 0, 1, byte1=0x04)))
    assert backend.ops == [("read", 0, BS)]


def test_naca_in_control_byte_refused(dev):
    cdb = bytearray(rw10(0x28, 0, 1))
    cdb[9] = 0x04
    illegal(dev.execute(bytes(cdb)), 0x24, field=9, bit=2, in_cdb=True)
    cdb[9] = 0xC0  # vendor-specific control bits are ignored
    assert_good(dev.execute(bytes(cdb)))


@pytest.mark.parametrize("build,op", WRITES)
def test_fua_bit_reaches_backend(dev, backend, build, op):
    assert_good(dev.execute(build(op, 4, 1, byte1=0x08), b"F" * BS))
    assert backend.ops[-1] == ("write", 4 * BS, BS, True)
    assert backend.durable[4 * BS : 5 * BS] == b"F" * BS
    assert_good(dev.execute(build(op, 5, 1), b"N" * BS))
    assert backend.ops[-1] == ("write", 5 * BS, BS, False)
    assert backend.durable[5 * BS : 6 * BS] == bytes(BS)  # still only in cache


def test_write6_has_no_fua_and_wce0_forces_it(dev, backend):
    assert_good(dev.execute(rw6(0x0A, 1, 1), b"x" * BS))
    assert backend.ops[-1][3] is False
    dev.write_cache = False
    assert_good(dev.execute(rw6(0x0A, 1, 1), b"y" * BS))
    assert backend.ops[-1][3] is True
    assert_good(dev.execute(rw10(0x2A, 1, 1), b"z" * BS))
    assert backend.ops[-1] == ("write", BS, BS, True)
    assert backend.durable[BS : 2 * BS] == b"z" * BS


@pytest.mark.parametrize("build,op", WRITES)
def test_short_data_out_refused_without_reading_past(dev, backend, build, op):
    before = backend.snapshot()
    res = dev.execute(build(op, 0, 2), b"a" * (2 * BS - 1))
    illegal(res, 0x0E, 0x03)
    illegal(dev.execute(build(op, 0, 2)), 0x0E, 0x03)
    assert backend.snapshot() == before and backend.ops == []


def test_longer_data_out_uses_the_transfer_length(dev, backend):
    assert_good(dev.execute(rw10(0x2A, 0, 1), b"a" * BS + b"b" * BS))
    assert backend.data[: 2 * BS] == b"a" * BS + bytes(BS)


def test_iovec_list_is_one_logical_buffer(dev, backend):
    data = pattern(3, seed=5)
    pieces = [memoryview(data)[:100], memoryview(data)[100:1000], memoryview(data)[1000:]]
    assert_good(dev.execute(rw16(0x8A, 7, 3), pieces))
    assert backend.data[7 * BS : 10 * BS] == data
    pieces = [memoryview(bytearray(b"q" * 700)), memoryview(bytearray(b"r" * 300))]
    illegal(dev.execute(rw16(0x8A, 7, 3), pieces), 0x0E, 0x03)


def test_cdb_tail_beyond_command_length_is_ignored(dev):
    cdb = rw10(0x28, 0, 1) + b"\xff" * 6  # a 16-byte CDB area from the ring
    res = assert_good(dev.execute(cdb))
    assert res.read_len == BS


def test_short_cdb_refused(dev):
    illegal(dev.execute(rw10(0x28, 0, 1)[:9]), 0x24)


def test_4k_block_device():
    backend = MemoryBackend(64 * 4096, 4096)
    dev = ScsiDevice(backend, DeviceIdentity("v4k"))
    assert_good(dev.execute(rw10(0x2A, 63, 1), b"k" * 4096))
    assert bytes(dev.execute(rw10(0x28, 63, 1)).data) == b"k" * 4096
    illegal(dev.execute(rw10(0x28, 63, 2)), 0x21)
    # 8 MiB default max transfer = 2048 blocks of 4 KiB.
    illegal(dev.execute(rw16(0x88, 0, 2049)), 0x24, field=10)
