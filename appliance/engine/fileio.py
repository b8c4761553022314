"""The one door through which the engine touches its files.

Every read, write and sync of the primary, the journal segments and the
small state files goes through a :class:`FileIO`.  Production uses
:class:`OsFileIO`; tests wrap it (as LevelDB's fault-injection Env and
SQLite's crash VFS do) to drop or garble unsynced writes, or to fail a
call with EIO/ENOSPC.  The catalog (SQLite) does its own I/O: it is derived
data, rebuilt from the journal when it is lost or damaged.

Contract of each method: the same as the ``os`` function of the same name,
except that :meth:`pwrite_all` and :meth:`pread_exact` loop over short
transfers, and :meth:`pread_exact` returns fewer bytes only at end of file.
"""

from __future__ import annotations

import os

try:  # compiled at install (setup.py); without it pwrite_pieces loops in Python
    from . import _writerun
except ImportError:  # pragma: no cover - a build without a C compiler
    _writerun = None


class FileIO:
    """Interface; :class:`OsFileIO` is the real thing."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        raise NotImplementedError

    def close(self, fd: int) -> None:
        raise NotImplementedError

    def pread_exact(self, fd: int, length: int, offset: int) -> bytes:
        raise NotImplementedError

    def pwrite_all(self, fd: int, data, offset: int) -> None:
        raise NotImplementedError

    def pwritev_all(self, fd: int, buffers: list, offset: int) -> None:
        raise NotImplementedError

    def pwrite_pieces(self, fd: int, pieces: list, stop: int) -> int:
        """Write ``pieces[:stop]``, ``(offset, data, ...)`` tuples, one
        :meth:`pwritev_all` per stretch of adjacent pieces (each ends where
        the next begins).  Returns how many pieces were written; at the first
        stretch that fails it stops, without raising, and returns the count
        before it (the caller writes piece by piece from there, which raises
        the error for the piece that has it)."""
        done = 0
        while done < stop:
            start = off = pieces[done][0]
            end = done
            while end < stop and pieces[end][0] == off:
                off += len(pieces[end][1])
                end += 1
            try:
                self.pwritev_all(fd, [p[1] for p in pieces[done:end]], start)
            except OSError:
                return done
            done = end
        return done

    def fdatasync(self, fd: int) -> None:
        raise NotImplementedError

    def fsync_dir(self, path: str) -> None:
        raise NotImplementedError

    def size(self, fd: int) -> int:
        raise NotImplementedError

    def truncate(self, fd: int, length: int) -> None:
        raise NotImplementedError


_IOV_MAX = 1024


class OsFileIO(FileIO):
    def open(self, path, flags, mode=0o600):
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd):
        os.close(fd)

    def pread_exact(self, fd, length, offset):
        data = os.pread(fd, length, offset)
        if len(data) == length or not data:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pwrite_all(self, fd, data, offset):
        view = memoryview(data).cast("B")
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def pwritev_all(self, fd, buffers, offset):
        bufs = [memoryview(b).cast("B") for b in buffers if len(b)]
        while bufs:
            chunk = bufs[:_IOV_MAX]
            want = sum(len(b) for b in chunk)
            n = os.pwritev(fd, chunk, offset)
            offset += n
            if n == want:
                bufs = bufs[_IOV_MAX:]
                continue
            # Short write: drop what went out, resume with the rest.
            while n:
                if n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs.pop(0)
                else:
                    bufs[0] = bufs[0][n:]
                    n = 0

    def pwrite_pieces(self, fd, pieces, stop):
        # One compiled call for the run (engine/_writerun.c), unless a
        # subclass changed pwritev_all (a test's faults): then it is called.
        if _writerun is None or type(self).pwritev_all is not OsFileIO.pwritev_all:
            return super().pwrite_pieces(fd, pieces, stop)
        return _writerun.pwrite_pieces(fd, pieces, stop)

    def fdatasync(self, fd):
        os.fdatasync(fd)

    def fsync_dir(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def size(self, fd):
        end = os.lseek(fd, 0, os.SEEK_END)
        return end

    def truncate(self, fd, length):
        os.ftruncate(fd, length)


def write_file_atomic(io: FileIO, path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a small file so that a crash leaves the old or the new one.

    Temp file opened exclusively, written, fsynced, renamed over the target,
    then the folder is fsynced (the step rtslib's save_to_file forgets).
    """
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        io.pwrite_all(fd, data, 0)
        io.fdatasync(fd)
    finally:
        io.close(fd)
    os.replace(tmp, path)
    io.fsync_dir(os.path.dirname(os.path.abspath(path)))
