"""The compiled fast path for plain READ/WRITE, bound to one device.

``appliance/tcmu/_fastring.c`` answers, in one call per run of ring
entries, what the interpreter would spend tens of microseconds per command
on: plain READ(10/16) read straight from the primary into the ring's data
pages, plain WRITE(10/16) without FUA gathered for the engine.  Everything
else, and every error, stays on the Python path (the C code stops before
it), so the two give the same bytes on the ring:
``tests/unit/daemon/test_fastring.py`` compares them entry by entry.

The extension is optional (``setup.py``): without it :data:`AVAILABLE` is
False and the handler serves every command through the Python ring.
``CDP_FASTRING=0`` in the environment turns it off as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable

try:
    from . import _fastring
except ImportError:  # no compiler at install time: the Python path serves all
    _fastring = None

from .ring import FastScan, FastServe

__all__ = ["AVAILABLE", "READS", "WRITES", "scanner", "server"]

AVAILABLE = _fastring is not None and os.environ.get("CDP_FASTRING", "1") != "0"
READS = 1
WRITES = 2
# Why a FastServe loop returned (_fastring.c, SERVE_*).
TIMEOUT, WAKE, ENTRIES, RESET, ERROR, EXCEPTION = range(6)


def scanner(
    *,
    fd: int | Callable[[], int | None] | None,
    block_size: int,
    size: int,
    max_blocks: int,
    writes: bool,
) -> FastScan | None:
    """A :data:`~appliance.tcmu.ring.FastScan` for one poll of one device.

    ``fd``: the primary, read directly (None: reads go the Python way), or a
    callable that gives it (or None) and is asked at every call, that is
    *after* the ring read ``cmd_head``: every command the call answers was
    queued before the fd was handed out, so a restore that begins in between
    (``ProtectedVolume.direct_read_fd`` gives None from then on) cannot have a
    command queued after it read the primary directly.
    ``size``: the capacity in bytes; ``max_blocks``: the transfer limit;
    ``writes``: take plain writes without FUA (a writable LUN, write cache on).
    None when there is nothing to take or no extension.
    """
    if not AVAILABLE or (fd is None and not writes):
        return None
    scan = _fastring.scan
    wmode = WRITES if writes else 0
    get_fd = fd if callable(fd) else (lambda: fd)

    def fast(mv, cmdr_off, cmdr_size, pos, head, data_off, read_len, live, reads=True):
        rfd = get_fd() if reads else None
        mode = wmode if rfd is None else wmode | READS
        if not mode:
            return pos, 0, None, b""  # nothing to take now: the Python path parses
        return scan(
            mv, cmdr_off, cmdr_size, pos, head, data_off, read_len, live,
            -1 if rfd is None else rfd, block_size, size, max_blocks, mode,
        )  # fmt: skip

    return fast


def server(
    *,
    state,
    on_writes,
    block_size: int,
    size: int,
    max_blocks: int,
    uio_fd: int,
    wake_fd: int,
    kick,
    timeout_ms: int,
) -> FastServe | None:
    """A :data:`~appliance.tcmu.ring.FastServe` for one device: the ring
    thread's wait-and-serve loop in C (``CommandRing.serve_fast``).

    ``state``: called before every run, ``(fd, writes)``: the primary's fd
    for direct reads (-1: reads go the Python way, e.g. during a restore) and
    whether plain writes without FUA may go this way (write cache on, writable
    LUN); ``on_writes``: called with each run of such writes, ``(slot,
    offset, payload)`` each and answered GOOD in their slots, to run them
    through the engine (rewriting the answer of any that fails) before the
    loop publishes them; a callable it returns is called once they are
    published and kicked (the journal's late batch); ``uio_fd``: waited on for the kernel's event;
    ``wake_fd``: an eventfd that ends the wait (left readable); ``kick``: the
    uio fd to write to, or a callable; ``timeout_ms``: the longest wait.
    None without the extension.
    """
    if not AVAILABLE:
        return None
    serve = _fastring.serve

    def loop(mv, cmdr_off, cmdr_size, tail, data_off, read_len, live, head_off, tail_off):
        return serve(
            mv, cmdr_off, cmdr_size, tail, data_off, read_len, live, state, on_writes,
            block_size, size, max_blocks, head_off, tail_off, uio_fd, wake_fd, kick, timeout_ms,
        )  # fmt: skip

    return loop
