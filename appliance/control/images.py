"""Images exposed by name: point-in-time views kept open for the daemon to export.

Creating the LUN is the daemon's job; this registry is what it exports from,
and what ``saveconfig`` persists (name, volume, seq, writable).  A writable
image's overlay is the scratch file named after the image in the volume's
state folder, so exposing the same name at the same point after a restart
reattaches the overlay with the writes it held.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from .points import PointRef
from .protocol import ControlError
from .text import check_name, iso

log = structlog.get_logger("cdp.control")


@dataclass
class Exposed:
    name: str
    volume: str
    seq: int
    time: float
    writable: bool
    suspect: bool
    image: object  # appliance.engine.Image or WritableImage

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "volume": self.volume,
            "seq": self.seq,
            "time": self.time,
            "time_iso": iso(self.time),
            "writable": self.writable,
            "scratch": self.name if self.writable else None,
            "suspect": self.suspect,
            "written_bytes": getattr(self.image, "written_bytes", None),
        }

    def close(self, discard: bool) -> None:
        if self.writable:
            if discard:
                self.image.discard()
            else:
                self.image.close()


class ImageRegistry:
    """Thread-safe map of image name -> :class:`Exposed`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, Exposed] = {}

    def add(self, volume: str, vol, ref: PointRef, writable: bool, name: str | None) -> Exposed:
        """Open the image of ``ref`` on ``vol``; default name ``<volume>-<seq>``."""
        if name is not None:
            check_name(name, "image")
        with self._lock:
            if name is not None and name in self._items:
                raise ControlError("exists", f"an image named {name} is exposed already")
            image = vol.image(**ref.engine_kwargs())
            if name is None:
                name, n = f"{volume}-{image.seq}", 2
                while name in self._items:
                    name, n = f"{volume}-{image.seq}-{n}", n + 1
            if writable:
                image = vol.image(seq=image.seq, writable=True, scratch=name)
            ex = Exposed(name, volume, image.seq, image.time, writable, image.suspect, image)
            self._items[name] = ex
        log.info("control.exposed", image=name, volume=volume, seq=ex.seq, writable=writable)
        return ex

    def get(self, name: str) -> Exposed | None:
        with self._lock:
            return self._items.get(name)

    def find(self, name: str | None, volume: str | None) -> Exposed:
        """The image ``name``, or the only one of ``volume``; ControlError otherwise."""
        with self._lock:
            if name is not None:
                ex = self._items.get(name)
                if ex is None or (volume is not None and ex.volume != volume):
                    raise ControlError("not_found", f"no exposed image named {name!r}")
                return ex
            mine = [e for e in self._items.values() if volume is None or e.volume == volume]
        if len(mine) == 1:
            return mine[0]
        where = f" of {volume}" if volume else ""
        if not mine:
            raise ControlError("not_found", f"no image{where} is exposed")
        names = ", ".join(sorted(e.name for e in mine))
        raise ControlError("bad_argument", f"images{where} exposed: {names}; name one")

    def remove(self, name: str | None, volume: str | None, discard: bool) -> Exposed:
        ex = self.find(name, volume)
        with self._lock:
            if self._items.get(ex.name) is not ex:
                raise ControlError("not_found", f"no exposed image named {ex.name!r}")
            del self._items[ex.name]
        ex.close(discard)
        log.info("control.unexposed", image=ex.name, volume=ex.volume, discard=discard)
        return ex

    def of(self, volume: str | None = None) -> list[Exposed]:
        with self._lock:
            items = [e for e in self._items.values() if volume is None or e.volume == volume]
        return sorted(items, key=lambda e: e.name)

    def flush(self) -> None:
        for e in self.of():
            if e.writable:
                e.image.flush()

    def close_all(self) -> None:
        """At shutdown: overlays are flushed and kept."""
        with self._lock:
            items, self._items = list(self._items.values()), {}
        for e in items:
            e.close(discard=False)
