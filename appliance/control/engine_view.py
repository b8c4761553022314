"""Figures the control API reports that the engine has no public call for yet.

Each function reads engine internals the same way the engine itself does
(the line it mirrors is named), under the engine's own locks, and never
changes anything.  They belong in the engine; until they move there,
tests/unit/control/test_manager.py checks them against the public calls they
shortcut (``vol.image(seq).suspect``).
"""

from __future__ import annotations

import bisect


def suspect_flags(vol, seqs: list[int]) -> list[bool]:
    """Whether each point is suspect, as ``vol.image(seq).suspect`` says, without
    building a PIT map per point (mirrors ``MapEngine.layers``'s ``holder``)."""
    maps = vol._maps
    with maps._lock:
        level0 = list(maps.level0)
        suspect_from = maps.suspect_from
    lasts = [m.last_seq for m in level0]
    out = []
    for seq in seqs:
        n = bisect.bisect_right(lasts, seq)
        inside = level0[n] if n < len(level0) else None
        if inside is not None and inside.first_seq <= seq:
            holder = inside
        elif n and (inside is not None or seq == level0[n - 1].last_seq):
            holder = level0[n - 1]
        else:
            holder = None  # the tail: not yet in a map
        out.append(
            bool(holder and holder.suspect)
            or (suspect_from is not None and seq >= suspect_from and not (holder and holder.fixup))
        )
    return out


def durable_time(vol) -> float | None:
    """Wall time (s) of the newest record durable in the journal, None if none
    (mirrors ``Protection._restart_journal``'s restart point)."""
    maps = vol._maps
    with maps._lock:
        last = maps.tail[-1] if maps.tail else None
        lmap = maps.last_map
    if last is not None:
        return last.time_ns / 1e9
    if lmap is not None:
        return lmap.last_time_ns / 1e9
    return None


def out_of_sync_reason(vol) -> str | None:
    """Why the secondary failed, while the volume is out of sync."""
    return (vol._oos_reason or None) if vol.state == "out-of-sync" else None
