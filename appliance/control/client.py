"""A small synchronous client of the control socket (stdlib only).

::

    with ControlClient("/run/cdp/control.sock") as cdp:
        cdp.call("bookmark", volume="vol0", name="pre-upgrade")

Every call has a timeout (the shell must never hang on a stuck daemon); a
failure is a :class:`~.protocol.ControlError` whose message is one line fit
for a user, also for the client-side types ``unreachable``, ``timeout`` and
``protocol``.  One connection is kept and reopened after an error.
"""

from __future__ import annotations

import os
import socket

from . import protocol
from .protocol import ControlError

ENV_SOCKET = "CDP_CONTROL_SOCKET"


def default_socket() -> str:
    return os.environ.get(ENV_SOCKET) or protocol.DEFAULT_SOCKET


class _Stale(Exception):
    """The connection was closed before the request got any answer."""


class ControlClient:
    def __init__(self, path: str | None = None, timeout: float = 30.0):
        self.path = path or default_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc)
            hint = " (is cdp-handlerd running?)" if not os.path.exists(self.path) else ""
            raise ControlError(
                "unreachable", f"cannot reach the cdp daemon at {self.path}: {why}{hint}"
            ) from None
        return sock

    def call(self, op: str, timeout: float | None = None, **args) -> object:
        """Send one request; the result, or ``ControlError``.  ``None`` args are omitted.

        A kept connection the server has closed meanwhile (it restarted) is
        noticed before any answer arrives; the request is then sent once more on
        a new connection.
        """
        args = {k: v for k, v in args.items() if v is not None}
        data = protocol.request(op, args)
        reused = self._sock is not None
        try:
            line = self._exchange(data, op, timeout)
        except _Stale:
            if not reused:
                raise ControlError("unreachable", f"lost the cdp daemon at {self.path}") from None
            line = self._exchange(data, op, timeout)  # a fresh connection
        try:
            return protocol.parse_response(line)
        except ControlError as exc:
            if exc.type == "protocol":
                self.close()
            raise

    def _exchange(self, data: bytes, op: str, timeout: float | None) -> bytes:
        if self._sock is None:
            self._sock = self._connect()
            self._buf = b""
        sock = self._sock
        sock.settimeout(timeout or self.timeout)
        try:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                raise _Stale() from None
            return self._readline(sock)
        except _Stale:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise ControlError(
                "timeout", f"the cdp daemon did not answer {op} within {timeout or self.timeout} s"
            ) from None
        except OSError as exc:
            self.close()
            raise ControlError(
                "unreachable", f"lost the cdp daemon at {self.path}: {exc.strerror or exc}"
            ) from None

    def _readline(self, sock: socket.socket) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > protocol.MAX_LINE * 64:
                raise ControlError("protocol", "server answer too long")
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if not self._buf:
                    raise _Stale()  # closed before any answer
                raise ConnectionResetError(0, "connection closed by the daemon")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
