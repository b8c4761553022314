"""Power cuts under load: the prefix rule, checked against the initiator's log.

Issue 9, B.6.  The VM's data disks use the host's ``cache=none`` (O_DIRECT)
and its root overlay ``cache=writeback`` (the state folder, catalog and DRL
live there), so a guest flush reaches the host files and nothing else is
promised.  Each iteration:

1. from the host, ``powercut_writer`` (a child process, libiscsi) writes
   tagged 4 KiB chunks at random places of a ``user:cdp`` LUN, half with FUA,
   the others made durable by a SYNCHRONIZE CACHE every eighth write, and
   logs every issue and every GOOD status;
2. after a random 3-9 s, qemu is SIGKILLed (the plug pulled: the guest's page
   cache and in-flight I/O are lost);
3. the VM boots again from the same disks; the daemon recovers the volume;
4. every chunk ever written must read back as its newest *durable* version or
   a newer issued one (never older, never garbage);
5. with the daemon stopped, inside the VM: the journal's writes of this
   iteration are writes 0..k with no hole and k >= the newest durable write,
   and the engine's newest image equals the live volume byte for byte.

One iteration in ``make test``; ``CDP_SOAK=1`` runs 20 (``make soak``).
Run: ``CDP_VM_TESTS=1 pytest -s -m vm tests/vm/test_powercut.py`` (~8 min).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from tests.vm import vmctl
from tests.vm.handler_iscsi import IscsiLun
from tests.vm.handler_wheelhouse import REPO, build_wheelhouse, guest_install_script
from tests.vm.powercut_writer import CHUNK, chunk_bytes, parse_header

pytestmark = pytest.mark.vm

ITERATIONS = 20 if os.environ.get("CDP_SOAK") == "1" else 1
FIRST_BOOT_TIMEOUT = 450  # boot to SSH takes 60-200 s here; a stalled boot is cut
IQN = "iqn.2003-01.org.example.cdp:powercut"
BS = 512
SIZE = 64 << 20
CHUNKS = SIZE // CHUNK
PRIMARY = "/dev/disk/by-id/virtio-primary"
JOURNAL_DISK = "/dev/disk/by-id/virtio-journal"
STATE = "/var/lib/cdp/volumes/vol0"
LOG = "/var/log/cdp-handlerd.log"
LOCK = "/run/cdp-handlerd.lock"

TARGET_SETUP = f"""\
/backstores/user:cdp create name=cdp0 size={SIZE} \
cfgstring=vol0;primary={PRIMARY};secondary=/srv/journal/vol0 hw_max_sectors=16384
/iscsi create {IQN}
/iscsi/{IQN}/tpg1/luns create /backstores/user:cdp/cdp0
/iscsi/{IQN}/tpg1 set attribute authentication=0 demo_mode_write_protect=0 \
generate_node_acls=1 cache_dynamic_acls=1
exit
"""

BRING_UP = f"""\
set -e
modprobe -a target_core_user iscsi_target_mod
mkdir -p /srv/journal /etc/rtslib-fb-target/pr /etc/rtslib-fb-target/alua
mountpoint -q /srv/journal || mount {JOURNAL_DISK} /srv/journal
n=$(grep -c daemon.ready {LOG} 2>/dev/null || true); n=${{n:-0}}
(setsid /opt/cdp/venv/bin/cdp-handlerd >> {LOG} 2>&1 < /dev/null &)
for i in $(seq 600); do
  [ "$(grep -c daemon.ready {LOG})" -gt "$n" ] && exit 0; sleep 0.5
done
echo "daemon not ready" >&2; tail -n 30 {LOG} >&2; exit 1
"""

STOP_DAEMON = (
    f"pid=$(cat {LOCK} 2>/dev/null) && kill -TERM $pid &&"
    " while kill -0 $pid 2>/dev/null; do sleep 0.5; done; true"
)

JOURNAL_CHECK = """\
import json, sys
from appliance.engine import ProtectedVolume
from appliance.engine import record as R
from tests_powercut_tag import parse_header
iteration = {iteration}
vol = ProtectedVolume.open({state!r})
try:
    wseqs = []
    for r in vol._journal.scan().records:
        if r.kind != R.WRITE or r.flags or r.length < {chunk}:
            continue
        for pos in range(0, r.length, {chunk}):
            tag = parse_header(vol._journal.read_payload(r.payload_addr + pos, 32))
            if tag is not None and tag[0] == iteration:
                wseqs.append(tag[2])
    img = vol.image()
    step, same = 1 << 20, True
    for off in range(0, vol.size, step):
        if img.read(off, step) != vol.read(off, step):
            same = False
            break
    print(json.dumps({{"wseqs": wseqs, "image_equals_volume": same, "state": vol.state,
                      "image_seq": img.seq}}))
finally:
    vol.close()
"""


def read_log(path) -> tuple[dict[int, int], int]:
    """``({wseq: chunk} issued, newest durable wseq or -1)`` from the writer's log."""
    issued: dict[int, int] = {}
    fua: dict[int, bool] = {}
    acked: list[int] = []
    durable = -1
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or not line.endswith("\n"):
                continue  # a line cut by the kill
            if parts[0] == "I":
                issued[int(parts[1])] = int(parts[2])
                fua[int(parts[1])] = parts[3] == "1"
            elif parts[0] == "A":
                w = int(parts[1])
                acked.append(w)
                if fua[w]:
                    durable = max(durable, w)
            elif parts[0] == "S":
                durable = max(durable, max(a for a in acked if a <= int(parts[1])))
    return issued, durable


def durable_writes(path) -> set[int]:
    """Every write the cache model says is durable (not only the newest)."""
    fua, acked, out = {}, [], set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or not line.endswith("\n"):
                continue
            if parts[0] == "I":
                fua[int(parts[1])] = parts[3] == "1"
            elif parts[0] == "A":
                acked.append(int(parts[1]))
                if fua[int(parts[1])]:
                    out.add(int(parts[1]))
            elif parts[0] == "S":
                out.update(a for a in acked if a <= int(parts[1]))
    return out


@pytest.fixture(scope="module")
def pvm(vm_base, tmp_path_factory):
    """A VM that can lose power: project installed, journal disk formatted."""
    work = tmp_path_factory.mktemp("powercut")
    wheels = work / "wheels"
    build_wheelhouse(wheels)
    shutil.copy(REPO / "firmware/dbus/org.kernel.TCMUService1.conf", wheels)
    disks = [
        vmctl.Disk("primary", SIZE, cache="none"),
        vmctl.Disk("journal", 512 << 20, cache="none"),
    ]
    vm = vmctl.VM(vm_base, workdir=work / "vm", disks=disks, cpu="Nehalem", root_cache="writeback")
    with vm:
        vm.copy_in(wheels, "/root/wheels")
        vm.ssh(guest_install_script("/root/wheels"), timeout=900)
        tag_module = (REPO / "tests/vm/powercut_writer.py").read_text()
        vm.ssh(
            "cat > /opt/cdp/venv/lib/python3.11/site-packages/tests_powercut_tag.py",
            input=tag_module,
        )
        vm.ssh(f"mkfs.ext4 -q -F {JOURNAL_DISK} && sync", timeout=300)
        vm.ssh(BRING_UP, timeout=400)
        vm.ssh("targetcli", input=TARGET_SETUP, timeout=300)
        vm.work = work
        yield vm


def _portal(vm) -> str:
    return f"127.0.0.1:{vm.iscsi_port}"


def _verify_reads(vm, issued: dict[int, int], durable: set[int], current: dict[int, bytes],
                  iteration: int) -> list[str]:  # fmt: skip
    """Each chunk written this iteration: newest durable version or newer."""
    by_chunk: dict[int, list[int]] = {}
    for w, c in sorted(issued.items()):
        by_chunk.setdefault(c, []).append(w)
    errors = []
    with IscsiLun(_portal(vm), IQN, 0, BS) as lun:
        for c, versions in sorted(by_chunk.items()):
            got = lun.read16(c * (CHUNK // BS), CHUNK)
            durable_here = [w for w in versions if w in durable]
            floor = durable_here[-1] if durable_here else None
            allowed = {w for w in versions if floor is None or w >= floor}
            tag = parse_header(got)
            if tag is not None and tag[0] == iteration and tag[2] in allowed:
                if got != chunk_bytes(iteration, c, tag[2]):
                    errors.append(f"chunk {c}: write {tag[2]} reads back damaged")
            elif floor is None and got == current.get(c, bytes(CHUNK)):
                pass  # nothing durable here yet: the old content may stay
            else:
                errors.append(
                    f"chunk {c}: reads {tag}, durable floor write {floor}, versions {versions}"
                )
            current[c] = got
    return errors


def _boot_after_cut(vm) -> int:
    """Boot after the cut; returns how many extra power cycles it took.

    Under TCG on a loaded host a boot once stopped in the guest kernel, 8 s in
    and before userspace (1 boot in 34; the soak's VM then stayed down for
    the iterations after it).  As an admin would, and as the fault model
    allows (a power cut may come at any moment), such a boot is cut and
    started once more; the count is printed with the results.
    """
    try:
        vm.boot_again(timeout=FIRST_BOOT_TIMEOUT)
        return 0
    except vmctl.VMError as exc:
        print(f"\nboot stalled, power-cycling again: {str(exc).splitlines()[0]}")
        vm.power_cut()
        vm.boot_again()
        return 1


@pytest.mark.parametrize("iteration", range(1, ITERATIONS + 1))
def test_power_cut_keeps_every_durable_write(pvm, iteration):
    vm = pvm
    log_path = vm.work / f"writer-{iteration}.log"
    current = getattr(vm, "current", {})
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.vm.powercut_writer", _portal(vm), IQN,
         str(iteration), str(iteration * 7919), str(log_path), str(CHUNKS)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if log_path.exists() and log_path.read_text().count("\nA ") >= 20:
                break
            assert writer.poll() is None, f"writer died early: {writer.stderr.read()}"
        time.sleep(random.Random(iteration).uniform(3, 9))
        vm.power_cut()
    finally:
        writer.kill()
        writer.wait(30)
    issued, newest_durable = read_log(log_path)
    durable = durable_writes(log_path)
    print(f"\niteration {iteration}: {len(issued)} issued, {len(durable)} durable, "
          f"newest durable write {newest_durable}")  # fmt: skip
    assert newest_durable >= 10, "too few durable writes before the cut to prove anything"

    t0 = time.monotonic()
    vm.boot_cycles = getattr(vm, "boot_cycles", 0) + _boot_after_cut(vm)
    vm.ssh(BRING_UP, timeout=400)
    vm.ssh("targetcli", input=TARGET_SETUP, timeout=300)
    print(f"back in {time.monotonic() - t0:.0f} s (extra power cycles so far: {vm.boot_cycles})")
    errors = _verify_reads(vm, issued, durable, current, iteration)
    assert not errors, "\n".join(errors[:20])
    vm.current = current

    # Inside: the journal holds writes 0..k of this iteration with no hole,
    # k >= the newest durable one, and the newest image is the live volume.
    vm.ssh("targetcli /backstores/user:cdp delete cdp0", timeout=120)
    vm.ssh(STOP_DAEMON, timeout=120)
    script = JOURNAL_CHECK.format(iteration=iteration, state=STATE, chunk=CHUNK)
    out = vm.ssh("/opt/cdp/venv/bin/python -", input=script, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    wseqs = result["wseqs"]
    assert wseqs == list(range(len(wseqs))), f"hole in the journal: {wseqs[:50]}"
    assert len(wseqs) - 1 >= newest_durable, (len(wseqs), newest_durable)
    assert result["image_equals_volume"], result
    vm.ssh(BRING_UP, timeout=400)
    vm.ssh("targetcli", input=TARGET_SETUP, timeout=300)
