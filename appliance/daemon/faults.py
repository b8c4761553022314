"""Fault hooks for the proof tier: off unless ``CDP_HANDLER_FAULTS`` is set.

The VM durability tests need the daemon to misbehave on purpose in ways a
real disk or a starved process would, at a place and time the test chooses.
Nothing here runs unless the environment variable names a fault; with it
unset, :func:`before_execute` is one attribute test and returns.

Syntax (faults separated by ``,``)::

    CDP_HANDLER_FAULTS=stall_write=<device>:<lba>:<seconds>

``stall_write``
    The first WRITE-type command (WRITE 6/10/12/16, WRITE AND VERIFY, WRITE
    SAME, ORWRITE, COMPARE AND WRITE) that device ``<device>`` (the backstore
    name, e.g. ``ghost0``) receives whose block range covers ``<lba>`` sleeps
    ``<seconds>`` in the worker before the daemon looks at it, once per
    process.  With ``<seconds>`` above the backstore's ``cmd_time_out`` the
    kernel times the command out and fails it to the initiator while the
    daemon still holds it: the "ghost write" of the reliability brief (B.3).
    The initiator then rewrites the block; when the stall ends, the daemon
    must not apply the stale data over the newer write.

Each firing is logged (``fault.stall_write`` then ``fault.stall_released``)
so a test can prove the fault really happened and was not silently off.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import structlog

from .errors import ConfigError

ENV = "CDP_HANDLER_FAULTS"
log = structlog.get_logger("cdp.handler.faults")

# opcode -> (LBA offset, LBA size, length offset, length size) in the CDB.
_WRITE_FIELDS = {
    0x0A: (1, 3, 4, 1),  # WRITE(6): 21-bit LBA, 0 blocks means 256
    0x2A: (2, 4, 7, 2),  # WRITE(10)
    0x2E: (2, 4, 7, 2),  # WRITE AND VERIFY(10)
    0x41: (2, 4, 7, 2),  # WRITE SAME(10)
    0xAA: (2, 4, 6, 4),  # WRITE(12)
    0xAE: (2, 4, 6, 4),  # WRITE AND VERIFY(12)
    0x8A: (2, 8, 10, 4),  # WRITE(16)
    0x8B: (2, 8, 10, 4),  # ORWRITE(16)
    0x8E: (2, 8, 10, 4),  # WRITE AND VERIFY(16)
    0x93: (2, 8, 10, 4),  # WRITE SAME(16)
    0x89: (2, 8, 13, 1),  # COMPARE AND WRITE
}


def write_range(cdb: bytes) -> tuple[int, int] | None:
    """``(lba, blocks)`` of a WRITE-type CDB, None for anything else or a short CDB."""
    if not cdb:
        return None
    fields = _WRITE_FIELDS.get(cdb[0])
    if fields is None:
        return None
    lba_at, lba_size, len_at, len_size = fields
    if len(cdb) < len_at + len_size:
        return None
    lba = int.from_bytes(cdb[lba_at : lba_at + lba_size], "big")
    blocks = int.from_bytes(cdb[len_at : len_at + len_size], "big")
    if cdb[0] == 0x0A:
        lba &= 0x1FFFFF
        blocks = blocks or 256
    return lba, blocks


@dataclass
class StallWrite:
    device: str
    lba: int
    seconds: float
    fired: bool = False


class Faults:
    """The parsed fault plan of this process (thread-safe; each fault fires once)."""

    def __init__(self, stalls: list[StallWrite]) -> None:
        self.stalls = stalls
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return bool(self.stalls)

    def before_execute(self, device: str, cdb: bytes) -> None:
        """Run the faults that match this command (in the worker, before anything else)."""
        rng = write_range(bytes(cdb[:16]))
        if rng is None:
            return
        lba, blocks = rng
        for stall in self.stalls:
            if stall.device != device or not lba <= stall.lba < lba + max(blocks, 1):
                continue
            with self._lock:
                if stall.fired:
                    continue
                stall.fired = True
            log.warning(
                "fault.stall_write",
                device=device,
                lba=lba,
                blocks=blocks,
                opcode=cdb[0],
                seconds=stall.seconds,
            )
            time.sleep(stall.seconds)
            log.warning("fault.stall_released", device=device, lba=lba, blocks=blocks)


def parse(text: str) -> Faults:
    """A :class:`Faults` from the ``CDP_HANDLER_FAULTS`` syntax; ConfigError if malformed."""
    stalls = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if name != "stall_write" or not sep:
            raise ConfigError(f"{ENV}: unknown fault {item!r} (known: stall_write=DEV:LBA:SECONDS)")
        try:
            device, lba, seconds = value.split(":")
            stall = StallWrite(device, int(lba), float(seconds))
        except ValueError:
            raise ConfigError(f"{ENV}: stall_write wants DEV:LBA:SECONDS, not {value!r}") from None
        if not device or stall.lba < 0 or not 0 < stall.seconds <= 3600:
            raise ConfigError(f"{ENV}: stall_write values out of range: {value!r}")
        stalls.append(stall)
    return Faults(stalls)


_ACTIVE = parse(os.environ.get(ENV, ""))


def active() -> Faults:
    """This process's fault plan (read once from the environment at import)."""
    return _ACTIVE


def before_execute(device: str, cdb: bytes) -> None:
    """The hook device.py calls; a no-op unless ``CDP_HANDLER_FAULTS`` names a fault."""
    if _ACTIVE.stalls:
        _ACTIVE.before_execute(device, cdb)


__all__ = ["ENV", "Faults", "StallWrite", "active", "before_execute", "parse", "write_range"]
