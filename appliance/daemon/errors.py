"""Typed errors of the handler daemon.

Each carries what its edge needs: a netlink reply status (``-errno``) for the
device life cycle, a one-line message for D-Bus ``CheckConfig`` and logs.
"""

from __future__ import annotations

import errno


class HandlerError(Exception):
    """Base class of the daemon's own errors."""

    errno: int = errno.EINVAL

    @property
    def status(self) -> int:
        """The ``CMD_STATUS`` a netlink reply carries for this error."""
        return -self.errno


class ConfigError(HandlerError):
    """The configuration file is unreadable or holds a bad value."""


class CfgStringError(HandlerError):
    """A backstore cfgstring (``cdp/<volume>;key=value...``) is malformed or
    names something that cannot be used; the message is shown to the user."""


class DeviceSetupError(HandlerError):
    """A TCMU device cannot be attached (or reconfigured) as asked."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        super().__init__(message)
        self.errno = err


class AlreadyRunning(HandlerError):
    """Another handler daemon holds the lock file or the D-Bus name."""

    errno = errno.EBUSY
