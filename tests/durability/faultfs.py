"""A crash-state simulating :class:`FileIO` (SQLite's crash VFS, LevelDB's FaultInjectionTestEnv).

Every write goes through to the real file (the engine reads its own files back),
and is also remembered, with the bytes it overwrote, until an ``fdatasync`` of
that file covers it.  Files created since their folder's last ``fsync_dir`` are
remembered too.  Three events act on that record:

* :meth:`FaultFS.kill` -- the process dies, the machine does not: nothing is
  lost (the page cache survives), unsynced writes stay unsynced and at risk.
* :meth:`FaultFS.crash` -- power loss: every unsynced write is undone, then,
  page by page (``page`` bytes, aligned), independently: kept, dropped, or
  torn -- each 512-byte sector of it new, old, or random.  Files created after
  their folder's last fsync may vanish.  With ``psow=False`` a torn sector is
  garbage over the whole sector, bytes outside the write included (SQLite's
  non-powersafe-overwrite model); the default keeps bytes outside a write
  (powersafe overwrite, which the journal format assumes).
* both halt the instance: every later call raises :class:`Crashed` (``close``
  excepted, so fds can be freed) until :meth:`restart`, so the abandoned
  volume's threads stop touching files.

Fault injection: :meth:`fail_on` raises ``OSError(err)`` on the Nth call of a
method for files matching a pattern; with ``lose=True`` a failed ``fdatasync``
also marks the file's unsynced writes as lost (fsyncgate: the kernel dropped
them, a later "successful" fdatasync does not bring them back, the next crash
always undoes them).  :meth:`crash_at` crashes on the Nth matching call.

``fdatasync`` and ``fsync_dir`` are bookkeeping only (no real sync): the crash
state is computed here, and the tests stay fast.  Unlinks and renames the
engine does with ``os`` directly are not seen (treated as durable at once).
Calls are serialized by one lock, so a crash never lands inside a write.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import random
import threading
from dataclasses import dataclass, field

from appliance.engine.fileio import FileIO, OsFileIO

SECTOR = 512
PAGE = 4096


class Crashed(OSError):
    """A call on a halted (killed or crashed) FaultFS."""

    def __init__(self, what: str = "simulated crash: the process is gone"):
        super().__init__(errno.EIO, what)


@dataclass
class _Write:
    offset: int
    data: bytes  # what was written (b"" for a truncate)
    old: bytes  # the bytes it overwrote, inside the old size
    old_size: int
    truncate_to: int | None = None
    lost: bool = False


@dataclass
class _Rule:
    method: str
    pattern: str
    nth: int
    times: int
    err: int = errno.EIO
    lose: bool = False
    crash_rng: random.Random | None = None
    thread: str | None = None  # only calls made by the thread of this name
    seen: int = 0
    fired: int = 0


@dataclass
class CrashReport:
    kept: int = 0
    dropped: int = 0
    torn: int = 0
    lost: int = 0
    vanished: list[str] = field(default_factory=list)
    by_file: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        files = "; ".join(f"{os.path.basename(p)}: {' '.join(v)}" for p, v in self.by_file.items())
        return (
            f"kept {self.kept}, dropped {self.dropped}, torn {self.torn}, lost {self.lost}, "
            f"vanished {[os.path.basename(p) for p in self.vanished]} [{files}]"
        )


def _matches(pattern: str, path: str | None) -> bool:
    if path is None:
        return pattern == "*"
    return fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(os.path.basename(path), pattern)


class FaultFS(FileIO):
    """See the module docstring."""

    def __init__(
        self,
        base: FileIO | None = None,
        *,
        page: int = PAGE,
        psow: bool = True,
        weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
        vanish: float = 0.5,
    ):
        self.base = base or OsFileIO()
        self.page = page
        self.psow = psow
        self.weights = weights  # keep, drop, tear
        self.vanish = vanish
        self._lock = threading.RLock()
        self._fds: dict[int, str] = {}
        self._unsynced: dict[str, list[_Write]] = {}
        self._new_files: dict[str, set[str]] = {}
        self._rules: list[_Rule] = []
        self._hooks: list = []
        self.halted: str | None = None
        self.crashed = False
        self.report: CrashReport | None = None
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------ control

    def fail_on(
        self,
        method: str,
        pattern: str = "*",
        *,
        nth: int = 1,
        times: int = 1,
        err: int = errno.EIO,
        lose: bool = False,
        thread: str | None = None,
    ) -> None:
        """Raise ``OSError(err)`` on matching calls number nth .. nth+times-1.

        ``thread``: count only calls made by the thread of that name.
        """
        with self._lock:
            self._rules.append(_Rule(method, pattern, nth, times, err, lose, thread=thread))

    def before(self, method: str, pattern: str, hook) -> None:
        """Call ``hook(path)`` at the start of every matching call (fdatasync), unlocked.

        For tests that must hold one thread at a given call (e.g. until another
        thread's call has failed) to make an interleaving happen every time.
        """
        with self._lock:
            self._hooks.append((method, pattern, hook))

    def _pre(self, method: str, path: str | None) -> None:
        for m, pattern, hook in list(self._hooks):
            if m == method and _matches(pattern, path):
                hook(path)

    def crash_at(self, method: str, pattern: str, nth: int, rng: random.Random) -> None:
        """Crash (as :meth:`crash`) when the nth matching call starts; it raises."""
        with self._lock:
            self._rules.append(_Rule(method, pattern, nth, 1, crash_rng=rng))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules = []

    def kill(self) -> None:
        """The process dies; the page cache (every unsynced write) survives."""
        with self._lock:
            self.halted = "simulated process kill"

    def crash(
        self, rng: random.Random, *, mode: str = "random", modes: dict[str, str] | None = None
    ) -> CrashReport:
        """Power loss: see the module docstring.

        ``mode``: random, keep, drop or tear, for every unsynced write;
        ``modes``: {file pattern: mode} overrides for matching files.
        """
        with self._lock:
            self.halted = "simulated power loss"
            self.crashed = True
            self.report = self._apply_crash(rng, mode, modes or {})
            return self.report

    def restart(self) -> None:
        """After kill/crash, once the abandoned volume has stopped: calls work again."""
        with self._lock:
            self.halted = None

    def close_stale(self) -> None:
        """Close every fd still open through this instance (the dead process's)."""
        with self._lock:
            fds, self._fds = list(self._fds), {}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def unsynced(self, pattern: str = "*") -> int:
        """How many unsynced (page-sized) writes files matching ``pattern`` have."""
        with self._lock:
            return sum(len(v) for p, v in self._unsynced.items() if _matches(pattern, p))

    # ------------------------------------------------------------ the door

    def _check(self, method: str, path: str | None) -> None:
        """Lock held.  Halted? A rule for this call?"""
        self.counts[method] = self.counts.get(method, 0) + 1
        if self.halted:
            raise Crashed(self.halted)
        for rule in self._rules:
            if rule.method != method or not _matches(rule.pattern, path):
                continue
            if rule.thread is not None and threading.current_thread().name != rule.thread:
                continue
            rule.seen += 1
            if rule.seen < rule.nth or rule.fired >= rule.times:
                continue
            rule.fired += 1
            if rule.crash_rng is not None:
                self.crash(rule.crash_rng)
                raise Crashed(f"simulated power loss at {method}({path}) #{rule.seen}")
            if rule.lose and path is not None:
                for w in self._unsynced.get(path, []):
                    w.lost = True
            raise OSError(rule.err, os.strerror(rule.err), path)

    def open(self, path, flags, mode=0o600):
        path = os.path.abspath(path)
        with self._lock:
            self._check("open", path)
            existed = os.path.exists(path)
            # The page cache is simulated here: O_DIRECT would only refuse the
            # unaligned reads that remember what a write overwrote.
            fd = self.base.open(path, flags & ~os.O_DIRECT, mode)
            self._fds[fd] = path
            if flags & os.O_CREAT and not existed:
                self._new_files.setdefault(os.path.dirname(path), set()).add(path)
            return fd

    def close(self, fd):
        with self._lock:
            self._fds.pop(fd, None)
        self.base.close(fd)

    def pread_exact(self, fd, length, offset):
        with self._lock:
            self._check("pread_exact", self._fds.get(fd))
        return self.base.pread_exact(fd, length, offset)

    def pwrite_all(self, fd, data, offset):
        with self._lock:
            path = self._fds.get(fd)
            self._check("pwrite_all", path)
            self._remember(fd, path, bytes(data), offset)
            self.base.pwrite_all(fd, data, offset)

    def pwritev_all(self, fd, buffers, offset):
        with self._lock:
            path = self._fds.get(fd)
            self._check("pwritev_all", path)
            self._remember(fd, path, b"".join(bytes(b) for b in buffers), offset)
            self.base.pwritev_all(fd, buffers, offset)

    def fdatasync(self, fd):
        if self._hooks:
            self._pre("fdatasync", self._fds.get(fd))
        with self._lock:
            path = self._fds.get(fd)
            self._check("fdatasync", path)
            if path in self._unsynced:
                left = [w for w in self._unsynced[path] if w.lost]
                if left:
                    self._unsynced[path] = left
                else:
                    del self._unsynced[path]

    def fsync_dir(self, path):
        path = os.path.abspath(path)
        with self._lock:
            self._check("fsync_dir", path)
            self._new_files.pop(path, None)

    def size(self, fd):
        with self._lock:
            self._check("size", self._fds.get(fd))
        return self.base.size(fd)

    def truncate(self, fd, length):
        with self._lock:
            path = self._fds.get(fd)
            self._check("truncate", path)
            cur = os.fstat(fd).st_size
            old = os.pread(fd, max(0, cur - length), length) if cur > length else b""
            self._unsynced.setdefault(path, []).append(
                _Write(length, b"", old, cur, truncate_to=length)
            )
            self.base.truncate(fd, length)

    # ------------------------------------------------------------ crash state

    def _remember(self, fd: int, path: str | None, data: bytes, offset: int) -> None:
        if path is None or not data:
            return
        size = os.fstat(fd).st_size
        writes = self._unsynced.setdefault(path, [])
        pos, end = offset, offset + len(data)
        while pos < end:
            stop = min(end, (pos // self.page + 1) * self.page)
            old = os.pread(fd, max(0, min(stop, size) - pos), pos) if pos < size else b""
            writes.append(_Write(pos, data[pos - offset : stop - offset], old, size))
            size = max(size, stop)
            pos = stop

    def _apply_crash(self, rng: random.Random, mode: str, modes: dict[str, str]) -> CrashReport:
        rep = CrashReport()
        for path, writes in self._unsynced.items():
            if not os.path.exists(path):
                continue
            fmode = next((m for pat, m in modes.items() if _matches(pat, path)), mode)
            notes = rep.by_file.setdefault(path, [])
            fd = os.open(path, os.O_RDWR)
            try:
                for w in reversed(writes):  # back to the last synced state
                    if w.old:
                        os.pwrite(fd, w.old, w.offset)
                    os.ftruncate(fd, w.old_size)
                for w in writes:
                    if w.lost:
                        choice = "drop"
                        rep.lost += 1
                    elif fmode == "random":
                        choice = rng.choices(("keep", "drop", "tear"), self.weights)[0]
                    else:
                        choice = fmode
                    notes.append(f"{w.offset}+{len(w.data)}:{choice}")
                    if w.truncate_to is not None:
                        if choice == "keep":
                            os.ftruncate(fd, w.truncate_to)
                        rep.kept += choice == "keep"
                        rep.dropped += choice != "keep"
                    elif choice == "keep":
                        os.pwrite(fd, w.data, w.offset)
                        rep.kept += 1
                    elif choice == "drop":
                        rep.dropped += 1
                    else:
                        self._tear(fd, w, rng)
                        rep.torn += 1
            finally:
                os.close(fd)
        for folder in sorted(self._new_files):
            for path in sorted(self._new_files[folder]):
                if os.path.exists(path) and rng.random() < self.vanish:
                    os.unlink(path)
                    rep.vanished.append(path)
        self._unsynced.clear()
        self._new_files.clear()
        return rep

    def _tear(self, fd: int, w: _Write, rng: random.Random) -> None:
        """Each sector the write touches: new, old (left alone), or garbage."""
        end = w.offset + len(w.data)
        pos = w.offset
        while pos < end:
            stop = min(end, (pos // SECTOR + 1) * SECTOR)
            what = rng.choice(("new", "old", "garbage"))
            if what == "new":
                os.pwrite(fd, w.data[pos - w.offset : stop - w.offset], pos)
            elif what == "garbage":
                lo, hi = pos, stop
                if not self.psow:
                    lo, hi = pos - pos % SECTOR, lo - lo % SECTOR + SECTOR
                os.pwrite(fd, rng.randbytes(hi - lo), lo)
            pos = stop
