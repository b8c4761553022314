"""The map engine ([0043]): durable journal records -> delta maps -> merged maps.

* The journal's committer hands every group of newly durable records to
  :meth:`MapEngine.add`; they join the **tail** (durable, not yet in a closed
  delta map).
* A level-0 **delta map** is closed from the oldest tail records every
  ``map_records`` records, every ``map_seconds`` seconds, at each bookmark
  (the bookmark record is the map's last record) and on demand
  (:meth:`close_map`).  Its extents are the records flattened newest-wins.
  The catalog row, its extents, the bookmarks it closes and the baseline
  marker are written in one transaction, *then* the records leave the tail:
  a reader always finds a record in one place or the other.
* **Levels**: once 8 consecutive aligned maps of level L exist they are merged
  into one map of level L + 1 (an LSM tree over the chain).  The PIT map of
  a closed prefix of ``n`` maps is tiled by at most 7 maps per level
  (:meth:`decompose`), so opening a point costs about the same with 10 or
  100,000 delta maps.  Merged maps are built in the background; until one
  exists the lower level serves.  A merge takes its children's extents from
  memory when this engine built them (levels 0 and 1), else from the catalog:
  the same extents either way, kept only until merged.
"""

from __future__ import annotations

import bisect
import dataclasses
import operator
import threading
import time
from dataclasses import dataclass

import numpy as np
import structlog

from . import record as R
from .catalog import Catalog, MapInfo
from .errors import PointNotAvailable
from .extents import ZERO, ExtentMap
from .journal import Journal, Rec

log = structlog.get_logger("cdp.mapengine")

FANOUT = 8
# Maps below this level keep their extents in memory until merged: at most
# UNMERGED_MAPS maps (FANOUT level-0 maps and FANOUT - 1 level-1 maps wait at
# most), of at most FANOUT * map_records extents.
UNMERGED_LEVELS = 2
UNMERGED_MAPS = 2 * FANOUT


def records_to_map(recs: list[Rec]) -> ExtentMap:
    """The records' extents flattened newest-wins (:func:`record_columns` for
    the per-record work)."""
    return _columns_map(record_columns(recs), recs)


# One C call per record instead of a Python step per attribute (the map engine
# shares the ring thread's CPUs: under emulation its loops per record cost as
# much as a small write's journal record).
_FIELDS = operator.attrgetter("kind", "flags", "offset", "length", "addr", "payload_len", "seq")
_KIND, _FLAGS, _OFFSET, _LENGTH, _ADDR, _PLEN, _SEQ = range(7)


def record_columns(recs: list[Rec]) -> np.ndarray:
    """``(n, 7)`` int64: kind, flags, offset, length, addr, payload_len, seq per record."""
    if not recs:
        return np.zeros((0, 7), dtype=np.int64)
    return np.array(list(map(_FIELDS, recs)), dtype=np.int64)


def _columns_map(cols: np.ndarray, recs: list[Rec]) -> ExtentMap:
    """Extents of WRITE and ZERO records from their columns; a REF record
    (restore) brings the extents listed in its payload, in its place."""
    parts, start = [], 0
    for i in np.flatnonzero(cols[:, _KIND] == R.REF).tolist():
        parts.append(_plain_extents(cols[start:i]))
        ref = np.array(recs[i].refs, dtype=np.int64).reshape(-1, 3)
        parts.append(np.column_stack((ref[:, 0], ref[:, 1] - ref[:, 0], ref[:, 2])))
        start = i + 1
    parts.append(_plain_extents(cols[start:]))
    return ExtentMap.from_records(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _plain_extents(cols: np.ndarray) -> np.ndarray:
    """``(start, length, addr)`` rows of the WRITE and non-empty ZERO records."""
    kind, length = cols[:, _KIND], cols[:, _LENGTH]
    keep = (kind == R.WRITE) | ((kind == R.ZERO) & (length > 0))
    if not keep.all():
        cols, kind = cols[keep], kind[keep]
    addrs = np.where(kind == R.WRITE, cols[:, _ADDR] + R.RECORD_HEADER_SIZE, ZERO)
    return np.column_stack((cols[:, _OFFSET], cols[:, _LENGTH], addrs))


@dataclass
class PitLayers:
    """What a reader needs for one point: newest layer first."""

    seq: int
    time_ns: int
    partial: ExtentMap  # records after the last whole map, up to seq
    map_ids: list[int]  # whole maps, newest first
    contributing: list[MapInfo]
    suspect: bool = False
    generation: int = 0


class MapEngine:
    def __init__(
        self,
        catalog: Catalog,
        journal: Journal,
        *,
        map_records: int = 1024,
        map_seconds: float = 5.0,
    ):
        self.catalog = catalog
        self.journal = journal
        self.map_records = map_records
        self.map_seconds = map_seconds
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self.level0: list[MapInfo] = []
        self._l0_last_seq: list[int] = []
        self._l0_last_time: list[int] = []
        self.merged: dict[tuple[int, int], MapInfo] = {}
        self.tail: list[Rec] = []
        self._tail_since = 0.0
        self._tail_seqs: list[int] = []
        self.bookmarks: dict[str, tuple[int, int]] = {}
        self.baseline_done_seq: int | None = None
        self.baseline_done_time_ns = 0
        self.baseline_end = 0  # primary bytes covered by the baseline so far
        self._close_upto: list[int] = []  # seqs that must end a map (bookmarks, requests)
        self._closed_event = threading.Condition(self._lock)
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None
        # Points from this seq on are suspect until a fix-up map closes
        # (set while the journal and the primary disagree: out of sync, resync).
        self.suspect_from: int | None = None
        # Held while the chain's structure changes: closing a map, building a
        # merged map, retention's swap.
        self.structure_lock = threading.RLock()
        self.generation = 0  # bumped by every retention swap
        # The extents of level-0 and level-1 maps this engine built and has not
        # merged yet, by map id: the merge that takes them needs no catalog read.
        self._unmerged: dict[int, ExtentMap] = {}
        self.oldest_seq = 0  # points before it were faded out by retention

    # ------------------------------------------------------------ state

    def load(self) -> None:
        """Load the catalog's maps and bookmarks (before replaying the tail)."""
        for info in self.catalog.maps():
            if info.level == 0:
                self._append_level0(info)
            else:
                self.merged[(info.level, info.idx)] = info
        self.bookmarks = self.catalog.bookmarks()
        self.baseline_done_seq = self.catalog.baseline_done_seq()
        self.baseline_done_time_ns = int(self.catalog.get_meta("baseline_done_time_ns", "0"))
        self.baseline_end = int(self.catalog.get_meta("baseline_end", "0"))
        self.oldest_seq = int(self.catalog.get_meta("oldest_seq", "0"))

    def replay(self, recs: list[Rec]) -> None:
        """Records found in the journal at open: whole maps now, the rest to the tail."""
        start = 0
        for i, r in enumerate(recs):
            if r.kind == R.BOOKMARK or i + 1 - start >= self.map_records:
                self._note(recs[start : i + 1])
                self.build_level0(recs[start : i + 1])
                start = i + 1
        self.add(recs[start:])

    def _note(self, recs: list[Rec]) -> bool:
        """Register bookmarks and baseline progress; True if a map must close."""
        close = False
        for r in recs:
            if r.kind == R.BOOKMARK:
                self.bookmarks[r.name] = (r.seq, r.time_ns)
                close = True
            elif r.kind == R.UNBOOKMARK:
                self.bookmarks.pop(r.name, None)
            elif r.kind == R.BASELINE_DONE:
                self.baseline_done_seq = r.seq
                self.baseline_done_time_ns = r.time_ns
            elif r.flags & R.FLAG_BASELINE and r.kind in R.DATA_KINDS:
                self.baseline_end = max(self.baseline_end, r.offset + r.length)
        return close

    @property
    def last_map(self) -> MapInfo | None:
        return self.level0[-1] if self.level0 else None

    def add(self, recs: list[Rec]) -> None:
        """Newly durable records, in sequence order (from the committer)."""
        if not recs:
            return
        with self._lock:
            was_empty = not self.tail
            if was_empty:
                self._tail_since = time.monotonic()
            self.tail.extend(recs)
            self._tail_seqs.extend(r.seq for r in recs)
            if self._note(recs):
                self._close_upto.extend(r.seq for r in recs if r.kind == R.BOOKMARK)
            if was_empty or len(self.tail) >= self.map_records or self._close_upto:
                self._wake.notify_all()  # also re-arms the thread's time trigger

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cdp-mapengine", daemon=True)
        self._thread.start()

    def stop(self, *, close_tail: bool = True) -> None:
        if self._thread is None:
            return
        if close_tail and self.error is None:
            self.close_map()
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join()
        self._thread = None

    def close_map(self, upto_seq: int | None = None) -> None:
        """Close the tail (up to ``upto_seq``) into delta maps now, and wait."""
        with self._lock:
            if upto_seq is None:
                upto_seq = self.tail[-1].seq if self.tail else 0
            if not self.tail or self.tail[0].seq > upto_seq:
                return
            self._close_upto.append(upto_seq)
            self._wake.notify_all()
            while self.tail and self.tail[0].seq <= upto_seq and self.error is None:
                self._closed_event.wait(0.5)
            if self.error is not None:
                raise self.error

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._due():
                    timeout = None
                    if self.tail:
                        timeout = max(
                            0.01, self.map_seconds - (time.monotonic() - self._tail_since)
                        )
                    self._wake.wait(timeout)
                if self._stop:
                    return
                cut = self._cut()
            try:
                if cut:
                    self._close(cut)
                self._merge_ready()
            except Exception as exc:  # keep serving from the tail; report
                log.error("mapengine.failed", error=repr(exc))
                with self._lock:
                    self.error = exc
                    self._closed_event.notify_all()
                return

    def _due(self) -> bool:
        if not self.tail:
            self._close_upto.clear()
            return False
        return (
            len(self.tail) >= self.map_records
            or bool(self._close_upto)
            or time.monotonic() - self._tail_since >= self.map_seconds
        )

    def _cut(self) -> int:
        """How many tail records the next map takes (lock held)."""
        n = min(len(self.tail), self.map_records)
        pending = sorted(s for s in self._close_upto if s >= self.tail[0].seq)
        self._close_upto = pending
        if pending:
            k = bisect.bisect_right(self._tail_seqs, pending[0])
            n = min(n, k)
            if k <= self.map_records:
                self._close_upto = pending[1:]
        return n

    def _close(self, n: int) -> MapInfo:
        with self.structure_lock:
            return self._close_locked(n)

    def _close_locked(self, n: int) -> MapInfo:
        with self._lock:
            recs = self.tail[:n]
        info = self.build_level0(recs)
        with self._lock:
            del self.tail[:n]
            del self._tail_seqs[:n]
            self._tail_since = time.monotonic()
            self._closed_event.notify_all()
        return info

    def build_level0(self, recs: list[Rec]) -> MapInfo:
        """Write one level-0 map for ``recs`` (also used by catalog rebuild)."""
        cols = record_columns(recs)
        extents = _columns_map(cols, recs)
        idx = len(self.level0)
        kind, flags = cols[:, _KIND], cols[:, _FLAGS]
        data = np.isin(kind, R.DATA_KINDS)
        bms, unbms, done = [], [], None
        for i in np.flatnonzero(~data).tolist():
            r = recs[i]
            if r.kind == R.BOOKMARK:
                bms.append((r.name, r.seq, r.time_ns))
            elif r.kind == R.UNBOOKMARK:
                unbms.append(r.name)
            elif r.kind == R.BASELINE_DONE and done is None:
                done = r
        meta = {}
        if done is not None:
            meta["baseline_done_time_ns"] = str(done.time_ns)
        base = ((flags & R.FLAG_BASELINE) != 0) & data
        bl_end = int((cols[base, _OFFSET] + cols[base, _LENGTH]).max()) if base.any() else 0
        if bl_end:
            meta["baseline_end"] = str(bl_end)
        # Records are in journal order: each segment's are one stretch.
        segno = cols[:, _ADDR] >> 32
        ends = (cols[:, _ADDR] & 0xFFFFFFFF) + R.RECORD_HEADER_SIZE + cols[:, _PLEN]
        firsts = np.flatnonzero(np.diff(segno, prepend=-1))
        lasts = np.append(firsts[1:], len(recs)) - 1
        segments = list(zip(
            segno[firsts].tolist(), cols[firsts, _SEQ].tolist(), cols[lasts, _SEQ].tolist(),
            np.maximum.reduceat(ends, firsts).tolist(), strict=True,
        ))  # fmt: skip
        info = self.catalog.add_map(
            0,
            idx,
            recs[0].seq,
            recs[-1].seq,
            recs[0].time_ns,
            recs[-1].time_ns,
            extents,
            j_first=recs[0].addr,
            j_last=recs[-1].addr,
            j_end=recs[-1].end_addr,
            records=len(recs),
            bookmarks=bms,
            baseline_done_seq=done.seq if done is not None else None,
            segments=segments,
            meta=meta,
            unbookmarks=unbms,
        )
        with self._lock:
            self._append_level0(info)
        self._keep_unmerged(info.id, extents)
        return info

    def _keep_unmerged(self, map_id: int, extents: ExtentMap) -> None:
        """Keep a new map's extents for the merge that will take them.  Bounded:
        a replay at open builds many level-0 maps before the first merge runs."""
        self._unmerged[map_id] = extents
        while len(self._unmerged) > UNMERGED_MAPS:
            del self._unmerged[next(iter(self._unmerged))]  # the oldest: read back if needed

    def _append_level0(self, info: MapInfo) -> None:
        self.level0.append(info)
        self._l0_last_seq.append(info.last_seq)
        self._l0_last_time.append(info.last_time_ns)

    def _merge_ready(self) -> None:
        level = 1
        while True:
            span = FANOUT**level
            with self._lock:
                complete = len(self.level0) // span
            built = False
            for idx in range(complete):
                if (level, idx) in self.merged:
                    continue
                self._build_merged(level, idx)
                built = True
            if complete == 0 and not built:
                return
            level += 1

    def _build_merged(self, level: int, idx: int) -> None:
        with self.structure_lock:
            if (level, idx) in self.merged or len(self.level0) < (idx + 1) * FANOUT**level:
                return
            self._build_merged_locked(level, idx)

    def _build_merged_locked(self, level: int, idx: int) -> None:
        children = [self._map_at(level - 1, idx * FANOUT + k) for k in range(FANOUT)]
        kept = [self._unmerged.pop(c.id, None) for c in children]
        merged = ExtentMap.merge(
            [
                m if m is not None else self.catalog.load_map(c.id)
                for c, m in zip(children, kept, strict=True)
            ]
        )
        info = self.catalog.add_map(
            level,
            idx,
            children[0].first_seq,
            children[-1].last_seq,
            children[0].first_time_ns,
            children[-1].last_time_ns,
            merged,
            records=sum(c.records for c in children),
        )
        with self._lock:
            self.merged[(level, idx)] = info
        if level < UNMERGED_LEVELS:
            self._keep_unmerged(info.id, merged)

    def _map_at(self, level: int, idx: int) -> MapInfo:
        return self.level0[idx] if level == 0 else self.merged[(level, idx)]

    # ------------------------------------------------------------ reading

    def decompose(self, n: int) -> list[MapInfo]:
        """Maps tiling level-0 maps [0, n), oldest first (lock held or not)."""
        out: list[MapInfo] = []
        pos = 0
        top = 0
        while FANOUT ** (top + 1) <= n:
            top += 1
        for level in range(top, -1, -1):
            span = FANOUT**level
            while pos + span <= n:
                info = self.level0[pos] if level == 0 else self.merged.get((level, pos // span))
                if info is None:
                    break
                out.append(info)
                pos += span
        return out

    def layers(self, seq: int) -> PitLayers:
        """Everything needed to read the volume as of sequence number ``seq``."""
        with self._lock:
            n = bisect.bisect_right(self._l0_last_seq, seq)
            whole = self.decompose(n)
            inside = self.level0[n] if n < len(self.level0) else None
            if inside is not None and inside.records == 0 and inside.first_seq <= seq:
                before = self.level0[n - 1].last_seq if n else None
                raise PointNotAvailable(
                    f"seq {seq} was faded out by retention; the nearest points are "
                    + (f"seq {before} and " if before is not None else "")
                    + f"seq {inside.last_seq}"
                )
            generation = self.generation
            if inside is None:
                partial_recs = [r for r in self.tail if r.seq <= seq]
        if inside is not None:
            partial_recs = (
                [r for r in self.journal.iter_records(inside.j_first, inside.j_end) if r.seq <= seq]
                if inside.first_seq <= seq
                else []
            )
        with self._lock:
            if inside is not None and inside.first_seq <= seq:
                holder = self.level0[inside.idx]
            elif n and (inside is not None or seq == self.level0[n - 1].last_seq):
                holder = self.level0[n - 1]
            else:
                holder = None  # the tail
            suspect = bool(holder and holder.suspect) or (
                self.suspect_from is not None
                and seq >= self.suspect_from
                and not (holder and holder.fixup)
            )
        time_ns = (
            partial_recs[-1].time_ns if partial_recs else (whole[-1].last_time_ns if whole else 0)
        )
        contributing = list(whole)
        if inside is not None and partial_recs:
            contributing.append(inside)
        return PitLayers(
            seq,
            time_ns,
            records_to_map(partial_recs),
            [m.id for m in reversed(whole)],
            contributing,
            suspect,
            generation,
        )

    def seq_at_time(self, time_ns: int) -> int | None:
        """The last record written at or before ``time_ns`` (None: before all)."""
        with self._lock:
            n = bisect.bisect_right(self._l0_last_time, time_ns)
            inside = self.level0[n] if n < len(self.level0) else None
            best = self.level0[n - 1].last_seq if n else None
            if inside is None:
                for r in self.tail:
                    if r.time_ns > time_ns:
                        break
                    best = r.seq
                return best
        for r in self.journal.iter_records(inside.j_first, inside.j_end):
            if r.time_ns > time_ns:
                break
            best = r.seq
        return best

    def time_of(self, seq: int) -> int:
        return self.layers(seq).time_ns

    # ------------------------------------------------------------ re-baseline marks

    def set_flags(
        self, idxs: list[int], *, suspect: bool | None = None, fixup: bool | None = None
    ) -> None:
        """Mark level-0 maps suspect / fix-up ([0058]-[0059]), in catalog and memory.

        A merged map is suspect exactly when its newest child is: a suspect map
        merged with a newer fix-up map is clean.
        """
        with self._lock:
            infos = [self.level0[i] for i in idxs]
        self.catalog.set_map_flags([m.id for m in infos], suspect=suspect, fixup=fixup)
        changes = {}
        if suspect is not None:
            changes["suspect"] = suspect
        if fixup is not None:
            changes["fixup"] = fixup
        with self._lock:
            for m in infos:
                self.level0[m.idx] = dataclasses.replace(self.level0[m.idx], **changes)
            merged = list(self.merged.items())
        for (level, idx), info in merged:
            newest = self.level0[(idx + 1) * FANOUT**level - 1]
            if info.suspect != newest.suspect:
                self.catalog.set_map_flags([info.id], suspect=newest.suspect)
                with self._lock:
                    self.merged[(level, idx)] = dataclasses.replace(info, suspect=newest.suspect)

    def level0_regions(self, idx: int, region_size: int):
        """The regions (a BitMap) touched by level-0 map ``idx``."""
        return self.catalog.map_regions(self.level0[idx].id, region_size)

    # ------------------------------------------------------------ retention

    def swap_chain(
        self, new_level0: list[MapInfo], drop_bookmarks: list[str], oldest_seq: int
    ) -> None:
        """Install retention's new chain (structure_lock held by the caller)."""
        with self._lock:
            self.level0 = []
            self._l0_last_seq, self._l0_last_time = [], []
            for info in new_level0:
                self._append_level0(info)
            self.merged = {}
            self._unmerged.clear()
            for name in drop_bookmarks:
                self.bookmarks.pop(name, None)
            self.oldest_seq = oldest_seq
            self.generation += 1
            self._wake.notify_all()  # rebuild the merged levels

    def load_checkpoint(self, head: dict, extents: list) -> None:
        """A catalog rebuilt after retention: the coarse chain from the checkpoint."""
        coarse = list(zip(head["maps"], extents, strict=True))
        infos = self.catalog.replace_chain(
            coarse,
            [],
            [],
            [],
            {
                "oldest_seq": str(head["oldest_seq"]),
                "baseline_end": str(head.get("baseline_end", 0)),
                "baseline_done_time_ns": str(head.get("baseline_done_time_ns", 0)),
            },
        )
        with self.catalog._lock:
            c = self.catalog.conn
            c.executemany(
                "INSERT OR REPLACE INTO bookmark (name, seq, time_ns) VALUES (?, ?, ?)",
                [(k, v[0], v[1]) for k, v in head.get("bookmarks", {}).items()],
            )
            c.execute("UPDATE volume SET baseline_done_seq = ?", (head["baseline_done_seq"],))
        self.level0, self._l0_last_seq, self._l0_last_time = [], [], []
        self.merged = {}
        self._unmerged.clear()
        self.load()
        assert [m.id for m in self.level0] == [m.id for m in infos]
