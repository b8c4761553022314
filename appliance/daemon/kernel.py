"""The kernel's TCMU knobs in sysfs and configfs.

Module parameters (``/sys/module/target_core_user/parameters/``):
``block_netlink`` (1: new netlink commands fail with EAGAIN) and
``reset_netlink`` (1: fail every pending netlink command with EINTR; only
while blocked) -- the first two steps of a restart.

Per device (``/sys/kernel/config/target/core/user_<hba>/<name>/``):
``action/block_dev`` (1: stop queueing new commands), ``action/reset_ring``
(1: complete every in-flight command with BUSY, zero head and tail),
``attrib/hw_block_size``, ``attrib/dev_size``, ``attrib/hw_max_sectors``,
``attrib/tmr_notification``, ``info`` and ``wwn/vpd_unit_serial``.

Every path is taken relative to ``root`` so tests can use a fake tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog

from appliance.tcmu import UioName

log = structlog.get_logger("cdp.handler.kernel")

MODULE_PARAMS = "sys/module/target_core_user/parameters"


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class KernelKnobs:
    """``target_core_user`` module parameters."""

    def __init__(self, root: Path | str = "/") -> None:
        self.params = Path(root, MODULE_PARAMS)

    def _set(self, name: str, value: int) -> bool:
        try:
            _write(self.params / name, str(value))
        except OSError as exc:  # old kernel, or module not loaded
            log.warning("kernel.param_unavailable", param=name, error=str(exc))
            return False
        return True

    def block_netlink(self, on: bool) -> bool:
        return self._set("block_netlink", int(on))

    def reset_netlink(self) -> bool:
        return self._set("reset_netlink", 1)


class DeviceKnobs:
    """One TCMU backstore's configfs folder."""

    def __init__(self, name: UioName, root: Path | str = "/") -> None:
        self.name = name
        self.dir = name.configfs_dir(root)

    def _read(self, rel: str) -> str:
        return (self.dir / rel).read_text().strip()

    def _int(self, rel: str) -> int:
        return int(self._read(rel), 0)

    def block_size(self) -> int:
        return self._int("attrib/hw_block_size")

    def max_sectors(self) -> int:
        return self._int("attrib/hw_max_sectors")

    def dev_size(self) -> int:
        """Bytes, from ``attrib/dev_size`` (or the ``Size:`` of ``info``)."""
        try:
            return self._int("attrib/dev_size")
        except (OSError, ValueError):
            match = re.search(r"Size:\s*(\d+)", self._read("info"))
            if match is None:
                raise
            return int(match.group(1))

    def unit_serial(self) -> str | None:
        """The backstore's ``vpd_unit_serial`` (None if unset or unreadable)."""
        try:
            text = self._read("wwn/vpd_unit_serial")
        except OSError:
            return None
        value = text.rpartition(":")[2].strip()
        return value or None

    def block(self, on: bool) -> None:
        _write(self.dir / "action/block_dev", str(int(on)))

    def reset_ring(self, level: int = 1) -> None:
        """1: in-flight commands complete with BUSY (retried); 2: CHECK CONDITION."""
        _write(self.dir / "action/reset_ring", str(level))

    def set_tmr_notification(self, on: bool) -> bool:
        try:
            _write(self.dir / "attrib/tmr_notification", str(int(on)))
        except OSError as exc:
            log.info("kernel.tmr_notification_unavailable", device=self.name.device, error=str(exc))
            return False
        return True
