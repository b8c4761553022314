"""REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN / 0Ch, SPC-4 6.35).

Built from :data:`appliance.scsi.cdb.COMMANDS`, so the list is exactly what
the dispatcher accepts.  CDB: byte 2 RCTD (bit 7) | REPORTING OPTIONS (2-0),
byte 3 requested opcode, bytes 4-5 requested service action, bytes 6-9
allocation length.

Reporting options:

* 000b all commands: 4-byte header (COMMAND DATA LENGTH) then one 8-byte
  descriptor per command (opcode, service action, CTDP|SERVACTV, CDB length),
  each followed by a 12-byte command timeouts descriptor when RCTD=1.
* 001b one opcode (refused for an opcode that has service actions),
  010b opcode + service action (refused for one that has none),
  011b either: SUPPORT 011b with the CDB usage bitmap, or SUPPORT 001b
  (not supported) with no bitmap.

Timeout values are reported as 0 ("not specified").
"""

from __future__ import annotations

from .cdb import BY_KEY, COMMANDS, SERVICE_ACTION_OPCODES, CommandSpec, be
from .result import ScsiResult, data_in
from .sense import invalid_field_in_cdb

CTDP = 0x02  # all-commands descriptor, byte 5
SERVACTV = 0x01
ONE_CTDP = 0x80  # one-command format, byte 1
SUPPORT_NOT_SUPPORTED = 0b001
SUPPORT_STANDARD = 0b011

_TIMEOUTS = (0x000A).to_bytes(2, "big") + bytes(10)


def _descriptor(spec: CommandSpec, rctd: bool) -> bytes:
    flags = (CTDP if rctd else 0) | (SERVACTV if spec.service_action is not None else 0)
    desc = bytes([spec.opcode, 0]) + (spec.service_action or 0).to_bytes(2, "big")
    desc += bytes([0, flags]) + spec.cdb_len.to_bytes(2, "big")
    return desc + (_TIMEOUTS if rctd else b"")


def _one_command(spec: CommandSpec | None, rctd: bool) -> bytes:
    if spec is None:
        return bytes([0, SUPPORT_NOT_SUPPORTED, 0, 0])
    head = bytes([0, (ONE_CTDP if rctd else 0) | SUPPORT_STANDARD])
    return head + spec.cdb_len.to_bytes(2, "big") + spec.usage + (_TIMEOUTS if rctd else b"")


def report_supported_opcodes(cdb: bytes) -> ScsiResult:
    rctd = bool(cdb[2] & 0x80)
    options = cdb[2] & 0x07
    opcode, service_action = cdb[3], be(cdb, 4, 2)
    allocation_length = be(cdb, 6, 4)
    has_sa = opcode in SERVICE_ACTION_OPCODES
    if options == 0b000:
        body = b"".join(
            _descriptor(s, rctd)
            for s in sorted(COMMANDS, key=lambda s: (s.opcode, s.service_action or 0))
        )
        payload = len(body).to_bytes(4, "big") + body
    elif options in (0b001, 0b010, 0b011):
        if options == 0b001 and has_sa:
            raise invalid_field_in_cdb(2, 2)
        if options == 0b010 and not has_sa:
            raise invalid_field_in_cdb(2, 2)
        if has_sa:
            if service_action > 0x1F:
                raise invalid_field_in_cdb(4)
            spec = BY_KEY.get((opcode, service_action))
        else:
            spec = BY_KEY.get((opcode, None))
        payload = _one_command(spec, rctd)
    else:
        raise invalid_field_in_cdb(2, 2)
    return data_in(payload, allocation_length)
