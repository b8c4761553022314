"""Typed errors of the engine.

Each class's docstring is its message template (borg's habit): the edges (the
SCSI layer, the shell) translate these into sense data or one clear line.
A refused call changes nothing.
"""


class CdpError(Exception):
    """{0}"""

    def __init__(self, *args):
        super().__init__(*args)

    def __str__(self):
        if self.__doc__ and "{" in self.__doc__ and self.args:
            try:
                return self.__doc__.strip().format(*self.args)
            except (IndexError, KeyError):
                pass
        return super().__str__()


class InvalidArgument(CdpError, ValueError):
    """{0}"""


class InvalidRange(InvalidArgument):
    """{0}"""


class DuplicateBookmark(InvalidArgument):
    """bookmark {0!r} already exists (at seq {1})"""


class UnknownBookmark(CdpError, KeyError):
    """no bookmark named {0!r}"""

    def __str__(self):  # KeyError would repr() the message
        return CdpError.__str__(self)


class PointNotAvailable(CdpError, LookupError):
    """{0}"""


class VolumeExists(CdpError, FileExistsError):
    """{0}"""


class VolumeNotFound(CdpError, FileNotFoundError):
    """{0}"""


class VolumeClosed(CdpError):
    """volume {0} is closed"""


class JournalCorrupt(CdpError):
    """journal corrupt: {0}"""


class JournalFailed(CdpError):
    """journal failed (fail-stop, nothing after seq {0} is acknowledged): {1}"""


class PrimaryIOError(CdpError, OSError):
    """primary I/O error: {0}"""


class CatalogError(CdpError):
    """catalog: {0}"""


class CatalogVersionError(CatalogError):
    """catalog schema version {0} is newer than this software understands ({1})"""
