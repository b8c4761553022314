"""The control protocol: newline-delimited JSON over a local Unix socket.

One request is one line (UTF-8 JSON object, at most :data:`MAX_LINE` bytes
with its ``\\n``); the server answers every request with one line, in order,
and keeps the connection open for the next one.  docs/CONTROL.md is the
reference; this module is the only place that knows the framing.

Request::

    {"v": 1, "op": "bookmark", "args": {"volume": "vol0", "name": "pre-upgrade"}, "id": 7}

Response (``id`` is echoed when the request had one)::

    {"v": 1, "ok": true, "result": {...}, "id": 7}
    {"v": 1, "ok": false, "error": {"type": "not_found", "message": "no volume named 'x'"}}

Stdlib only: the shell imports this module without the engine.
"""

from __future__ import annotations

import json

VERSION = 1
MAX_LINE = 1 << 20
DEFAULT_SOCKET = "/run/cdp/control.sock"

#: Every error ``type`` the server sends, with what it means.  Stable names:
#: clients branch on them, so a new meaning gets a new name.
ERROR_TYPES = {
    "bad_request": "the line is not a protocol request (JSON, 'op', 'args', size)",
    "unsupported_version": "the request's 'v' is not a version this server speaks",
    "unknown_op": "no such op",
    "bad_argument": "an argument is missing, unknown, mistyped or invalid",
    "not_found": "the named volume, bookmark, job or image does not exist",
    "exists": "the name is taken (volume, bookmark, image)",
    "not_available": "the point cannot be had (not yet written, faded out, baseline running)",
    "busy": "another job or an exposed image stands in the way",
    "not_cancellable": "the job cannot be stopped (it would leave the volume half done)",
    "io_error": "reading or writing the primary, the journal or a file failed",
    "corrupt": "the journal or the catalog is damaged",
    "failed": "the engine refused the operation (message says why)",
    "internal": "a bug: the server logged a traceback",
}
#: Error types only a client produces (never on the wire).
CLIENT_ERROR_TYPES = {
    "unreachable": "no server answers on the socket",
    "timeout": "the server did not answer in time",
    "protocol": "the server's answer is not a protocol response",
}


class ControlError(Exception):
    """A failed request: ``type`` (one of :data:`ERROR_TYPES`) and a one-line message."""

    def __init__(self, type: str, message: str):
        super().__init__(message)
        self.type = type
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict:
        return {"type": self.type, "message": self.message}


def encode(obj: dict) -> bytes:
    """One protocol line (compact JSON and ``\\n``)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def request(op: str, args: dict | None = None, id: object = None) -> bytes:
    msg = {"v": VERSION, "op": op, "args": args or {}}
    if id is not None:
        msg["id"] = id
    return encode(msg)


def ok(result: object, id: object = None) -> bytes:
    msg = {"v": VERSION, "ok": True, "result": result}
    if id is not None:
        msg["id"] = id
    return encode(msg)


def error(err: ControlError, id: object = None) -> bytes:
    msg = {"v": VERSION, "ok": False, "error": err.to_wire()}
    if id is not None:
        msg["id"] = id
    return encode(msg)


def parse_request(line: bytes) -> tuple[str, dict, object]:
    """``(op, args, id)`` of a request line; raises :class:`ControlError`."""
    if len(line) > MAX_LINE:
        raise ControlError("bad_request", f"request longer than {MAX_LINE} bytes")
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError("bad_request", f"request is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ControlError("bad_request", "request is not a JSON object")
    if msg.get("v") != VERSION:
        raise ControlError(
            "unsupported_version", f"protocol version {msg.get('v')!r} not spoken; use {VERSION}"
        )
    op, args = msg.get("op"), msg.get("args", {})
    if not isinstance(op, str) or not op:
        raise ControlError("bad_request", "request has no 'op' string")
    if not isinstance(args, dict):
        raise ControlError("bad_request", "'args' must be a JSON object")
    return op, args, msg.get("id")


def parse_response(line: bytes) -> object:
    """The ``result`` of a response line; raises :class:`ControlError` for an error."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError("protocol", f"server answer is not JSON: {exc}") from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise ControlError("protocol", "server answer is not a protocol response")
    if msg["ok"]:
        return msg.get("result")
    err = msg.get("error") or {}
    raise ControlError(str(err.get("type", "internal")), str(err.get("message", "unknown error")))
