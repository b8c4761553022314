"""The CDP engine: primary + write journal + delta maps + catalog.

Knows nothing of SCSI, LIO or shells.  The public surface::

    vol = ProtectedVolume.create(state_dir, primary=..., secondary=..., size=..., block_size=512)
    vol = ProtectedVolume.open(state_dir)
    seq = vol.write(offset, data); vol.read(offset, length); vol.flush()
    vol.bookmark(name) -> Point; vol.points() -> list[Point]
    vol.image(seq=None, time=None, bookmark=None) -> Image; vol.close()
"""

from .errors import (
    CatalogError,
    CatalogVersionError,
    CdpError,
    DuplicateBookmark,
    InvalidArgument,
    InvalidRange,
    JournalCorrupt,
    JournalFailed,
    PointNotAvailable,
    PrimaryIOError,
    UnknownBookmark,
    VolumeClosed,
    VolumeExists,
    VolumeNotFound,
)
from .image import Image, Point
from .jobs import Job
from .volume import ProtectedVolume

__all__ = [
    "CatalogError",
    "CatalogVersionError",
    "CdpError",
    "DuplicateBookmark",
    "Image",
    "InvalidArgument",
    "InvalidRange",
    "Job",
    "JournalCorrupt",
    "JournalFailed",
    "Point",
    "PointNotAvailable",
    "PrimaryIOError",
    "ProtectedVolume",
    "UnknownBookmark",
    "VolumeClosed",
    "VolumeExists",
    "VolumeNotFound",
]
