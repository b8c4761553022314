"""The state folder of protected volumes: ``<state_dir>/<volume>/``.

A backstore's cfgstring names a volume (:mod:`.cfgstring`); this module
checks the name against what is on disk (D-Bus ``CheckConfig``, before the
kernel ever sees the backstore) and opens or creates the volume when the
kernel announces the device.  A volume is served by at most one backstore:
a second open is refused with ``EBUSY``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import structlog

from appliance.engine import CdpError, InvalidArgument, ProtectedVolume, VolumeExists
from appliance.engine.volume import JOURNAL_DIR, VOLUME_FILE

from .cfgstring import CfgString
from .errors import CfgStringError, DeviceSetupError

log = structlog.get_logger("cdp.handler.volumes")


class VolumeStore:
    """Volumes under ``state_dir``.  Thread-safe."""

    def __init__(self, state_dir: Path | str, **open_options) -> None:
        self.state_dir = Path(state_dir)
        self._open_options = open_options
        self._lock = threading.Lock()
        self._busy: set[str] = set()

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
            if size is not None and size != meta.get("size"):
                raise CfgStringError(
                    f"volume {cfg.volume} holds {meta.get('size')} bytes; the backstore has {size}"
                )
            if block_size is not None and block_size != meta.get("block_size"):
                raise CfgStringError(
                    f"volume {cfg.volume} has {meta.get('block_size')}-byte blocks; the "
                    f"backstore has {block_size}"
                )
            return f"serves existing volume {cfg.volume} ({meta.get('size')} bytes)"
        if cfg.primary is None or cfg.secondary is None:
            raise CfgStringError(
                f"volume {cfg.volume} does not exist: give primary= and secondary= to create it"
            )
        self._check_primary(cfg.primary, size)
        self._check_secondary(cfg.secondary)
        return f"creates volume {cfg.volume} on {cfg.primary}, journal in {cfg.secondary}"

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

    def acquire(self, cfg: CfgString, size: int, block_size: int) -> ProtectedVolume:
        """Open (or create) the volume for a backstore of ``size`` bytes.

        :raises DeviceSetupError: with the errno the netlink reply carries.
        """
        with self._lock:
            if cfg.volume in self._busy:
                raise DeviceSetupError(
                    f"volume {cfg.volume} is already served by another backstore", errno.EBUSY
                )
            self._busy.add(cfg.volume)
        try:
            return self._open(cfg, size, block_size)
        except BaseException:
            with self._lock:
                self._busy.discard(cfg.volume)
            raise

    def _open(self, cfg: CfgString, size: int, block_size: int) -> ProtectedVolume:
        try:
            self.check(cfg, size, block_size)
        except CfgStringError as exc:
            raise DeviceSetupError(str(exc), errno.EINVAL) from None
        state = str(self.path(cfg.volume))
        try:
            if self.describe(cfg.volume) is not None:
                return ProtectedVolume.open(state, **self._open_options)
            os.makedirs(cfg.secondary, mode=0o700, exist_ok=True)
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            log.info("volume.creating", volume=cfg.volume, primary=cfg.primary, size=size)
            return ProtectedVolume.create(
                state,
                primary=cfg.primary,
                secondary=cfg.secondary,
                size=size,
                block_size=block_size,
                mode=cfg.mode or "sync",
                **self._open_options,
            )
        except VolumeExists as exc:
            raise DeviceSetupError(str(exc), errno.EEXIST) from None
        except InvalidArgument as exc:
            raise DeviceSetupError(str(exc), errno.EINVAL) from None
        except (CdpError, OSError) as exc:
            raise DeviceSetupError(f"volume {cfg.volume}: {exc}", errno.EIO) from None

    def release(self, volume: str, vol: ProtectedVolume | None) -> None:
        """Close ``vol`` (cleanly: durable, clean-close mark) and free the name."""
        try:
            if vol is not None:
                vol.close()
        finally:
            with self._lock:
                self._busy.discard(volume)
