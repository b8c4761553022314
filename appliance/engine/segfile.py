"""Journal segment files on disk: O_DIRECT appends in whole blocks, zeros ahead.

Why.  Measured in the test VM (kernel 6.1, ext4 on virtio, TCG): a buffered
append of a 64 KiB record to an ext4 file costs the kernel ~0.5-0.7 ms
(block allocation, i_size, the page cache copy), then its writeback again;
the same bytes written with O_DIRECT into blocks that are already allocated
*and written* cost ~0.1 ms, and nothing is left to write back.  So the
journal writes its records with O_DIRECT (:class:`DirectWriter`), and before
its records reach the end of what the segment file holds it writes the next
:data:`ZERO_AHEAD` bytes of zeros (big O_DIRECT writes, cheap per byte), so
the record writes land in written blocks and change no file-system metadata.

Rules that keep this crash safe (docs/FORMAT.md, "Alignment"):

* O_DIRECT needs the file offset, the length and the memory of a write
  aligned to the device's logical block (512 or 4096 bytes, probed once:
  :func:`probe_align`).  Records are copied into one page-aligned buffer
  and written in whole blocks.
* Every write starts on a block boundary: the journal ends each batch with a
  PAD record up to the next boundary, so a write never rewrites a block that
  holds records already written (which could be durable and acknowledged: a
  torn rewrite would damage them).  Only the last block of a segment, where
  no PAD fits, is zero-filled past the last record instead.
* Zeros are only ever written past the last record: they read as the end of
  the segment's records.  An fdatasync of the records makes the file's size
  and blocks durable with them.  The next open cuts them off a segment that
  takes no more records (``Journal.trim_zero_tails``): a shorter file reads
  the same.

Where O_DIRECT is refused (EINVAL: tmpfs before Linux 6.6, some FUSE file
systems) the journal writes through the page cache as before, without PADs.
"""

from __future__ import annotations

import errno
import mmap
import os

from .fileio import FileIO

CHUNK = 1 << 20  # the aligned copy buffer; larger batches go in several writes
ALIGNS = (512, 4096)
ZERO_AHEAD = 8 << 20  # zeros written ahead of the records, in one go
SMALL = 16 << 10  # buffers below this are joined in groups before the copy
GROUP = 64 << 10  # ... of at most about this much (below malloc's mmap threshold)


def pooled(folder: str) -> str | None:
    """A reclaimed segment file waiting in the pool (``free/*.free``), or None."""
    pool = os.path.join(folder, "free")
    try:
        names = sorted(n for n in os.listdir(pool) if n.endswith(".free"))
    except FileNotFoundError:
        return None
    return os.path.join(pool, names[0]) if names else None


def open_direct(io: FileIO, path: str, flags: int, mode: int = 0o600) -> int | None:
    """``path`` opened with O_DIRECT, or None where the file system refuses it."""
    try:
        return io.open(path, flags | os.O_DIRECT, mode)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None


class DirectWriter:
    """Writes runs of buffers that start on a block boundary, in whole blocks,
    from one page-aligned buffer (O_DIRECT's rule for memory, offset and length).
    The last block of a run is zero-filled past its end.  One caller at a time
    (the journal's ``_io_lock``)."""

    def __init__(self, io: FileIO, chunk: int = CHUNK):
        self.io = io
        self._map = mmap.mmap(-1, chunk)
        self._buf = memoryview(self._map)
        self.align = ALIGNS[-1]

    def write(self, fd: int, buffers, offset: int) -> None:
        """``buffers`` (bytes, or buffers of bytes), back to back from ``offset``
        (on a block boundary), copied into the aligned buffer, which goes out
        whenever it is full, and at the end up to the next block, zero-filled.

        Small buffers (record headers, 4 KiB payloads) are joined in groups of
        up to :data:`GROUP` bytes first: one C call instead of a Python step
        each.  Larger ones are copied straight in.  So no temporary is ever
        larger than a group: an allocation that size is taken from the heap
        and reused, where a joined run of 64 KiB records (half a MiB) was
        mmapped and faulted in again on every write (malloctune.py)."""
        align = self.align
        if offset % align:
            raise ValueError(f"direct write at {offset}, not on a {align}-byte boundary")
        used = 0
        group: list = []
        size = 0
        for b in buffers:
            n = len(b)
            if n < SMALL:
                group.append(b)
                size += n
                if size < GROUP:
                    continue
                b, n = b"".join(group), size
                group, size = [], 0
            elif group:
                used, offset = self._put(fd, b"".join(group), size, used, offset)
                group, size = [], 0
            used, offset = self._put(fd, b, n, used, offset)
        if group:
            used, offset = self._put(fd, b"".join(group), size, used, offset)
        if used:
            self.write_prepared(fd, used, offset)

    def _put(self, fd: int, b, n: int, used: int, offset: int) -> tuple[int, int]:
        """``b`` (``n`` bytes) into the buffer after its first ``used`` bytes;
        every full buffer is written at ``offset``.  Returns (used, offset)."""
        buf = self._buf
        cap = len(buf)
        if used + n <= cap:
            buf[used : used + n] = b
            return used + n, offset
        data = memoryview(b)
        while data:
            k = min(len(data), cap - used)
            buf[used : used + k] = data[:k]
            used += k
            data = data[k:]
            if used == cap:
                self.io.pwritev_all(fd, [buf], offset)
                offset += cap
                used = 0
        return used, offset

    @property
    def buffer(self) -> memoryview:
        """The aligned buffer, for a caller that lays out a write in it itself
        (Journal.write_run) and then calls :meth:`write_prepared`."""
        return self._buf

    def write_prepared(self, fd: int, used: int, offset: int) -> None:
        """The buffer's first ``used`` bytes, laid out by the caller, written at
        ``offset`` (on a block boundary) up to the next block, zero-filled."""
        align = self.align
        if offset % align:
            raise ValueError(f"direct write at {offset}, not on a {align}-byte boundary")
        end = -(-used // align) * align
        if end > used:
            self._buf[used:end] = bytes(end - used)
        self.io.pwritev_all(fd, [self._buf[:end]], offset)

    def write_block(self, fd: int, data: bytes, offset: int) -> None:
        """One aligned block (a segment header, a probe) with ``pwrite``."""
        n = len(data)
        self._buf[:n] = data
        self.io.pwrite_all(fd, self._buf[:n], offset)

    def write_zeros(self, fd: int, offset: int, length: int) -> None:
        """Zeros over ``[offset, offset + length)`` (both aligned)."""
        buf = self._buf
        buf[:] = bytes(len(buf))
        while length > 0:
            n = min(length, len(buf))
            self.io.pwrite_all(fd, buf[:n], offset)
            offset += n
            length -= n

    def close(self) -> None:
        self._buf.release()
        try:
            self._map.close()
        except BufferError:  # a slice is still referenced (a traceback): freed with it
            pass


def probe_align(io: FileIO, writer: DirectWriter, fd: int, offset: int) -> int:
    """The smallest block O_DIRECT accepts on ``fd``: a block of zeros is
    written at ``offset`` (past the segment header, before any record: zeros
    there read as the end of the journal).  0: none does."""
    for align in ALIGNS:
        writer.align = align
        try:
            writer.write_block(fd, bytes(align), offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            continue
        return align
    return 0
