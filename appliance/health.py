"""``cdp-health``: one look at the appliance's health.

Checks, each reported as ``ok``, ``warn`` or ``fail``:

``firmware``  the firmware version (``/etc/cdp-release``)
``daemon``    cdp-handlerd is active (systemd) and holds its lock
``lio``       configfs is mounted, LIO's modules are loaded, the iSCSI targets
              and their enabled portals
``disks``     the data disk (``/var/lib/cdp``) and the journal disk
              (``/srv/cdp/journal``) are mounted, and their free space
``volumes``   every ``user:cdp`` backstore the kernel has (``/sys/class/uio``),
              and each volume's state as the daemon's control socket reports
              it (``in-sync``, ``out-of-sync``..., lag and secondary free
              space); without the socket, whether each secondary folder exists

The exit status is 0 when nothing failed (warnings allowed), 1 otherwise, so
``cdp-health && echo healthy`` works in scripts; ``--json`` prints the checks
as a JSON list for tools.  Everything is read from the file system and the
control socket; nothing is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MODULES = ("target_core_mod", "target_core_user", "iscsi_target_mod")
MOUNTS = (("data disk", "var/lib/cdp"), ("journal disk", "srv/cdp/journal"))
LOW_FREE = 0.10  # warn below 10 % free on a data file system


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


class Health:
    """Gathers the checks; ``root`` is ``/`` except in tests."""

    def __init__(self, root: Path = Path("/"), socket: str | None = None):
        self.root = root
        self.socket = socket
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    # -- the checks -----------------------------------------------------------
    def firmware(self) -> None:
        try:
            version = self.path("etc/cdp-release").read_text().strip()
        except OSError:
            self.add("firmware", "warn", "no /etc/cdp-release (not an appliance image?)")
            return
        self.add("firmware", "ok", f"version {version}")

    def daemon(self) -> None:
        state = _systemctl("is-active", "cdp-handlerd.service") if self.root == Path("/") else ""
        pid = _lock_pid(self.path("run/cdp-handlerd.lock"), self.root == Path("/"))
        if state == "active" or (not state and pid):
            self.add("daemon", "ok", f"cdp-handlerd active, pid {pid or '?'}")
        elif state in ("activating", "reloading"):
            self.add("daemon", "warn", f"cdp-handlerd {state}")
        else:
            self.add("daemon", "fail", f"cdp-handlerd {state or 'not running'}")

    def lio(self) -> None:
        cfs = self.path("sys/kernel/config/target")
        if not cfs.is_dir():
            self.add("lio", "fail", "configfs target/ missing (LIO not loaded)")
            return
        missing = [m for m in MODULES if not self.path(f"sys/module/{m}").exists()]
        if missing:
            self.add("lio", "fail", "modules not loaded: " + ", ".join(missing))
            return
        targets = sorted(p for p in (cfs / "iscsi").glob("iqn.*") if p.is_dir())
        if not targets:
            self.add("lio", "warn", "LIO loaded, no iSCSI target configured yet")
            return
        for t in targets:
            tpgs = sorted(t.glob("tpgt_*"))
            enabled = [g for g in tpgs if _read(g / "enable") == "1"]
            portals = [p.name for g in enabled for p in (g / "np").glob("*")]
            luns = sum(len(list((g / "lun").glob("lun_*"))) for g in enabled)
            status = "ok" if enabled and portals else "warn"
            self.add(
                "lio",
                status,
                f"{t.name}: {len(enabled)}/{len(tpgs)} TPG enabled, "
                f"portals {', '.join(portals) or 'none'}, {luns} LUN(s)",
            )

    def disks(self) -> None:
        for label, rel in MOUNTS:
            p = self.path(rel)
            if not p.exists():
                self.add("disks", "warn", f"{label}: /{rel} does not exist")
                continue
            mounted = os.path.ismount(p)
            st = os.statvfs(p)
            free = st.f_bavail * st.f_frsize
            total = st.f_blocks * st.f_frsize
            status = "ok" if mounted else "warn"
            if total and free / total < LOW_FREE:
                status = "warn"
            where = "mounted" if mounted else "NOT a mount point (on the root disk)"
            self.add("disks", status, f"{label}: /{rel} {where}, {_size(free)} free of "
                                      f"{_size(total)}")  # fmt: skip

    def volumes(self) -> None:
        backstores = _uio_backstores(self.path("sys/class/uio"))
        for name, cfg in backstores:
            self.add("volumes", "ok", f"backstore {name}: cdp/{cfg}")
        states = self._control_volumes()
        if states is None:
            for name, cfg in backstores:
                secondary = _cfg_key(cfg, "secondary")
                if secondary and not self.path(secondary).is_dir():
                    self.add("volumes", "fail", f"{name}: secondary {secondary} missing")
            if not backstores:
                self.add("volumes", "warn", "no user:cdp backstore (no protected LUN yet)")
            return
        if not states and not backstores:
            self.add("volumes", "warn", "no protected volume yet")
        for v in states:
            state = v.get("state", "?")
            status = {"in-sync": "ok", "failed": "fail", "out-of-sync": "fail"}.get(state, "warn")
            self.add("volumes", status, f"volume {v.get('name')}: {v.get('summary', state)}")

    def _control_volumes(self) -> list[dict] | None:
        """The daemon's ``volumes`` answer, or None (no control socket here)."""
        try:
            from appliance.control.client import ControlClient
            from appliance.control.protocol import ControlError
        except ImportError:  # pragma: no cover - the package is always complete
            return None
        path = self.socket or os.environ.get("CDP_CONTROL_SOCKET") or "/run/cdp/control.sock"
        if not os.path.exists(path):
            return None
        try:
            with ControlClient(path, timeout=10) as client:
                result = client.call("volumes")
        except ControlError as exc:
            self.add("volumes", "fail", f"control socket {path}: {exc}")
            return []
        return list(result) if isinstance(result, list) else []

    def run(self) -> list[Check]:
        for step in (self.firmware, self.daemon, self.lio, self.disks, self.volumes):
            step()
        return self.checks


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _systemctl(*args: str) -> str:
    try:
        r = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip()


def _lock_pid(lock: Path, live: bool) -> int | None:
    """The pid in the daemon's lock file, if that process exists (``live``)."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if live:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return pid


def _uio_backstores(uio: Path) -> list[tuple[str, str]]:
    """``(backstore, cfgstring)`` of every ``user:cdp`` device: the uio name is
    ``tcm-user/<hba>/<backstore>/<subtype>/<cfgstring>``."""
    found = []
    for dev in sorted(uio.glob("uio*")):
        parts = _read(dev / "name").split("/", 4)
        if len(parts) == 5 and parts[0] == "tcm-user" and parts[3] == "cdp":
            found.append((parts[2], parts[4]))
    return found


def _cfg_key(cfg: str, key: str) -> str | None:
    for part in cfg.split(";")[1:]:
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def render(checks: list[Check]) -> str:
    lines = [f"{c.status.upper():4}  {c.name:9} {c.detail}" for c in checks]
    worst = _overall(checks)
    lines.append(f"overall: {worst}")
    return "\n".join(lines)


def _overall(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cdp-health", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--socket", help="control socket (default /run/cdp/control.sock)")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    checks = Health(args.root, args.socket).run()
    if args.json:
        print(json.dumps({"overall": _overall(checks), "checks": [asdict(c) for c in checks]}))
    else:
        print(render(checks))
    return 1 if _overall(checks) == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
