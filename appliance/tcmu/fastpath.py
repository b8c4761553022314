"""The compiled fast path for plain READ/WRITE, bound to one device.

``appliance/tcmu/_fastring.c`` answers, in one call per run of ring
entries, what the interpreter would spend tens of microseconds per command
on: plain READ(10/16) read straight from the primary into the ring's data
pages, plain WRITE(10/16) without FUA gathered for the engine.  Everything
else, and every error, stays on the Python path (the C code stops before
it), so the two give the same bytes on the ring:
``tests/unit/tcmu/test_fastring.py`` compares them entry by entry.

The extension is optional (``setup.py``): without it :data:`AVAILABLE` is
False and the handler serves every command through the Python ring.
``CDP_FASTRING=0`` in the environment turns it off as well.
"""

from __future__ import annotations

import os

try:
    from . import _fastring
except ImportError:  # no compiler at install time: the Python path serves all
    _fastring = None

from .ring import FastScan

__all__ = ["AVAILABLE", "READS", "WRITES", "scanner"]

AVAILABLE = _fastring is not None and os.environ.get("CDP_FASTRING", "1") != "0"
READS = 1
WRITES = 2


def scanner(
    *, fd: int | None, block_size: int, size: int, max_blocks: int, writes: bool
) -> FastScan | None:
    """A :data:`~appliance.tcmu.ring.FastScan` for one poll of one device.

    ``fd``: the primary, read directly (None: reads go the Python way);
    ``size``: the capacity in bytes; ``max_blocks``: the transfer limit;
    ``writes``: take plain writes without FUA (a writable LUN, write cache on).
    None when there is nothing to take or no extension.
    """
    mode = (READS if fd is not None else 0) | (WRITES if writes else 0)
    if not AVAILABLE or not mode:
        return None
    scan = _fastring.scan
    rfd = -1 if fd is None else fd

    def fast(mv, cmdr_off, cmdr_size, pos, head, data_off, read_len, live, reads=True):
        return scan(
            mv, cmdr_off, cmdr_size, pos, head, data_off, read_len, live,
            rfd, block_size, size, max_blocks, mode if reads else mode & WRITES,
        )  # fmt: skip

    return fast
