"""Points in time of a ProtectedVolume: bookmarks, the list of points, images.

A point is a sequence number: the volume as it was right after that write
([0041]-[0044]).  Points are offered from the baseline's completion on and
back to what retention kept.  A bookmark is a journal record (BOOKMARK,
UNBOOKMARK), so a catalog rebuilt from the journal finds it again; it is
durable when :meth:`PointsInTime.bookmark` returns.  An image is read
through the map engine's layers for its point (image.py).
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib

import structlog

from . import record as R
from .errors import DuplicateBookmark, InvalidArgument, PointNotAvailable, UnknownBookmark
from .image import Image, Point, WritableImage

log = structlog.get_logger("cdp.volume")

SCRATCH_DIR = "scratch"
BOOKMARK_NAME = re.compile(r"^[A-Za-z0-9._:@+][A-Za-z0-9._:@+-]{0,127}$")


class PointsInTime:
    """Mixin of ProtectedVolume: bookmarks, :meth:`points`, :meth:`image`."""

    def bookmark(self, name: str) -> Point:
        """Name the present moment; durable when this returns."""
        self._check_open()
        if not isinstance(name, str) or not BOOKMARK_NAME.match(name) or name.isdigit():
            raise InvalidArgument(
                f"bad bookmark name {name!r}: 1-128 of A-Z a-z 0-9 . _ : @ + -, not starting "
                "with '-', not all digits"
            )
        self._require_baseline()
        with self._order_lock:
            if name in self._maps.bookmarks or name in self._pending_names:
                seq = self._maps.bookmarks.get(name, (None,))[0]
                raise DuplicateBookmark(name, seq)
            self._pending_names.add(name)
            rec = self._journal.append(R.BOOKMARK, 0, 0, name.encode())
        try:
            self._sync(rec.seq)
        finally:
            self._pending_names.discard(name)
        return Point(rec.seq, rec.time_ns / 1e9, "bookmark", name)

    def delete_bookmark(self, name: str) -> None:
        """Delete a bookmark (journaled, so a catalog rebuild does not bring it back)."""
        self._check_open()
        with self._order_lock:
            if name not in self._maps.bookmarks:
                raise UnknownBookmark(name)
            rec = self._journal.append(R.UNBOOKMARK, 0, 0, name.encode())
        self._sync(rec.seq)

    def points(self) -> list[Point]:
        """Bookmarks and delta-map boundaries from the baseline on, oldest first."""
        done = self._maps.baseline_done_seq
        if done is None:
            return []
        with self._maps._lock:
            maps = list(self._maps.level0)
            marks = dict(self._maps.bookmarks)
        by_seq = {done: Point(done, self._maps.baseline_done_time_ns / 1e9, "baseline")}
        by_seq.update(
            {seq: Point(seq, t / 1e9, "bookmark", name) for name, (seq, t) in marks.items()}
        )
        for m in maps:
            if m.last_seq > done and m.last_seq not in by_seq:
                by_seq[m.last_seq] = Point(m.last_seq, m.last_time_ns / 1e9, "map")
        oldest = max(done, self._maps.oldest_seq)
        return sorted((p for p in by_seq.values() if p.seq >= oldest), key=lambda p: p.seq)

    def _require_baseline(self) -> None:
        if self._maps.baseline_done_seq is None:
            job = self.baseline_job
            pct = f" ({100 * job.progress:.0f} % copied)" if job else ""
            raise PointNotAvailable(f"baseline in progress{pct}: no point is offered yet")

    def image(
        self,
        seq: int | None = None,
        time: float | None = None,
        bookmark: str | None = None,
        *,
        writable: bool = False,
        scratch: str | None = None,
        _internal: bool = False,
    ) -> Image:
        """The volume as it was right after write ``seq`` / at ``time`` / at a bookmark.

        ``writable=True``: a :class:`WritableImage` whose writes go to a scratch
        overlay (``scratch`` names it, to reattach after a restart).
        """
        self._check_open()
        given = [a for a in (seq, time, bookmark) if a is not None]
        if len(given) > 1:
            raise InvalidArgument("give at most one of seq, time, bookmark")
        self._require_baseline()
        done = self._maps.baseline_done_seq
        if bookmark is not None:
            if bookmark not in self._maps.bookmarks:
                raise UnknownBookmark(bookmark)
            seq = self._maps.bookmarks[bookmark][0]
        elif time is not None:
            self._journal.sync()
            seq = self._maps.seq_at_time(int(round(float(time) * 1e9)))
            if seq is None or seq < done:
                raise PointNotAvailable(
                    f"no point at or before time {time}: the oldest recoverable point is seq {done}"
                )
        elif seq is None:
            seq = self._journal.durable_seq if self._oos else self._journal.last_seq
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise InvalidArgument(f"seq must be an integer, got {seq!r}")
        if seq < done:
            raise PointNotAvailable(f"seq {seq} is before the baseline completed (seq {done})")
        if seq < self._maps.oldest_seq:
            raise PointNotAvailable(
                f"seq {seq} was faded out by retention; the oldest "
                f"recoverable point is seq {self._maps.oldest_seq}"
            )
        if seq > self._journal.last_seq:
            raise PointNotAvailable(
                f"seq {seq} is not written yet (last is {self._journal.last_seq})"
            )
        if seq > self._journal.durable_seq:
            if self._oos:
                raise PointNotAvailable(
                    f"the secondary is out of sync: seq {seq} never reached the journal "
                    f"(the last journaled point is seq {self._journal.durable_seq})"
                )
            self._journal.sync(seq)
        if writable:
            name = scratch or f"image-{seq}-{uuidlib.uuid4().hex[:8]}"
            if not BOOKMARK_NAME.match(name):
                raise InvalidArgument(f"bad scratch name {name!r}")
            folder = os.path.join(self.state_dir, SCRATCH_DIR)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            image = WritableImage(self, self._maps.layers(seq), os.path.join(folder, name))
        else:
            image = Image(self, self._maps.layers(seq))
        if image.suspect and not _internal:
            log.warning(
                "image.suspect",
                seq=seq,
                why="the journal may disagree with the primary at this point",
            )
        return image

    def close_map(self) -> None:
        """Close the current delta map now (the map engine's on-demand trigger)."""
        self._check_open()
        self._journal.sync()
        self._maps.close_map()
