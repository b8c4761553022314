"""The dirty region log (DRL, [0045]-[0053]).

A bitmap over equal regions of the primary (default 1 MiB).  A set bit says
"this region may differ between the primary and the journal".

* **Mark before write** ([0049]-[0050]): a host write first sets the bits of its
  regions; if any was clear, the DRL is written and fdatasynced *before* the
  primary is touched.  Concurrent markers share one write + one sync (group
  commit).  A write to a region already dirty pays nothing.
* **Pins**: every journal record of a host write pins its regions from the
  mark until the record is durable in the journal (``unpin``).  A failed
  primary write keeps its pin: its region stays dirty until resync.
* **Reset** ([0051]): clears every bit whose region has no pin, i.e. whose
  writes are all durable in the journal.  Batched by a timer in the volume,
  never on the write path.  Refused while the volume is out of sync (the
  ``OUT_OF_SYNC`` flag, persisted with the bitmap): then the bits are the
  only record of what resync must scan.

File format (``drl.bin`` in the state folder, docs/FORMAT.md): two slots, each
a 64-byte header plus the bitmap, padded to 4 KiB; writes alternate between
the slots and a reader takes the valid slot with the highest generation, so a
torn write leaves the previous version.  A file with no valid slot, of the
wrong size, or for another volume is not trusted: every region is treated as
dirty (a full resync), which is always safe.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid as uuidlib

import structlog
from crc32c import crc32c
from pyroaring import BitMap

from .fileio import FileIO

log = structlog.get_logger("cdp.drl")

MAGIC = b"CDPDRL\0\0"
VERSION = 1
HEADER = struct.Struct("<8sHHI16sQQQI")  # crc u32 follows at 60
assert HEADER.size == 60
HEADER_SIZE = 64
FLAG_OUT_OF_SYNC = 1


class DirtyRegionLog:
    def __init__(
        self, io: FileIO, path: str, volume_uuid: uuidlib.UUID, size: int, region_size: int
    ):
        if region_size <= 0 or region_size & (region_size - 1) or region_size < 4096:
            raise ValueError(f"region_size {region_size} is not a power of two >= 4096")
        self.io = io
        self.path = path
        self.uuid = volume_uuid
        self.region_size = region_size
        self.nregions = (size + region_size - 1) // region_size
        self.nbytes = (self.nregions + 7) // 8
        self.slot_size = (HEADER_SIZE + self.nbytes + 4095) // 4096 * 4096
        self._bits = bytearray(self.nbytes)
        self._pins: dict[int, int] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._gen = 0  # generation of the in-memory state
        self._persisted = 0  # generation on disk
        self._disk_gen = 0  # generation number of the last slot written
        self.out_of_sync = False
        self.trusted = True  # False: loaded from a damaged file, all regions dirty
        self.resets = 0
        self.syncs = 0
        self._fd = self._load()

    # ------------------------------------------------------------ file

    def _load(self) -> int:
        exists = os.path.exists(self.path)
        fd = self.io.open(self.path, os.O_RDWR | os.O_CREAT)
        if not exists:
            self._write_slot(fd)
            self.io.fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            return fd
        size = self.io.size(fd)
        best, reason = None, None
        if size != 2 * self.slot_size:
            reason = f"size {size}, expected {2 * self.slot_size}"
        else:
            for slot in (0, 1):
                raw = self.io.pread_exact(fd, self.slot_size, slot * self.slot_size)
                got = self._parse(raw)
                if isinstance(got, str):
                    reason = got
                elif best is None or got[0] > best[0]:
                    best = got
        if best is None:
            log.warning(
                "drl.untrusted",
                path=self.path,
                reason=reason,
                action="every region treated as dirty",
            )
            self.trusted = False
            self._bits = bytearray(b"\xff" * self.nbytes)
            self._trim()
            self.out_of_sync = True
            self.io.truncate(fd, 0)
            self._disk_gen = 0
            self._write_slot(fd)
            return fd
        self._disk_gen, flags, bits = best
        self._bits = bytearray(bits)
        self.out_of_sync = bool(flags & FLAG_OUT_OF_SYNC)
        return fd

    def _trim(self) -> None:
        extra = self.nbytes * 8 - self.nregions
        if extra:
            self._bits[-1] &= (1 << (8 - extra)) - 1

    def _parse(self, raw: bytes):
        if len(raw) < HEADER_SIZE:
            return "slot truncated"
        magic, version, flags, _r, vol, gen, rsize, nreg, nbytes = HEADER.unpack_from(raw)
        if magic != MAGIC:
            return f"bad magic {magic!r}"
        if version != VERSION:
            return f"version {version} not supported"
        if vol != self.uuid.bytes:
            return "DRL of another volume"
        if (rsize, nreg, nbytes) != (self.region_size, self.nregions, self.nbytes):
            return (
                f"geometry {rsize}x{nreg} differs from the volume's "
                f"{self.region_size}x{self.nregions}"
            )
        (crc,) = struct.unpack_from("<I", raw, 60)
        bits = raw[HEADER_SIZE : HEADER_SIZE + nbytes]
        if crc != crc32c(bits, crc32c(raw[:60])):
            return "crc mismatch"
        return gen, flags, bits

    def _write_slot(self, fd: int, bits: bytes | None = None, flags: int | None = None) -> None:
        bits = bytes(self._bits) if bits is None else bits
        flags = (FLAG_OUT_OF_SYNC if self.out_of_sync else 0) if flags is None else flags
        self._disk_gen += 1
        head = HEADER.pack(
            MAGIC,
            VERSION,
            flags,
            0,
            self.uuid.bytes,
            self._disk_gen,
            self.region_size,
            self.nregions,
            self.nbytes,
        )
        head += struct.pack("<I", crc32c(bits, crc32c(head)))
        slot = (head + bytes(HEADER_SIZE - len(head)) + bits).ljust(self.slot_size, b"\0")
        self.io.pwrite_all(fd, slot, (self._disk_gen % 2) * self.slot_size)
        self.io.fdatasync(fd)
        self.syncs += 1

    def _persist(self, gen: int) -> None:
        """Make the in-memory state of generation >= ``gen`` durable (group commit)."""
        with self._flush_lock:
            if self._persisted >= gen:
                return
            with self._lock:
                bits, g = bytes(self._bits), self._gen
                flags = FLAG_OUT_OF_SYNC if self.out_of_sync else 0
            self._write_slot(self._fd, bits, flags)
            self._persisted = g

    def close(self) -> None:
        if self._fd is not None:
            self.io.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------ regions

    def regions(self, offset: int, length: int) -> range:
        rs = self.region_size
        return range(offset // rs, (offset + length - 1) // rs + 1)

    def is_dirty(self, region: int) -> bool:
        return bool(self._bits[region >> 3] & (1 << (region & 7)))

    def dirty(self) -> BitMap:
        with self._lock:
            return BitMap(r for r in range(self.nregions) if self._bits[r >> 3] & (1 << (r & 7)))

    def dirty_count(self) -> int:
        with self._lock:
            return sum(int(b).bit_count() for b in self._bits)

    # ------------------------------------------------------------ the write path

    def flush(self) -> None:
        """Make every bit set so far durable (after ``mark(..., durable=False)``)."""
        with self._lock:
            gen = self._gen
        self._persist(gen)

    def mark(self, offset: int, length: int, *, pin: bool = True, durable: bool = True) -> None:
        """Set (and pin) the regions of a write; durable before this returns."""
        regs = self.regions(offset, length)
        gen = 0
        with self._lock:
            for r in regs:
                if pin:
                    self._pins[r] = self._pins.get(r, 0) + 1
                byte, bit = r >> 3, 1 << (r & 7)
                if not self._bits[byte] & bit:
                    self._bits[byte] |= bit
                    self._gen += 1
                    gen = self._gen
        if gen and durable:
            self._persist(gen)

    def mark_many(self, ranges, *, pin: bool = True) -> None:
        """:meth:`mark` for every ``(offset, length)`` of ``ranges``: one pass
        under the lock, at most one write + sync, durable before this returns."""
        rs = self.region_size
        gen = 0
        with self._lock:
            bits, pins = self._bits, self._pins
            for offset, length in ranges:
                for r in range(offset // rs, (offset + length - 1) // rs + 1):
                    if pin:
                        pins[r] = pins.get(r, 0) + 1
                    byte, bit = r >> 3, 1 << (r & 7)
                    if not bits[byte] & bit:
                        bits[byte] |= bit
                        self._gen += 1
                        gen = self._gen
        if gen:
            self._persist(gen)

    def unpin(self, offset: int, length: int) -> None:
        """The journal holds a record for these regions durably now."""
        self.unpin_many(((offset, length),))

    def unpin_many(self, ranges) -> None:
        """:meth:`unpin` for every ``(offset, length)`` of ``ranges``, under one
        lock hold (the journal's syncer, once per group commit)."""
        rs = self.region_size
        with self._lock:
            pins = self._pins
            for offset, length in ranges:
                for r in range(offset // rs, (offset + length - 1) // rs + 1):
                    n = pins.get(r, 0) - 1
                    if n > 0:
                        pins[r] = n
                    else:
                        pins.pop(r, None)

    # ------------------------------------------------------------ policy

    def set_out_of_sync(self, value: bool) -> None:
        with self._lock:
            if self.out_of_sync == value:
                return
            self.out_of_sync = value
            self._gen += 1
            gen = self._gen
        self._persist(gen)

    def reset(self, *, keep: BitMap | None = None) -> int:
        """Clear the bits of regions with no pending journal record; returns how many.

        Refused (returns 0) while out of sync.  ``keep``: regions not to clear.
        """
        with self._lock:
            if self.out_of_sync:
                return 0
            cleared = 0
            for byte in range(self.nbytes):
                if not self._bits[byte]:
                    continue
                for k in range(8):
                    r = byte * 8 + k
                    if (
                        self._bits[byte] & (1 << k)
                        and r not in self._pins
                        and (keep is None or r not in keep)
                    ):
                        self._bits[byte] &= ~(1 << k) & 0xFF
                        cleared += 1
            if not cleared:
                return 0
            self._gen += 1
            gen = self._gen
            self.trusted = True
        self._persist(gen)
        self.resets += 1
        return cleared

    def clear(self, regions: BitMap) -> None:
        """Resync verified these regions: clear them (unless pinned again)."""
        with self._lock:
            for r in regions:
                if r not in self._pins:
                    self._bits[r >> 3] &= ~(1 << (r & 7)) & 0xFF
            self._gen += 1
            gen = self._gen
        self._persist(gen)
