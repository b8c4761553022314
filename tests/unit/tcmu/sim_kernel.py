"""A byte-exact stand-in for the kernel side of a TCMU ring (target_core_user.c).

It lays out the mailbox, queues CMD and TMR entries the way ``queue_cmd_ring``
and ``queue_tmr_ring`` do (PAD to the ring end when an entry does not fit,
``cmd_head`` stored last), allocates data blocks lowest-first and merges
adjacent ones into one iovec, and collects completions the way
``tcmu_handle_completions`` does: walking from ``cmdr_last_cleaned`` to
``cmd_tail`` by the ``len_op`` found in each slot and looking up the ``cmd_id``
written there.  An unknown id marks the ring broken, as in the kernel.

With ``guard=True`` every data block not allocated to a live command is
``mprotect``-ed to PROT_NONE, like the kernel's data area whose unallocated
pages SIGBUS: any read of them crashes the test process (loudly).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field

from appliance.tcmu import layout as L

PAGE = mmap.PAGESIZE
PROT_NONE = 0
ALL_CAPS = L.CAP_OOOC | L.CAP_READ_LEN | L.CAP_TMR | L.CAP_KEEP_BUF
STATUS_BUSY = 0x08

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@dataclass
class SimCmd:
    seq: int
    cmd_id: int
    cdb: bytes
    data_out: bytes = field(repr=False)
    data_in_len: int
    bidi: bool
    blocks: list[int]  # data blocks, Data-Out/Data-In first, then BIDI Data-In
    n_out_blocks: int
    iovs: list[tuple[int, int]]
    entry_off: int  # ring offset of the entry
    entry_len: int
    kept: bool = False


@dataclass
class SimCompletion:
    seq: int
    cmd_id: int
    status: int
    sense: bytes | None  # the 96-byte buffer if the kernel copied it
    data: bytes | None  # Data-In bytes copied back to the initiator
    read_len_valid: bool
    keep_buf: bool
    by_reset: bool = False


@dataclass
class SimKernel:
    flags: int = ALL_CAPS
    mb_cmdr_size: int = 2 * PAGE  # mailbox + ring, page aligned like MB_CMDR_SIZE
    data_blocks: int = 32
    guard: bool = True
    commands: dict[int, SimCmd] = field(default_factory=dict)
    completions: list[SimCompletion] = field(default_factory=list)
    kicks: int = 0
    broken: str | None = None
    pads: list[tuple[int, int]] = field(default_factory=list)  # (ring offset, length)

    def __post_init__(self) -> None:
        self.cmdr_off = L.MAILBOX_SIZE
        self.cmdr_size = self.mb_cmdr_size - L.MAILBOX_SIZE
        self.data_off = self.mb_cmdr_size
        self.block_size = PAGE
        self.map_size = self.data_off + self.data_blocks * self.block_size
        self.mm = mmap.mmap(-1, self.map_size)
        self.words = memoryview(self.mm)[: L.MAILBOX_SIZE].cast("I")
        L.MAILBOX.pack_into(
            self.mm, 0, L.MAILBOX_VERSION, self.flags, self.cmdr_off, self.cmdr_size, 0, 0
        )
        self.last_cleaned = 0
        self.free = [True] * self.data_blocks
        self._seq = 0
        self._addr = 0
        if self.guard:
            probe = ctypes.c_char.from_buffer(self.mm)
            self._addr = ctypes.addressof(probe)
            del probe
            self._protect(range(self.data_blocks), PROT_NONE)

    # -- mailbox ------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.words[L.CMD_HEAD_WORD]

    @head.setter
    def head(self, value: int) -> None:
        self.words[L.CMD_HEAD_WORD] = value

    @property
    def tail(self) -> int:
        return self.words[L.CMD_TAIL_WORD]

    def _spc_free(self) -> int:
        used = (self.head - self.last_cleaned) % self.cmdr_size
        return self.cmdr_size - used - 1  # one byte unused: full != empty

    def _ring_space(self, size: int) -> bool:
        to_end = self.cmdr_size - self.head
        need = size if to_end >= size else size + to_end
        return self._spc_free() >= need

    def _insert_padding(self, size: int) -> int:
        head = self.head
        to_end = self.cmdr_size - head
        if to_end < size:
            L.ENTRY_HDR.pack_into(self.mm, self.cmdr_off + head, to_end | L.OP_PAD, 0, 0, 0)
            self.pads.append((head, to_end))
            self.head = 0
            return 0
        return head

    # -- data blocks --------------------------------------------------------

    def _protect(self, blocks, prot: int) -> None:
        if not self.guard:
            return
        for b in blocks:
            addr = self._addr + self.data_off + b * self.block_size
            if _libc.mprotect(addr, self.block_size, prot) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")

    def _alloc(self, nbytes: int) -> list[int] | None:
        need = -(-nbytes // self.block_size)
        got = [b for b, free in enumerate(self.free) if free][:need]
        if len(got) < need:
            return None
        for b in got:
            self.free[b] = False
        self._protect(got, mmap.PROT_READ | mmap.PROT_WRITE)
        return got

    def _release(self, blocks: list[int]) -> None:
        self._protect(blocks, PROT_NONE)
        for b in blocks:
            self.free[b] = True

    def _iovs(self, blocks: list[int], nbytes: int) -> list[tuple[int, int]]:
        iovs: list[list[int]] = []
        prev = -2
        for b in blocks:
            chunk = min(nbytes, self.block_size)
            nbytes -= chunk
            if b == prev + 1:
                iovs[-1][1] += chunk
            else:
                iovs.append([self.data_off + b * self.block_size, chunk])
            prev = b
        return [(base, size) for base, size in iovs]

    # -- queueing (queue_cmd_ring / queue_tmr_ring) ---------------------------

    def queue_cmd(
        self, cdb: bytes, *, data_out: bytes = b"", data_in: int = 0, bidi: bool = False
    ) -> SimCmd | None:
        """Queue one command; None when ring or data space is short (qfull).

        One direction unless ``bidi``: Data-Out ``data_out``, or Data-In of
        ``data_in`` bytes; with ``bidi`` both.
        """
        assert bidi or not (data_out and data_in), "one direction unless bidi"
        cdb_len = L.cdb_length(cdb[0], cdb[7] if cdb[0] == L.VARLEN_CDB else 0)
        assert len(cdb) >= cdb_len
        first_len = len(data_out) if (data_out or bidi) else data_in
        bidi_len = data_in if bidi else 0
        if -(-first_len // PAGE) + -(-bidi_len // PAGE) > self.data_blocks:
            raise ValueError("request too big for the data area (INVALID FIELD IN CDB)")
        first = self._alloc(first_len)
        if first is None:
            return None
        second = self._alloc(bidi_len) if bidi_len else []
        if second is None:
            self._release(first)
            return None
        out_iovs = self._iovs(first, first_len)
        in_iovs = self._iovs(second, bidi_len)
        base = L.cmd_base_size(len(out_iovs) + len(in_iovs))
        size = base + L.round_up(cdb_len)
        if size > self.cmdr_size // 2:
            self._release(first + second)
            raise ValueError("entry too big for the ring (INVALID FIELD IN CDB)")
        if not self._ring_space(size):
            self._release(first + second)
            return None
        cmd_id = next(i for i in range(1, 0x10000) if i not in self.commands)
        head = self._insert_padding(size)
        start = self.cmdr_off + head
        self.mm[start : start + size] = bytes(size)
        cdb_off = start + base
        L.CMD_REQUEST.pack_into(
            self.mm, start, size | L.OP_CMD, cmd_id, 0, 0, len(out_iovs), len(in_iovs), 0, cdb_off
        )
        for i, (b, n) in enumerate(out_iovs + in_iovs):
            L.IOVEC.pack_into(self.mm, start + L.IOV_OFFSET + L.IOVEC.size * i, b, n)
        self.mm[cdb_off : cdb_off + cdb_len] = cdb[:cdb_len]
        pos = 0
        for b, n in out_iovs:  # scatter_data_area: Data-Out into the blocks
            if data_out:
                self.mm[b : b + n] = data_out[pos : pos + n]
            pos += n
        self._seq += 1
        cmd = SimCmd(
            self._seq, cmd_id, bytes(cdb[:cdb_len]), bytes(data_out),
            bidi_len if bidi else (0 if data_out else data_in), bidi,
            first + second, len(first), out_iovs + in_iovs, head, size,
        )  # fmt: skip
        self.commands[cmd_id] = cmd
        self.head = (head + size) % self.cmdr_size  # cmd_head last
        return cmd

    def queue_tmr(self, tmr_type: int, cmd_ids: list[int] | tuple[int, ...] = ()) -> bool:
        size = L.round_up(L.TMR_ENTRY.size + 2 * len(cmd_ids))
        if not self._ring_space(size):
            return False
        head = self._insert_padding(size)
        start = self.cmdr_off + head
        self.mm[start : start + size] = bytes(size)
        L.TMR_ENTRY.pack_into(self.mm, start, size | L.OP_TMR, 0, 0, 0, tmr_type, len(cmd_ids))
        for i, cid in enumerate(cmd_ids):
            struct.pack_into("<H", self.mm, start + L.TMR_IDS_OFFSET + 2 * i, cid)
        self.head = (head + size) % self.cmdr_size
        return True

    # -- completions (tcmu_irqcontrol -> tcmu_handle_completions) -------------

    def irq(self) -> None:
        """The 4-byte write on the uio fd."""
        self.kicks += 1
        self.handle_completions()

    def _break(self, why: str) -> None:
        self.broken = why

    def handle_completions(self) -> None:
        if self.broken:
            return
        tail = self.tail
        if tail >= self.cmdr_size or tail % L.ALIGN:
            return self._break(f"cmd_tail {tail} is no entry boundary")
        if (tail - self.last_cleaned) % self.cmdr_size > (
            self.head - self.last_cleaned
        ) % self.cmdr_size:
            return self._break(f"cmd_tail {tail} passed cmd_head {self.head}")
        while self.last_cleaned != tail:
            start = self.cmdr_off + self.last_cleaned
            len_op, cmd_id, _kflags, uflags = L.ENTRY_HDR.unpack_from(self.mm, start)
            op, length = L.entry_op(len_op), L.entry_len(len_op)
            if length == 0 or length > (tail - self.last_cleaned) % self.cmdr_size:
                return self._break(f"slot at {self.last_cleaned} has length {length}")
            if op not in (L.OP_PAD, L.OP_TMR):
                if op != L.OP_CMD:
                    return self._break(f"slot at {self.last_cleaned} has op {op}")
                cmd = self.commands.get(cmd_id)
                if cmd is None or cmd.kept:
                    return self._break(f"cmd_id {cmd_id} not found, ring is broken")
                self._complete(cmd, start, uflags)
            self.last_cleaned = (self.last_cleaned + length) % self.cmdr_size

    def _complete(self, cmd: SimCmd, start: int, uflags: int) -> None:
        status, _, _, read_len, sense = L.RESPONSE.unpack_from(self.mm, start + L.RESPONSE_OFFSET)
        keep = bool(uflags & L.UFLAG_KEEP_BUF)
        copied_sense = data = None
        valid = False
        if uflags & L.UFLAG_UNKNOWN_OP:
            status = L.STATUS_CHECK_CONDITION
        else:
            length = cmd.data_in_len
            if not cmd.bidi and cmd.data_in_len and uflags & L.UFLAG_READ_LEN and read_len:
                valid = True
                length = min(length, read_len)
            if status == L.STATUS_CHECK_CONDITION:
                copied_sense = sense
            if cmd.data_in_len and (status != L.STATUS_CHECK_CONDITION or valid):
                data = self._gather(cmd, length)
        self.completions.append(
            SimCompletion(cmd.seq, cmd.cmd_id, status, copied_sense, data, valid, keep)
        )
        if keep:
            cmd.kept = True
        else:
            self._drop(cmd)

    def _gather(self, cmd: SimCmd, length: int) -> bytes:
        blocks = cmd.blocks[cmd.n_out_blocks :] if cmd.bidi else cmd.blocks
        out = bytearray()
        for b in blocks:
            take = min(self.block_size, length - len(out))
            off = self.data_off + b * self.block_size
            out += self.mm[off : off + take]
        return bytes(out)

    def _drop(self, cmd: SimCmd) -> None:
        del self.commands[cmd.cmd_id]
        self._release(cmd.blocks)

    def free_kept_buf(self, cmd_id: int) -> None:
        cmd = self.commands[cmd_id]
        assert cmd.kept
        self._drop(cmd)

    def reset_ring(self, err_level: int = 1) -> None:
        """``action/reset_ring``: fail everything in flight, zero the indices."""
        for cmd in list(self.commands.values()):
            if not cmd.kept:
                status = STATUS_BUSY if err_level == 1 else L.STATUS_CHECK_CONDITION
                self.completions.append(
                    SimCompletion(cmd.seq, cmd.cmd_id, status, None, None, False, False, True)
                )
            self._drop(cmd)
        self.last_cleaned = 0
        self.words[L.CMD_TAIL_WORD] = 0
        self.head = 0
        self.broken = None

    # -- helpers for tests ----------------------------------------------------

    def entry_start(self, cmd: SimCmd) -> int:
        """Mapping offset of a queued command's entry."""
        return self.cmdr_off + cmd.entry_off

    def idle(self) -> bool:
        """Everything queued has been reclaimed."""
        return self.last_cleaned == self.head == self.tail

    def close(self) -> None:
        self.words.release()
        self.mm.close()


# -- CDBs carrying a tag, so a test can tell which command it is looking at ----

OPCODES = {6: 0x12, 10: 0x28, 12: 0xA0, 16: 0x88, 32: L.VARLEN_CDB}


def tagged_cdb(tag: int, length: int = 16) -> bytes:
    """A CDB of ``length`` bytes (6/10/12/16/32) with ``tag`` in bytes 1..4."""
    cdb = bytearray(length)
    cdb[0] = OPCODES[length]
    cdb[1:5] = tag.to_bytes(4, "big")
    if length == 32:
        cdb[7] = 32 - 8  # additional CDB length
    assert L.cdb_length(cdb[0], cdb[7] if length == 32 else 0) == length
    return bytes(cdb)


def cdb_tag(cdb: bytes) -> int:
    return int.from_bytes(cdb[1:5], "big")


def pattern(tag: int, length: int) -> bytes:
    """Deterministic payload for ``tag``."""
    seed = (tag * 2654435761) & 0xFFFFFFFF
    unit = seed.to_bytes(4, "little") + tag.to_bytes(4, "little")
    return (unit * (length // 8 + 1))[:length]
