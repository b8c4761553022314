"""``cdp-handlerd``: the ``user:cdp`` TCMU handler daemon.

One asyncio process (root): ``startup`` -> ``loop`` -> ``shutdown``.

startup
    take the lock file (one daemon per machine); open every protected volume
    and apply the saved cdp configuration (retention, exposed images: an image
    LUN restored by ``rtslib-fb-targetctl`` after us finds its image); ``block_netlink=1`` and
    ``reset_netlink=1`` (fail netlink commands a dead predecessor left
    pending); join the ``TCM-USER`` family and send ``SET_FEATURES``; attach
    the ``cdp`` devices that already exist (``block_dev``, ``reset_ring``,
    map, unblock: see :mod:`.manager`); ``block_netlink=0``; own
    ``org.kernel.TCMUService1`` on D-Bus; listen on the control socket; tell
    systemd we are ready.
loop
    each netlink event is handled in a worker thread and answered with its
    ``*_DONE``; SIGTERM or SIGINT ends the loop.
shutdown
    stop the control socket (requests in flight finish), block, drain and
    detach every device, close the volumes cleanly, leave D-Bus and netlink,
    restore the signal handlers, drop the lock.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import structlog

from appliance import crcprobe, malloctune
from appliance.control.manager import VolumeManager
from appliance.control.server import ControlServer
from appliance.tcmu import parse_uio_name

from . import dbus_service
from .config import HandlerConfig, load_config
from .errors import AlreadyRunning, DeviceSetupError, HandlerError
from .kernel import KernelKnobs
from .manager import DeviceManager
from .netlink import Cmd, DeviceEvent, TcmuNetlink
from .volumes import VolumeStore

log = structlog.get_logger("cdp.handler")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    def __init__(self, config: HandlerConfig, *, dbus_address: str | None = None) -> None:
        self.config = config
        self.volumes = VolumeManager(
            str(config.state_dir.parent), volumes_dir=str(config.state_dir)
        )
        self.store = VolumeStore(config.state_dir, self.volumes)
        self.control: ControlServer | None = None
        self.manager = DeviceManager(config, self.store)
        self.knobs = KernelKnobs(config.root)
        self.netlink: TcmuNetlink | None = None
        self.bus = None
        self._dbus_address = dbus_address
        self._lock_fd = -1
        self._stop = asyncio.Event()
        self._events_task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- startup ---------------------------------------------------------------

    async def startup(self) -> None:
        self._take_lock()
        restored = await asyncio.to_thread(self.volumes.start)
        for line in restored.get("errors", []):
            log.error("daemon.restoreconfig_error", error=line)
        _load_module()
        self.knobs.block_netlink(True)
        try:
            self.knobs.reset_netlink()
            self.netlink = TcmuNetlink()
            await self.netlink.open()
            await self.netlink.set_features()
            served = await asyncio.to_thread(self.manager.recover_existing)
        finally:
            self.knobs.block_netlink(False)
        self._events_task = asyncio.create_task(self._netlink_loop(), name="netlink")
        if self.config.dbus:
            self.bus = await dbus_service.serve(self.store, self._dbus_address)
        if self.config.control:
            self.control = ControlServer(self.volumes, str(self.config.control_socket))
            await self.control.start()
        log.info("daemon.ready", recovered=served, state_dir=str(self.config.state_dir))
        _sd_notify("READY=1")

    def _take_lock(self) -> None:
        path = self.config.lock_file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another cdp-handlerd holds {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    # -- loop ------------------------------------------------------------------

    async def _netlink_loop(self) -> None:
        # A dead listener would leave the kernel waiting for replies forever:
        # whatever goes wrong, log it and listen again.
        while self.netlink is not None:
            try:
                async for event in self.netlink.events():
                    task = asyncio.create_task(self._handle(event))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("netlink.listen_failed")
                await asyncio.sleep(0.5)

    async def _handle(self, event: DeviceEvent) -> None:
        try:
            status = await asyncio.to_thread(self.handle_event, event)
        except Exception:
            log.exception("netlink.event_crashed", cmd=event.cmd.name, device=event.device)
            status = -errno.EIO
        if self.netlink is not None:
            try:
                await self.netlink.reply(event, status)
            except Exception:
                log.exception("netlink.reply_failed", cmd=event.cmd.name, device=event.device)

    def handle_event(self, event: DeviceEvent) -> int:
        """Carry out one event; returns the reply's CMD_STATUS (0 or -errno)."""
        name = parse_uio_name(event.device)
        ours = name is not None and name.subtype == "cdp"
        log.info("netlink.event", cmd=event.cmd.name, device=event.device, minor=event.minor)
        try:
            if event.cmd == Cmd.ADDED_DEVICE:
                if not ours:
                    # We are the only TCMU daemon: nobody else will answer.
                    return -errno.ENOENT
                self.manager.attach(event.minor, event.device)
            elif event.cmd == Cmd.REMOVED_DEVICE:
                self.manager.detach(event.minor)
            elif event.cmd == Cmd.RECONFIG_DEVICE:
                if not ours:
                    return -errno.ENOENT
                self.manager.reconfigure(
                    event.minor,
                    dev_cfg=event.dev_cfg,
                    dev_size=event.dev_size,
                    writecache=event.writecache,
                )
        except HandlerError as exc:
            log.error(
                "netlink.event_failed", cmd=event.cmd.name, device=event.device, error=str(exc)
            )
            return exc.status
        except Exception:
            log.exception("netlink.event_crashed", cmd=event.cmd.name, device=event.device)
            return -errno.EIO
        return 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.startup()
            await self._stop.wait()
        finally:
            try:
                await self.shutdown()
            finally:
                for sig, handler in previous.items():
                    loop.remove_signal_handler(sig)
                    signal.signal(sig, handler)

    def _on_signal(self, sig: int) -> None:
        log.info("daemon.signal", signal=signal.Signals(sig).name)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    # -- shutdown --------------------------------------------------------------

    async def shutdown(self) -> None:
        _sd_notify("STOPPING=1")
        if self.control is not None:
            await self.control.stop()
            self.control = None
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=30)
        await asyncio.to_thread(self.manager.detach_all)
        await asyncio.to_thread(self.volumes.close)
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
        if self.netlink is not None:
            self.netlink.close()
            self.netlink = None
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        log.info("daemon.stopped")


def _load_module() -> None:
    if not os.path.isdir("/sys/module/target_core_user"):
        subprocess.run(["modprobe", "target_core_user"], check=False, capture_output=True)


def _sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.warning("daemon.sd_notify_failed", error=str(exc))


def configure_logging(level: str, json_lines: bool) -> None:
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("pyroute2").setLevel(max(lvl, logging.INFO))
    renderer = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cdp-handlerd", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", type=Path, help="TOML file (default /etc/cdp/handler.toml)")
    p.add_argument("--state-dir", type=Path, help="override [handler] state_dir")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--console-log", action="store_true", help="human-readable logs")
    p.add_argument("--no-dbus", action="store_true", help="do not own org.kernel.TCMUService1")
    p.add_argument("--control-socket", type=Path, help="override [control] socket")
    p.add_argument("--no-control", action="store_true", help="do not serve the control API")
    args = p.parse_args(argv)
    overrides = {}
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.console_log:
        overrides["log_json"] = False
    if args.no_dbus:
        overrides["dbus"] = False
    if args.control_socket:
        overrides["control_socket"] = args.control_socket
    if args.no_control:
        overrides["control"] = False
    try:
        config = load_config(args.config, **overrides)
    except HandlerError as exc:
        print(f"cdp-handlerd: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_json)
    crcprobe.log_choice()
    malloctune.log_choice()
    try:
        asyncio.run(Daemon(config).run())
    except (HandlerError, DeviceSetupError) as exc:
        log.error("daemon.failed", error=str(exc))
        return 1
    except Exception:
        log.exception("daemon.crashed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
