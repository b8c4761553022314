"""Shared helpers for engine tests."""

from __future__ import annotations

import os

from appliance.engine import ProtectedVolume
from appliance.engine.fileio import FileIO


def make_volume(tmp_path, size=4 << 20, block_size=512, **options) -> ProtectedVolume:
    return ProtectedVolume.create(
        str(tmp_path / "state"),
        primary=str(tmp_path / "primary.img"),
        secondary=str(tmp_path / "secondary"),
        size=size,
        block_size=block_size,
        **options,
    )


def reopen(tmp_path, **options) -> ProtectedVolume:
    return ProtectedVolume.open(str(tmp_path / "state"), **options)


def pattern(tag: int, length: int) -> bytes:
    """Deterministic, distinct bytes for write number ``tag``."""
    seed = tag.to_bytes(8, "little") * 64
    out = (seed * (length // len(seed) + 1))[:length]
    return bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(out[:64])) + out[64:]


def random_bytes(length: int) -> bytes:
    return os.urandom(length)


class FlakyIO(FileIO):
    """An OsFileIO whose journal-segment I/O can be broken and repaired.

    ``broken`` set to an errno makes every write and sync of a ``.seg`` file
    (and the creation of a new one) fail with it; ``sync_delay`` slows down
    segment fdatasyncs.
    """

    def __init__(self):
        from appliance.engine.fileio import OsFileIO

        self._os = OsFileIO()
        self.broken: int | None = None
        self.sync_delay = 0.0
        self.paths: dict[int, str] = {}
        self.failures = 0

    def _seg(self, fd) -> bool:  # a pooled segment is opened by its pool name
        return self.paths.get(fd, "").endswith((".seg", ".free"))

    def _check(self, fd=None, path=None):
        import errno as E

        if self.broken is not None and (
            (fd is not None and self._seg(fd)) or (path is not None and path.endswith(".seg"))
        ):
            self.failures += 1
            raise OSError(self.broken, os.strerror(self.broken or E.EIO))

    def open(self, path, flags, mode=0o600):
        if flags & os.O_CREAT:
            self._check(path=path)
        fd = self._os.open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def close(self, fd):
        self.paths.pop(fd, None)
        self._os.close(fd)

    def pread_exact(self, fd, length, offset):
        return self._os.pread_exact(fd, length, offset)

    def pwrite_all(self, fd, data, offset):
        self._check(fd)
        self._os.pwrite_all(fd, data, offset)

    def pwritev_all(self, fd, buffers, offset):
        self._check(fd)
        self._os.pwritev_all(fd, buffers, offset)

    def fdatasync(self, fd):
        self._check(fd)
        if self.sync_delay and self._seg(fd):
            import time

            time.sleep(self.sync_delay)
        self._os.fdatasync(fd)

    def fsync_dir(self, path):
        self._os.fsync_dir(path)

    def size(self, fd):
        return self._os.size(fd)

    def truncate(self, fd, length):
        self._os.truncate(fd, length)


def info_logs(fn) -> list[dict]:
    """What ``fn()`` logs through structlog at the daemon's level (info): the
    test suite's own configuration shows warnings only."""
    import logging

    import structlog
    from structlog.testing import capture_logs

    before = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            fn()
    finally:
        structlog.configure(wrapper_class=before)
    return logs
