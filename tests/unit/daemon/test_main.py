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
