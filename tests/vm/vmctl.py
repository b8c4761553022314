"""Boot the cached Debian test-VM base under QEMU (TCG) and drive it over SSH.

Library::

    base = find_base(build=True)          # images/build-base.sh, cached
    with VM(base, disks=[Disk("primary", size=64 << 20)]) as vm:
        vm.ssh("modprobe -a target_core_user")
        vm.copy_in("file", "/root/file")
        print(vm.iscsi_port)              # host 127.0.0.1 port forwarded to guest :3260

CLI (``python3 tests/vm/vmctl.py --help``)::

    vmctl.py build                         build or reuse the base, print its folder
    vmctl.py run [--disk primary:1G]       boot and keep running until Ctrl-C
    vmctl.py exec [--copy SRC:DST] -- CMD  boot, run CMD over SSH, shut down

Every step is bounded in time.  The VM boots from a qcow2 overlay whose backing
file is the cached base, so the base is never written.  Guest networking is
qemu user-mode with ``restrict=on``: the guest can reach nothing; the host
reaches it only through forwards bound to 127.0.0.1.  Only the standard
library is used, so the module imports anywhere.
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "images" / "build-base.sh"
QEMU = "qemu-system-x86_64"
GUEST_CMDLINE = "console=ttyS0,115200 root=/dev/vda rw net.ifnames=0 panic=-1 loglevel=7"


class VMError(RuntimeError):
    """The VM could not be started, reached or stopped as asked."""


@dataclass(frozen=True)
class Base:
    """A built base image folder (see images/build-base.sh)."""

    path: Path

    @property
    def root(self) -> Path:
        return self.path / "root.qcow2"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def key(self) -> Path:
        return self.path / "id_ed25519"

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def check(self) -> Base:
        for f in (self.root, self.kernel, self.initrd, self.key):
            if not f.is_file():
                raise VMError(f"base {self.path} is incomplete: {f.name} missing")
        return self


def find_base(build: bool = False, timeout: float = 1800) -> Base:
    """Return the base matching the current build inputs.

    ``$CDP_VM_BASE`` overrides the lookup.  With ``build=True`` the build script
    runs (a no-op when the cached base is current); otherwise a missing base is
    an error.
    """
    override = os.environ.get("CDP_VM_BASE")
    if override:
        return Base(Path(override)).check()
    args = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--print-path"]
    proc = subprocess.run(
        args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=timeout
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        hint = "" if build else f" (run {BUILD_SCRIPT} first)"
        raise VMError(f"no built base image{hint}: {' '.join(lines)}")
    return Base(Path(lines[-1])).check()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (qemu binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Disk:
    """An extra virtio disk.  A missing ``path`` is created (sparse raw) in the
    VM's work folder.  In the guest it is ``/dev/disk/by-id/virtio-<name>``."""

    name: str
    size: int = 1 << 30
    path: Path | None = None
    fmt: str = "raw"
    cache: str = "writeback"


@dataclass
class VM:
    """One run of the base.  Use as a context manager: start, wait for SSH,
    and on exit shut down (poweroff, then QMP powerdown, then kill) and clean up."""

    base: Base
    workdir: Path | None = None
    smp: int = 2
    memory_mb: int = 2048
    disks: list[Disk] = field(default_factory=list)
    forwards: dict[str, int] = field(default_factory=lambda: {"ssh": 22, "iscsi": 3260})
    cpu: str | None = None
    extra_cmdline: str = ""
    boot_timeout: float = 600
    keep_workdir: bool = False
    # The root overlay's host cache mode.  "unsafe" ignores the guest's flushes
    # (fast); a VM that will lose power (power_cut) needs "writeback", or qemu's
    # qcow2 metadata may not be on the host when it is killed.
    root_cache: str = "unsafe"
    # Bind the forwards to these host ports (the appliance demo's 3260 and
    # 2222) instead of free ones; no retry then if one is taken.
    fixed_ports: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._own_workdir = self.workdir is None
        self.boot_seconds: float | None = None
        self._started_at = 0.0
        self._reuse_disks = False

    # -- paths -------------------------------------------------------------
    @property
    def overlay(self) -> Path:
        return self.workdir / "root-overlay.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def ssh_port(self) -> int:
        return self.ports["ssh"]

    @property
    def iscsi_port(self) -> int:
        return self.ports["iscsi"]

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> VM:
        try:
            self.start()
            self.wait_ssh()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="cdp-vm-"))
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._reuse_disks:
            return
        self.overlay.unlink(missing_ok=True)
        _run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
             "-b", str(self.base.root.resolve()), str(self.overlay)],
            timeout=60,
        )  # fmt: skip
        for d in self.disks:
            if d.path is None:
                d.path = self.workdir / f"{d.name}.img"
            d.path = Path(d.path)
            if not d.path.exists():
                if d.fmt == "raw":
                    with open(d.path, "wb") as f:
                        f.truncate(d.size)
                else:
                    _run(["qemu-img", "create", "-q", "-f", d.fmt, str(d.path), str(d.size)], 60)

    def qemu_argv(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{self.ports[n]}-:{gport}" for n, gport in self.forwards.items()
        )
        argv = [
            QEMU, "-name", "cdp-testvm", "-nodefaults", "-display", "none", "-no-reboot",
            "-accel", "tcg,thread=multi", "-smp", str(self.smp), "-m", str(self.memory_mb),
            "-kernel", str(self.base.kernel), "-initrd", str(self.base.initrd),
            "-append", f"{GUEST_CMDLINE} {self.extra_cmdline}".strip(),
            "-chardev", f"file,id=ser0,path={self.serial_log}", "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            # Root first, as an explicit device: it gets the lowest PCI slot and so is
            # /dev/vda.  (With if=virtio it would be created after the -device disks.)
            "-drive", f"file={self.overlay},format=qcow2,if=none,id=root,"
            f"cache={self.root_cache},discard=unmap",
            "-device", "virtio-blk-pci,drive=root,serial=root",
            "-netdev", f"user,id=n0,restrict=on,{fwd}",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        if self.cpu:
            argv += ["-cpu", self.cpu]
        for i, d in enumerate(self.disks):
            argv += [
                "-drive", f"file={d.path},format={d.fmt},if=none,id=d{i},cache={d.cache}",
                "-device", f"virtio-blk-pci,drive=d{i},serial={d.name}",
            ]  # fmt: skip
        return argv

    def start(self) -> None:
        """Create the overlay and launch qemu (retrying if a chosen port got taken)."""
        if self.proc is not None:
            raise VMError("already started")
        if shutil.which(QEMU) is None:
            raise VMError(f"{QEMU} not found (apt-get install qemu-system-x86)")
        self._prepare()
        err = ""
        for _attempt in range(1 if self.fixed_ports else 3):
            if self.fixed_ports:
                self.ports = dict(self.fixed_ports)
            else:
                self.ports = {name: free_port() for name in self.forwards}
            self.serial_log.unlink(missing_ok=True)
            self.qmp_path.unlink(missing_ok=True)
            with open(self.qemu_log, "wb") as log:
                self.proc = subprocess.Popen(
                    self.qemu_argv(), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self._started_at = time.monotonic()
            time.sleep(0.5)
            if self.proc.poll() is None:
                return
            err = self.qemu_log.read_text(errors="replace")
            self.proc = None
            if "hostfwd" not in err and "forwarding" not in err:
                break
        taken = f" (ports {self.fixed_ports} taken?)" if self.fixed_ports else ""
        raise VMError(f"qemu exited at start{taken}:\n{' '.join(self.qemu_argv())}\n{err}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ssh(self, timeout: float | None = None) -> float:
        """Block until ``ssh true`` succeeds; return seconds since qemu started."""
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise VMError(f"qemu exited while booting:\n{self.diagnostics()}")
            try:
                r = self.ssh("true", timeout=20, check=False, connect_timeout=5)
                if r.returncode == 0:
                    self.boot_seconds = time.monotonic() - self._started_at
                    self._start_master()
                    return self.boot_seconds
                last = r.stderr.strip()
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(1)
        raise VMError(f"no SSH after {timeout or self.boot_timeout:.0f} s ({last}):\n"
                      f"{self.diagnostics()}")  # fmt: skip

    # -- talking to the guest ---------------------------------------------
    @property
    def ssh_control(self) -> Path:
        return self.workdir / "ssh.ctl"

    def _ssh_opts(self, connect_timeout: int = 10, master: bool = False) -> list[str]:
        opts = [
            "-i", str(self.base.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
        ]  # fmt: skip
        # One multiplexed connection: a new SSH handshake costs ~2 s of emulated crypto.
        # ControlMaster=no falls back to a direct connection if the master is gone.
        if len(str(self.ssh_control)) < 100:
            opts += ["-o", f"ControlPath={self.ssh_control}",
                     "-o", "ControlMaster=" + ("yes" if master else "no")]  # fmt: skip
        return opts

    def _start_master(self) -> None:
        """Background SSH master (``-f``).  Its output goes to /dev/null: a master that
        inherited our pipes would keep ``subprocess.run`` waiting for EOF."""
        if "ControlPath" not in " ".join(self._ssh_opts()):
            return
        self.ssh_control.unlink(missing_ok=True)
        argv = ["ssh", *self._ssh_opts(master=True), "-o", "ControlPersist=yes", "-f", "-N",
                "-p", str(self.ssh_port), "root@127.0.0.1"]  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)  # fmt: skip

    def _stop_master(self) -> None:
        if self.ssh_control.exists():
            argv = ["ssh", "-o", f"ControlPath={self.ssh_control}", "-O", "exit",
                    "-p", str(self.ssh_port), "root@127.0.0.1"]  # fmt: skip
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)  # fmt: skip

    def ssh_argv(self) -> list[str]:
        """The ssh command line (without a remote command) for this VM."""
        return ["ssh", *self._ssh_opts(), "-p", str(self.ssh_port), "root@127.0.0.1"]

    def ssh(
        self,
        command: str | list[str],
        timeout: float = 120,
        check: bool = True,
        input: str | None = None,
        connect_timeout: int = 10,
    ) -> subprocess.CompletedProcess:
        """Run ``command`` in the guest (a shell string, or an argv list to be quoted)."""
        if not isinstance(command, str):
            command = shlex.join(command)
        argv = ["ssh", *self._ssh_opts(connect_timeout), "-p", str(self.ssh_port),
                "root@127.0.0.1", "--", command]  # fmt: skip
        r = subprocess.run(
            argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise VMError(
                f"guest command failed (rc={r.returncode}): {command}\n"
                f"--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
            )
        return r

    def copy_in(self, src: str | Path, dst: str, timeout: float = 300) -> None:
        """scp a host file or folder to ``dst`` in the guest."""
        argv = ["scp", "-q", "-r", *self._ssh_opts(), "-P", str(self.ssh_port),
                str(src), f"root@127.0.0.1:{dst}"]  # fmt: skip
        _run(argv, timeout)

    def copy_out(self, src: str, dst: str | Path, timeout: float = 300) -> None:
        """scp ``src`` from the guest to a host path."""
        argv = ["scp", "-q", "-r", *self._ssh_opts(), "-P", str(self.ssh_port),
                f"root@127.0.0.1:{src}", str(dst)]  # fmt: skip
        _run(argv, timeout)

    # -- stopping ----------------------------------------------------------
    def qmp(self, command: str, timeout: float = 5) -> dict:
        """Send one QMP command to qemu (for powerdown when SSH is gone)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply

    def shutdown(self, timeout: float = 60) -> bool:
        """Power the guest off; escalate to ACPI powerdown, SIGTERM, SIGKILL.
        Returns True if the guest powered off by itself."""
        if self.proc is None:
            return True
        clean = False
        if self.alive():
            with contextlib.suppress(Exception):
                self.ssh("systemctl poweroff --no-block", timeout=15, check=False)
            self._stop_master()
            clean = self._wait_exit(timeout)
            if not clean and self.alive():
                with contextlib.suppress(Exception):
                    self.qmp("system_powerdown")
                clean = self._wait_exit(min(timeout, 30))
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            if not self._wait_exit(10):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._stop_master()
        self.proc = None
        return clean

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL qemu.  The guest's page cache and its in-flight
        I/O are lost; what its virtio writes completed is in the host files
        (give disks ``cache="none"`` and the VM ``root_cache="writeback"``)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._stop_master()
        self.ssh_control.unlink(missing_ok=True)  # the master died with the guest
        self.proc = None

    def boot_again(self, timeout: float | None = None) -> float:
        """Boot the same root overlay and disks again (after ``power_cut`` or
        ``shutdown``); returns the seconds to SSH (at most ``timeout``, default
        ``boot_timeout``)."""
        self._reuse_disks = True
        try:
            self.start()
            return self.wait_ssh(timeout)
        finally:
            self._reuse_disks = False

    def _wait_exit(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        """Stop qemu and remove the overlay (and the work folder if we made it)."""
        try:
            self.shutdown()
        finally:
            if self.workdir is not None and not self.keep_workdir:
                if self._own_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                else:
                    self.overlay.unlink(missing_ok=True)
                    self.qmp_path.unlink(missing_ok=True)

    def diagnostics(self, lines: int = 40) -> str:
        out = []
        for f in (self.qemu_log, self.serial_log):
            if f.exists():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {f} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise VMError(f"{shlex.join(argv)} failed (rc={r.returncode}):\n{r.stderr}")
    return r


# -- CLI ---------------------------------------------------------------------
def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _disk_arg(text: str) -> Disk:
    """NAME:SIZE (new file in the work folder) or NAME:PATH (existing file)."""
    name, _, spec = text.partition(":")
    if not name or not spec:
        raise argparse.ArgumentTypeError("expected NAME:SIZE or NAME:PATH")
    if Path(spec).exists():
        return Disk(name, path=Path(spec).resolve())
    return Disk(name, size=_parse_size(spec))


def _vm_from_args(args: argparse.Namespace) -> VM:
    base = find_base(build=args.build)
    workdir = Path(args.workdir) if args.workdir else None
    return VM(base, workdir=workdir, disks=args.disk, smp=args.smp, memory_mb=args.memory,
              cpu=args.cpu, keep_workdir=args.keep, boot_timeout=args.boot_timeout)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build or reuse the base image, print its folder")
    sub.add_parser("path", help="print the base folder (fails if not built)")
    for name, helptext in (("run", "boot and wait for Ctrl-C"), ("exec", "boot, run, stop")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--disk", action="append", type=_disk_arg, default=[],
                        help="extra virtio disk NAME:SIZE or NAME:PATH (repeatable)")  # fmt: skip
        sp.add_argument("--workdir", help="keep overlay and logs here (default: temp)")
        sp.add_argument("--keep", action="store_true", help="do not delete the work folder")
        sp.add_argument("--smp", type=int, default=2)
        sp.add_argument("--memory", type=int, default=2048, help="MiB")
        sp.add_argument("--cpu", help="qemu -cpu model (default: qemu's)")
        sp.add_argument("--boot-timeout", type=float, default=600)
        sp.add_argument("--no-build", dest="build", action="store_false",
                        help="fail instead of building a missing base")  # fmt: skip
        if name == "run":
            sp.add_argument("--timeout", type=float, default=3600, help="stop after N s")
        else:
            sp.add_argument("--copy", action="append", default=[], metavar="SRC:DST",
                            help="copy a host file into the guest before CMD")  # fmt: skip
            sp.add_argument("--cmd-timeout", type=float, default=600)
            sp.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = p.parse_args(argv)

    if args.cmd in ("build", "path"):
        try:
            print(find_base(build=args.cmd == "build").path)
        except VMError as e:
            print(e, file=sys.stderr)
            return 1
        return 0

    vm = _vm_from_args(args)
    with vm:
        print(f"booted in {vm.boot_seconds:.1f} s; work folder {vm.workdir}", file=sys.stderr)
        print(f"ports: {json.dumps(vm.ports)}", file=sys.stderr)
        if args.cmd == "run":
            print("ssh: " + shlex.join(vm.ssh_argv()), file=sys.stderr)
            print("Ctrl-C to power off", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt, subprocess.TimeoutExpired):
                vm.proc.wait(args.timeout)
            return 0
        for spec in args.copy:
            src, _, dst = spec.rpartition(":")
            vm.copy_in(src, dst)
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            return 0
        r = vm.ssh(shlex.join(command) if len(command) > 1 else command[0],
                   timeout=args.cmd_timeout, check=False)  # fmt: skip
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
