"""The control server: the protocol (protocol.py) on a root-only Unix socket.

* Only a local socket, never the network.  Its folder is created 0700 and
  the socket chmod-ed 0600 right after ``bind`` (no umask change: the umask
  is process-wide and the daemon has threads); a peer whose uid is neither
  root nor ours is refused as well (``SO_PEERCRED``).
* One asyncio task per connection; every op runs in a thread pool, so a
  slow engine call (a bookmark's fsync, a restore's start) never blocks the
  other clients.  Requests on one connection are answered in order.
* :data:`OPS` declares each op's arguments; the dispatcher checks names and
  types before the manager sees them, so a bad request gets ``bad_argument``
  with the op's argument list and changes nothing.
* Engine exceptions become error types in :func:`to_control_error`; anything
  unexpected is ``internal`` (the traceback goes to the log, one line to the
  client).

Lifecycle: ``await server.start()``, ``await server.serve_forever()`` or
``await server.stop()`` (stops listening, lets running requests finish for
``drain_timeout`` seconds, removes the socket file).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import stat
import struct
from dataclasses import dataclass

import structlog

from appliance.engine import (
    CatalogError,
    CdpError,
    DuplicateBookmark,
    InvalidArgument,
    JournalCorrupt,
    JournalFailed,
    PointNotAvailable,
    PrimaryIOError,
    UnknownBookmark,
    VolumeClosed,
    VolumeExists,
    VolumeNotFound,
)
from appliance.engine.protection import Busy

from . import protocol
from .protocol import ControlError

log = structlog.get_logger("cdp.control")

POINT = (str, int)  # a point name, or a sequence number


@dataclass(frozen=True)
class Arg:
    name: str
    type: type | tuple
    required: bool = False


def _args(*spec: str) -> tuple[Arg, ...]:
    """``"volume:str!"`` = a required str; ``"limit:int"`` = optional."""
    types = {"str": str, "int": int, "bool": bool, "point": POINT}
    out = []
    for s in spec:
        name, _, t = s.partition(":")
        out.append(Arg(name, types[t.rstrip("!")], t.endswith("!")))
    return tuple(out)


#: op -> (manager method, arguments).  docs/CONTROL.md documents each one
#: (tests/unit/control/test_docs.py keeps the two in step).
OPS: dict[str, tuple[str, tuple[Arg, ...]]] = {
    "hello": ("hello", ()),
    "volumes": ("volumes", ()),
    "status": ("status", _args("volume:str!")),
    "create": (
        "create",
        _args(
            "volume:str!",
            "primary:str!",
            "secondary:str!",
            "size:int",
            "block_size:int",
            "mode:str",
            "region_size:int",
            "segment_size:int",
        ),
    ),
    "remove": ("remove", _args("volume:str!", "confirm:bool")),
    "bookmark": ("bookmark", _args("volume:str!", "name:str!")),
    "delete_bookmark": ("delete_bookmark", _args("volume:str!", "name:str!")),
    "points": (
        "points",
        _args("volume:str!", "since:point", "until:point", "kind:str", "limit:int"),
    ),
    "restore": ("restore", _args("volume:str!", "point:point!", "roll_forward_to:point")),
    "rebaseline": ("rebaseline", _args("volume:str!")),
    "resync": ("resync", _args("volume:str!")),
    "retention": ("retention", _args("volume:str!", "policy:str", "clear:bool", "apply:bool")),
    "expose": ("expose", _args("volume:str!", "point:point!", "writable:bool", "name:str")),
    "unexpose": ("unexpose", _args("name:str", "volume:str", "discard:bool")),
    "exposed": ("exposed", _args("volume:str")),
    "jobs": ("list_jobs", _args("volume:str", "all:bool")),
    "job": ("job", _args("job:str!")),
    "cancel": ("cancel", _args("job:str!")),
    "saveconfig": ("saveconfig", _args("file:str")),
    "restoreconfig": ("restoreconfig", _args("file:str")),
}

_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", POINT: "a point name"}


def check_args(op: str, args: dict) -> dict:
    """The request's args, checked against :data:`OPS`; raises ``bad_argument``."""
    spec = OPS[op][1]
    names = [a.name for a in spec]
    takes = ", ".join(names) or "no arguments"
    unknown = sorted(set(args) - set(names))
    if unknown:
        raise ControlError(
            "bad_argument", f"{op} takes no argument {unknown[0]!r} (it takes: {takes})"
        )
    out = {}
    for a in spec:
        value = args.get(a.name)
        if value is None:
            if a.required:
                raise ControlError("bad_argument", f"{op} needs argument {a.name!r} ({takes})")
            continue
        kinds = a.type if isinstance(a.type, tuple) else (a.type,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ControlError(
                "bad_argument",
                f"{op}: {a.name} must be {_TYPE_WORDS[a.type]}, not {type(value).__name__}",
            )
        out[a.name] = value
    return out


def to_control_error(exc: BaseException) -> ControlError:
    """The error a client sees for ``exc`` (one line, a stable type)."""
    if isinstance(exc, ControlError):
        return exc
    table = (
        ((DuplicateBookmark, VolumeExists), "exists"),
        ((UnknownBookmark, VolumeNotFound, VolumeClosed), "not_found"),
        (InvalidArgument, "bad_argument"),
        (PointNotAvailable, "not_available"),
        (Busy, "busy"),
        ((JournalCorrupt, CatalogError), "corrupt"),
        ((PrimaryIOError, JournalFailed, OSError), "io_error"),
        (CdpError, "failed"),
    )
    for classes, kind in table:
        if isinstance(exc, classes):
            msg = str(exc)
            if isinstance(exc, OSError) and not isinstance(exc, CdpError):
                msg = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
            return ControlError(kind, " ".join(msg.split()) or type(exc).__name__)
    return ControlError("internal", f"internal error: {type(exc).__name__}: {exc}")


class ControlServer:
    """Serves a :class:`~.manager.VolumeManager` on ``path``; see the module docstring."""

    def __init__(
        self,
        manager,
        path: str = protocol.DEFAULT_SOCKET,
        *,
        workers: int = 4,
        drain_timeout: float = 10.0,
    ):
        self.manager = manager
        self.path = path
        self.drain_timeout = drain_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cdp-ctl")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()  # one per connection
        self._busy: set[asyncio.Task] = set()  # connections inside a request
        self._closing = False

    async def start(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(
            self._client, sock=sock, limit=protocol.MAX_LINE
        )
        log.info("control.listening", socket=self.path)

    def _remove_stale(self) -> None:
        """A socket file left by a dead server is removed; a live one is an error."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise FileExistsError(f"another control server listens on {self.path}")

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._closing = True
        for t in self._tasks - self._busy:  # idle: waiting for a request line
            t.cancel()
        if self._tasks:  # the busy ones answer their request, then end
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("control.stop_cancelled", requests=len(pending))
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("control.stopped", socket=self.path)

    @staticmethod
    def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return True  # no credentials to check: the 0600 socket is the guard
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if not self._peer_allowed(writer):
                err = ControlError("bad_request", "only root may use the cdp control socket")
                writer.write(protocol.error(err))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the limit
                    err = ControlError("bad_request", f"request over {protocol.MAX_LINE} bytes")
                    writer.write(protocol.error(err))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                self._busy.add(task)
                try:
                    writer.write(await self.handle_line(line))
                    await writer.drain()
                finally:
                    self._busy.discard(task)
                if self._closing:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def handle_line(self, line: bytes) -> bytes:
        """One request line in, one response line out (never raises)."""
        rid = None
        try:
            op, args, rid = protocol.parse_request(line)
            if op not in OPS:
                raise ControlError("unknown_op", f"no op {op!r} (ops: {', '.join(sorted(OPS))})")
            method, _ = OPS[op]
            kwargs = check_args(op, args)
            func = getattr(self.manager, method)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, lambda: func(**kwargs))
            return protocol.ok(result, rid)
        except Exception as exc:
            err = to_control_error(exc)
            if err.type == "internal":
                log.exception("control.internal_error", error=repr(exc))
            else:
                log.info("control.refused", type=err.type, message=err.message)
            return protocol.error(err, rid)
