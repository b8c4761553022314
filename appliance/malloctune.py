"""glibc malloc settings for the daemon: few arenas, and heaps not trimmed on every write.

Every write the handler serves allocates and frees buffers of its own size
(the payload gathered off the ring: 4 KiB, 64 KiB, many times a second, in
several threads).  When glibc gives the top of a heap back to the kernel as
soon as more than ``M_TRIM_THRESHOLD`` of it is free, that traffic keeps
trimming the heap and faulting the same memory in again.  The daemon's unit
used to set both thresholds to 128 KiB (to keep its RSS flat under the
bad-CDB fuzzer); measured in the fio benchmark VM
(docs/PERFORMANCE.md, TCG, 64 KiB sequential writes, A/B of the same code):
576-588 IOPS with those, 883-890 with the thresholds below (4 MiB and
64 MiB), and the daemon's kernel time per write 0.74 against 0.3-0.4 ms.

So the ``cdp-handlerd`` entry point, before anything else runs, sets with
``mallopt`` (a fixed value also turns glibc's dynamic adjustment off):

* :data:`ARENA_MAX` arenas instead of eight per core: fewer heaps to keep;
* :data:`MMAP_THRESHOLD`: blocks below it (every write's buffers, up to
  runs of 64 KiB records) come from the heaps and are reused; larger ones
  (big transfers) get their own mapping and go back to the kernel when freed;
* :data:`TRIM_THRESHOLD`: a heap gives memory back only once that much of
  its top is free, so it keeps what a burst of writes needs.  The cost is
  resident memory: the daemon keeps what it used at its peak, up to that
  much free per arena.

An administrator's own malloc settings (``GLIBC_TUNABLES`` naming malloc, or
the ``MALLOC_*_`` variables) are left alone, and on a C library without
``mallopt`` (musl has a stub that refuses) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

import structlog

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20
_ADMIN_VARS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
)

# What configure() did, for log_choice() (the daemon configures its logging later).
CHOSEN: dict | None = None


def configure(environ=os.environ) -> bool:
    """Set glibc's arena count and its mmap and trim thresholds for this
    process.  True if all took; what happened is kept in :data:`CHOSEN`.
    Never raises."""
    global CHOSEN
    if "malloc" in environ.get("GLIBC_TUNABLES", "") or any(v in environ for v in _ADMIN_VARS):
        CHOSEN = {"source": "environment"}
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        CHOSEN = {"source": "no mallopt"}
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = {
        "arena_max": (M_ARENA_MAX, ARENA_MAX),
        "mmap_threshold": (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        "trim_threshold": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    }
    ok = all([mallopt(param, value) == 1 for param, value in settings.values()])  # every call
    CHOSEN = {"source": "set" if ok else "refused"}
    CHOSEN.update((name, value) for name, (_, value) in settings.items())
    return ok


def log_choice() -> None:
    """Log what :func:`configure` did (``malloc.tuned``), once logging is set up."""
    if CHOSEN is not None:
        structlog.get_logger("cdp.malloc").info("malloc.tuned", **CHOSEN)
