"""Guest-side plumbing shared by the durability VM tests and the fio benchmark.

Everything here talks to a booted :class:`tests.vm.vmctl.VM` over SSH:

* :func:`install_project` unpacks the project and its dependencies into
  ``/opt/cdp/site``: :func:`build_site` runs pip on the host (``--target``, for
  the guest's CPython 3.11) over the same wheelhouse ``test_handler`` uses, so
  the guest only runs ``tar`` (pip in the guest took 3.5-7.5 min under TCG).
* :func:`start_daemon_unit` runs ``cdp-handlerd`` as a transient systemd
  service with ``Restart=always`` and ``Type=notify``, as the appliance will:
  after a SIGKILL systemd starts it again and the daemon does the restart
  dance (block netlink, ``block_dev``, ``reset_ring``) by itself.
* :func:`make_luns` creates ``user:cdp`` (or fileio / ``user:file``)
  backstores and one iSCSI target with rtslib in a single guest process (one
  targetcli run costs 7-15 s under TCG); per-backstore attributes such as
  ``cmd_time_out`` are set before the LUN is exported, ``control`` strings
  such as ``max_data_area_mb=4`` before ``enable``.
* :func:`login` logs the guest's own open-iscsi initiator in to that target
  over the guest's loopback (traffic never leaves the VM) and returns the
  ``/dev/sdX`` of each LUN.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm import vmctl
from tests.vm.handler_wheelhouse import PLATFORMS, REPO, build_wheelhouse

IQN = "iqn.2003-01.org.example.cdp:dur"
LOG = "/var/log/cdp-handlerd.log"
UNIT = "cdp-handlerd"

SITE = "/opt/cdp/site"
PYTHON = f"/usr/bin/env PYTHONPATH={SITE} /usr/bin/python3"
DAEMON = f"{PYTHON} -c 'import sys; from appliance.daemon import handlerd; sys.exit(handlerd())'"


def unit_environment(unit: Path) -> dict[str, str]:
    """The ``Environment=`` settings of a systemd unit file."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.removeprefix("Environment=")):
                key, _, value = item.partition("=")
                env[key] = value
    return env


# The appliance's own unit's environment (the allocator settings), so that the
# daemon under test runs as it does on the appliance.
DAEMON_ENV = unit_environment(REPO / "firmware/systemd/cdp-handlerd.service")

GUEST_SETUP = """\
set -e
mkdir -p /opt/cdp && tar -C /opt/cdp -xzf /root/site.tgz && rm /root/site.tgz
install -D -m 0644 /opt/cdp/site/org.kernel.TCMUService1.conf \
    /etc/dbus-1/system.d/org.kernel.TCMUService1.conf
systemctl reload dbus
modprobe -a target_core_user target_core_file iscsi_target_mod
mkdir -p /srv/journal /etc/rtslib-fb-target/pr /etc/rtslib-fb-target/alua
"""


def build_site(dest: Path) -> Path:
    """``site.tgz``: the project and its dependencies installed for the guest's CPython 3.11.

    pip installs the host-built wheelhouse with ``--target`` for the guest's
    platform on the host; the guest only unpacks the tarball.  (pip inside the
    guest took 3.5-7.5 min under TCG, mostly unpacking numpy; this takes
    seconds.)  The daemon then runs from the system python3 with
    ``PYTHONPATH=/opt/cdp/site``, so Debian's rtslib-fb stays what targetcli uses.
    """
    wheels = dest / "wheels"
    build_wheelhouse(wheels)
    site = dest / "site"
    shutil.rmtree(site, ignore_errors=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
         "--no-index", "--find-links", str(wheels), "--target", str(site / "site"),
         *platforms, "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
         "--only-binary=:all:", "--no-compile", "cdp-appliance"],
        check=True, timeout=600, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    shutil.copy(REPO / "firmware/dbus/org.kernel.TCMUService1.conf", site / "site")
    tarball = dest / "site.tgz"
    subprocess.run(["tar", "-C", str(site), "-czf", str(tarball), "site"], check=True)
    return tarball


def install_project(vm: vmctl.VM, tarball: Path) -> float:
    """Copy the site tarball in and unpack it; returns the seconds it took."""
    t0 = time.monotonic()
    vm.copy_in(tarball, "/root/site.tgz")
    vm.ssh(GUEST_SETUP, timeout=900)
    return time.monotonic() - t0


def start_daemon_unit(
    vm: vmctl.VM, env: dict[str, str] | None = None, timeout=300, command: str = ""
) -> float:
    """Start cdp-handlerd as a transient ``Restart=always`` service; seconds to READY=1.

    ``command`` replaces the daemon's command line (e.g. a profiling wrapper)."""
    env = {**DAEMON_ENV, **(env or {})}
    envs = " ".join(f"-E {shlex.quote(f'{k}={v}')}" for k, v in env.items())
    t0 = time.monotonic()
    vm.ssh(
        f"systemd-run --unit={UNIT} -p Type=notify -p NotifyAccess=main -p Restart=always"
        f" -p RestartSec=200ms -p StartLimitIntervalSec=0 -p TimeoutStartSec=600 {envs}"
        f" /bin/sh -c {shlex.quote(f'exec {command or DAEMON} >> {LOG} 2>&1')}",
        timeout=timeout,
    )
    return time.monotonic() - t0


def stop_daemon_unit(vm: vmctl.VM, timeout: float = 180) -> None:
    vm.ssh(f"systemctl stop {UNIT}", timeout=timeout, check=False)


def unit_state(vm: vmctl.VM) -> dict[str, str]:
    """MainPID, NRestarts, ActiveState... of the daemon's unit."""
    r = vm.ssh(f"systemctl show {UNIT} -p MainPID -p NRestarts -p ActiveState -p SubState")
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def log_events(vm: vmctl.VM, since_line: int = 0) -> list[dict]:
    """The daemon's JSON log lines (from line ``since_line`` on)."""
    r = vm.ssh(f"tail -n +{since_line + 1} {LOG}", check=False)
    events = []
    for line in r.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def log_lines(vm: vmctl.VM) -> int:
    r = vm.ssh(f"wc -l < {LOG}", check=False)
    return int(r.stdout.strip() or 0)


def rss_kib(vm: vmctl.VM, pid: int, field: str = "RssAnon") -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status, in KiB.

    ``RssAnon`` (the default) is the process's own heap: what a leak grows.
    ``VmRSS`` also counts the TCMU ring's shared pages the daemon has touched
    (``RssShmem``), which grow as larger transfers reach new data-area blocks
    and are the kernel's, not a leak."""
    r = vm.ssh(f"awk '/^{field}:/ {{print $2}}' /proc/{pid}/status")
    return int(r.stdout)


@dataclass
class Lun:
    """One backstore exported as a LUN of the test target."""

    name: str
    size: int
    plugin: str = "user"  # "user" (cfgstring names the handler) or "fileio"
    cfgstring: str = ""  # "cdp/vol0;primary=..." or "file/path" for user:, a path for fileio
    attributes: dict[str, int] = field(default_factory=dict)  # set before the LUN exists
    control: str = ""  # e.g. "max_data_area_mb=4", written before enable
    hw_max_sectors: int = 16384
    lun: int = -1  # assigned by make_luns
    dev: str = ""  # /dev/sdX after login


SPEC_KEYS = ("name", "size", "plugin", "cfgstring", "attributes", "control", "hw_max_sectors")
RTSLIB_SETUP = """\
import json, sys
from rtslib_fb import (FabricModule, FileIOStorageObject, LUN, NetworkPortal, Target, TPG,
                       UserBackedStorageObject)
spec = json.loads(sys.stdin.read())
iscsi = FabricModule("iscsi")
target = Target(iscsi, spec["iqn"])
tpg = TPG(target, 1)
sos = []
for d in spec["luns"]:
    if d["plugin"] == "fileio":
        so = FileIOStorageObject(d["name"], d["cfgstring"], size=d["size"] or None,
                                 write_back=True)
    else:
        kw = {"hw_max_sectors": d["hw_max_sectors"]}
        if d["control"]:
            kw["control"] = d["control"]
        so = UserBackedStorageObject(d["name"], size=d["size"], config=d["cfgstring"], **kw)
    for k, v in d["attributes"].items():
        so.set_attribute(k, v)
    sos.append(so)
for i, so in enumerate(sos):
    LUN(tpg, i, so)
for k, v in {"authentication": 0, "demo_mode_write_protect": 0, "generate_node_acls": 1,
             "cache_dynamic_acls": 1, "default_cmdsn_depth": spec["cmdsn_depth"]}.items():
    tpg.set_attribute(k, v)
NetworkPortal(tpg, "0.0.0.0", 3260)
tpg.enable = True
print(json.dumps([so.name for so in sos]))
"""


def make_luns(vm: vmctl.VM, luns: list[Lun], cmdsn_depth: int = 128, timeout=600) -> None:
    """Create the backstores and export them as LUNs 0..n-1 of :data:`IQN`."""
    for i, lun in enumerate(luns):
        lun.lun = i
    spec = {
        "iqn": IQN,
        "cmdsn_depth": cmdsn_depth,
        "luns": [{k: getattr(lun, k) for k in SPEC_KEYS} for lun in luns],
    }
    vm.ssh(f"python3 -c {shlex.quote(RTSLIB_SETUP)}", input=json.dumps(spec), timeout=timeout)


LOGIN = """\
set -e
systemctl start iscsid
iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >/dev/null
iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 -o update -n node.session.queue_depth -v {qd}
iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 -o update -n node.session.cmds_max -v {cmds}
iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 -o update \
    -n node.session.timeo.replacement_timeout -v 600
iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 -o update \
    -n 'node.conn[0].timeo.noop_out_timeout' -v {noop}
iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 --login >/dev/null
udevadm settle
for i in $(seq 120); do
  n=$(ls /dev/disk/by-path/ | grep -c "iscsi-{iqn}-lun-[0-9]*$" || true)
  [ "$n" -ge {n} ] && break; sleep 0.5
done
for p in /dev/disk/by-path/*iscsi-{iqn}-lun-*; do
  case $p in *-part*) continue;; esac
  d=$(readlink -f $p); b=$(basename $d)
  echo {sd_timeout} > /sys/block/$b/device/timeout
  echo ${{p##*-lun-}} $d
done
"""


def login(vm: vmctl.VM, luns: list[Lun], queue_depth=128, sd_timeout=120, noop=30) -> None:
    """Log the guest's initiator in over loopback; fill in each LUN's ``dev``.

    The session queue depth (default 32 in open-iscsi) is raised so that fio's
    iodepth reaches the target; the SCSI command timeout is ``sd_timeout``
    seconds, above the backstore's ``cmd_time_out`` (30 s), so the kernel
    initiator does not start error handling while the daemon restarts.  The
    iSCSI NOP-Out timeout is ``noop`` seconds instead of 5: under TCG on a
    loaded host a starved target answers pings late, and a dropped
    connection is not what these tests measure.
    """
    script = LOGIN.format(
        iqn=IQN, qd=queue_depth, cmds=max(128, 2 * queue_depth), n=len(luns),
        sd_timeout=sd_timeout, noop=noop,
    )  # fmt: skip
    out = vm.ssh(script, timeout=300).stdout
    devs = {int(a): b for a, b in (line.split() for line in out.splitlines() if line.strip())}
    for lun in luns:
        lun.dev = devs[lun.lun]


def logout(vm: vmctl.VM) -> None:
    vm.ssh(f"iscsiadm -m node -T {IQN} --logout", timeout=120, check=False)


DMESG_BAD = ("ring is broken", "blocked for more than", "hung_task", "BUG:", "Oops")


def dmesg_problems(vm: vmctl.VM) -> list[str]:
    """Kernel lines that a durability test must never see."""
    text = vm.ssh("dmesg", check=False).stdout
    return [line for line in text.splitlines() if any(b in line for b in DMESG_BAD)]


def fio(vm: vmctl.VM, args: list[str], timeout: float = 900) -> dict:
    """Run fio in the guest with JSON output; the parsed report plus ``rc``/``stderr``."""
    cmd = shlex.join(["fio", "--output-format=json", *args])
    r = vm.ssh(cmd, timeout=timeout, check=False)
    text = r.stdout
    start = text.find("{")
    try:
        report = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        report = {}
    report["rc"] = r.returncode
    report["stderr"] = r.stderr + text[:start]
    return report
