"""Point-in-time images: the volume as it was right after one journal record.

An :class:`Image` holds the layers of its PIT map (newest first): the
records after the last whole delta map up to the point, then the merged and
delta maps that tile the closed chain before it.  A read resolves its range
layer by layer, newest first, until every byte is placed, then fetches the
bytes from the journal (zero extents are zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import JournalCorrupt
from .extents import ZERO, ExtentMap, uncovered
from .mapengine import PitLayers

if TYPE_CHECKING:
    from .volume import ProtectedVolume


@dataclass(frozen=True)
class Point:
    """A recoverable point: the state right after record ``seq``."""

    seq: int
    time: float  # seconds since the epoch
    kind: str  # "bookmark", "map" (a delta-map boundary), "baseline"
    name: str | None = None


def clip(extents, ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Intersect sorted extents with sorted disjoint ranges (addr adjusted)."""
    out = []
    i = 0
    for s, e, a in extents:
        while i < len(ranges) and ranges[i][1] <= s:
            i += 1
        j = i
        while j < len(ranges) and ranges[j][0] < e:
            lo, hi = max(s, ranges[j][0]), min(e, ranges[j][1])
            if lo < hi:
                out.append((lo, hi, a if a == ZERO else a + (lo - s)))
            j += 1
    return out


def resolve(layers: PitLayers, catalog, start: int, end: int) -> list[tuple[int, int, int]]:
    """Where every byte of [start, end) lives, as sorted (start, end, addr)."""
    ranges = [(start, end)]
    pieces: list[tuple[int, int, int]] = []
    found = clip(layers.partial.lookup(start, end), ranges) if len(layers.partial) else []
    if found:
        pieces += found
        ranges = uncovered(ranges, found)
    for map_id in layers.map_ids:
        if not ranges:
            break
        rows = catalog.extents_in(map_id, ranges[0][0], ranges[-1][1])
        found = clip(rows, ranges)
        if found:
            pieces += found
            ranges = uncovered(ranges, found)
    if ranges:
        raise JournalCorrupt(
            f"no journal data for primary bytes {ranges[0][0]}-{ranges[0][1]} at seq {layers.seq}"
        )
    pieces.sort()
    return pieces


def read_pieces(journal, pieces, start: int, length: int) -> bytes:
    """The bytes of [start, start + length) from resolved pieces (one copy at most)."""
    if len(pieces) == 1 and pieces[0][2] != ZERO:
        return journal.read_payload(pieces[0][2], length)
    buf = bytearray(length)
    view = memoryview(buf)
    for s, e, a in pieces:
        if a != ZERO:
            journal.read_into(a, view[s - start : e - start])
    return bytes(buf)


class Image:
    """Read-only view of the volume at one point (``vol.image(...)``)."""

    def __init__(self, volume: ProtectedVolume, layers: PitLayers):
        self._vol = volume
        self._layers = layers
        self.seq = layers.seq
        self.time = layers.time_ns / 1e9
        self.size = volume.size
        self.block_size = volume.block_size
        self.suspect = layers.suspect

    def read(self, offset: int, length: int) -> bytes:
        self._vol._check_range(offset, length)
        if length == 0:
            return b""
        maps = self._vol._maps
        for attempt in (1, 2):
            if self._layers.generation != maps.generation:
                self._layers = maps.layers(self.seq)  # retention changed the chain
            try:
                pieces = resolve(self._layers, self._vol._catalog, offset, offset + length)
                return read_pieces(self._vol._journal, pieces, offset, length)
            except JournalCorrupt:
                if attempt == 2 or self._layers.generation == maps.generation:
                    raise
        raise AssertionError("unreachable")

    def extent_map(self) -> ExtentMap:
        """The whole PIT map (for restore and comparisons; costs a full walk)."""
        pieces = resolve(self._layers, self._vol._catalog, 0, self.size)
        if not pieces:
            return ExtentMap.empty()
        import numpy as np

        arr = np.array(pieces, dtype=np.int64)
        return ExtentMap.from_arrays(arr[:, 0], arr[:, 1], arr[:, 2])

    def __repr__(self):
        return f"<Image seq={self.seq} size={self.size}>"


class WritableImage(Image):
    """An image with a scratch overlay taking its writes ("image access", "test failover").

    Writes go to a sparse scratch file in the state folder, never to the
    primary or the journal; a bitmap of written blocks says which blocks the
    overlay holds.  ``flush()`` makes the overlay durable (the bitmap is
    written atomically beside the scratch file), so an image exposed as a LUN
    survives a restart (``vol.image(..., writable=True, scratch=name)`` again).
    ``discard()`` deletes the overlay: the volume and the journal never saw it.
    """

    def __init__(self, volume: ProtectedVolume, layers: PitLayers, path: str):
        import json
        import os
        import threading

        from pyroaring import BitMap

        super().__init__(volume, layers)
        self.path = path
        self._lock = threading.Lock()
        self._written = BitMap()
        meta_path = path + ".json"
        if os.path.exists(meta_path):
            with open(meta_path, "rb") as f:
                meta = json.loads(f.read())
            if meta["seq"] != self.seq or meta["size"] != self.size:
                from .errors import InvalidArgument

                raise InvalidArgument(
                    f"scratch {path} belongs to seq {meta['seq']}, not {self.seq}"
                )
            with open(path + ".map", "rb") as f:
                self._written = BitMap.deserialize(f.read())
        else:
            from .fileio import write_file_atomic

            write_file_atomic(
                volume._io, meta_path, json.dumps({"seq": self.seq, "size": self.size}).encode()
            )
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, self.size)

    def _blocks(self, offset: int, length: int) -> range:
        return range(offset // self.block_size, (offset + length) // self.block_size)

    def write(self, offset: int, data) -> None:
        import os

        self._vol._check_range(offset, len(data))
        with self._lock:
            os.pwrite(self._fd, bytes(data), offset)
            blocks = self._blocks(offset, len(data))
            if len(blocks):
                self._written.add_range(blocks.start, blocks.stop)

    def write_zeros(self, offset: int, length: int) -> None:
        self.write(offset, bytes(length))

    def read(self, offset: int, length: int) -> bytes:
        import os

        from pyroaring import BitMap

        base = bytearray(super().read(offset, length))
        blocks = self._blocks(offset, length)
        with self._lock:
            mine = (self._written & BitMap(blocks)) if len(blocks) else []
            for b in mine:
                pos = b * self.block_size
                base[pos - offset : pos - offset + self.block_size] = os.pread(
                    self._fd, self.block_size, pos
                )
        return bytes(base)

    def flush(self) -> None:
        import os

        from .fileio import write_file_atomic

        with self._lock:
            os.fdatasync(self._fd)
            write_file_atomic(self._vol._io, self.path + ".map", self._written.serialize())

    @property
    def written_bytes(self) -> int:
        return len(self._written) * self.block_size

    def close(self) -> None:
        import os

        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Drop the overlay; the volume and the journal are untouched."""
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for suffix in ("", ".map", ".json"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
