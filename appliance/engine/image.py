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
    buf = bytearray(length)
    for s, e, a in pieces:
        if a != ZERO:
            buf[s - start : e - start] = journal.read_payload(a, e - s)
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
        pieces = resolve(self._layers, self._vol._catalog, offset, offset + length)
        return read_pieces(self._vol._journal, pieces, offset, length)

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
