"""Extent maps: the in-memory form of delta maps and PIT maps.

A map sends byte ranges of the primary volume to byte addresses in the secondary write
journal (the delta maps of the patent, paragraphs [0040]-[0044]).  It is held as three
equal-length ``int64`` arrays ``starts``, ``ends`` and ``addrs``: extent ``i`` covers primary
bytes ``[starts[i], ends[i])`` and byte ``x`` of it lives at journal address
``addrs[i] + (x - starts[i])``.  The address :data:`ZERO` (``-1``) means the extent reads as
zeros (unmapped or discarded).  Bytes covered by no extent are *not in this map*; a reader
falls back to an older map for them.

Canonical form, kept by every constructor so that ``==`` compares content:

* extents are sorted by primary address, non-overlapping and non-empty (``end > start``);
* extents are coalesced: no two neighbours touch (``end == next.start``) while either both
  being :data:`ZERO` or having a continuing address (``next.addr == addr + (end - start)``).
  Merged maps therefore drop the redundant boundary entries.

Merging is *newest wins*: where extents of several maps (or several journal records)
overlap, the newest one supplies the address, and an older extent that is partly
overwritten keeps only its uncovered pieces, with addresses adjusted for the cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

__all__ = ["ZERO", "ExtentMap", "uncovered"]

ZERO: int = -1
"""Address of an extent that reads as zeros."""

_I64 = np.int64


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _coalesce(
    s: np.ndarray, e: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join sorted, non-overlapping extents that continue each other (vectorised)."""
    n = len(s)
    if n < 2:
        return s, e, a
    prev_a = a[:-1]
    cont = (s[1:] == e[:-1]) & (
        np.where(prev_a == ZERO, a[1:] == ZERO, a[1:] == prev_a + (e[:-1] - s[:-1]))
    )
    if not cont.any():
        return s, e, a
    heads = np.flatnonzero(np.concatenate(([True], ~cont)))
    tails = np.concatenate((heads[1:] - 1, [n - 1]))
    return s[heads], e[tails], a[heads]


def _newest_owner(lo: np.ndarray, hi: np.ndarray, m: int) -> np.ndarray:
    """For each elementary interval ``j < m``, the largest ``i`` with ``lo[i] <= j < hi[i]``.

    Intervals owned by nobody get -1.  Each range is split into two (possibly overlapping)
    power-of-two blocks, entered into a per-level table and pushed down level by level
    (a sparse table used in reverse): O(n + m log m), all in numpy.
    """
    n = len(lo)
    dt = np.int32 if n < 2**31 - 1 else np.int64
    ids = np.arange(n, dtype=dt)
    length = hi - lo
    level = (np.frexp(length.astype(np.float64))[1] - 1).astype(np.int8)
    order = np.argsort(level, kind="stable")
    lev_sorted = level[order]
    top = int(lev_sorted[-1]) if n else 0
    cuts = np.searchsorted(lev_sorted, np.arange(top + 2))
    cur: np.ndarray | None = None
    for k in range(top, -1, -1):
        width = 1 << k
        table = np.full(m - width + 1, -1, dtype=dt)
        if cur is not None:
            # A block of level k+1 at p is the two level-k blocks at p and p + width.
            c = len(cur)
            np.maximum(table[:c], cur, out=table[:c])
            np.maximum(table[width : width + c], cur, out=table[width : width + c])
        sel = order[cuts[k] : cuts[k + 1]]
        if len(sel):
            np.maximum.at(table, lo[sel], ids[sel])
            np.maximum.at(table, hi[sel] - width, ids[sel])
        cur = table
    assert cur is not None
    return cur


def _flatten(
    starts: np.ndarray, ends: np.ndarray, addrs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Newest-wins flattening of possibly overlapping, non-empty extents (later index wins)."""
    if len(starts) == 0:
        return starts, ends, addrs
    # Rank every boundary among the distinct boundaries.  Interleaving each extent's start
    # and end makes every input map one sorted run, which the stable (run-aware) argsort
    # exploits; searchsorted with unordered keys would be cache-bound and far slower.
    pairs = np.empty(2 * len(starts), dtype=_I64)
    pairs[0::2] = starts
    pairs[1::2] = ends
    order = np.argsort(pairs, kind="stable")
    ranked = pairs[order]
    new = np.empty(len(ranked), dtype=bool)
    new[0] = True
    np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
    rank = np.empty(len(ranked), dtype=_I64)
    rank[order] = np.cumsum(new) - 1
    bounds = ranked[new]
    lo = rank[0::2]
    hi = rank[1::2]
    owner = _newest_owner(lo, hi, len(bounds) - 1)
    keep = np.flatnonzero(owner >= 0)
    own = owner[keep]
    s = bounds[keep]
    e = bounds[keep + 1]
    a = addrs[own]
    a = np.where(a == ZERO, a, a + (s - starts[own]))
    return _coalesce(s, e, a)


class ExtentMap:
    """Immutable. starts, ends, addrs: numpy int64 arrays of equal length, sorted by start,
    non-overlapping, every end > start, always coalesced (canonical form, so == compares
    content)."""

    __slots__ = ("starts", "ends", "addrs")

    starts: np.ndarray
    ends: np.ndarray
    addrs: np.ndarray

    def __init__(self, starts: np.ndarray, ends: np.ndarray, addrs: np.ndarray) -> None:
        # Internal: the arrays must already be canonical int64 arrays owned by this map.
        # Use empty(), from_arrays(), from_records() or merge() to build maps.
        self.starts = _frozen(starts)
        self.ends = _frozen(ends)
        self.addrs = _frozen(addrs)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def empty(cls) -> ExtentMap:
        return cls(np.empty(0, _I64), np.empty(0, _I64), np.empty(0, _I64))

    @classmethod
    def from_arrays(cls, starts, ends, addrs, *, check: bool = True) -> ExtentMap:
        """Build from sorted, non-overlapping extents; coalesces them.

        With ``check`` (the default), raises ValueError for arrays of unequal length, empty
        or negative-length extents, unsorted or overlapping extents, negative starts and
        addresses below ZERO.
        """
        s = np.array(starts, dtype=_I64, copy=True).reshape(-1)
        e = np.array(ends, dtype=_I64, copy=True).reshape(-1)
        a = np.array(addrs, dtype=_I64, copy=True).reshape(-1)
        if not len(s) == len(e) == len(a):
            raise ValueError(f"arrays differ in length: {len(s)}, {len(e)}, {len(a)}")
        if check and len(s):
            _check_extents(s, e, a)
            bad = np.flatnonzero(s[1:] < s[:-1])
            if len(bad):
                i = int(bad[0]) + 1
                raise ValueError(
                    f"extents unsorted: extent {i} starts at {s[i]} before extent {i - 1} "
                    f"at {s[i - 1]}"
                )
            bad = np.flatnonzero(s[1:] < e[:-1])
            if len(bad):
                i = int(bad[0]) + 1
                raise ValueError(
                    f"extents overlap: extent {i} [{s[i]}, {e[i]}) overlaps extent {i - 1} "
                    f"[{s[i - 1]}, {e[i - 1]})"
                )
        return cls(*_coalesce(s, e, a))

    @classmethod
    def from_records(cls, records) -> ExtentMap:
        """Newest-wins flattening of journal records ``(start, length, addr)``.

        ``records`` is in write order (oldest first) and may overlap arbitrarily; it may
        also be an ``(n, 3)`` integer array.  Zero-length records are ignored; negative
        lengths or starts and addresses below ZERO raise ValueError.
        """
        if not isinstance(records, np.ndarray):
            records = list(records)
        rec = np.asarray(records, dtype=_I64).reshape(-1, 3)
        s, length, a = rec[:, 0], rec[:, 1], rec[:, 2]
        if len(rec) and length.min() < 0:
            i = int(np.argmax(length < 0))
            raise ValueError(f"record {i} has negative length {length[i]}")
        nz = length > 0
        if not nz.all():
            s, length, a = s[nz], length[nz], a[nz]
        e = s + length
        if len(s):
            _check_extents(s, e, a)
        return cls(*_flatten(s, e, a))

    @staticmethod
    def merge(maps: Iterable[ExtentMap]) -> ExtentMap:
        """Newest-wins merge of ``maps`` given oldest first; equals ``reduce(overlay)``."""
        maps = [m for m in maps if len(m)]
        if not maps:
            return ExtentMap.empty()
        if len(maps) == 1:
            return maps[0]
        s = np.concatenate([m.starts for m in maps])
        e = np.concatenate([m.ends for m in maps])
        a = np.concatenate([m.addrs for m in maps])
        return ExtentMap(*_flatten(s, e, a))

    def overlay(self, newer: ExtentMap) -> ExtentMap:
        """This map with ``newer`` on top: newer's extents replace ours where they overlap."""
        return ExtentMap.merge((self, newer))

    # -- queries -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return zip(self.starts.tolist(), self.ends.tolist(), self.addrs.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        return (
            np.array_equal(self.starts, other.starts)
            and np.array_equal(self.ends, other.ends)
            and np.array_equal(self.addrs, other.addrs)
        )

    def __hash__(self) -> int:
        return hash((self.starts.tobytes(), self.ends.tobytes(), self.addrs.tobytes()))

    def __repr__(self) -> str:
        head = (x[:4].tolist() for x in (self.starts, self.ends, self.addrs))
        shown = ", ".join(map(str, zip(*head, strict=True)))
        more = ", ..." if len(self) > 4 else ""
        return f"ExtentMap(n={len(self)}, [{shown}{more}])"

    def _clipped(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrays of the extents intersecting [start, end), clipped to it."""
        if start >= end:
            return np.empty(0, _I64), np.empty(0, _I64), np.empty(0, _I64)
        i0 = int(np.searchsorted(self.ends, start, side="right"))
        i1 = int(np.searchsorted(self.starts, end, side="left"))
        s = self.starts[i0:i1].copy()
        e = self.ends[i0:i1].copy()
        a = self.addrs[i0:i1].copy()
        if len(s):
            if s[0] < start:
                if a[0] != ZERO:
                    a[0] += start - s[0]
                s[0] = start
            if e[-1] > end:
                e[-1] = end
        return s, e, a

    def lookup(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Extents intersecting [start, end), clipped to it with addresses adjusted for the
        clip (ZERO stays ZERO), sorted.  O(log n + k)."""
        s, e, a = self._clipped(start, end)
        return list(zip(s.tolist(), e.tolist(), a.tolist(), strict=True))

    def restrict(self, start: int, end: int) -> ExtentMap:
        """Only the part of this map inside [start, end)."""
        return ExtentMap(*self._clipped(start, end))

    def covered_bytes(self) -> int:
        return int((self.ends - self.starts).sum())

    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return int(self.starts.nbytes + self.ends.nbytes + self.addrs.nbytes)


def _check_extents(s: np.ndarray, e: np.ndarray, a: np.ndarray) -> None:
    for bad, what in (
        (e <= s, "empty or negative-length extent"),
        (s < 0, "negative start"),
        (a < ZERO, "address below ZERO"),
    ):
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{what} at index {i}: [{s[i]}, {e[i]}) -> {a[i]}")


def uncovered(
    ranges: Sequence[tuple[int, int]], extents: Sequence[tuple[int, ...]]
) -> list[tuple[int, int]]:
    """Sub-ranges of ``ranges`` not covered by ``extents``.

    ``ranges`` are sorted, disjoint ``(start, end)`` pairs still to resolve; ``extents`` are
    sorted, non-overlapping ``(start, end, addr)`` triples such as :meth:`ExtentMap.lookup`
    returns over them.  Returns sorted ``(start, end)`` pairs; pieces of different input
    ranges are not joined even if they touch.
    """
    out: list[tuple[int, int]] = []
    j = 0
    n = len(extents)
    for rs, re in ranges:
        pos = rs
        while j < n and extents[j][1] <= pos:
            j += 1
        k = j
        while k < n and extents[k][0] < re:
            es, ee = extents[k][0], extents[k][1]
            if es > pos:
                out.append((pos, es))
            pos = max(pos, ee)
            if ee > re:
                break
            k += 1
        if pos < re:
            out.append((pos, re))
        j = k
    return out
