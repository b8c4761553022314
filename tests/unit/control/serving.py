"""A control server on a temp socket in a thread of its own, for control and shell tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading

from appliance.control.manager import VolumeManager
from appliance.control.server import ControlServer

MiB = 1 << 20


class ServerThread:
    """``VolumeManager`` under ``root`` served on a short socket path (AF_UNIX paths
    are limited to 107 bytes, so not under pytest's long tmp_path)."""

    def __init__(self, root, **open_options):
        self.sockdir = tempfile.mkdtemp(prefix="cdpctl-", dir="/tmp")
        self.path = os.path.join(self.sockdir, "run", "control.sock")
        self.manager = VolumeManager(str(root), open_options={"map_seconds": 0.2, **open_options})
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(self.manager, self.path)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self.manager.start()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        """Idempotent; also cleans up a server whose start failed."""
        if self.loop.is_closed():
            return
        if not self._thread.is_alive():
            self.loop.close()
            self.manager.close()
            shutil.rmtree(self.sockdir, ignore_errors=True)
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self.manager.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


def make_volume(manager: VolumeManager, tmp_path, name="vol0", size=4 * MiB, **kw) -> dict:
    return manager.create(
        name,
        primary=str(tmp_path / f"{name}.img"),
        secondary=str(tmp_path / f"{name}-sec"),
        size=size,
        **kw,
    )


def seed_vol0(manager: VolumeManager, tmp_path):
    """A 4 MiB volume 'vol0': 4 KiB of 'a' at 0, bookmark 'first', then 4 KiB of 'b' at 4096."""
    make_volume(manager, tmp_path)
    vol = manager.get("vol0")
    vol.write(0, b"a" * 4096)
    vol.flush()
    vol.bookmark("first")
    vol.write(4096, b"b" * 4096)
    vol.flush()
    return vol
