"""A protected volume as the SCSI layer's :class:`~appliance.scsi.BlockBackend`.

The adapter adds no I/O of its own: it forwards each call to the engine and
translates the engine's typed errors into the SCSI layer's, so that the
initiator sees sense data that means something:

=====================================  ===================================
engine                                 SCSI (see ``appliance/scsi/errors.py``)
=====================================  ===================================
``PrimaryIOError``, ``JournalCorrupt``  ``MediumError`` (MEDIUM ERROR, read/write)
``OSError`` ENOSPC / EDQUOT             ``SpaceAllocationFailed`` (DATA PROTECT)
other ``OSError``                       ``MediumError``
``VolumeClosed``                        ``NotReady`` (LOGICAL UNIT NOT READY)
engine ``Busy`` (a job holds a lock)    ``BackendBusy`` (status BUSY, retried)
``InvalidRange`` / ``InvalidArgument``  ``BackendError`` (a bug: the SCSI layer
                                        checks ranges first) -> HARDWARE ERROR
any other ``CdpError``                  ``BackendError`` -> HARDWARE ERROR
=====================================  ===================================

Cache model: WCE=1 with DPOFUA.  A write's FUA bit arrives as ``fua=True``
and becomes the engine's ``fua=True`` (durable in primary and journal on
return); SYNCHRONIZE CACHE is ``flush()``.  ``write_zeros`` is not durable
until the next flush, as the protocol says.
"""

from __future__ import annotations

import errno
import threading
from contextlib import contextmanager
from typing import NoReturn

import structlog

from appliance.engine import (
    CdpError,
    InvalidArgument,
    JournalCorrupt,
    PrimaryIOError,
    ProtectedVolume,
    VolumeClosed,
)
from appliance.engine.protection import Busy
from appliance.scsi import (
    BackendBusy,
    BackendError,
    MediumError,
    NotReady,
    SpaceAllocationFailed,
    WriteProtected,
)

log = structlog.get_logger("cdp.handler.backend")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def translate(exc: Exception, what: str, offset: int | None = None) -> Exception | None:
    """The backend error for an engine error (see the module table), or None
    for an exception that is not the engine's (it propagates as it is)."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, VolumeClosed):
        return NotReady(str(exc))
    if isinstance(exc, Busy):
        return BackendBusy(str(exc))
    if isinstance(exc, PrimaryIOError | JournalCorrupt):
        if getattr(exc.__cause__, "errno", None) in _NO_SPACE:
            return SpaceAllocationFailed(str(exc))
        return MediumError(f"{what}: {exc}", offset=offset)
    if isinstance(exc, InvalidArgument):
        log.error("backend.refused", what=what, error=str(exc))
        return BackendError(f"{what}: {exc}")
    if isinstance(exc, CdpError):
        return BackendError(f"{what}: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in _NO_SPACE:
            return SpaceAllocationFailed(f"{what}: {exc}")
        return MediumError(f"{what}: {exc}", offset=offset)
    return None


def reraise(exc: Exception, what: str, offset: int | None = None) -> NoReturn:
    """Raise, from an ``except`` block, the backend error for ``exc``
    (:func:`translate`) chained to it, or ``exc`` itself when it has none."""
    err = translate(exc, what, offset)
    if err is None or err is exc:
        raise exc
    raise err from exc


@contextmanager
def engine_errors(what: str, offset: int | None = None):
    """Translate engine errors raised inside the block (:func:`translate`)."""
    try:
        yield
    except Exception as exc:
        reraise(exc, what, offset)


class VolumeBackend:
    """:class:`~appliance.scsi.BlockBackend` over a :class:`ProtectedVolume`.

    Thread-safe (the engine is); ``compare_and_write`` is atomic against
    every other write because the engine holds its order lock across it.
    """

    def __init__(self, volume: ProtectedVolume) -> None:
        self.volume = volume
        self.size = volume.size
        self.block_size = volume.block_size

    def batch(self, *, late: bool = False):
        """Writes inside have their journal records written when it ends, by
        the calling thread (``ProtectedVolume.batch``)."""
        return self.volume.batch(late=late)

    # read and write: every SCSI READ and WRITE comes here, so a plain
    # try/except (free when nothing is raised) instead of engine_errors.

    def read(self, offset: int, length: int) -> bytes:
        try:
            return self.volume.read(offset, length)
        except Exception as exc:
            reraise(exc, "read", offset)

    def write(self, offset: int, data, *, fua: bool = False) -> None:
        # The engine copies the payload (bytes(data)) before returning, so a
        # memoryview of the TCMU data area is safe to hand over.
        try:
            self.volume.write(offset, data, fua=fua)
        except Exception as exc:
            reraise(exc, "write", offset)

    def direct_read_fd(self) -> int | None:
        """For the handler's fast path: ``ProtectedVolume.direct_read_fd``."""
        return self.volume.direct_read_fd()

    def write_many(self, items) -> tuple[int, Exception | None]:
        """Plain writes without FUA, in order (``ProtectedVolume.write_many``):
        returns how many were written and the error of the one after them
        (None: all were), translated as ``write``'s; the rest were not tried.
        The handler's fast path gives it each run of writes of a ring poll."""
        try:
            seqs, error = self.volume.write_many(items)
        except Exception as exc:
            reraise(exc, "write", items[0][0] if items else None)
        if error is not None:
            err = translate(error, "write", items[len(seqs)][0])
            if err is not None and err is not error:
                err.__cause__ = error
                error = err
        return len(seqs), error

    def write_zeros(self, offset: int, length: int, *, unmap: bool = False) -> None:
        with engine_errors("write_zeros", offset):
            self.volume.write_zeros(offset, length)

    def flush(self) -> None:
        with engine_errors("flush"):
            self.volume.flush()

    def compare_and_write(self, offset: int, expected, new, *, fua: bool) -> int | None:
        with engine_errors("compare_and_write", offset):
            return self.volume.compare_and_write(offset, expected, new, fua=fua)

    def check_ready(self) -> None:
        """TEST UNIT READY: NOT READY once the volume is closed."""
        if getattr(self.volume, "closed", False):
            raise NotReady(f"volume {self.volume.uuid} is closed")


class ImageBackend:
    """:class:`~appliance.scsi.BlockBackend` over a point-in-time image.

    A read-only image is served with ``ScsiDevice(read_only=True)`` (WP set,
    every write refused with DATA PROTECT / WRITE PROTECTED before it gets
    here; :class:`WriteProtected` is the second line of defence).  A writable
    image takes writes into its scratch overlay; ``flush`` makes the overlay
    durable; the volume and its journal never see them.
    """

    def __init__(self, image, *, writable: bool) -> None:
        self.image = image
        self.writable = writable
        self.size = image.size
        self.block_size = image.block_size
        self._cw_lock = threading.Lock()  # compare-and-write against writes

    def _writable(self) -> None:
        if not self.writable:
            raise WriteProtected(f"image at seq {self.image.seq} is read-only")

    def read(self, offset: int, length: int) -> bytes:
        with engine_errors("image read", offset):
            return self.image.read(offset, length)

    def write(self, offset: int, data, *, fua: bool = False) -> None:
        self._writable()
        with self._cw_lock, engine_errors("image write", offset):
            self.image.write(offset, data)
            if fua:
                self.image.flush()

    def write_zeros(self, offset: int, length: int, *, unmap: bool = False) -> None:
        self._writable()
        with self._cw_lock, engine_errors("image write_zeros", offset):
            self.image.write_zeros(offset, length)

    def flush(self) -> None:
        if self.writable:
            with engine_errors("image flush"):
                self.image.flush()

    def compare_and_write(self, offset: int, expected, new, *, fua: bool) -> int | None:
        self._writable()
        with self._cw_lock, engine_errors("image compare_and_write", offset):
            have = self.image.read(offset, len(expected))
            expected = bytes(expected)
            if have != expected:
                pairs = enumerate(zip(have, expected, strict=True))
                return next(i for i, (a, b) in pairs if a != b)
            self.image.write(offset, new)
            if fua:
                self.image.flush()
            return None
