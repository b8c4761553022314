"""The devices this daemon serves, keyed by UIO minor: attach, detach, recover.

Attaching one device (ADDED_DEVICE, or a device found at start):
parse the cfgstring from the UIO name, read the backstore's block size, size
and max sectors from configfs, open (or create) the volume and check it
matches, build the SCSI device over a :class:`VolumeBackend`, open and map
``/dev/uioN``, then start the :class:`TcmuDevice` threads.

Recovering a device that existed before this process (the restart dance,
as tcmu-runner does it): ``block_dev=1`` (no new commands), ``reset_ring=1``
(the kernel completes every command left in the ring with BUSY, so the
initiator retries it; an old ring entry is never executed again, which could
overwrite newer data), attach (the ring starts at the zeroed head/tail),
``block_dev=0``.

All methods block (volume recovery can take seconds): the daemon calls them
from worker threads, one event per device at a time (the kernel allows only
one outstanding netlink command per device).
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass

import structlog

from appliance.engine import ProtectedVolume
from appliance.scsi import DeviceIdentity, Limits, ScsiDevice
from appliance.tcmu import UioDevice, UioInfo, list_tcmu_devices, parse_uio_name, read_uio_info

from . import cfgstring
from .config import HandlerConfig
from .device import DeviceOptions, TcmuDevice
from .errors import CfgStringError, DeviceSetupError
from .kernel import DeviceKnobs
from .volumes import Served, VolumeStore

log = structlog.get_logger("cdp.handler.manager")

OPEN_RETRIES = 20  # /dev/uioN may lag the netlink event (devtmpfs/udev)
OPEN_RETRY_DELAY = 0.05


@dataclass
class Attached:
    info: UioInfo
    cfg: cfgstring.CfgString
    knobs: DeviceKnobs
    uio: UioDevice
    served: Served
    device: TcmuDevice

    @property
    def volume(self) -> ProtectedVolume:
        return self.served.volume


class DeviceManager:
    def __init__(self, config: HandlerConfig, store: VolumeStore, *, opener=UioDevice.open) -> None:
        """``opener(info) -> UioDevice``: tests pass a simulated device."""
        self.config = config
        self.store = store
        self._opener = opener
        self._lock = threading.Lock()
        self._devices: dict[int, Attached] = {}

    @property
    def devices(self) -> dict[int, Attached]:
        with self._lock:
            return dict(self._devices)

    # -- attach / detach ---------------------------------------------------------

    def attach(self, minor: int, uio_name: str | None = None) -> Attached:
        """Serve ``uio<minor>``.  :raises DeviceSetupError: with the reply errno."""
        with self._lock:
            if minor in self._devices:
                raise DeviceSetupError(f"uio{minor} is already served", errno.EEXIST)
        info = self._info(minor, uio_name)
        name = info.name
        if name.subtype != cfgstring.SUBTYPE:
            raise DeviceSetupError(f"uio{minor} is a {name.subtype!r} device", errno.ENOENT)
        try:
            cfg = cfgstring.parse(name.cfgstring or "")
        except CfgStringError as exc:
            raise DeviceSetupError(f"{name.device}: {exc}", errno.EINVAL) from None
        knobs = DeviceKnobs(name, self.config.root)
        try:
            block_size, size = knobs.block_size(), knobs.dev_size()
            max_sectors = knobs.max_sectors()
        except (OSError, ValueError) as exc:
            raise DeviceSetupError(f"{name.device}: configfs: {exc}", errno.ENODEV) from None
        if size <= 0 or size % block_size:
            raise DeviceSetupError(
                f"{name.device}: size {size} is not a positive multiple of {block_size}"
            )
        served = self.store.acquire(cfg, size, block_size, name.device)
        try:
            attached = self._start(info, cfg, knobs, served, max_sectors)
        except BaseException:
            self.store.release(served)
            raise
        with self._lock:
            self._devices[minor] = attached
        log.info(
            "device.attached",
            device=name.device,
            uio=minor,
            serves=served.name,
            size=size,
            block_size=block_size,
            read_only=served.read_only,
            state=served.volume.state,
        )
        return attached

    def _info(self, minor: int, uio_name: str | None) -> UioInfo:
        info = read_uio_info(minor, self.config.root)
        if info is None:
            raise DeviceSetupError(f"uio{minor} is not a TCMU device", errno.ENODEV)
        if uio_name is not None and info.name != parse_uio_name(uio_name):
            raise DeviceSetupError(
                f"uio{minor} is {info.name.device}, the event says {uio_name}", errno.ENODEV
            )
        return info

    def _start(self, info, cfg, knobs: DeviceKnobs, served: Served, max_sectors: int) -> Attached:
        bs = served.backend.block_size
        limits = Limits(max_transfer_bytes=max(4096, max_sectors * bs))
        scsi = ScsiDevice(
            served.backend,
            DeviceIdentity(served.identity),
            limits=limits,
            read_only=served.read_only,
        )
        if self.config.tmr_notification:
            knobs.set_tmr_notification(True)
        uio = self._open_uio(info)
        try:
            ring = uio.ring()
            options = DeviceOptions(
                self.config.workers,
                self.config.max_queued,
                self.config.queue_timeout,
                self.config.inline_io,
            )
            device = TcmuDevice(
                info.name.device, ring, uio, scsi, options, reset_ring=knobs.reset_ring
            )
            device.start()
        except BaseException:
            uio.close()
            raise
        return Attached(info, cfg, knobs, uio, served, device)

    def _open_uio(self, info: UioInfo) -> UioDevice:
        for attempt in range(OPEN_RETRIES):
            try:
                return self._opener(info)
            except FileNotFoundError:
                if attempt == OPEN_RETRIES - 1:
                    raise DeviceSetupError(
                        f"{info.dev_path} did not appear", errno.ENODEV
                    ) from None
                time.sleep(OPEN_RETRY_DELAY)
            except OSError as exc:
                raise DeviceSetupError(f"{info.dev_path}: {exc.strerror}", exc.errno) from None
        raise AssertionError("unreachable")

    def detach(self, minor: int, *, block: bool = False, timeout: float = 30.0) -> bool:
        """Stop serving ``uio<minor>``; flush what it wrote (the volume stays
        open for the control API and closes with the daemon).

        ``block``: set ``block_dev`` around the drain (daemon shutdown; on
        REMOVED_DEVICE the kernel has already quiesced the device).
        :returns: False if it was not served.
        """
        with self._lock:
            att = self._devices.pop(minor, None)
        if att is None:
            return False
        blocked = False
        if block:
            try:
                att.knobs.block(True)
                blocked = True
            except OSError as exc:
                log.warning("device.block_failed", device=att.info.name.device, error=str(exc))
        try:
            att.device.stop(timeout)
            att.device.ring.close()
            att.uio.close()
        finally:
            try:
                self.store.release(att.served)
            finally:
                if blocked:
                    try:
                        att.knobs.block(False)
                    except OSError:
                        pass
        log.info("device.detached", device=att.info.name.device, uio=minor)
        return True

    def detach_all(self, timeout: float = 30.0) -> None:
        for minor in list(self.devices):
            try:
                self.detach(minor, block=True, timeout=timeout)
            except Exception:
                log.exception("device.detach_failed", uio=minor)

    # -- reconfigure -----------------------------------------------------------

    def reconfigure(
        self,
        minor: int,
        *,
        dev_cfg: str | None = None,
        dev_size: int | None = None,
        writecache: int | None = None,
    ) -> None:
        """RECONFIG_DEVICE: write cache changes are applied; the size and the
        volume cannot change under a live LUN.  :raises DeviceSetupError:"""
        att = self.devices.get(minor)
        if att is None:
            raise DeviceSetupError(f"uio{minor} is not served", errno.ENODEV)
        if writecache is not None:
            att.device.scsi.write_cache = bool(writecache)
            log.info("device.write_cache", device=att.info.name.device, wce=bool(writecache))
        if dev_size is not None and dev_size != att.volume.size:
            raise DeviceSetupError(
                f"volume {att.cfg.volume} holds {att.volume.size} bytes; resizing is not supported",
                errno.EOPNOTSUPP,
            )
        if dev_cfg is not None:
            try:
                new = cfgstring.parse(dev_cfg, subtype=True)
            except CfgStringError as exc:
                raise DeviceSetupError(str(exc)) from None
            if new.label != att.cfg.label:
                raise DeviceSetupError(
                    "a live backstore cannot switch volumes or images; delete and re-create it",
                    errno.EOPNOTSUPP,
                )

    # -- restart ---------------------------------------------------------------

    def recover_existing(self) -> list[int]:
        """Attach every ``cdp`` device that already exists (see the module
        docstring); returns the minors now served."""
        served = []
        for info in list_tcmu_devices(self.config.root, cfgstring.SUBTYPE):
            knobs = DeviceKnobs(info.name, self.config.root)
            try:
                knobs.block(True)
            except OSError as exc:
                log.error("recover.block_failed", device=info.name.device, error=str(exc))
                continue
            try:
                knobs.reset_ring(1)
                self.attach(info.index)
                served.append(info.index)
            except Exception as exc:
                log.error("recover.failed", device=info.name.device, uio=info.index, error=str(exc))
            finally:
                try:
                    knobs.block(False)
                except OSError as exc:
                    log.error("recover.unblock_failed", device=info.name.device, error=str(exc))
        return served
