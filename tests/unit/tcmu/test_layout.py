"""The ABI constants against the offsets the 6.1 kernel uses (verified with gcc)."""

import pytest

from appliance.tcmu import layout as L


def test_mailbox_layout():
    assert L.MAILBOX.size == 128
    raw = L.MAILBOX.pack(2, 15, 128, 8388480, 0x11223344, 0x55667788)
    assert raw[0:2] == (2).to_bytes(2, "little")
    assert raw[2:4] == (15).to_bytes(2, "little")
    assert raw[4:8] == (128).to_bytes(4, "little")
    assert raw[8:12] == (8388480).to_bytes(4, "little")
    assert raw[L.CMD_HEAD_OFFSET : L.CMD_HEAD_OFFSET + 4] == bytes.fromhex("44332211")
    assert raw[L.CMD_TAIL_OFFSET : L.CMD_TAIL_OFFSET + 4] == bytes.fromhex("88776655")
    assert L.CMD_HEAD_WORD * 4 == 12 and L.CMD_TAIL_WORD * 4 == 64


def test_cmd_entry_request_offsets():
    raw = L.CMD_REQUEST.pack(0x78 | L.OP_CMD, 0xBEEF, 0xA1, 0xA2, 3, 4, 5, 0x0102030405060708)
    assert len(raw) == L.IOV_OFFSET == 48
    assert raw[0] == 0x79 and raw[4:6] == b"\xef\xbe" and raw[6] == 0xA1 and raw[7] == 0xA2
    assert raw[8] == 3 and raw[12] == 4 and raw[16] == 5
    assert raw[20:24] == bytes(4)  # the alignment hole
    assert raw[L.CDB_OFF_OFFSET : L.CDB_OFF_OFFSET + 8] == bytes.fromhex("0807060504030201")
    assert raw[32:48] == bytes(16)
    assert L.IOVEC.pack(1, 2) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


def test_response_offsets():
    raw = bytes(8) + L.RESPONSE.pack(0x02, 0, 0, 0x0A0B0C0D, b"\x70" + bytes(95))
    assert len(raw) == L.CMD_ENTRY_SIZE == 112
    assert raw[8] == 0x02  # scsi_status overlays the low byte of iov_cnt
    assert raw[12:16] == bytes.fromhex("0d0c0b0a")  # read_len
    assert raw[16] == 0x70 and len(raw[16:]) == L.SENSE_BUFFER_SIZE


def test_tmr_entry_offsets():
    raw = L.TMR_ENTRY.pack(40 | L.OP_TMR, 0, 0, 0, L.TMR_LUN_RESET, 3)
    assert len(raw) == L.TMR_IDS_OFFSET == 32
    assert raw[8] == L.TMR_LUN_RESET and raw[12:16] == (3).to_bytes(4, "little")


def test_len_op_helpers():
    assert L.entry_len(0x1F1) == 0x1F0 and L.entry_op(0x1F1) == L.OP_CMD
    assert L.cmd_base_size(0) == 112 and L.cmd_base_size(4) == 112
    assert L.cmd_base_size(5) == 128 and L.round_up(13) == 16


@pytest.mark.parametrize(
    "opcode, length",
    [(0x00, 6), (0x12, 6), (0x28, 10), (0x5A, 10), (0x7E, 12), (0x88, 16), (0xA0, 12),
     (0xC0, 10), (0xE0, 10)],
)  # fmt: skip
def test_cdb_length_by_group(opcode, length):
    assert L.cdb_length(opcode) == length


def test_variable_length_cdb():
    assert L.cdb_length(0x7F, 0x18) == 32


def test_fixed_sense():
    sense = L.fixed_sense(0x5, 0x24, 0x01)
    assert len(sense) == 18
    assert sense[0] == 0x70 and sense[2] == 5 and sense[7] == 10
    assert sense[12] == 0x24 and sense[13] == 0x01
    assert L.HARDWARE_ERROR_SENSE[2] == 0x04 and L.HARDWARE_ERROR_SENSE[12] == 0x44
