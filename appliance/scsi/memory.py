"""An in-memory :class:`~appliance.scsi.backend.BlockBackend` for tests.

It models the one property the SCSI layer must get right about caches: a
*volatile* image (what reads see) and a *durable* image (what survives a
power cut).  A plain write changes only the volatile image; a FUA write
changes both for its range; :meth:`flush` copies volatile to durable.  Every
call is appended to :attr:`ops`, and :meth:`fail_next` arms a one-shot fault.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .backend import LbaRun, ProvisioningStatus


class MemoryBackend:
    def __init__(self, size: int, block_size: int = 512):
        if block_size not in (512, 4096) or size < 0 or size % block_size:
            raise ValueError(f"bad geometry: size={size} block_size={block_size}")
        self.size = size
        self.block_size = block_size
        self.data = bytearray(size)
        self.durable = bytearray(size)
        # 1 = deallocated.  A new thin volume is all deallocated.
        self.deallocated = bytearray(b"\x01" * (size // block_size))
        self.ops: list[tuple] = []
        self._faults: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    # -- test helpers ---------------------------------------------------------

    def fail_next(self, op: str, exc: BaseException) -> None:
        """Make the next call of method ``op`` raise ``exc`` (before any effect)."""
        self._faults[op] = exc

    def snapshot(self) -> bytes:
        return bytes(self.data)

    def _enter(self, op: str, offset: int, length: int) -> None:
        exc = self._faults.pop(op, None)
        if exc is not None:
            raise exc
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{op}: range {offset}+{length} outside 0..{self.size}")
        if offset % self.block_size or length % self.block_size:
            raise ValueError(f"{op}: range {offset}+{length} not block-aligned")

    def _mark(self, offset: int, length: int, deallocated: bool) -> None:
        bs = self.block_size
        first, end = offset // bs, (offset + length) // bs
        self.deallocated[first:end] = (b"\x01" if deallocated else b"\x00") * (end - first)

    # -- BlockBackend -----------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            self._enter("read", offset, length)
            self.ops.append(("read", offset, length))
            return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data, *, fua: bool = False) -> None:
        data = bytes(data)
        with self._lock:
            self._enter("write", offset, len(data))
            self.ops.append(("write", offset, len(data), fua))
            self._apply(offset, data, fua)

    def _apply(self, offset: int, data: bytes, fua: bool) -> None:
        self.data[offset : offset + len(data)] = data
        if fua:
            self.durable[offset : offset + len(data)] = data
        self._mark(offset, len(data), deallocated=False)

    def write_zeros(self, offset: int, length: int, *, unmap: bool = False) -> None:
        with self._lock:
            self._enter("write_zeros", offset, length)
            self.ops.append(("write_zeros", offset, length, unmap))
            self.data[offset : offset + length] = bytes(length)
            self._mark(offset, length, deallocated=unmap)

    def flush(self) -> None:
        with self._lock:
            self._enter("flush", 0, 0)
            self.ops.append(("flush",))
            self.durable[:] = self.data

    def compare_and_write(
        self, offset: int, expected: bytes, new: bytes, *, fua: bool
    ) -> int | None:
        expected, new = bytes(expected), bytes(new)
        if len(expected) != len(new):
            raise ValueError("compare_and_write: expected and new differ in length")
        with self._lock:
            self._enter("compare_and_write", offset, len(new))
            self.ops.append(("compare_and_write", offset, len(new), fua))
            current = self.data[offset : offset + len(expected)]
            if current != expected:
                return next(
                    i for i, (a, b) in enumerate(zip(current, expected, strict=True)) if a != b
                )
            self._apply(offset, new, fua)
            return None

    def lba_status(self, offset: int, length: int) -> Iterator[LbaRun]:
        bs = self.block_size
        with self._lock:
            flags = bytes(self.deallocated[offset // bs : (offset + length) // bs])
        start = 0
        for i in range(1, len(flags) + 1):
            if i == len(flags) or flags[i] != flags[start]:
                status = ProvisioningStatus(flags[start])  # 1 = DEALLOCATED
                yield LbaRun(offset + start * bs, (i - start) * bs, status)
                start = i
