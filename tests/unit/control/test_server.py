"""The socket and the framing: permissions, malformed requests, stale sockets."""

import json
import os
import shutil
import socket
import stat

import pytest

from appliance.control import protocol
from appliance.control.client import ControlClient
from appliance.control.protocol import ControlError

from .serving import ServerThread


def raw(path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def test_socket_is_root_only(served):
    st = os.stat(served.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(served.path)).st_mode) == 0o700


def test_config_file_is_0600(served, client):
    out = client.call("saveconfig")
    assert stat.S_IMODE(os.stat(out["file"]).st_mode) == 0o600


@pytest.mark.parametrize(
    ("line", "etype", "words"),
    [
        (b"this is not json\n", "bad_request", "not JSON"),
        (b"[1, 2]\n", "bad_request", "not a JSON object"),
        (b'{"op": "volumes"}\n', "unsupported_version", "version None"),
        (b'{"v": 2, "op": "volumes"}\n', "unsupported_version", "version 2"),
        (b'{"v": 1}\n', "bad_request", "no 'op'"),
        (b'{"v": 1, "op": "volumes", "args": [1]}\n', "bad_request", "'args' must be"),
        (b'{"v": 1, "op": "format_disk"}\n', "unknown_op", "no op 'format_disk'"),
    ],
)
def test_malformed_requests(served, line, etype, words):
    msg = raw(served.path, line)
    assert msg["ok"] is False and msg["v"] == 1
    assert msg["error"]["type"] == etype
    assert words in msg["error"]["message"]


def test_id_is_echoed_and_connection_stays_open(served):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(served.path)
        s.sendall(protocol.request("volumes", id=1) + b"\n" + protocol.request("hello", id="b"))
        f = s.makefile("rb")
        first, second = json.loads(f.readline()), json.loads(f.readline())
    assert first == {"v": 1, "ok": True, "result": [], "id": 1}
    assert second["id"] == "b" and second["result"]["protocol"] == 1


def test_line_too_long(served):
    msg = raw(served.path, b'{"v": 1, "op": "' + b"x" * (protocol.MAX_LINE + 10) + b'"}\n')
    assert msg["error"]["type"] == "bad_request"


def test_unreachable_is_one_clear_line(tmp_path):
    c = ControlClient(str(tmp_path / "nothing.sock"), timeout=2)
    with pytest.raises(ControlError) as info:
        c.call("volumes")
    assert info.value.type == "unreachable"
    assert "cannot reach the cdp daemon" in str(info.value)
    assert "is cdp-handlerd running?" in str(info.value)


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path):
    first = ServerThread(tmp_path / "a").start()
    try:
        second = ServerThread(tmp_path / "b")
        second.path = first.path
        second.server.path = first.path
        with pytest.raises(FileExistsError, match="another control server"):
            second.loop.run_until_complete(second.server.start())
        second.stop()
    finally:
        path = first.path
        first.stop()
    # A socket file whose server died: the next server takes the path over.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    third = ServerThread(tmp_path / "c")
    third.path = third.server.path = path
    third.start()
    try:
        assert ControlClient(path).call("volumes") == []
    finally:
        third.stop()
        shutil.rmtree(first.sockdir, ignore_errors=True)


def test_not_a_socket_is_refused(tmp_path):
    srv = ServerThread(tmp_path / "a")
    os.makedirs(os.path.dirname(srv.path))
    open(srv.path, "w").close()
    with pytest.raises(FileExistsError, match="not a socket"):
        srv.loop.run_until_complete(srv.server.start())
    srv.stop()


def test_stop_removes_the_socket_and_does_not_wait_for_idle_clients(tmp_path):
    import time

    srv = ServerThread(tmp_path / "a").start()
    idle = ControlClient(srv.path)
    idle.call("volumes")  # an open, idle connection
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5
    assert not os.path.exists(srv.path)
    with pytest.raises(ControlError):
        idle.call("volumes")
