"""SG_IO from inside the test VM: raw CDBs to a logged-in iSCSI disk, and a CDB fuzzer.

Copied into the guest and run with the guest's ``python3`` (standard library
only), against the ``/dev/sdX`` that open-iscsi made for a ``user:cdp`` LUN.
SG_IO on the block device hands the CDB to the SCSI midlayer unchanged (root
has CAP_SYS_RAWIO) and returns status, sense bytes and transport status, with
no retries: exactly what the target answered.

``fuzz`` sends random and mutated CDBs (out-of-range LBAs, transfer lengths
that disagree with the data buffer, WRITE SAME with huge counts, UNMAP with
overlapping or out-of-range descriptors, zero-length transfers, reserved bits,
unknown opcodes) and checks each answer:

* status is GOOD, CHECK CONDITION, BUSY or TASK SET FULL, and the transport
  (host/driver status) saw no error;
* every CHECK CONDITION carries sense data with response code 0x70-0x73 and
  a sense key that fits a refused command;
* a protected region is read back after every batch: any block that changed
  although no *accepted* (GOOD) data-changing command named it is a byte
  changed by a refused command.

Commands LIO core answers itself and that change state the other tests rely
on (PERSISTENT RESERVE OUT, RESERVE/RELEASE) are not sent.

    python3 durability_sgio.py fuzz /dev/sdb --count 5000 --seed 1 --protect 0:8192
    python3 durability_sgio.py write /dev/sdb LBA HEXDATA    # WRITE(16), prints the result
    python3 durability_sgio.py read /dev/sdb LBA BLOCKS       # READ(16), prints hex
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import struct
import sys
import time

SG_IO = 0x2285
TO_DEV, FROM_DEV, NONE = -2, -3, -1
GOOD, CHECK_CONDITION, BUSY, TASK_SET_FULL = 0x00, 0x02, 0x08, 0x28
# Sense keys a refused or retried command may carry: NOT READY, MEDIUM ERROR,
# HARDWARE ERROR, ILLEGAL REQUEST, UNIT ATTENTION, DATA PROTECT, ABORTED
# COMMAND, MISCOMPARE.  NO SENSE (0), RECOVERED ERROR (1) and the rest never
# belong to a CHECK CONDITION that refuses a command.
FITTING_KEYS = {0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xE}
NOT_SENT = {0x5F, 0x16, 0x17, 0x56, 0x57}  # PR OUT, RESERVE/RELEASE 6/10


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


class Result:
    __slots__ = ("status", "sense", "host", "driver", "data", "errno")

    def __init__(self, status, sense, host, driver, data, err=0):
        self.status, self.sense, self.host, self.driver = status, sense, host, driver
        self.data, self.errno = data, err

    def as_dict(self) -> dict:
        return {"status": self.status, "sense": self.sense.hex(), "host": self.host,
                "driver": self.driver, "errno": self.errno}  # fmt: skip


def sg_io(fd: int, cdb: bytes, direction: int = NONE, data: bytes = b"", length: int = 0,
          timeout_ms: int = 120_000) -> Result:  # fmt: skip
    """One SCSI command; ``data`` for TO_DEV, ``length`` bytes read for FROM_DEV."""
    cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
    sense = ctypes.create_string_buffer(252)
    size = len(data) if direction == TO_DEV else length
    buf = ctypes.create_string_buffer(bytes(data), max(size, 1)) if size else None
    hdr = SgIoHdr()
    hdr.interface_id = ord("S")
    hdr.dxfer_direction = direction if size else NONE
    hdr.cmd_len = len(cdb)
    hdr.mx_sb_len = len(sense)
    hdr.dxfer_len = size
    hdr.dxferp = ctypes.addressof(buf) if buf is not None else None
    hdr.cmdp = ctypes.addressof(cdb_buf)
    hdr.sbp = ctypes.addressof(sense)
    hdr.timeout = timeout_ms
    if _libc.ioctl(fd, SG_IO, ctypes.byref(hdr)) != 0:
        return Result(-1, b"", 0, 0, b"", ctypes.get_errno())
    got = buf.raw[: size - max(hdr.resid, 0)] if buf is not None and direction == FROM_DEV else b""
    return Result(hdr.status, sense.raw[: hdr.sb_len_wr], hdr.host_status, hdr.driver_status, got)


def sense_key_asc(sense: bytes) -> tuple[int, int, int] | None:
    """(response code, key, asc) of fixed or descriptor sense, None if malformed."""
    if len(sense) < 2:
        return None
    code = sense[0] & 0x7F
    if code in (0x70, 0x71) and len(sense) >= 13:
        return code, sense[2] & 0x0F, sense[12]
    if code in (0x72, 0x73) and len(sense) >= 3:
        return code, sense[1] & 0x0F, sense[2]
    return None


def write16(fd: int, lba: int, data: bytes, bs: int = 512, fua: bool = False) -> Result:
    cdb = struct.pack(">BBQIBB", 0x8A, 0x08 if fua else 0, lba, len(data) // bs, 0, 0)
    return sg_io(fd, cdb, TO_DEV, data)


def read16(fd: int, lba: int, blocks: int, bs: int = 512) -> Result:
    cdb = struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)
    return sg_io(fd, cdb, FROM_DEV, length=blocks * bs)


def capacity(fd: int) -> tuple[int, int]:
    """(blocks, block size) from READ CAPACITY(16)."""
    r = sg_io(fd, bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2), FROM_DEV,
              length=32)  # fmt: skip
    last, bs = struct.unpack(">QI", r.data[:12])
    return last + 1, bs


# -- the fuzzer ------------------------------------------------------------------

READS = {0x08: 6, 0x28: 10, 0xA8: 12, 0x88: 16}
WRITES = {0x0A: 6, 0x2A: 10, 0xAA: 12, 0x8A: 16, 0x2E: 10, 0xAE: 12, 0x8E: 16, 0x8B: 16}
KNOWN = [0x00, 0x03, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x2F, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55,
         0x5A, 0x89, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xAF, 0xB7,
         *READS, *WRITES]  # fmt: skip
# Opcodes whose GOOD completion may change data; their LBA range is decoded.
RANGED = {**{k: v for k, v in WRITES.items()}, 0x41: 10, 0x93: 16, 0x89: 16}
NO_DATA_CHANGE = {0x00, 0x03, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x2F, 0x34, 0x35, 0x37, 0x55, 0x5A,
                  0x8F, 0x90, 0x91, 0x9E, 0xA0, 0xA3, 0xAF, 0xB7, *READS}  # fmt: skip


def cdb_range(cdb: bytes) -> tuple[int, int] | None:
    """LBA range of a ranged CDB (by its own fields)."""
    op = cdb[0]
    if len(cdb) >= 6 and op in (0x0A, 0x08):
        return int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256
    if len(cdb) >= 10 and op in (0x2A, 0x2E, 0x41, 0x28, 0x2F, 0x34):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
    if len(cdb) >= 12 and op in (0xAA, 0xAE, 0xA8, 0xAF):
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
    if len(cdb) >= 16 and op == 0x89:
        return int.from_bytes(cdb[2:10], "big"), cdb[13]
    if len(cdb) >= 16:
        return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    return None


def touched(cdb: bytes, data: bytes, nblocks: int) -> list[tuple[int, int]] | None:
    """Block ranges an accepted command may have changed; None = it may change anything."""
    op = cdb[0]
    if op in NO_DATA_CHANGE:
        return []
    if op == 0x42:  # UNMAP: descriptors in the parameter list
        out = []
        for i in range(8, len(data) - 15, 16):
            lba, n = struct.unpack(">QI", data[i : i + 12])
            out.append((lba, n))
        return out
    if op in RANGED or op in (0x41, 0x93):
        rng = cdb_range(cdb)
        if rng is None:
            return None
        lba, n = rng
        if op in (0x41, 0x93) and n == 0:  # WRITE SAME with 0 blocks: to the end
            n = max(nblocks - lba, 0)
        return [(lba, n)]
    return None


class Fuzzer:
    def __init__(self, fd: int, seed: int, protect: tuple[int, int]):
        self.fd = fd
        self.rng = random.Random(seed)
        self.nblocks, self.bs = capacity(fd)
        self.protect = protect  # (first block, blocks)
        self.stats = {"sent": 0, "good": 0, "check": 0, "busy": 0, "task_set_full": 0,
                      "other_status": 0, "transport_errors": 0, "bad_sense": 0,
                      "changed_by_refused": 0, "unbounded_good": 0,
                      "kernel_refused": 0}  # fmt: skip
        self.by_key: dict[str, int] = {}
        self.problems: list[dict] = []

    def lba(self) -> int:
        r = self.rng.random()
        n = self.nblocks
        if r < 0.3:
            return self.rng.randrange(n)
        if r < 0.45:
            return n - self.rng.randrange(1, 64)
        if r < 0.6:
            return n + self.rng.randrange(0, 1 << 16)
        if r < 0.7:
            return self.rng.choice([0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1 << 32, 1 << 40])
        return self.protect[0] + self.rng.randrange(self.protect[1])

    def count(self) -> int:
        return self.rng.choice([0, 1, 2, 8, 255, 256, 2048, 65535, 0xFFFFFFFF,
                                self.rng.randrange(1, 4096)])  # fmt: skip

    def make(self) -> tuple[bytes, int, bytes, int]:
        """(cdb, direction, data-out, data-in length)."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.12:  # entirely random bytes
            n = rng.choice([6, 10, 12, 16, rng.randrange(1, 17)])
            cdb = bytearray(rng.randbytes(n))
            if cdb[0] in NOT_SENT:
                cdb[0] = 0x00
        elif kind < 0.22:  # UNMAP with random descriptors
            descs = [(self.lba(), self.count()) for _ in range(rng.randrange(0, 6))]
            if descs and rng.random() < 0.5:  # overlapping
                descs.append((descs[0][0] + 1, descs[0][1]))
            body = b"".join(struct.pack(">QI4x", a & (2**64 - 1), c & 0xFFFFFFFF) for a, c in descs)
            plist = struct.pack(">HH4x", 6 + len(body), len(body)) + body
            if rng.random() < 0.2:
                plist = plist[: rng.randrange(len(plist) + 1)]
            cdb = bytearray(struct.pack(">BB4xBHB", 0x42, 0, 0, len(plist), 0))
            return self._mutate(cdb), TO_DEV, plist, 0
        else:
            op = rng.choice(KNOWN)
            size = {6: 6, 10: 10, 12: 12, 16: 16}.get(READS.get(op) or WRITES.get(op) or 0)
            size = size or (6 if op < 0x20 else 10 if op < 0x80 else 16 if op < 0xA0 else 12)
            cdb = bytearray(size)
            cdb[0] = op
            lba, cnt = self.lba(), self.count()
            if size == 6:
                cdb[1:4] = (lba & 0x1FFFFF).to_bytes(3, "big")
                cdb[4] = cnt & 0xFF
            elif size == 10:
                cdb[2:6] = (lba & 0xFFFFFFFF).to_bytes(4, "big")
                cdb[7:9] = (cnt & 0xFFFF).to_bytes(2, "big")
            elif size == 12:
                cdb[2:6] = (lba & 0xFFFFFFFF).to_bytes(4, "big")
                cdb[6:10] = (cnt & 0xFFFFFFFF).to_bytes(4, "big")
            else:
                cdb[2:10] = (lba & (2**64 - 1)).to_bytes(8, "big")
                cdb[10:14] = (cnt & 0xFFFFFFFF).to_bytes(4, "big")
            if op in (0x12, 0x1A, 0x5A, 0x03, 0xA0, 0xA3, 0x9E, 0x37, 0xB7):
                alloc = rng.choice([0, 1, 4, 36, 255, 512, 4096])
                if op == 0x12:
                    cdb[1] = rng.choice([0, 1, 1, 2])
                    cdb[2] = rng.choice([0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2, 0x86, 0xFF])
                    cdb[3:5] = alloc.to_bytes(2, "big")
                elif op == 0x9E:
                    cdb[1] = rng.choice([0x10, 0x12, 0x1F])
                    cdb[10:14] = alloc.to_bytes(4, "big")
            cdb = self._mutate(cdb)
        if cdb[0] in NOT_SENT:
            cdb[0] = 0x00  # TEST UNIT READY instead
        # Pick the data phase: usually what the opcode wants, sometimes not.
        op = cdb[0]
        want = self._blocks_bytes(cdb)
        r = rng.random()
        if r < 0.15:
            want = 0
        elif r < 0.3:
            want = rng.choice([1, 511, 513, 4096, 65536, max(want // 2, 1), want + 512])
        want = min(want, 1 << 20)
        if op in WRITES or op in (0x41, 0x93, 0x89, 0x15, 0x55) or (r < 0.05 and want):
            pattern = rng.randbytes(16) * (want // 16 + 1)
            return bytes(cdb), TO_DEV, pattern[:want], 0
        return bytes(cdb), FROM_DEV, b"", want

    def _blocks_bytes(self, cdb: bytes) -> int:
        rng = cdb_range(cdb) if cdb[0] in (*READS, *WRITES, 0x89) else None
        if rng is None:
            return self.rng.choice([0, 36, 255, 512])
        n = rng[1] * (2 if cdb[0] == 0x89 else 1)
        return n * self.bs

    def _mutate(self, cdb: bytearray) -> bytearray:
        rng = self.rng
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            i = rng.randrange(len(cdb))
            if i == 0 and rng.random() < 0.7:
                continue
            cdb[i] ^= 1 << rng.randrange(8)
        if cdb[0] in NOT_SENT:
            cdb[0] = 0x00  # TEST UNIT READY instead
        return cdb

    def check(self, cdb: bytes, data: bytes, res: Result, allowed: list) -> None:
        st = self.stats
        st["sent"] += 1
        if res.errno in (errno.EMSGSIZE, errno.EINVAL) and res.status == -1:
            st["kernel_refused"] += 1  # the initiator's kernel would not send it (CDB length)
            return
        if res.errno or res.host or (res.driver & ~0x08):  # DRIVER_SENSE (0x08) is fine
            st["transport_errors"] += 1
            self._problem("transport", cdb, res)
            return
        if res.status == GOOD:
            st["good"] += 1
            t = touched(cdb, data, self.nblocks)
            if t is None:
                st["unbounded_good"] += 1
                self._problem("unbounded", cdb, res)
                allowed.append((0, self.nblocks))
            else:
                allowed.extend(t)
        elif res.status == CHECK_CONDITION:
            st["check"] += 1
            parsed = sense_key_asc(res.sense)
            if parsed is None or parsed[1] not in FITTING_KEYS:
                st["bad_sense"] += 1
                self._problem("sense", cdb, res)
                return
            k = f"{parsed[1]:x}/{parsed[2]:02x}"
            self.by_key[k] = self.by_key.get(k, 0) + 1
        elif res.status == BUSY:
            st["busy"] += 1
        elif res.status == TASK_SET_FULL:
            st["task_set_full"] += 1
        else:
            st["other_status"] += 1
            self._problem("status", cdb, res)

    def _problem(self, what: str, cdb: bytes, res: Result) -> None:
        if len(self.problems) < 20:
            self.problems.append({"what": what, "cdb": cdb.hex(), **res.as_dict()})

    def snapshot(self) -> list[bytes]:
        first, n = self.protect
        out = []
        for lba in range(first, first + n, 256):
            blocks = min(256, first + n - lba)
            for _ in range(50):  # BUSY / TASK SET FULL / UNIT ATTENTION: ask again
                r = read16(self.fd, lba, blocks, self.bs)
                if r.status == GOOD:
                    break
                time.sleep(0.1)
            if r.status != GOOD:
                raise RuntimeError(f"protected region unreadable at {lba}: {r.as_dict()}")
            out += [hashlib.blake2b(r.data[i : i + self.bs], digest_size=8).digest()
                    for i in range(0, len(r.data), self.bs)]  # fmt: skip
        return out

    def run(self, count: int, batch: int) -> dict:
        before = self.snapshot()
        first = self.protect[0]
        t0 = time.monotonic()
        done = 0
        while done < count:
            allowed: list[tuple[int, int]] = []
            for _ in range(min(batch, count - done)):
                cdb, direction, data, length = self.make()
                res = sg_io(self.fd, cdb, direction, data, length)
                self.check(cdb, data, res, allowed)
                done += 1
            after = self.snapshot()
            for i, (a, b) in enumerate(zip(before, after, strict=True)):
                if a != b and not any(s <= first + i < s + n for s, n in allowed):
                    self.stats["changed_by_refused"] += 1
                    self._problem("changed", bytes([0]), Result(first + i, b"", 0, 0, b""))
            before = after
        return {"stats": self.stats, "sense": self.by_key, "problems": self.problems,
                "seconds": round(time.monotonic() - t0, 1), "blocks": self.nblocks}  # fmt: skip


def main(argv: list[str]) -> int:
    cmd, dev = argv[0], argv[1]
    fd = os.open(dev, os.O_RDWR)
    try:
        if cmd == "fuzz":
            opts = dict(zip(argv[2::2], argv[3::2], strict=True))
            first, n = (int(x) for x in opts.get("--protect", "0:4096").split(":"))
            fz = Fuzzer(fd, int(opts.get("--seed", "1")), (first, n))
            out = fz.run(int(opts.get("--count", "1000")), int(opts.get("--batch", "500")))
        elif cmd == "write":
            out = write16(fd, int(argv[2]), bytes.fromhex(argv[3])).as_dict()
        elif cmd == "read":
            r = read16(fd, int(argv[2]), int(argv[3]))
            out = {**r.as_dict(), "data": r.data.hex()}
        else:
            raise SystemExit(f"unknown command {cmd}")
    finally:
        os.close(fd)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
