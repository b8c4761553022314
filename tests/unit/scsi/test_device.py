"""The dispatcher and the small commands: TUR, REQUEST SENSE, READ CAPACITY,
START STOP UNIT, READ DEFECT DATA, SYNCHRONIZE CACHE, PRE-FETCH, REPORT
SUPPORTED OPERATION CODES, unknown opcodes and backend error mapping."""

import logging

import pytest

from appliance.scsi import (
    BackendBusy,
    BackendQueueFull,
    DeviceIdentity,
    MediumError,
    MemoryBackend,
    NotReady,
    ScsiDevice,
    SpaceAllocationFailed,
    Status,
    WriteProtected,
)
from appliance.scsi.cdb import COMMANDS, check_cdb

from .cdbs import (
    BLOCKS,
    BS,
    assert_good,
    assert_sense,
    be,
    caw,
    illegal,
    read_capacity16,
    rsoc,
    rw10,
    rw16,
    unmap_cdb,
    unmap_params,
)


def test_test_unit_ready(dev):
    assert_good(dev.execute(bytes(6)))
    illegal(dev.execute(bytes([0, 1, 0, 0, 0, 0])), 0x24, field=1, bit=0)


def test_test_unit_ready_asks_a_backend_that_can_tell(backend):
    class Restoring(MemoryBackend):
        def check_ready(self):
            raise NotReady("restore in progress", ascq=0x03)

    dev = ScsiDevice(Restoring(BS * 8), DeviceIdentity("v"))
    assert_sense(dev.execute(bytes(6)), 0x2, 0x04, 0x03)


def test_request_sense_no_sense(dev):
    d = bytes(assert_good(dev.execute(bytes([0x03, 0, 0, 0, 252, 0]))).data)
    assert d == bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10)
    d = bytes(assert_good(dev.execute(bytes([0x03, 1, 0, 0, 252, 0]))).data)
    assert d == bytes([0x72, 0, 0, 0, 0, 0, 0, 0])
    assert dev.execute(bytes([0x03, 0, 0, 0, 8, 0])).read_len == 8
    assert dev.execute(bytes([0x03, 0, 0, 0, 0, 0])).read_len == 0


def test_read_capacity10(dev):
    d = bytes(assert_good(dev.execute(bytes([0x25] + [0] * 9))).data)
    assert d == be(BLOCKS - 1, 4) + be(BS, 4)
    illegal(dev.execute(bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])), 0x24, field=2)
    assert_good(dev.execute(bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0])))  # PMI


def test_read_capacity10_too_big_reports_ffffffff():
    class Huge:
        size, block_size = (2**33) * 512, 512

    dev = ScsiDevice(Huge(), DeviceIdentity("v"))
    d = bytes(assert_good(dev.execute(bytes([0x25] + [0] * 9))).data)
    assert d == b"\xff\xff\xff\xff" + be(512, 4)
    d = bytes(assert_good(dev.execute(read_capacity16())).data)
    assert d[:8] == be(2**33 - 1, 8)


def test_read_capacity16(dev):
    d = bytes(assert_good(dev.execute(read_capacity16())).data)
    assert d[:8] == be(BLOCKS - 1, 8) and d[8:12] == be(BS, 4)
    assert d[12] == 0  # no protection
    assert d[13] == 3  # LBPPBE 3: 4 KiB physical blocks (the granularity) of 512 bytes
    assert d[14] == 0xC0 and d[15] == 0  # LBPME | LBPRZ, lowest aligned LBA 0
    assert d[16:] == bytes(16)
    assert bytes(dev.execute(read_capacity16(alloc=12)).data) == d[:12]
    assert dev.execute(read_capacity16(alloc=0)).read_len == 0
    illegal(dev.execute(read_capacity16(lba=1)), 0x24, field=2)
    assert_good(dev.execute(read_capacity16(lba=1, pmi=1)))


def test_capacity_follows_backend_size(dev, backend):
    backend.size //= 2
    d = bytes(dev.execute(read_capacity16()).data)
    assert d[:8] == be(BLOCKS // 2 - 1, 8)
    illegal(dev.execute(rw10(0x28, BLOCKS // 2, 1)), 0x21)


def test_start_stop_unit(dev):
    for byte4 in (0x00, 0x01, 0x05, 0x11, 0x30, 0x71):
        assert_good(dev.execute(bytes([0x1B, 1, 0, 0, byte4, 0])))
    illegal(dev.execute(bytes([0x1B, 1, 0, 0, 0x02, 0])), 0x24, field=4, bit=1)  # eject
    illegal(dev.execute(bytes([0x1B, 1, 0, 0, 0x08, 0])), 0x24, field=4, bit=3)


def test_read_defect_data(dev):
    d = bytes(assert_good(dev.execute(bytes([0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0]))).data)
    assert d == bytes([0, 0x1D, 0, 0])
    cdb = bytes([0xB7, 0x0D]) + bytes(4) + be(32, 4) + bytes(2)
    assert bytes(assert_good(dev.execute(cdb)).data) == bytes([0, 0x0D]) + bytes(6)
    assert dev.execute(bytes([0x37, 0, 0x1D, 0, 0, 0, 0, 0, 2, 0])).read_len == 2


@pytest.mark.parametrize("op,build", [(0x35, rw10), (0x91, rw16)])
def test_synchronize_cache_flushes(dev, backend, op, build):
    assert_good(dev.execute(rw10(0x2A, 0, 1), b"c" * BS))
    assert backend.durable[:BS] == bytes(BS)
    assert_good(dev.execute(build(op, 0, 0)))
    assert backend.ops[-1] == ("flush",) and backend.durable[:BS] == b"c" * BS
    assert_good(dev.execute(build(op, 5, 10, byte1=0x02)))  # IMMED
    illegal(dev.execute(build(op, BLOCKS, 1)), 0x21)
    illegal(dev.execute(build(op, 0, 0, byte1=0x01)), 0x24, field=1, bit=0)


@pytest.mark.parametrize("op,build", [(0x34, rw10), (0x90, rw16)])
def test_pre_fetch(dev, backend, op, build):
    assert_good(dev.execute(build(op, 0, 10)))
    assert_good(dev.execute(build(op, 0, 0, byte1=0x02)))
    illegal(dev.execute(build(op, BLOCKS - 1, 2)), 0x21)
    assert backend.ops == []


@pytest.mark.parametrize("op", [0x01, 0x04, 0x07, 0x1E, 0x2B, 0x3B, 0x4D, 0x5E, 0x86, 0xA0, 0xFF])
def test_unsupported_opcodes(dev, op):
    s = illegal(dev.execute(bytes([op]) + bytes(15)), 0x20, 0x00)
    assert len(s) == 18


def test_empty_cdb(dev):
    illegal(dev.execute(b""), 0x20)


def test_unsupported_service_actions(dev):
    illegal(dev.execute(bytes([0x9E, 0x11]) + bytes(14)), 0x24, field=1, bit=4)
    illegal(dev.execute(bytes([0xA3, 0x0A]) + bytes(10)), 0x24, field=1, bit=4)  # RTPG
    # SA 10h with a reserved bit above the service action field.
    illegal(dev.execute(bytes([0x9E, 0x30]) + bytes(14)), 0x24, field=1, bit=5)


# -- REPORT SUPPORTED OPERATION CODES --------------------------------------------------


def all_commands(dev, rctd=False):
    d = bytes(assert_good(dev.execute(rsoc(rctd=rctd))).data)
    assert int.from_bytes(d[:4], "big") == len(d) - 4
    step = 20 if rctd else 8
    return [d[i : i + step] for i in range(4, len(d), step)]


def test_rsoc_lists_every_implemented_command(dev):
    listed = []
    for desc in all_commands(dev):
        opcode, sa, flags, cdb_len = desc[0], be_int(desc[2:4]), desc[5], be_int(desc[6:8])
        assert desc[1] == 0 and desc[4] == 0
        listed.append((opcode, sa if flags & 1 else None, cdb_len))
        assert flags & 0x02 == 0  # no timeouts without RCTD
        if not flags & 1:
            assert sa == 0
    expected = sorted((c.opcode, c.service_action, c.cdb_len) for c in COMMANDS)
    assert listed == sorted(listed, key=lambda t: (t[0], t[1] or 0)) and sorted(listed) == expected
    ops = {op for op, _, _ in listed}
    for op in (0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2E, 0x2F):
        assert op in ops
    for op in (0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x5A, 0x88, 0x89, 0x8A, 0x8B, 0x8E, 0x8F):
        assert op in ops
    for op in (0x90, 0x91, 0x93, 0xA8, 0xAA, 0xAE, 0xAF, 0xB7):
        assert op in ops
    assert (0x9E, 0x10, 16) in listed and (0x9E, 0x12, 16) in listed
    assert (0xA3, 0x0C, 12) in listed
    assert 0xA0 not in ops  # REPORT LUNS is LIO's


def be_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def test_rsoc_rctd_adds_timeout_descriptors(dev):
    for desc in all_commands(dev, rctd=True):
        assert desc[5] & 0x02  # CTDP
        assert desc[8:10] == b"\x00\x0a" and desc[10:] == bytes(10)


def test_rsoc_one_command_usage_data(dev):
    d = bytes(assert_good(dev.execute(rsoc(options=1, opcode=0x28))).data)
    assert d == bytes([0, 0x03, 0, 10]) + bytes.fromhex("28 1e ff ff ff ff 3f ff ff 00")
    d = bytes(assert_good(dev.execute(rsoc(options=2, opcode=0x9E, sa=0x10))).data)
    assert d[:4] == bytes([0, 0x03, 0, 16]) and d[4:6] == b"\x9e\x10"
    d = bytes(assert_good(dev.execute(rsoc(options=3, opcode=0x2A, sa=0x1234))).data)
    assert d[4] == 0x2A
    d = bytes(assert_good(dev.execute(rsoc(options=1, opcode=0x2A, rctd=True))).data)
    assert d[1] == 0x83 and d[14:16] == b"\x00\x0a" and len(d) == 4 + 10 + 12


def test_rsoc_one_command_for_every_listed_opcode(dev):
    """The libiscsi OneCommand test: options 001b/010b by SERVACTV."""
    for desc in all_commands(dev):
        opcode, sa, servactv = desc[0], be_int(desc[2:4]), desc[5] & 1
        good, bad = (2, 1) if servactv else (1, 2)
        d = bytes(assert_good(dev.execute(rsoc(options=good, opcode=opcode, sa=sa))).data)
        assert d[1] & 0x07 == 0x03 and d[4] == opcode and be_int(d[2:4]) > 0
        illegal(dev.execute(rsoc(options=bad, opcode=opcode, sa=sa)), 0x24, field=2)


def test_rsoc_usage_bits_are_accepted_and_others_refused(dev):
    """What REPORT SUPPORTED OPERATION CODES says is what the dispatcher accepts:
    every usage bit passes the generic CDB check, every other bit is refused
    by the dispatcher with a field and bit pointer to it."""
    for spec in COMMANDS:
        for i in range(1, spec.cdb_len - 1):
            if spec.service_action is not None and i == 1:
                continue
            for bit in range(8):
                cdb = bytearray(spec.cdb_len)
                cdb[0] = spec.opcode
                cdb[1] = spec.service_action or 0
                cdb[i] |= 1 << bit
                if spec.usage[i] & (1 << bit):
                    check_cdb(spec, bytes(cdb))
                else:
                    res = dev.execute(bytes(cdb), bytes(1 << 16))
                    illegal(res, 0x24, field=i, bit=bit, in_cdb=True)


def test_rsoc_unsupported_and_bad_options(dev):
    d = bytes(assert_good(dev.execute(rsoc(options=1, opcode=0xA0))).data)
    assert d == bytes([0, 0x01, 0, 0])
    d = bytes(assert_good(dev.execute(rsoc(options=2, opcode=0x9E, sa=0x11))).data)
    assert d == bytes([0, 0x01, 0, 0])
    illegal(dev.execute(rsoc(options=2, opcode=0x9E, sa=0x100)), 0x24, field=4)
    for options in (4, 5, 6, 7):
        illegal(dev.execute(rsoc(options=options)), 0x24, field=2)
    assert dev.execute(rsoc(alloc=4)).read_len == 4


# -- backend errors and read-only ------------------------------------------------------


@pytest.mark.parametrize(
    "exc,status,sense",
    [
        (BackendBusy("later"), Status.BUSY, None),
        (BackendQueueFull("full"), Status.TASK_SET_FULL, None),
        (NotReady("x"), Status.CHECK_CONDITION, (0x2, 0x04, 0x00)),
        (NotReady("x", ascq=0x0A), Status.CHECK_CONDITION, (0x2, 0x04, 0x0A)),
        (SpaceAllocationFailed("full"), Status.CHECK_CONDITION, (0x7, 0x27, 0x07)),
        (WriteProtected("pit"), Status.CHECK_CONDITION, (0x7, 0x27, 0x00)),
        (RuntimeError("bug"), Status.CHECK_CONDITION, (0x4, 0x44, 0x00)),
        (ValueError("bug"), Status.CHECK_CONDITION, (0x4, 0x44, 0x00)),
    ],
)
def test_backend_errors_are_mapped(dev, backend, exc, status, sense, caplog):
    backend.fail_next("write", exc)
    with caplog.at_level(logging.CRITICAL, logger="appliance.scsi"):
        res = dev.execute(rw10(0x2A, 0, 1), b"e" * BS)
    assert res.status == status and res.read_len == 0
    if sense is None:
        assert res.sense == b""
    else:
        assert_sense(res, *sense)


def test_medium_errors_by_direction_with_lba(dev, backend):
    backend.fail_next("read", MediumError("bad", offset=7 * BS + 100))
    assert_sense(dev.execute(rw10(0x28, 5, 4)), 0x3, 0x11, 0x00, info=7)
    backend.fail_next("write", MediumError("bad"))
    s = assert_sense(dev.execute(rw10(0x2A, 5, 1), bytes(BS)), 0x3, 0x0C, 0x00)
    assert not s[0] & 0x80  # no offset: INFORMATION not valid
    backend.fail_next("compare_and_write", MediumError("bad", offset=0))
    assert_sense(dev.execute(caw(0, 1), bytes(2 * BS)), 0x3, 0x0C, info=0)
    backend.fail_next("flush", MediumError("bad"))
    assert_sense(dev.execute(rw10(0x35, 0, 0)), 0x3, 0x0C)  # a failed flush is a write error


def test_unexpected_exception_never_escapes(dev, backend, caplog):
    def boom(*a, **kw):
        raise KeyError("engine bug")

    backend.read = boom
    with caplog.at_level(logging.ERROR, logger="appliance.scsi"):
        res = dev.execute(rw10(0x28, 0, 1))
    assert_sense(res, 0x4, 0x44, 0x00)
    assert "internal error in READ(10)" in caplog.text
    assert_sense(dev.execute(object()), 0x4, 0x44)  # not even bytes


def test_malformed_backend_error_still_maps(dev, backend, caplog):
    backend.fail_next("read", MediumError("bad", offset="not a number"))
    with caplog.at_level(logging.CRITICAL, logger="appliance.scsi"):
        assert_sense(dev.execute(rw10(0x28, 0, 1)), 0x4, 0x44)


def test_short_backend_read_is_an_internal_error(dev, backend):
    backend.read = lambda offset, length: b"x"
    assert_sense(dev.execute(rw10(0x28, 0, 1)), 0x4, 0x44)


def test_read_only_device_refuses_every_medium_change(backend):
    dev = ScsiDevice(backend, DeviceIdentity("ro"), read_only=True)
    assert_good(dev.execute(rw10(0x28, 0, 1)))
    params = unmap_params((0, 1))
    for cdb, data in [
        (rw10(0x2A, 0, 1), bytes(BS)),
        (bytes([0x0A, 0, 0, 0, 1, 0]), bytes(BS)),
        (rw10(0x2E, 0, 1), bytes(BS)),
        (rw16(0x93, 0, 1), bytes(BS)),
        (rw10(0x41, 0, 1), bytes(BS)),
        (unmap_cdb(len(params)), params),
        (caw(0, 1), bytes(2 * BS)),
        (rw16(0x8B, 0, 1), bytes(BS)),
    ]:
        assert_sense(dev.execute(cdb, data), 0x7, 0x27, 0x00)
    assert [o[0] for o in backend.ops] == ["read"]


def test_constructor_rejects_odd_block_size():
    class Odd:
        size, block_size = 1024, 1024

    with pytest.raises(ValueError):
        ScsiDevice(Odd(), DeviceIdentity("v"))
