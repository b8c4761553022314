"""Re-baseline ([0054]-[0071], Figs. 3A-3C and 4) and re-synchronization ([0072]-[0073]).

The procedure, with the step numbers of Figs. 3A-3C:

* 302-306 (point B): close the current delta map; the PIT map of that point.
* 308-318: scan every region of the primary (resync: only the regions the DRL
  marks dirty) and compare it with the secondary as the PIT map places it;
  a difference goes into the miscompare map Δmc.  Progress is checkpointed in
  the catalog every 32 regions, so a crash resumes where it stopped ([0062]).
* 320-322 (point C): Δscan = the regions written during the scan;
  **Δcopy = Δmc − (Δmc ∩ Δscan)** (equation 1).  Then, because a region written
  during the scan may *also* hold an error, every region of Δmc ∩ Δscan is
  compared again, holding the order lock's write range of that region (no
  write to it can interleave), against the present: still different means a
  true miscompare.  (The patent's
  equation alone would miss it; the result reports both.)
* 324-334 (point D): copy Δcopy from the primary into the journal (``FIXUP``
  records, each read and journaled holding the order lock's write range of
  its region, so a host write to it is either in the copy or after it, and
  host writes elsewhere go on, as during the baseline).  The delta map that closes at D holds the
  copies and the host writes of the copy interval in sequence order: that is
  **Δfix-up = Δhost ← Δcopy** (equation 2); it is flagged ``fixup``.
* 336-344: the maps of the scan and copy intervals are suspect; walking back
  from the map before B, each map is marked suspect and
  **Δcopy = Δcopy − (Δcopy ∩ Δselected)** (equation 3) until Δcopy is empty
  (point A).

Resync differs in one respect: it knows where the divergence began (the
``OUT_OF_SYNC`` marker written when the journal came back, or at recovery), so
instead of walking back it marks suspect exactly the maps from that marker to
the fix-up; points before it are good.  A resync started by hand on a volume
that was in sync knows no such point, and walks back like a re-baseline.
"""

from __future__ import annotations

import json
import struct
import time
from typing import TYPE_CHECKING

import structlog
from pyroaring import BitMap

from . import faults
from . import record as R
from .image import read_pieces
from .jobs import Job, JobCancelled

if TYPE_CHECKING:
    from .volume import ProtectedVolume

log = structlog.get_logger("cdp.rebaseline")

CHECKPOINT_EVERY = 32


def eq1_copy(mc: BitMap, scan: BitMap) -> BitMap:
    """Equation 1: Δcopy = Δmc − (Δmc ∩ Δscan)."""
    return mc - (mc & scan)


def eq2_fixup(host, copy):
    """Equation 2: Δfix-up = Δhost ← Δcopy: the copy merged into the host map.

    On region sets that is the union; on extent maps the host's changes win
    where both touch a byte (``copy.overlay(host)``).
    """
    if isinstance(host, BitMap):
        return host | copy
    return copy.overlay(host)


def eq3_walk(copy: BitMap, selected: BitMap) -> BitMap:
    """Equation 3: Δcopy = Δcopy − (Δcopy ∩ Δselected)."""
    return copy - (copy & selected)


def walk_back(copy: BitMap, chain_regions) -> list[int]:
    """Steps 336-344: indexes (newest first) of the maps marked suspect.

    ``chain_regions(i)`` gives the regions of map ``i``; the walk starts at the
    highest index the iterable yields.
    """
    marked = []
    for idx, regions in chain_regions:
        if not copy:
            break
        marked.append(idx)
        copy = eq3_walk(copy, regions)
    return marked


def _pack_sets(*sets: BitMap) -> bytes:
    out = b""
    for s in sets:
        raw = s.serialize()
        out += struct.pack("<I", len(raw)) + raw
    return out


def _unpack_sets(blob: bytes, n: int) -> list[BitMap]:
    sets, pos = [], 0
    for _ in range(n):
        if pos + 4 > len(blob):
            sets.append(BitMap())
            continue
        (k,) = struct.unpack_from("<I", blob, pos)
        sets.append(BitMap.deserialize(blob[pos + 4 : pos + 4 + k]))
        pos += 4 + k
    return sets


class Procedure:
    """One run (or resumed run) of a re-baseline or a resync."""

    def __init__(
        self,
        vol: ProtectedVolume,
        kind: str,
        *,
        targets: BitMap | None = None,
        oos_seq: int | None = None,
    ):
        self.vol = vol
        self.kind = kind
        self.rs = vol.region_size
        saved = vol._catalog.load_job(kind)
        if saved is not None:
            self.st = json.loads(saved[0])
            self.targets, self.mc, self.copy = _unpack_sets(saved[1], 3)
            self.st["resumed"] = True
            log.info(f"{kind}.resume", phase=self.st["phase"], next=self.st["next"])
        else:
            self.targets = targets if targets is not None else BitMap(range(vol._drl.nregions))
            self.mc, self.copy = BitMap(), BitMap()
            self.st = {
                "kind": kind,
                "phase": "start",
                "next": 0,
                "oos_seq": oos_seq,
                "resumed": False,
                "rechecked_true": 0,
            }
        self.total = len(self.targets) * self.rs

    def save(self) -> None:
        self.vol._catalog.save_job(
            self.kind, json.dumps(self.st), _pack_sets(self.targets, self.mc, self.copy)
        )

    def region_range(self, r: int) -> tuple[int, int]:
        a = r * self.rs
        return a, min(self.vol.size, a + self.rs)

    # ------------------------------------------------------------ the phases

    def __call__(self, job: Job) -> dict:
        vol, st = self.vol, self.st
        if st["phase"] == "start":
            st["B"], st["nB"] = vol._close_map_now()
            st["phase"], st["next"] = "scan", 0
            self.save()
        if st["phase"] == "scan":
            self._scan(job)
            st["phase"], st["next"] = "compare", 0
            self.save()
        if st["phase"] == "compare":
            self._compare()
            st["phase"], st["next"] = "copy", 0
            self.save()
        if st["phase"] == "copy":
            self._copy(job)
            st["phase"] = "mark"
            self.save()
        if st["phase"] == "mark":
            self._mark()
        return self._finish()

    def _scan(self, job: Job) -> None:
        """Steps 308-318."""
        vol, st = self.vol, self.st
        t0 = time.monotonic()
        image = vol.image(seq=st["B"], _internal=True)
        regions = list(self.targets)
        # A full scan resolves the whole PIT map once; a few regions resolve each.
        pit = image.extent_map() if len(regions) * 8 >= vol._drl.nregions else None
        job.done_units = st["next"] * self.rs
        for i in range(st["next"], len(regions)):
            if job.cancelled or vol._closed:
                raise JobCancelled()
            a, b = self.region_range(regions[i])
            if pit is None:
                secondary = image.read(a, b - a)
            else:
                secondary = read_pieces(vol._journal, pit.lookup(a, b), a, b - a)
            if vol.read(a, b - a) != secondary:
                self.mc.add(regions[i])
            job.advance(b - a)
            if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                st["next"] = i + 1
                self.save()
            faults.point(f"{self.kind}.scan", index=i, job=job)
        st["scan_seconds"] = st.get("scan_seconds", 0.0) + time.monotonic() - t0

    def _compare(self) -> None:
        """Steps 320-322 (point C), equation 1, then the recheck of Δmc ∩ Δscan."""
        vol, st = self.vol, self.st
        st["C"], st["nC"] = vol._close_map_now()
        scan = BitMap()
        for idx in range(st["nB"], st["nC"]):
            scan |= vol._maps.level0_regions(idx, self.rs)
        self.copy = eq1_copy(self.mc, scan)
        st["eq1_copy"] = len(self.copy)
        st["scan_regions"] = len(scan)
        for r in self.mc & scan:
            a, b = self.region_range(r)
            with vol._order_lock.write_range(a, b):  # no write to it in between
                present = vol.image(seq=vol._journal.last_seq, _internal=True)
                if vol.read(a, b - a) != present.read(a, b - a):
                    self.copy.add(r)
                    st["rechecked_true"] += 1

    def _copy(self, job: Job) -> None:
        """Steps 328-334 (point D): the fix-up."""
        vol, st = self.vol, self.st
        regions = list(self.copy)
        if not regions:
            return
        if st["next"] == 0:
            vol._journal.append(R.FIXUP, 0, 0)
        copied = st.get("bytes_copied", 0)
        for i in range(st["next"], len(regions)):
            if job.cancelled or vol._closed:
                raise JobCancelled()
            a, b = self.region_range(regions[i])
            with vol._order_lock.write_range(a, b):  # writes elsewhere go on
                data = vol.read(a, b - a)
                vol._journal.append(R.WRITE, a, b - a, data, flags=R.FLAG_FIXUP)
            copied += b - a
            if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                st["next"], st["bytes_copied"] = i + 1, copied
                self.save()
            faults.point(f"{self.kind}.copy", index=i, job=job)
        st["bytes_copied"] = copied
        st["D"], st["nD"] = vol._close_map_now()

    def _mark(self) -> None:
        """Steps 336-344: the fix-up map, the suspect interval."""
        vol, st = self.vol, self.st
        maps = vol._maps
        if not self.copy:
            st["suspect_maps"] = 0
            return
        fix = st["nD"] - 1
        maps.set_flags([fix], fixup=True, suspect=False)
        oos = st.get("oos_seq")
        if self.kind == "resync" and oos is not None:
            suspect = [i for i in range(fix) if maps.level0[i].last_seq >= oos]
        else:
            suspect = list(range(st["nB"], fix))

            def chain():
                for idx in range(st["nB"] - 1, -1, -1):
                    yield idx, maps.level0_regions(idx, self.rs)

            suspect += walk_back(BitMap(self.copy), chain())
        if suspect:
            maps.set_flags(sorted(suspect), suspect=True)
        st["suspect_maps"] = len(suspect)
        st["fixup_map"] = maps.level0[fix].id

    def _finish(self) -> dict:
        vol, st = self.vol, self.st
        if self.kind == "resync" or vol._drl.out_of_sync:
            rec = vol._journal.append(R.IN_SYNC, 0, 0)
            vol._journal.sync(rec.seq)
            vol._drl.set_out_of_sync(False)
        vol._drl.clear(self.targets)
        vol._maps.suspect_from = None
        vol._catalog.delete_job(self.kind)
        result = {
            "regions_compared": len(self.targets),
            "miscompares": len(self.mc),
            "miscompares_eq1": st.get("eq1_copy", 0),
            "rechecked_true": st.get("rechecked_true", 0),
            "regions_copied": len(self.copy),
            "bytes_copied": st.get("bytes_copied", 0),
            "suspect_maps": st.get("suspect_maps", 0),
            "fixup_map": st.get("fixup_map"),
            "resumed": st.get("resumed", False),
            "scan_seconds": st.get("scan_seconds", 0.0),
        }
        log.info(f"{self.kind}.done", **result)
        return result
