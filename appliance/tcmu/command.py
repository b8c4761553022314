"""What the command ring hands out and takes back: commands, TMR events, responses.

These are plain values; :mod:`appliance.tcmu.ring` creates and consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .layout import STATUS_GOOD


class RingError(Exception):
    """The ring cannot be used as it is (bad mailbox, wrong version, closed)."""


class RingCorruptError(RingError):
    """The shared mailbox holds impossible indices; recover with reset_ring."""


class CompletionError(RingError):
    """A completion for a command that is not outstanding (double completion)."""


@dataclass(eq=False, slots=True)
class Command:
    """One SCSI command taken from the ring.

    ``iovecs`` are zero-copy memoryviews of the data area: the Data-Out payload
    (WRITE) or the buffers to fill (READ).  For BIDI commands ``bidi_iovecs``
    are the Data-In buffers.  The views are released when the command is
    completed (unless ``keep_buf``) or the ring is reset, so a late writer
    gets ``ValueError`` instead of scribbling over another command's pages.
    """

    cmd_id: int
    cdb: bytes
    iovecs: list[memoryview]
    data_length: int
    bidi_iovecs: list[memoryview] = field(default_factory=list)
    bidi_length: int = 0
    kflags: int = 0
    generation: int = field(default=0, repr=False)

    @property
    def opcode(self) -> int:
        return self.cdb[0]

    def release(self) -> None:
        """Drop the data views (after ``free_kept_buf`` for KEEP_BUF commands)."""
        for view in (*self.iovecs, *self.bidi_iovecs):
            try:
                view.release()
            except BufferError:  # still exported (e.g. an in-flight preadv)
                pass


@dataclass(frozen=True, slots=True)
class TmrNotification:
    """A task-management event; ``cmd_ids`` are commands it aborts."""

    tmr_type: int
    cmd_ids: tuple[int, ...]


class Response(NamedTuple):
    """What a command callback may return to :meth:`CommandRing.process`."""

    status: int = STATUS_GOOD
    sense: bytes = b""
    read_len: int | None = None
    keep_buf: bool = False


@dataclass(slots=True)
class RingStats:
    commands: int = 0
    fast: int = 0  # of them answered by a FastScan or the FastServe loop
    fast_busy: int = 0  # of those, answered BUSY: the loop's write callback raised
    tmrs: int = 0
    malformed: int = 0
    completions: int = 0
    batches: int = 0
    kicks: int = 0
