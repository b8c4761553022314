"""The ``user:cdp`` handler daemon in the real kernel (Debian 12 VM, LIO, TCMU).

From the host, through the 127.0.0.1 forward only: INQUIRY and READ CAPACITY
with libiscsi-bin, ``iscsi-test-cu --test=SCSI --dataloss`` with the command
line of ``tests/vm/conformance.py`` (passed, skipped and failed counted apart,
printed and written to ``iscsi-test-cu.json`` in the test's tmp dir; real
passes must reach :data:`MIN_REAL_PASSES`), a random pattern written and
read back with libiscsi (``handler_iscsi``), then the daemon SIGKILLed under
FUA writes and restarted: the LUN serves again and every acknowledged write
reads back.  Last, the daemon is stopped and the engine, opened inside the
VM, must hold the same bytes in its newest point-in-time image.

Run: ``CDP_VM_TESTS=1 pytest -s -m vm tests/vm/test_handler.py`` (about 25 min
under TCG, 19 of them iscsi-test-cu; the measured numbers are in docs/HANDLER.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time

import pytest

from tests.vm import conformance, vmctl
from tests.vm.handler_iscsi import IscsiError, IscsiLun
from tests.vm.handler_wheelhouse import REPO, build_wheelhouse, guest_install_script

pytestmark = pytest.mark.vm

IQN = "iqn.2003-01.org.example.cdp:t1"
BS = 512
SIZE = 64 << 20
PRIMARY = "/dev/disk/by-id/virtio-primary"
CFG = f"vol0;primary={PRIMARY};secondary=/srv/journal/vol0"
STATE = "/var/lib/cdp/volumes/vol0"
LOG = "/var/log/cdp-handlerd.log"
LOCK = "/run/cdp-handlerd.lock"
TIMINGS: dict[str, float] = {}

TARGETCLI_SETUP = f"""\
/backstores/user:cdp create name=nosuch size=1M cfgstring=nosuch
/backstores/user:cdp create name=cdp0 size={SIZE} cfgstring={CFG} hw_max_sectors=16384
/iscsi create {IQN}
/iscsi/{IQN}/tpg1/luns create /backstores/user:cdp/cdp0
/iscsi/{IQN}/tpg1 set attribute authentication=0 demo_mode_write_protect=0 \
generate_node_acls=1 cache_dynamic_acls=1
/backstores/user:cdp help create
ls /backstores
exit
"""


# One definition of each, shared with the conformance runner.
_host = conformance._host
start_daemon = conformance.start_daemon


def log_events(vm: vmctl.VM) -> list[dict]:
    """The daemon's JSON log lines."""
    events = []
    for line in vm.ssh(f"cat {LOG}").stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def daemon_pid(vm: vmctl.VM) -> int | None:
    r = vm.ssh(f"pid=$(cat {LOCK} 2>/dev/null) && kill -0 $pid && echo $pid", check=False)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


@pytest.fixture(scope="module")
def hvm(vm_base, tmp_path_factory):
    """A VM with the project installed, the daemon running and an iSCSI LUN on user:cdp."""
    work = tmp_path_factory.mktemp("handler")
    t0 = time.monotonic()
    wheels = work / "wheels"
    build_wheelhouse(wheels)
    shutil.copy(REPO / "firmware/dbus/org.kernel.TCMUService1.conf", wheels)
    TIMINGS["wheelhouse (host)"] = time.monotonic() - t0
    disks = [vmctl.Disk("primary", SIZE)]
    with vmctl.VM(vm_base, workdir=work / "vm", disks=disks, cpu="Nehalem") as vm:
        TIMINGS["boot to SSH"] = vm.boot_seconds
        t0 = time.monotonic()
        vm.copy_in(wheels, "/root/wheels")
        vm.ssh(guest_install_script("/root/wheels"), timeout=900)
        TIMINGS["install into the guest venv"] = time.monotonic() - t0
        # Debian's LIO keeps APTPL reservations under its dbroot, /etc/rtslib-fb-target/pr:
        # without the folder every PERSISTENT RESERVE OUT fails (NOT READY).
        vm.ssh(
            "modprobe -a target_core_user iscsi_target_mod && mkdir -p /srv/journal"
            " /etc/rtslib-fb-target/pr /etc/rtslib-fb-target/alua"
        )
        TIMINGS["daemon start (first)"] = start_daemon(vm)
        t0 = time.monotonic()
        out = vm.ssh("targetcli", input=TARGETCLI_SETUP, timeout=300)
        TIMINGS["targetcli setup"] = time.monotonic() - t0
        vm.setup_output = out.stdout + out.stderr
        yield vm
        vm.ssh(f"tail -n 200 {LOG}", check=False)
        print("\nhandler VM timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def url(hvm) -> str:
    return f"iscsi://127.0.0.1:{hvm.iscsi_port}/{IQN}/0"


def lun(hvm) -> IscsiLun:
    return IscsiLun(f"127.0.0.1:{hvm.iscsi_port}", IQN, 0, BS)


def test_targetcli_knows_user_cdp(hvm):
    out = hvm.setup_output
    assert "user:cdp" in out, out
    # CheckConfig refused the unknown volume before the kernel saw it...
    assert "nosuch does not exist" in out, out
    # ...and accepted the real one; the daemon attached it.
    assert "Created user-backed storage object cdp0" in out, out
    assert "Created LUN 0" in out, out
    assert "primary=" in out  # `help create` shows our ConfigDesc
    events = log_events(hvm)
    assert any(e["event"] == "device.attached" for e in events), events
    assert any(e.get("cmd") == "ADDED_DEVICE" for e in events)


def test_inquiry_from_the_host(hvm, url):
    inq = _host(["iscsi-inq", url])
    assert inq.returncode == 0, inq.stderr
    fields = dict(line.split(":", 1) for line in inq.stdout.splitlines() if ":" in line)
    assert fields["Vendor"].strip() == "CDP"
    assert fields["Product"].strip() == "CDP volume"
    vpd83 = _host(["iscsi-inq", "-e", "1", "-c", "131", url])
    assert vpd83.returncode == 0, vpd83.stderr
    assert "NAA" in vpd83.stdout and "T10_VENDORT_ID" in vpd83.stdout
    print("\n" + vpd83.stdout)
    cap = _host(["iscsi-readcapacity16", "-s", url])
    assert int(cap.stdout.split()[0]) == SIZE


# Real passes (a test that printed [SKIPPED] is not one) that user:cdp must reach,
# measured in the same VM setup with tests/vm/conformance.py (docs/CONFORMANCE.md);
# LIO's in-kernel fileio backstore really passes FILEIO_REAL_PASSES there.
# Measured: 183 (2026-11-26, 29 skipped, 3 failed); the goal is 180.
MIN_REAL_PASSES = 180
FILEIO_REAL_PASSES = 113


def test_iscsi_test_cu_scsi_family(hvm, url, tmp_path):
    t0 = time.monotonic()
    argv = conformance.iscsi_test_cu_argv(url)
    r = _host(argv, timeout=2700)
    TIMINGS["iscsi-test-cu --test=SCSI --dataloss"] = time.monotonic() - t0
    results = conformance.parse_results(r.stdout)
    counts = conformance.counts(results)
    failed = [t for t, res in results.items() if res.status == "failed"]
    skipped = [t for t, res in results.items() if res.status == "skipped"]
    print(f"\niscsi-test-cu: rc={r.returncode} {conformance.summary_line(r.stdout)}")
    print(f"iscsi-test-cu (honest): {counts}")
    print(f"iscsi-test-cu failed: {' '.join(failed)}")
    print(f"iscsi-test-cu skipped: {' '.join(skipped)}")
    report = {
        "command": " ".join(argv),
        "counts": counts,
        "tests": {t: {"status": res.status, "reason": res.reason} for t, res in results.items()},
    }
    (tmp_path / "iscsi-test-cu.json").write_text(json.dumps(report, indent=1))
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build/iscsi-test-cu.log").write_text(r.stdout + r.stderr)
    (REPO / "build/iscsi-test-cu.json").write_text(json.dumps(report, indent=1))
    # The daemon must have survived and still serve...
    assert daemon_pid(hvm) is not None, hvm.ssh(f"tail -n 80 {LOG}", check=False).stdout
    assert _host(["iscsi-inq", url]).returncode == 0
    # ...and pass for real at least what docs/CONFORMANCE.md records.
    assert counts["total"] >= 215, counts
    assert counts["passed"] > FILEIO_REAL_PASSES, counts
    assert counts["passed"] >= MIN_REAL_PASSES, (counts, failed, skipped)


# Regions written by the pattern test and checked again after restart and in the engine.
PATTERN = [(lba, os.urandom(n)) for lba, n in ((0, 4096), (2048, 65536), (40000, 1 << 20))]


def test_pattern_write_read_back(hvm):
    with lun(hvm) as dev:
        for i, (lba, data) in enumerate(PATTERN):
            dev.write16(lba, data, fua=i % 2 == 0)
        dev.sync_cache()
        for lba, data in PATTERN:
            assert dev.read16(lba, len(data)) == data


class Writer(threading.Thread):
    """FUA writes of 4 KiB to fresh LBAs; records which were acknowledged."""

    def __init__(self, hvm, first_lba: int):
        super().__init__(daemon=True)
        self.hvm, self.lba = hvm, first_lba
        self.acked: dict[int, bytes] = {}
        self.acked_at: list[float] = []
        self.failed: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        dev = None
        while not self.stop.is_set():
            try:
                if dev is None:
                    dev = lun(self.hvm)
                data = os.urandom(4096)
                dev.write16(self.lba, data, fua=True)
                self.acked[self.lba] = data
                self.acked_at.append(time.monotonic())
            except IscsiError as exc:
                self.failed.append((self.lba, str(exc)))
                if "login" in str(exc) or "SCSI status" not in str(exc):
                    if dev is not None:
                        dev.close()
                    dev = None
                    time.sleep(1)
            self.lba += 8
        if dev is not None:
            dev.close()


def test_sigkill_under_io_then_restart(hvm, url):
    writer = Writer(hvm, first_lba=80000)
    writer.start()
    _wait(lambda: len(writer.acked) >= 20, 120)
    pid = daemon_pid(hvm)
    hvm.ssh(f"kill -KILL {pid}")
    killed_at = time.monotonic()
    acked_before = len(writer.acked)
    TIMINGS["daemon restart after SIGKILL"] = start_daemon(hvm)
    _wait(lambda: len(writer.acked) >= acked_before + 20, 180)
    first = next(t for t in writer.acked_at if t > killed_at)
    TIMINGS["SIGKILL to next acknowledged write"] = first - killed_at
    writer.stop.set()
    writer.join(120)
    print(f"\nwriter: {len(writer.acked)} acknowledged, {len(writer.failed)} failed: "
          f"{writer.failed[:3]}")  # fmt: skip
    ready = [e for e in log_events(hvm) if e["event"] == "daemon.ready"]
    assert len(ready) == 2 and ready[-1]["recovered"] == [0], ready
    assert _host(["iscsi-inq", url]).returncode == 0
    with lun(hvm) as dev:
        for lba, data in writer.acked.items():
            assert dev.read16(lba, len(data)) == data, f"acknowledged write at {lba} lost"
        for lba, data in PATTERN:
            assert dev.read16(lba, len(data)) == data, f"pattern at {lba} lost"
    hvm.acked = writer.acked


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


ENGINE_CHECK = """\
import hashlib, json
from appliance.engine import ProtectedVolume
want = json.loads({want!r})
vol = ProtectedVolume.open({state!r})
try:
    img = vol.image()
    bad = [o for o, n, h in want if hashlib.sha256(img.read(o, n)).hexdigest() != h]
    print(json.dumps({{"state": vol.state, "seq": img.seq, "checked": len(want), "bad": bad}}))
finally:
    vol.close()
"""


def test_engine_image_equals_what_was_written(hvm):
    pid = daemon_pid(hvm)
    hvm.ssh(f"kill -TERM {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.5; done", timeout=120)
    regions = [(lba * BS, d) for lba, d in PATTERN]
    regions += [(lba * BS, d) for lba, d in getattr(hvm, "acked", {}).items()]
    want = [(off, len(d), hashlib.sha256(d).hexdigest()) for off, d in regions]
    r = hvm.ssh(
        "/opt/cdp/venv/bin/python -",
        input=ENGINE_CHECK.format(state=STATE, want=json.dumps(want)),
        timeout=300,
    )
    result = json.loads(r.stdout.splitlines()[-1])
    print(f"\nengine image check: {result}")
    assert result["checked"] == len(want) and result["bad"] == []
