"""Full restore while the volume stays online ([0074]-[0076]).

``vol.restore(seq=...)`` puts a point back on the primary in the background:

* A ``RESTORE`` marker is journaled first (its ``offset`` field holds the
  target seq), so the state just before it stays a recoverable point: a wrong
  restore is undone by restoring that point.
* The copier walks the regions (the DRL's region size).  For each region it
  reads the target image and the primary; when they differ it writes the
  primary and journals where the bytes are (``REF`` records flagged ``RESTORE``), all
  under the volume's order lock.  The region is then marked in the
  **restored map** (``restore.bin``: the DRL's durable, group-committed
  bitmap format) *before* anything else may rely on it.
* **Reads** of a restored region come from the primary; of a region not yet
  restored, from the target image through its PIT map ([0076]).
* The journal does not get the bytes again: a ``REF`` record names the
  journal extents that already hold them (the target's PIT map for the
  region), so a restore costs the journal metadata only.
* **Host writes win**: a write to a region not yet restored first restores
  that region (under the order lock, marked durable), then lands on top; the
  copier never touches a restored region again.
* The ``RESTORE`` marker is journaled and synced first, then the parameters
  go to ``restore.json`` (written atomically); only then does the call return
  and the copier start.  A crash between the two leaves a marker with no
  restore: nothing was copied, the call never returned, the volume is as it
  was.  From ``restore.json`` on, a crash or restart resumes the copy, and
  reads are correct from the first moment after open because the restored
  map is durable.
* Points journaled while the restore runs are suspect (the journal and what
  the host saw differ until the copy completes); the map that closes at the
  end is a fix-up map, clean.
* ``roll_forward_to=T2`` ([0075]): the journal's changes from the target T1
  to T2 are applied as well, i.e. the primary ends equal to the image at T2;
  it is done in the same single pass (the PIT map at T2 is T1's map with those
  changes merged on top).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import structlog

from . import faults
from . import record as R
from .drl import DirtyRegionLog
from .errors import CdpError
from .fileio import write_file_atomic
from .image import read_pieces, resolve
from .jobs import Job, JobCancelled

if TYPE_CHECKING:
    from .volume import ProtectedVolume

log = structlog.get_logger("cdp.restore")

PARAMS_FILE = "restore.json"
BATCH = 16  # regions per DRL sync and per restored-map sync
MAP_FILE = "restore.bin"


class RestoreDamaged(CdpError):
    """{0}"""


class Restore:
    """One restore: the restored map, the target image, the copier."""

    def __init__(self, vol: ProtectedVolume, params: dict):
        self.vol = vol
        self.params = params
        self.rs = vol.region_size
        self.target = vol.image(seq=params["target_seq"], _internal=True)
        self.done = DirtyRegionLog(
            vol._io, os.path.join(vol.state_dir, MAP_FILE), vol.uuid, vol.size, self.rs
        )
        if not self.done.trusted:
            # Which regions hold host writes made during the restore is lost:
            # copying again could overwrite them.  Refuse to guess.
            raise RestoreDamaged(
                f"{MAP_FILE} in {vol.state_dir} is damaged: which regions "
                "were restored (and may hold newer host writes) is unknown"
            )
        self.nregions = self.done.nregions
        self.started = time.monotonic()
        self.bytes_copied = 0
        self.regions_skipped = 0
        self._unflushed: set[int] = set()  # restored, mark not durable yet

    # ------------------------------------------------------------ set-up

    @classmethod
    def begin(cls, vol: ProtectedVolume, target_seq: int, roll_forward_from: int | None):
        """Journal the marker, persist the parameters, return the running restore."""
        path = os.path.join(vol.state_dir, MAP_FILE)
        if os.path.exists(path):
            os.unlink(path)
        marker = vol._journal.append(R.RESTORE, target_seq, 0)
        vol._journal.sync(marker.seq)
        params = {
            "target_seq": target_seq,
            "marker_seq": marker.seq,
            "roll_forward_from": roll_forward_from,
            "started_ns": time.time_ns(),
        }
        write_file_atomic(
            vol._io, os.path.join(vol.state_dir, PARAMS_FILE), json.dumps(params).encode()
        )
        return cls(vol, params)

    @classmethod
    def resume(cls, vol: ProtectedVolume):
        """The restore in progress at the last stop, or None."""
        try:
            with open(os.path.join(vol.state_dir, PARAMS_FILE), "rb") as f:
                params = json.loads(f.read())
        except FileNotFoundError:
            return None
        restore = cls(vol, params)
        log.info(
            "restore.resume",
            target_seq=params["target_seq"],
            restored=restore.done.dirty_count(),
            regions=restore.nregions,
        )
        return restore

    def finish_files(self) -> None:
        self.done.close()
        for name in (PARAMS_FILE, MAP_FILE):
            try:
                os.unlink(os.path.join(self.vol.state_dir, name))
            except FileNotFoundError:
                pass
        self.vol._io.fsync_dir(self.vol.state_dir)

    # ------------------------------------------------------------ I/O paths

    def read(self, offset: int, length: int) -> bytes:
        """The live volume during the restore: restored regions from the primary."""
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            r = pos // self.rs
            stop = min(end, (r + 1) * self.rs)
            if self.done.is_dirty(r):
                out += self.vol._read_primary(pos, stop - pos)
            else:
                out += self.target.read(pos, stop - pos)
            pos = stop
        return bytes(out)

    def before_write(self, offset: int, length: int) -> None:
        """Order lock held: restore the regions a host write touches first.

        A region the copier restored but whose mark is not durable yet is
        made durable before the host write may land on it.
        """
        for r in self.done.regions(offset, length):
            if not self.done.is_dirty(r):
                self.copy_region(r, premarked=False)
                self.done.flush()
            elif r in self._unflushed:
                self.done.flush()
                self._unflushed.clear()

    def copy_region(self, r: int, *, premarked: bool) -> None:
        """Order lock held.  ``premarked``: the copier already set the DRL bit."""
        vol = self.vol
        a = r * self.rs
        n = min(vol.size, a + self.rs) - a
        pieces = resolve(self.target._layers, vol._catalog, a, a + n)
        data = read_pieces(vol._journal, pieces, a, n)
        if vol._read_primary(a, n) != data:
            if not premarked:
                vol._drl.mark(a, n)
            vol._pwrite(a, data)
            # The journal already holds these bytes: a REF record points at them.
            vol._journal.append(R.REF, a, n, R.pack_refs(pieces), flags=R.FLAG_RESTORE)
            self.bytes_copied += n
        else:
            if premarked:
                vol._drl.unpin(a, n)  # no record will release this pin
            self.regions_skipped += 1
        self.done.mark(a, n, pin=False, durable=False)
        self._unflushed.add(r)

    # ------------------------------------------------------------ the copier

    def __call__(self, job: Job) -> dict:
        """Regions in batches: one DRL sync before, one restored-map sync after."""
        vol = self.vol
        job.done_units = self.done.dirty_count() * self.rs
        todo = [r for r in range(self.nregions) if not self.done.is_dirty(r)]
        for k in range(0, len(todo), BATCH):
            batch = todo[k : k + BATCH]
            if job.cancelled or vol._closed:
                raise JobCancelled()
            for r in batch:  # mark-before-write for the whole batch at once
                vol._drl.mark(r * self.rs, self.rs, durable=False)
            vol._drl.flush()
            for r in batch:
                with vol._order_lock:
                    if not self.done.is_dirty(r):
                        self.copy_region(r, premarked=True)
                    else:
                        vol._drl.unpin(r * self.rs, self.rs)
                job.advance(self.rs)
                job.stats.update(
                    bytes_copied=self.bytes_copied, regions_unchanged=self.regions_skipped
                )
                faults.point("restore.copy", region=r, job=job)
            with vol._order_lock:
                self.done.flush()
                self._unflushed.clear()
        return vol._finish_restore(self)

    def result(self) -> dict:
        return {
            "target_seq": self.params["target_seq"],
            "marker_seq": self.params["marker_seq"],
            "roll_forward_from": self.params.get("roll_forward_from"),
            "bytes_copied": self.bytes_copied,
            "regions_unchanged": self.regions_skipped,
            "regions": self.nregions,
            "seconds": time.monotonic() - self.started,
        }
