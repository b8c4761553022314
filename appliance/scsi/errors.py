"""Typed errors a :class:`~appliance.scsi.backend.BlockBackend` raises.

The dispatcher maps each to a SCSI status and sense data; the mapping is
part of the contract, so it is written next to each class.  Any other
exception from a backend becomes HARDWARE ERROR / INTERNAL TARGET FAILURE
(44h/00h) and is logged: it never escapes :meth:`ScsiDevice.execute`.

A backend that raises must not have changed anything the initiator could
later read, except where SBC allows it (a failed multi-block write may be
partly applied, as on a real disk).
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class of the errors a backend raises on purpose; a bare
    BackendError maps to HARDWARE ERROR / INTERNAL TARGET FAILURE."""


class MediumError(BackendError):
    """MEDIUM ERROR: UNRECOVERED READ ERROR (11h/00h) for reads, WRITE ERROR
    (0Ch/00h) for writes and SYNCHRONIZE CACHE.  ``offset``, when given, is the byte offset of the
    first failed byte; its LBA goes in the sense INFORMATION field."""

    def __init__(self, message: str = "medium error", *, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


class BackendBusy(BackendError):
    """Status BUSY (08h), no sense: the initiator retries later."""


class BackendQueueFull(BackendError):
    """Status TASK SET FULL (28h), no sense: too many commands in flight."""


class NotReady(BackendError):
    """NOT READY / LOGICAL UNIT NOT READY (04h/ascq).  ``ascq`` refines the
    cause: 00h not reportable, 01h becoming ready, 03h manual intervention
    required, 0Ah asymmetric access state transition."""

    def __init__(self, message: str = "not ready", *, ascq: int = 0x00):
        super().__init__(message)
        self.ascq = ascq & 0xFF


class SpaceAllocationFailed(BackendError):
    """DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h): a thin
    volume (or its journal) has no room for the write."""


class WriteProtected(BackendError):
    """DATA PROTECT / WRITE PROTECTED (27h/00h): e.g. a point-in-time image."""
