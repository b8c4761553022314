"""SCSI command layer of the TCMU handler: CDB in, status + data + sense out.

Pure: no ring, no threads, no I/O of its own.  The TCMU loop calls
:meth:`ScsiDevice.execute` with each command's CDB and data-out iovecs and
writes the :class:`ScsiResult` back to the ring; the engine provides the
:class:`BlockBackend`.
"""

from .backend import BlockBackend, LbaRun, ProvisioningStatus, SupportsLbaStatus
from .config import DeviceIdentity, Limits
from .constants import SenseKey, Status
from .device import ScsiDevice
from .errors import (
    BackendBusy,
    BackendError,
    BackendQueueFull,
    MediumError,
    NotReady,
    SpaceAllocationFailed,
    WriteProtected,
)
from .memory import MemoryBackend
from .result import ScsiResult

__all__ = [
    "BackendBusy",
    "BackendError",
    "BackendQueueFull",
    "BlockBackend",
    "DeviceIdentity",
    "LbaRun",
    "Limits",
    "MediumError",
    "MemoryBackend",
    "NotReady",
    "ProvisioningStatus",
    "ScsiDevice",
    "ScsiResult",
    "SenseKey",
    "SpaceAllocationFailed",
    "Status",
    "SupportsLbaStatus",
    "WriteProtected",
]
