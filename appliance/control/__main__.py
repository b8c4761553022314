"""Run the control server alone (the daemon embeds it; this is for tests and tools).

    python -m appliance.control --root /var/lib/cdp --socket /run/cdp/control.sock

Stops on SIGINT or SIGTERM: the server drains, the volumes close cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from appliance.log import configure

from .manager import VolumeManager
from .protocol import DEFAULT_SOCKET
from .server import ControlServer


async def serve(manager: VolumeManager, path: str, ready=None) -> None:
    """Serve until SIGINT/SIGTERM; the signal handlers are removed afterwards."""
    server = ControlServer(manager, path)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.control", description=__doc__)
    ap.add_argument("--root", default="/var/lib/cdp", help="state root (volumes/<name>/)")
    ap.add_argument("--socket", default=DEFAULT_SOCKET, help="control socket path")
    ap.add_argument("--config", default=None, help="cdp configuration file")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--map-seconds", type=float, default=None, help="engine: map interval")
    opts = ap.parse_args(argv)
    configure(opts.log_level)
    open_options = {} if opts.map_seconds is None else {"map_seconds": opts.map_seconds}
    manager = VolumeManager(opts.root, config_file=opts.config, open_options=open_options)
    manager.start()
    try:
        asyncio.run(serve(manager, opts.socket, ready=lambda: print("ready", flush=True)))
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
