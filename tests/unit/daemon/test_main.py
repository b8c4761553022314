"""The daemon's life cycle without a kernel: lock file, signals, shutdown."""

import asyncio
import os
import signal

import pytest

from appliance.daemon.config import HandlerConfig
from appliance.daemon.errors import AlreadyRunning
from appliance.daemon.main import Daemon, main


def make(tmp_path) -> Daemon:
    cfg = HandlerConfig(
        state_dir=tmp_path / "volumes", lock_file=tmp_path / "run/lock", root=tmp_path, dbus=False
    )
    return Daemon(cfg)


def test_sigterm_stops_and_restores_the_handlers(tmp_path, monkeypatch):
    daemon = make(tmp_path)
    calls = []

    async def startup():
        calls.append("startup")
        daemon._take_lock()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(daemon, "startup", startup)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a))
    try:
        asyncio.run(asyncio.wait_for(daemon.run(), 10))
        assert calls == ["startup"]
        assert daemon._lock_fd == -1  # released by shutdown
        # Our handler is back: a second SIGTERM reaches it, not the daemon.
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_one_daemon_per_lock_file(tmp_path):
    first, second = make(tmp_path), make(tmp_path)
    first._take_lock()
    try:
        assert (tmp_path / "run/lock").read_text().strip() == str(os.getpid())
        with pytest.raises(AlreadyRunning):
            second._take_lock()
    finally:
        os.close(first._lock_fd)


def test_bad_config_exits_2(tmp_path, capsys):
    f = tmp_path / "handler.toml"
    f.write_text("[handler]\nnope = 1\n")
    assert main(["-c", str(f)]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


class FakeNetlink:
    """TCM-USER without a kernel: no events, replies recorded."""

    def __init__(self):
        self.replies = []

    async def open(self):
        pass

    async def set_features(self):
        pass

    async def events(self):
        await asyncio.Event().wait()
        yield  # pragma: no cover

    async def reply(self, event, status):
        self.replies.append((event, status))

    def close(self):
        pass


def test_daemon_serves_the_control_api(tmp_path, monkeypatch):
    """``cdp-handlerd`` embeds the control server over the same volumes its
    LUNs use; at start it applies the saved cdp configuration."""
    from appliance.control.client import ControlClient
    from appliance.daemon import main as main_mod

    monkeypatch.setattr(main_mod, "TcmuNetlink", FakeNetlink)
    monkeypatch.setattr(main_mod, "_load_module", lambda: None)
    sock = tmp_path / "run/cdp/control.sock"
    cfg = HandlerConfig(
        state_dir=tmp_path / "lib/volumes",
        lock_file=tmp_path / "run/lock",
        root=tmp_path,
        dbus=False,
        control_socket=sock,
    )
    primary = tmp_path / "p.img"  # missing: created sparse, no baseline to wait for

    def client_session(first: bool) -> dict:
        with ControlClient(str(sock)) as c:
            if first:
                c.call(
                    "create",
                    volume="vol0",
                    primary=str(primary),
                    secondary=str(tmp_path / "journal"),
                    size=1 << 20,
                )
                c.call("bookmark", volume="vol0", name="b1")
                c.call("retention", volume="vol0", policy="all:48h")
                c.call("saveconfig")
            return {
                "volumes": [v["name"] for v in c.call("volumes")],
                "status": c.call("status", volume="vol0"),
            }

    async def session(first: bool) -> dict:
        daemon = Daemon(cfg)
        task = asyncio.create_task(daemon.run())
        for _ in range(500):
            if sock.exists() or task.done():
                break
            await asyncio.sleep(0.01)
        assert sock.exists(), "control socket did not appear"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        try:
            return await asyncio.to_thread(client_session, first)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 30)
            assert not sock.exists()

    first = asyncio.run(session(True))
    assert first["volumes"] == ["vol0"]
    # A restarted daemon opens the volume and re-applies the saved retention.
    second = asyncio.run(session(False))
    assert second["volumes"] == ["vol0"]
    assert second["status"]["retention"] == "all:2d"  # normalized
    assert (tmp_path / "lib/cdp.json").exists()
