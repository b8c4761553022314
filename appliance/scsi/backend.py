"""What the SCSI layer needs from a volume: the :class:`BlockBackend` protocol.

The engine implements it for a protected volume; :mod:`appliance.scsi.memory`
implements it in memory for tests.  Offsets and lengths are in bytes and are
always whole logical blocks, inside ``[0, size)``: the SCSI layer checks
ranges before calling, so a backend may treat a bad range as a bug.

Threading: the dispatcher may call a backend from several threads at once;
ordering between overlapping in-flight commands is the initiator's business
(SAM), except for :meth:`BlockBackend.compare_and_write`, which must be
atomic against every other write.

Errors: raise the classes of :mod:`appliance.scsi.errors`; anything else is
reported to the initiator as an internal target failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple, Protocol, runtime_checkable


@runtime_checkable
class BlockBackend(Protocol):
    size: int
    """Capacity in bytes; the SCSI capacity is ``size // block_size`` blocks.
    Read on every command, so a resize shows at the next READ CAPACITY."""

    block_size: int
    """Logical block size in bytes: 512 or 4096."""

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes (bytes-like).  Never-written or
        deallocated blocks read as zeros (LBPRZ=1 is advertised)."""
        ...

    def write(self, offset: int, data, *, fua: bool = False) -> None:
        """Write ``data`` (a bytes-like object, often a memoryview into the
        TCMU ring: copy it before returning, it is only valid during the call).
        With ``fua`` the data is durable before the call returns."""
        ...

    def write_zeros(self, offset: int, length: int, *, unmap: bool = False) -> None:
        """Make the range read as zeros; with ``unmap`` the blocks may also be
        deallocated (UNMAP, WRITE SAME with UNMAP).  Not durable until
        :meth:`flush` (the SCSI layer calls it when the write cache is off)."""
        ...

    def flush(self) -> None:
        """SYNCHRONIZE CACHE: everything written so far is durable on return."""
        ...

    def compare_and_write(
        self, offset: int, expected: bytes, new: bytes, *, fua: bool
    ) -> int | None:
        """Atomically (against every other write): if the range equals
        ``expected``, write ``new`` and return None; else write nothing and
        return the byte offset (from ``offset``) of the first differing byte."""
        ...


class ProvisioningStatus(IntEnum):
    """GET LBA STATUS provisioning status (SBC-4 table 69)."""

    MAPPED = 0
    DEALLOCATED = 1
    ANCHORED = 2


class LbaRun(NamedTuple):
    """A byte range of the volume and its provisioning status."""

    offset: int
    length: int
    status: ProvisioningStatus


@runtime_checkable
class SupportsLbaStatus(Protocol):
    """Optional: a backend with this method answers GET LBA STATUS truthfully.
    Without it every block is reported mapped (always a correct answer)."""

    def lba_status(self, offset: int, length: int) -> Iterable[LbaRun]:
        """Runs covering ``[offset, offset+length)`` in ascending order.  May be
        a lazy iterator: the SCSI layer stops reading once its reply is full.
        Gaps are taken as mapped; runs need not be block-aligned (a block is
        reported deallocated only if it lies wholly inside a deallocated run)."""
        ...


@runtime_checkable
class SupportsReadyCheck(Protocol):
    """Optional: TEST UNIT READY calls ``check_ready`` (raise NotReady)."""

    def check_ready(self) -> None: ...
