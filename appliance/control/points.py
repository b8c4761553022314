"""Naming a point: what a user types after ``point=``, ``since=``, ``roll_forward_to=``.

=====================  ===========================================================
written                means
=====================  ===========================================================
``1234``               sequence number 1234 (the state right after that write)
``pre-upgrade``        the bookmark of that name
``-15m``, ``-2h30m``   that long before now (units ``s m h d w``, combinable)
``2026-03-01T12:00``   that wall-clock time (ISO 8601; no offset: local time;
                       ``Z`` or ``+01:00`` as given; a date alone is midnight)
``@1764000000.5``      that Unix time in seconds
``seq:N``              explicit forms, for a bookmark whose name looks like
``bookmark:NAME``      one of the above (``bookmark:2026-03-01``)
``time:ISO``
=====================  ===========================================================

Bookmark names are never all digits and never start with ``-`` (the engine
refuses them), so the plain forms are unambiguous except for bookmarks that
look like a date or start with ``@``: those need ``bookmark:``.

Stdlib only (the shell uses it for completion and hints).
"""

from __future__ import annotations

import re
import time as _time
from dataclasses import dataclass
from datetime import datetime

from .protocol import ControlError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^-((?:\d+(?:\.\d+)?[smhdw])+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}")
_EPOCH = re.compile(r"^@(\d+(?:\.\d+)?)$")
KINDS = ("seq", "time", "bookmark")


@dataclass(frozen=True)
class PointRef:
    """A parsed point name: ``kind`` is ``seq``, ``time`` or ``bookmark``."""

    kind: str
    value: int | float | str
    text: str

    def engine_kwargs(self) -> dict:
        """Keyword arguments for ``vol.image()`` / ``vol.restore()``."""
        return {self.kind: self.value}

    def engine_value(self) -> int | float | str:
        """The form ``restore(roll_forward_to=...)`` takes: int seq, float time, str bookmark."""
        return self.value


def _bad(text: object, why: str) -> ControlError:
    return ControlError("bad_argument", f"bad point {text!r}: {why}")


def parse_duration(text: str) -> float:
    """``2h30m`` -> 9000.0 (seconds)."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ControlError("bad_argument", f"bad duration {text!r}: use e.g. 90s, 15m, 2h30m, 1d")
    return sum(float(n) * UNITS[u] for n, u in parts)


def _parse_time(text: str, original: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(original, "not an ISO 8601 time (e.g. 2026-03-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person at the console means it
    return when.timestamp()


def parse_point(value: object, now: float | None = None) -> PointRef:
    """Parse a point name (see the module docstring); raises ``ControlError(bad_argument)``.

    ``now`` (seconds since the epoch) anchors relative times; default: the clock.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _bad(value, "give a sequence number, a bookmark, a time or -15m")
    if isinstance(value, int):
        if value < 0:
            raise _bad(value, "sequence numbers are not negative")
        return PointRef("seq", value, str(value))
    text = value.strip()
    if not text:
        raise _bad(value, "empty")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in KINDS and rest:
        if prefix == "bookmark":
            return PointRef("bookmark", rest, text)
        if prefix == "seq":
            if not rest.isdigit():
                raise _bad(text, "seq: takes a number")
            return PointRef("seq", int(rest), text)
        return PointRef("time", _parse_time(rest, text), text)
    if text.isdigit():
        return PointRef("seq", int(text), text)
    m = _RELATIVE.match(text)
    if m:
        base = _time.time() if now is None else now
        return PointRef("time", base - parse_duration(m.group(1)), text)
    if text.startswith("-"):
        raise _bad(text, "a relative time is - and a duration, e.g. -15m, -2h, -1d12h")
    m = _EPOCH.match(text)
    if m:
        return PointRef("time", float(m.group(1)), text)
    if _ISO_START.match(text):
        return PointRef("time", _parse_time(text, text), text)
    return PointRef("bookmark", text, text)
