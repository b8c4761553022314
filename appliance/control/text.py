"""Names and numbers as people read them; shared by the server and the shell (stdlib only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .protocol import ControlError

#: Volume and image names: they become folder, scratch and LUN names.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ControlError(
            "bad_argument",
            f"bad {what} name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    return name


def iso(t: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds and ``Z``."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_time(t: float | None) -> str:
    """Local wall-clock time to the second, as a console shows it."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``; None -> ``--:--``."""
    if s is None:
        return "--:--"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
