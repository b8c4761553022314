"""The TCMU shared-memory ABI (``linux/target_core_user.h``, mailbox version 2).

Everything is little-endian.  All offsets in entries (``cdb_off``, ``iov_base``)
are byte offsets from the **start of the mapping**, not of the entry or ring.
Checked against the 6.1 kernel on x86-64 (see the environment facts) and against
the uapi header: the outer entry struct is ``__packed`` but the inner ``req``
struct is not, so there is a 4-byte hole at entry+20 and ``cdb_off`` sits at +24.

Mapping (``/dev/uioN``, map 0, offset 0, length = ``maps/map0/size``)::

    0 ........ cmdr_off ................. cmdr_off+cmdr_size ........ map size
    | mailbox |  command ring (entries)  |  data area (iovec buffers)    |

Mailbox, ``struct tcmu_mailbox`` (128 bytes; ``cmd_tail`` on its own cache line)

======  ====  ==========  ==========  =========================================
Offset  Size  Field       Written by  Meaning
======  ====  ==========  ==========  =========================================
0       2     version     kernel      2 (``TCMU_MAILBOX_VERSION``)
2       2     flags       kernel      ``CAP_*`` bits below
4       4     cmdr_off    kernel      ring start in the mapping (= 128)
8       4     cmdr_size   kernel      ring length in bytes (8 MiB - 128)
12      4     cmd_head    kernel      producer index, bytes into the ring
16      48    (padding)
64      4     cmd_tail    handler     consumer index, bytes into the ring
68      60    (padding)
======  ====  ==========  ==========  =========================================

Entry header, ``struct tcmu_cmd_entry_hdr`` (8 bytes, every entry starts with it)

======  ====  ==========  =================================================
Offset  Size  Field       Meaning
======  ====  ==========  =================================================
0       4     len_op      entry length | opcode (low 3 bits: PAD/CMD/TMR)
4       2     cmd_id      kernel command id 1..65535 (0 in PAD and TMR)
6       1     kflags      kernel flags (none defined)
7       1     uflags      handler flags: UNKNOWN_OP, READ_LEN, KEEP_BUF
======  ====  ==========  =================================================

CMD entry, request view (kernel -> handler); at least 112 bytes

======  ====  ============  ===============================================
Offset  Size  Field         Meaning
======  ====  ============  ===============================================
8       4     iov_cnt       Data-Out (or the only) iovec count
12      4     iov_bidi_cnt  Data-In iovecs following them (BIDI only)
16      4     iov_dif_cnt   always 0
20      4     (hole)        alignment padding before the u64
24      8     cdb_off       CDB position in the mapping (inside the entry)
32      16    (padding)     ``__pad1``, ``__pad2``
48      16*n  iov[n]        {u64 iov_base (mapping offset), u64 iov_len}
base    ...   CDB           base = max(48 + 16*n, 112), CDB padded to 8
======  ====  ============  ===============================================

CMD entry, response view (handler -> kernel), written over the same slot

======  ====  ============  ===============================================
Offset  Size  Field         Meaning
======  ====  ============  ===============================================
8       1     scsi_status   SAM status (CHECK CONDITION is 0x02)
9       3     (padding)
12      4     read_len      Data-In bytes produced (with ``UFLAG_READ_LEN``)
16      96    sense_buffer  sense data for CHECK CONDITION, zero padded
======  ====  ============  ===============================================

TMR entry, ``struct tcmu_tmr_entry`` (32 bytes + 2 per id, rounded up to 8)

======  ====  ============  ===============================================
Offset  Size  Field         Meaning
======  ====  ============  ===============================================
8       1     tmr_type      ``TMR_*`` below
9       3     (padding)
12      4     cmd_cnt       number of affected cmd_ids
16      16    (padding)
32      2*n   cmd_ids[n]    u16 ids of aborted commands still in the ring
======  ====  ============  ===============================================

A PAD entry may be as short as 8 bytes (it fills the ring up to its end), so
only its header may be read.
"""

from __future__ import annotations

import struct

MAILBOX_VERSION = 2
MAILBOX_SIZE = 128
ALIGN = 8  # TCMU_OP_ALIGN_SIZE: entry lengths and positions

# Mailbox: version, flags, cmdr_off, cmdr_size, cmd_head, cmd_tail.
MAILBOX = struct.Struct("<HHIII48xI60x")
assert MAILBOX.size == MAILBOX_SIZE
CMD_HEAD_OFFSET = 12
CMD_TAIL_OFFSET = 64
# Indices of cmd_head / cmd_tail in the mailbox viewed as native u32 words,
# used for single aligned 4-byte loads and stores.
CMD_HEAD_WORD = CMD_HEAD_OFFSET // 4
CMD_TAIL_WORD = CMD_TAIL_OFFSET // 4

CAP_OOOC = 0x1  # out-of-order completion
CAP_READ_LEN = 0x2  # rsp.read_len honoured
CAP_TMR = 0x4  # TMR notification entries
CAP_KEEP_BUF = 0x8  # keep data buffer after completion

# Entry header: len_op, cmd_id, kflags, uflags.
ENTRY_HDR = struct.Struct("<IHBB")
assert ENTRY_HDR.size == 8

OP_PAD = 0
OP_CMD = 1
OP_TMR = 2
OP_MASK = 0x7

UFLAG_UNKNOWN_OP = 0x1
UFLAG_READ_LEN = 0x2
UFLAG_KEEP_BUF = 0x4

# CMD request incl. header: len_op, cmd_id, kflags, uflags, iov_cnt,
# iov_bidi_cnt, iov_dif_cnt, (hole), cdb_off, __pad1, __pad2.
CMD_REQUEST = struct.Struct("<IHBBIII4xQ16x")
assert CMD_REQUEST.size == 48
IOV_OFFSET = 48
CDB_OFF_OFFSET = 24

IOVEC = struct.Struct("<QQ")
assert IOVEC.size == 16

SENSE_BUFFER_SIZE = 96
# Response after the header: scsi_status, __pad1, __pad2, read_len, sense.
RESPONSE_OFFSET = 8
RESPONSE = struct.Struct("<BBHI96s")
assert RESPONSE.size == 104
CMD_ENTRY_SIZE = RESPONSE_OFFSET + RESPONSE.size  # sizeof(struct tcmu_cmd_entry)
assert CMD_ENTRY_SIZE == 112

# TMR entry incl. header: len_op, cmd_id, kflags, uflags, tmr_type, cmd_cnt.
TMR_ENTRY = struct.Struct("<IHBBB3xI16x")
assert TMR_ENTRY.size == 32
TMR_IDS_OFFSET = 32

TMR_UNKNOWN = 0
TMR_ABORT_TASK = 1
TMR_ABORT_TASK_SET = 2
TMR_CLEAR_ACA = 3
TMR_CLEAR_TASK_SET = 4
TMR_LUN_RESET = 5
TMR_TARGET_WARM_RESET = 6
TMR_TARGET_COLD_RESET = 7
TMR_LUN_RESET_PRO = 128

# The few SAM status values the ring itself needs (it fails malformed entries).
STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02

VARLEN_CDB = 0x7F
# Linux scsi_command_size(): CDB length by opcode group (opcode >> 5).
_GROUP_CDB_LEN = (6, 10, 10, 12, 16, 12, 10, 10)


def entry_len(len_op: int) -> int:
    return len_op & ~OP_MASK


def entry_op(len_op: int) -> int:
    return len_op & OP_MASK


def cmd_base_size(iov_total: int) -> int:
    """Offset of the CDB in a CMD entry carrying ``iov_total`` iovecs."""
    return max(IOV_OFFSET + IOVEC.size * iov_total, CMD_ENTRY_SIZE)


def round_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def cdb_length(opcode: int, byte7: int = 0) -> int:
    """The CDB length the kernel copies into the ring (``scsi_command_size``).

    ``byte7`` (the additional CDB length) only matters for variable-length
    CDBs (opcode 0x7F), whose length is ``8 + byte7``.
    """
    if opcode == VARLEN_CDB:
        return 8 + byte7
    return _GROUP_CDB_LEN[(opcode >> 5) & 7]


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """18 bytes of fixed-format (0x70) sense data."""
    sense = bytearray(18)
    sense[0] = 0x70
    sense[2] = key & 0x0F
    sense[7] = 10  # additional sense length
    sense[12] = asc
    sense[13] = ascq
    return bytes(sense)


# HARDWARE ERROR / INTERNAL TARGET FAILURE: what a malformed entry completes with.
HARDWARE_ERROR_SENSE = fixed_sense(0x04, 0x44, 0x00)
