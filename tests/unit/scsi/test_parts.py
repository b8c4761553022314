"""The building blocks: sense bytes, the data-out buffer, the in-memory backend."""

import array

import pytest

from appliance.scsi import BlockBackend, LbaRun, MemoryBackend, ProvisioningStatus
from appliance.scsi.backend import SupportsLbaStatus
from appliance.scsi.buffer import DataOut
from appliance.scsi.sense import fixed_sense, invalid_field_in_parameter_list, miscompare


def test_fixed_sense_layout():
    s = fixed_sense(0x5, (0x24, 0x00), field_pointer=0x0102, bit=5)
    assert s == bytes.fromhex("70 00 05 00000000 0a 00000000 24 00 00 cd 0102")
    s = fixed_sense(0xE, (0x1D, 0x00), information=0xDEADBEEF)
    assert s == bytes.fromhex("f0 00 0e deadbeef 0a 00000000 1d 00 00 00 0000")


def test_information_that_does_not_fit_leaves_valid_clear():
    s = miscompare(1 << 32).sense
    assert s[0] == 0x70 and s[3:7] == bytes(4)


def test_parameter_list_pointer_has_cd_clear():
    s = invalid_field_in_parameter_list(9).sense
    assert s[15] == 0x80 and s[16:18] == b"\x00\x09"


def test_data_out_joins_pieces_without_reading_past():
    buf = DataOut([b"abc", bytearray(b""), memoryview(b"defgh"), b"ij"])
    assert len(buf) == 10
    assert bytes(buf.get(0, 10)) == b"abcdefghij"
    assert bytes(buf.get(2, 4)) == b"cdef"
    assert bytes(buf.get(3, 5)) == b"defgh"
    assert isinstance(buf.get(4, 2), memoryview)  # zero-copy inside one piece
    assert buf.get(10, 0) == b""
    with pytest.raises(IndexError):
        buf.get(8, 3)
    with pytest.raises(IndexError):
        buf.get(-1, 1)
    assert len(DataOut(None)) == 0 and len(DataOut(b"")) == 0


def test_data_out_accepts_non_byte_views():
    words = array.array("H", [1, 2])
    assert DataOut(memoryview(words)).get_bytes(0, 4) == words.tobytes()
    strided = memoryview(b"abcdef")[::2]
    assert DataOut(strided).get_bytes(0, 3) == b"ace"


def test_memory_backend_contract():
    b = MemoryBackend(8 * 512)
    assert isinstance(b, BlockBackend) and isinstance(b, SupportsLbaStatus)
    b.write(512, b"x" * 512)
    assert b.read(512, 512) == b"x" * 512 and b.durable == bytes(8 * 512)
    b.flush()
    assert b.durable[512:1024] == b"x" * 512
    assert b.compare_and_write(512, b"x" * 511 + b"y", b"z" * 512, fua=False) == 511
    assert b.compare_and_write(512, b"x" * 512, b"z" * 512, fua=True) is None
    assert b.durable[512:1024] == b"z" * 512
    b.write_zeros(0, 2 * 512, unmap=True)
    D, M = ProvisioningStatus.DEALLOCATED, ProvisioningStatus.MAPPED
    assert list(b.lba_status(0, 8 * 512)) == [LbaRun(0, 8 * 512, D)]  # block 1 unmapped again
    b.write(3 * 512, b"m" * 512)
    b.write_zeros(4 * 512, 512)  # zeroed but still mapped
    assert list(b.lba_status(512, 7 * 512)) == [
        LbaRun(512, 2 * 512, D),
        LbaRun(3 * 512, 2 * 512, M),
        LbaRun(5 * 512, 3 * 512, D),
    ]
    with pytest.raises(ValueError):
        b.read(7 * 512, 1024)
    with pytest.raises(ValueError):
        b.write(1, b"x" * 512)
    with pytest.raises(ValueError):
        MemoryBackend(1000)
    b.fail_next("flush", OSError("boom"))
    with pytest.raises(OSError):
        b.flush()
    b.flush()
