"""``make demo`` / ``make demo-stop``: a running CDP appliance on this machine.

``start`` installs the host tools it needs (as root, apt-get), builds the
image if it is missing (``images/build-image.sh``), boots it headless under
qemu with three data disks kept in ``.demo/`` (primary, secondary, data) and
forwards bound to 127.0.0.1 only (iSCSI 3260, SSH 2222), waits for the
daemon, creates a demo protected LUN if the appliance has none yet (a
``user:cdp`` backstore on the primary disk, the appliance's first-boot IQN,
CHAP on for login and discovery, ACLs for two demo initiator names), checks
it with ``iscsi-inq`` from the host, prints how to log in and writes the same
to ``.demo/connection.env``.  Running ``start`` again while the demo runs only
prints that again.

``stop`` powers the appliance off (``systemctl poweroff``, then ACPI, then
SIGTERM/SIGKILL).  The data disks stay, so the next ``start`` (a fresh root
overlay on the current image: an upgrade) finds the volume and its history.
``stop --wipe`` also deletes ``.demo/``.

Settings (environment): ``CDP_DEMO_ISCSI_PORT`` (3260), ``CDP_DEMO_SSH_PORT``
(2222), ``CDP_DEMO_DIR`` (``.demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import appliance_image as ai  # noqa: E402
import build_image  # noqa: E402

DEMO = Path(os.environ.get("CDP_DEMO_DIR") or ai.REPO / ".demo").resolve()
ISCSI_PORT = int(os.environ.get("CDP_DEMO_ISCSI_PORT", "3260"))
SSH_PORT = int(os.environ.get("CDP_DEMO_SSH_PORT", "2222"))
INITIATOR_IQN = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
INITIATOR_IQN_2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
VOLUME = "demo"
SECONDARY = f"/srv/cdp/journal/{VOLUME}"  # the volume's journal folder (its data disk)
LUN_SIZE = "1G"  # the whole primary disk
CMD_TIME_OUT = 180  # seconds; TCMU's default of 30 is shorter than a daemon restart under TCG
TARGETCLI = "/usr/bin/targetcli"  # Debian's shell; root's `targetcli` is targetcli-cdp


class DemoError(RuntimeError):
    """The demo could not be started or stopped (the message says why)."""


def say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _pid() -> int | None:
    try:
        pid = int((DEMO / "qemu.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return pid if cmdline and b"qemu" in cmdline[0] else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ssh_argv(key: Path, port: int) -> list[str]:
    return ["ssh", "-i", str(key), "-p", str(port), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "root@127.0.0.1"]  # fmt: skip


def _wait_guest(vm: ai.ApplianceVM, check: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.ssh(check, check=False, timeout=60).returncode == 0:
            return
        time.sleep(2)
    status = vm.ssh("systemctl --no-pager status cdp-firstboot cdp-handlerd | tail -40",
                    check=False).stdout  # fmt: skip
    raise DemoError(f"{what} not ready after {timeout:.0f} s:\n{status}")


def _identity(vm: ai.ApplianceVM) -> dict[str, str]:
    text = vm.ssh("cat /var/lib/cdp/identity.env").stdout
    ident = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not {"IQN", "CHAP_USER", "CHAP_PASSWORD"} <= ident.keys():
        raise DemoError(f"incomplete /var/lib/cdp/identity.env:\n{text}")
    return ident


def targetcli_script(ident: dict[str, str]) -> str:
    """targetcli commands for the demo LUN: user:cdp on /dev/vdb, CHAP, ACLs."""
    iqn, user, pw = ident["IQN"], ident["CHAP_USER"], ident["CHAP_PASSWORD"]
    cfg = f"{VOLUME};primary=/dev/vdb;secondary={SECONDARY}"
    tpg = f"/iscsi/{iqn}/tpg1"
    lines = [
        f"/backstores/user:cdp create name={VOLUME} size={LUN_SIZE} cfgstring={cfg}"
        " hw_max_sectors=16384",
        # How long the kernel holds a command for the daemon before failing it
        # (NOT READY): long enough for a restart of the daemon (systemd
        # Restart=on-failure) under load; settable only before the LUN exists.
        f"/backstores/user:cdp/{VOLUME} set attribute cmd_time_out={CMD_TIME_OUT}",
        f"/iscsi create {iqn}",
        f"{tpg}/luns create /backstores/user:cdp/{VOLUME} add_mapped_luns=false",
    ]
    for initiator in (INITIATOR_IQN, INITIATOR_IQN_2):
        lines += [
            f"{tpg}/acls create {initiator} add_mapped_luns=true",
            f"{tpg}/acls/{initiator} set auth userid={user} password={pw}",
        ]
    lines += [
        f"{tpg} set attribute authentication=1 generate_node_acls=0 demo_mode_discovery=0"
        " demo_mode_write_protect=1 cache_dynamic_acls=0",
        f"/iscsi set discovery_auth enable=1 userid={user} password={pw}",
        "saveconfig",
        "exit",
    ]
    return "\n".join(lines) + "\n"


def ensure_lun(vm: ai.ApplianceVM, ident: dict[str, str]) -> bool:
    """Create the demo LUN unless the saved configuration brought it back."""
    lun = f"/sys/kernel/config/target/iscsi/{ident['IQN']}/tpgt_1/lun/lun_0"
    if vm.ssh(f"test -d {shlex.quote(lun)}", check=False).returncode == 0:
        return False
    out = vm.ssh(TARGETCLI, input=targetcli_script(ident), timeout=600)
    if vm.ssh(f"test -d {shlex.quote(lun)}", check=False).returncode != 0:
        raise DemoError(f"targetcli did not create the LUN:\n{out.stdout}{out.stderr}")
    return True


def connection(ident: dict[str, str], key: Path) -> dict[str, str]:
    return {
        "PORTAL": f"127.0.0.1:{ISCSI_PORT}",
        "IQN": ident["IQN"],
        "LUN": "0",
        "CHAP_USER": ident["CHAP_USER"],
        "CHAP_PASSWORD": ident["CHAP_PASSWORD"],
        "SSH_PORT": str(SSH_PORT),
        "SSH_KEY": str(key),
        "INITIATOR_IQN": INITIATOR_IQN,
        "INITIATOR_IQN_2": INITIATOR_IQN_2,
    }


def write_env(conn: dict[str, str]) -> Path:
    path = DEMO / "connection.env"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in conn.items()))
    tmp.chmod(0o600)
    tmp.rename(path)
    return path


def instructions(conn: dict[str, str]) -> str:
    c = conn
    url = f"iscsi://{c['CHAP_USER']}%{c['CHAP_PASSWORD']}@{c['PORTAL']}/{c['IQN']}/{c['LUN']}"
    portal_url = f"iscsi://{c['CHAP_USER']}%{c['CHAP_PASSWORD']}@{c['PORTAL']}"
    node = f"iscsiadm -m node -T {c['IQN']} -p {c['PORTAL']}"
    ssh_opts = " ".join(_ssh_argv(Path(c["SSH_KEY"]), int(c["SSH_PORT"]))[1:-1])
    return f"""
CDP appliance demo is running.
  portal        {c["PORTAL"]}
  target IQN    {c["IQN"]}
  LUN           {c["LUN"]} (user:cdp backstore '{VOLUME}', protected, {LUN_SIZE})
  CHAP user     {c["CHAP_USER"]}
  CHAP password {c["CHAP_PASSWORD"]}
  initiators    {c["INITIATOR_IQN"]}
                {c["INITIATOR_IQN_2"]}   (only these may log in)

libiscsi (apt-get install libiscsi-bin):
  iscsi-ls -i {c["INITIATOR_IQN"]} '{portal_url}'
  iscsi-inq -i {c["INITIATOR_IQN"]} '{url}'
(SendTargets answers with the VM's own portal, 10.0.2.15:3260, which the host
cannot reach: always connect to {c["PORTAL"]}, as these commands do.)

open-iscsi (the ACL is for {c["INITIATOR_IQN"]}: put
InitiatorName={c["INITIATOR_IQN"]} in /etc/iscsi/initiatorname.iscsi and restart iscsid):
  {node} -o new
  {node} -o update -n node.session.auth.authmethod -v CHAP
  {node} -o update -n node.session.auth.username -v {c["CHAP_USER"]}
  {node} -o update -n node.session.auth.password -v {c["CHAP_PASSWORD"]}
  {node} --login

The cdp shell (targetcli with the /cdp branch) and the health check:
  ssh -t {ssh_opts} root@127.0.0.1 targetcli
  ssh {ssh_opts} root@127.0.0.1 cdp-health

Saved for scripts: {DEMO / "connection.env"}.  Stop it: make demo-stop
"""


def start() -> int:
    t0 = time.monotonic()
    build_image.ensure_host_tools()
    image = ai.current_image(build=True)
    DEMO.mkdir(parents=True, exist_ok=True)
    env_file = DEMO / "connection.env"
    if _pid() is not None and env_file.exists():
        conn = dict(
            (k, shlex.split(v)[0] if v else "")
            for k, v in (line.split("=", 1) for line in env_file.read_text().splitlines())
        )
        say("already running (make demo-stop stops it)")
        print(instructions(conn))
        return 0
    for port in (ISCSI_PORT, SSH_PORT):
        if not _port_free(port):
            raise DemoError(f"127.0.0.1:{port} is in use (set CDP_DEMO_ISCSI_PORT / "
                            "CDP_DEMO_SSH_PORT, or make demo-stop)")  # fmt: skip
    key = DEMO / "id_ed25519"
    shutil.copy2(image.key, key)
    key.chmod(0o600)
    vm = ai.ApplianceVM(
        image, workdir=DEMO, disks=ai.appliance_disks(DEMO), keep_workdir=True,
        fixed_ports={"ssh": SSH_PORT, "iscsi": ISCSI_PORT}, boot_timeout=900,
    )  # fmt: skip
    say(f"booting {image.qcow2.name} (TCG: about a minute; console log {vm.serial_log})")
    vm.start()
    (DEMO / "qemu.pid").write_text(f"{vm.proc.pid}\n")
    try:
        boot = vm.wait_ssh()
        say(f"SSH up after {boot:.0f} s; waiting for cdp-handlerd")
        _wait_guest(vm, "systemctl is-active -q cdp-handlerd", "cdp-handlerd", 600)
        ident = _identity(vm)
        if ensure_lun(vm, ident):
            say("created the demo LUN")
        else:
            say("the demo LUN came back from the data disk")
        conn = connection(ident, key)
        url = f"iscsi://{ident['CHAP_USER']}%{ident['CHAP_PASSWORD']}@127.0.0.1:{ISCSI_PORT}"
        argv = ["iscsi-inq", "-i", INITIATOR_IQN, f"{url}/{ident['IQN']}/0"]
        inq = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=120)
        if inq.returncode != 0:
            raise DemoError(f"iscsi-inq from the host failed:\n{inq.stdout}{inq.stderr}")
    except BaseException:
        say(f"start failed; the VM stays up for a look (make demo-stop). Logs in {DEMO}")
        raise
    write_env(conn)
    (DEMO / "ports.json").write_text(json.dumps(vm.ports) + "\n")
    say(f"ready in {time.monotonic() - t0:.0f} s (boot to SSH {boot:.0f} s)")
    print(instructions(conn))
    return 0


def stop(wipe: bool) -> int:
    pid = _pid()
    if pid is None:
        say("not running")
    else:
        key = DEMO / "id_ed25519"
        say("powering off")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([*_ssh_argv(key, SSH_PORT), "systemctl poweroff --no-block"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)  # fmt: skip
        if not _wait_gone(pid, 120):
            with contextlib.suppress(OSError, ValueError):
                _qmp_powerdown(DEMO / "qmp.sock")
            if not _wait_gone(pid, 30):
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, sig)
                    if _wait_gone(pid, 10):
                        break
        say("stopped")
    ctl = DEMO / "ssh.ctl"
    if ctl.exists():
        subprocess.run(["ssh", "-o", f"ControlPath={ctl}", "-O", "exit", "root@127.0.0.1"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)  # fmt: skip
    for f in ("qemu.pid", "connection.env", "ports.json", "root-overlay.qcow2", "qmp.sock"):
        (DEMO / f).unlink(missing_ok=True)
    if wipe:
        shutil.rmtree(DEMO, ignore_errors=True)
        say(f"removed {DEMO}")
    return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def _qmp_powerdown(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        f = s.makefile("rw")
        f.readline()
        for cmd in ("qmp_capabilities", "system_powerdown"):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            f.readline()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("start", help="boot the appliance and create the demo LUN")
    sp = sub.add_parser("stop", help="power the appliance off")
    sp.add_argument("--wipe", action="store_true", help="also delete .demo/ (the data disks)")
    args = p.parse_args(argv)
    try:
        return start() if args.cmd == "start" else stop(args.wipe)
    except (DemoError, build_image.BuildError, ai.vmctl.VMError) as exc:
        say(f"FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
