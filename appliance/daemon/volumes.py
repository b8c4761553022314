"""The state folder of protected volumes: ``<state_dir>/<volume>/``.

A backstore's cfgstring names a volume (:mod:`.cfgstring`); this module
checks the name against what is on disk (D-Bus ``CheckConfig``, before the
kernel ever sees the backstore) and opens or creates the volume when the
kernel announces the device.  A volume, and an image, is served by at most
one backstore: a second one is refused with ``EBUSY``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from appliance.control.manager import VolumeManager
from appliance.control.protocol import ControlError
from appliance.engine import CdpError, InvalidArgument, ProtectedVolume, VolumeExists
from appliance.engine.volume import JOURNAL_DIR, VOLUME_FILE

from .backend import ImageBackend, VolumeBackend
from .cfgstring import CfgString
from .errors import CfgStringError, DeviceSetupError

log = structlog.get_logger("cdp.handler.volumes")


class VolumeStore:
    """Volumes under ``state_dir``, opened through the control API's
    :class:`~appliance.control.manager.VolumeManager` (one open volume per
    process, shared by the LUNs and the control socket).  Thread-safe."""

    def __init__(self, state_dir: Path | str, manager: VolumeManager | None = None) -> None:
        self.state_dir = Path(state_dir)
        if manager is None:
            manager = VolumeManager(str(self.state_dir.parent), volumes_dir=str(self.state_dir))
        self.manager = manager
        self._lock = threading.Lock()

    def path(self, volume: str) -> Path:
        return self.state_dir / volume

    def describe(self, volume: str) -> dict | None:
        """The volume's recorded metadata, or None if it does not exist."""
        try:
            return json.loads((self.path(volume) / VOLUME_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CfgStringError(f"volume {volume}: unreadable {VOLUME_FILE}: {exc}") from None

    # -- checking -----------------------------------------------------------

    def check(self, cfg: CfgString, size: int | None = None, block_size: int | None = None) -> str:
        """What opening ``cfg`` would do, as one sentence; raises if it would fail.

        :raises CfgStringError: the reason, fit for ``CheckConfig``.
        """
        meta = self.describe(cfg.volume)
        if cfg.image is not None:
            return self._check_image(cfg, meta, size, block_size)
        if meta is not None:
            for key in ("primary", "secondary"):
                given = getattr(cfg, key)
                if given is not None and os.path.abspath(given) != meta.get(key):
                    raise CfgStringError(
                        f"volume {cfg.volume} exists with {key} {meta.get(key)}, not {given}"
                    )
            if cfg.mode is not None and cfg.mode != meta.get("mode", "sync"):
                raise CfgStringError(
                    f"volume {cfg.volume} exists in mode {meta.get('mode', 'sync')}, not {cfg.mode}"
                )
            self._check_geometry(f"volume {cfg.volume}", meta, size, block_size)
            return f"serves existing volume {cfg.volume} ({meta.get('size')} bytes)"
        if cfg.primary is None or cfg.secondary is None:
            raise CfgStringError(
                f"volume {cfg.volume} does not exist: give primary= and secondary= to create it"
            )
        self._check_primary(cfg.primary, size)
        self._check_secondary(cfg.secondary)
        return f"creates volume {cfg.volume} on {cfg.primary}, journal in {cfg.secondary}"

    @staticmethod
    def _check_geometry(what: str, meta: dict, size, block_size) -> None:
        """The backstore's size and block size must be the volume's."""
        if size is not None and size != meta.get("size"):
            raise CfgStringError(f"{what} holds {meta.get('size')} bytes; the backstore has {size}")
        if block_size is not None and block_size != meta.get("block_size"):
            raise CfgStringError(
                f"{what} has {meta.get('block_size')}-byte blocks; the backstore has {block_size}"
            )

    def _check_image(self, cfg: CfgString, meta, size, block_size) -> str:
        if meta is None:
            raise CfgStringError(f"volume {cfg.volume} does not exist: no image of it to serve")
        self._check_geometry(f"an image of {cfg.volume}", meta, size, block_size)
        ex = self.manager.images.get(cfg.image)
        if ex is not None:
            if ex.volume != cfg.volume:
                raise CfgStringError(f"image {cfg.image} is an image of {ex.volume}")
            kind = "writable" if ex.writable else "read-only"
            return f"serves exposed image {ex.name} of {cfg.volume} (seq {ex.seq}, {kind})"
        what = "sequence number" if cfg.image.isdigit() else "bookmark"
        return f"serves {cfg.volume} at {what} {cfg.image}, read-only"

    @staticmethod
    def _check_primary(primary: str, size: int | None) -> None:
        try:
            st = os.stat(primary)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(primary)):
                raise CfgStringError(
                    f"primary {primary} does not exist and neither does its folder"
                ) from None
            return
        except OSError as exc:
            raise CfgStringError(f"primary {primary}: {exc.strerror}") from None
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise CfgStringError(f"primary {primary} is neither a block device nor a file")
        if size is not None and stat.S_ISBLK(st.st_mode):
            try:
                fd = os.open(primary, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    actual = os.lseek(fd, 0, os.SEEK_END)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise CfgStringError(f"primary {primary}: {exc.strerror}") from None
            if actual < size:
                raise CfgStringError(f"primary {primary} holds {actual} bytes, less than {size}")

    @staticmethod
    def _check_secondary(secondary: str) -> None:
        if os.path.exists(secondary):
            if not os.path.isdir(secondary):
                raise CfgStringError(f"secondary {secondary} is not a folder")
            jdir = os.path.join(secondary, JOURNAL_DIR)
            if os.path.isdir(jdir) and os.listdir(jdir):
                raise CfgStringError(f"secondary {secondary} already holds a journal")
        elif not os.path.isdir(os.path.dirname(secondary.rstrip("/"))):
            raise CfgStringError(
                f"secondary {secondary} does not exist and neither does its folder"
            )

    # -- opening --------------------------------------------------------------

    def acquire(self, cfg: CfgString, size: int, block_size: int, backstore: str) -> Served:
        """What the backstore ``backstore`` serves: the volume (opened, or
        created from the cfgstring's keys) or one of its images.

        :raises DeviceSetupError: with the errno the netlink reply carries.
        """
        try:
            self.check(cfg, size, block_size)
        except CfgStringError as exc:
            raise DeviceSetupError(str(exc), errno.EINVAL) from None
        try:
            with self._lock:  # check-then-create must not race another ADDED_DEVICE
                if self.describe(cfg.volume) is None:
                    self._create(cfg, size, block_size)
            if cfg.image is None:
                vol = self.manager.attach_volume(cfg.volume, backstore)
                return Served(cfg.volume, VolumeBackend(vol), str(vol.uuid), vol, False)
            ex, implicit = self.manager.attach_image(cfg.volume, cfg.image, backstore)
        except ControlError as exc:
            status = _ERRNO.get(exc.type, errno.EIO)
            raise DeviceSetupError(f"{cfg.label}: {exc.message}", status) from None
        except VolumeExists as exc:
            raise DeviceSetupError(str(exc), errno.EEXIST) from None
        except InvalidArgument as exc:
            raise DeviceSetupError(str(exc), errno.EINVAL) from None
        except (CdpError, OSError) as exc:
            raise DeviceSetupError(f"volume {cfg.volume}: {exc}", errno.EIO) from None
        vol = self.manager.get(cfg.volume)
        backend = ImageBackend(ex.image, writable=ex.writable)
        # A stable, distinct identity per image: the volume's uuid and the name.
        identity = str(uuid.uuid5(vol.uuid, f"image:{ex.name}"))
        return Served(ex.name, backend, identity, vol, not ex.writable, implicit)

    def _create(self, cfg: CfgString, size: int, block_size: int) -> None:
        log.info("volume.creating", volume=cfg.volume, primary=cfg.primary, size=size)
        self.manager.create(
            cfg.volume,
            primary=cfg.primary,
            secondary=cfg.secondary,
            size=size,
            block_size=block_size,
            mode=cfg.mode or "sync",
        )

    def release(self, served: Served) -> None:
        """The backstore is gone: flush what it wrote and free the name.  The
        volume stays open (the control API and other backstores use it)."""
        try:
            served.backend.flush()
        except Exception as exc:  # logged: the device is gone either way
            log.error("volume.release_flush_failed", name=served.name, error=str(exc))
        finally:
            self.manager.release(served.name, implicit_image=served.implicit)


_ERRNO = {
    "not_found": errno.ENOENT,
    "busy": errno.EBUSY,
    "exists": errno.EEXIST,
    "bad_argument": errno.EINVAL,
    "io_error": errno.EIO,
}


@dataclass
class Served:
    """What one backstore serves."""

    name: str  # the volume's name, or the image's
    backend: object  # VolumeBackend or ImageBackend
    identity: str  # uuid text for the SCSI device identifiers (VPD 0x80/0x83)
    volume: ProtectedVolume
    read_only: bool
    implicit: bool = False  # an image exposed only for this backstore
