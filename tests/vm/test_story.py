"""The SAN admin's story on the built appliance image, through the cdp shell.

Issue 6 ("the end-to-end story") and issue 7 (the shell's VM tier), on one
boot of the image ``make image`` built (not a hand-made root), with the LUN
``make demo`` creates (CHAP, per-initiator ACLs):

1. ``targetcli`` (root's PATH finds ``targetcli-cdp``) shows the stock tree
   and ``/cdp``; ``/backstores/user:cdp`` and ``/cdp`` show the same volume;
2. inside the VM, open-iscsi logs in over loopback with CHAP; ``mkfs.ext4``,
   files written; ``bookmark`` through the shell; "ransomware" overwrites and
   deletes the files; ``points`` finds the bookmark; ``restore`` runs while
   the file system is mounted again and read; after unmount/remount every
   file is back byte for byte;
3. ``expose ... target=`` makes the bookmark a second LUN of the same target
   while the initiator reads: the initiator rescans, mounts it read-only and
   finds the good files; ``unexpose`` deletes the LUN;
4. ``systemctl kill -s KILL cdp-handlerd`` under fio (``verify=crc32c``):
   systemd restarts it, fio finishes and verifies with 0 errors;
5. ``saveconfig``, reboot: the target, the volume, its bookmark and the
   exposed image come back, and the files are intact.

Run: ``CDP_VM_TESTS=1 pytest -s -m vm tests/vm/test_story.py`` (builds the image
if it is missing: ~10 min, then ~10 min for the story under TCG).
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from images import appliance_image as ai
from images import demo

pytestmark = pytest.mark.vm

MNT = "/mnt/story"
PORTAL = "127.0.0.1:3260"
FILES = 24
PROBE = Path(__file__).with_name("journal_probe.py")


def sh(vm, script: str, timeout: float = 300, check: bool = True):
    return vm.ssh(script, timeout=timeout, check=check)


def wait_guest(vm, check: str, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.ssh(check, check=False, timeout=60).returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s")


def cdp(vm, command: str, timeout: float = 600) -> str:
    """One-shot ``targetcli`` (the appliance's PATH: targetcli-cdp)."""
    r = vm.ssh(f"targetcli {command}", timeout=timeout, check=False)
    assert r.returncode == 0, f"targetcli {command}: {r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def wait_ready(vm) -> None:
    wait_guest(vm, "test -s /var/lib/cdp/identity.env", "first boot", 600)
    wait_guest(vm, "systemctl is-active -q cdp-handlerd", "cdp-handlerd", 600)
    wait_guest(vm, "test -S /run/cdp/control.sock", "control socket", 120)


def lun_dev(iqn: str, lun: int) -> str:
    return f"/dev/disk/by-path/ip-{PORTAL}-iscsi-{iqn}-lun-{lun}"


def login_script(ident: dict) -> str:
    iqn, user, pw = (shlex.quote(ident[k]) for k in ("IQN", "CHAP_USER", "CHAP_PASSWORD"))
    return f"""\
set -e
echo InitiatorName={demo.INITIATOR_IQN} > /etc/iscsi/initiatorname.iscsi
systemctl restart iscsid
iscsiadm -m discoverydb -t sendtargets -p {PORTAL} -o new >/dev/null
iscsiadm -m discoverydb -t sendtargets -p {PORTAL} -o update \
  -n discovery.sendtargets.auth.authmethod -v CHAP \
  -n discovery.sendtargets.auth.username -v {user} \
  -n discovery.sendtargets.auth.password -v {pw}
iscsiadm -m discoverydb -t sendtargets -p {PORTAL} --discover
iscsiadm -m node -T {iqn} -p {PORTAL} -o update -n node.session.auth.authmethod -v CHAP \
  -n node.session.auth.username -v {user} -n node.session.auth.password -v {pw}
iscsiadm -m node -T {iqn} -p {PORTAL} --login
udevadm settle
for i in $(seq 60); do [ -b {lun_dev(ident["IQN"], 0)} ] && exit 0; sleep 1; done
exit 1
"""


def verify_files(vm, mnt: str, dev: str) -> None:
    """Every good file under ``mnt`` (``dev`` mounted there) has its sha256.

    On a mismatch the assertion carries what tells the cause apart: the
    kernel's ext4 errors, the journal's history of the blocks they name
    (``journal_probe.py``: which write an image holds there, or lacks), a
    read-only e2fsck of ``dev``, the daemon's warnings and the volume's
    status (a CI run gives one chance to read them)."""
    r = sh(vm, f"cd {mnt} && sha256sum -c --quiet /root/good.sha256", check=False)
    if r.returncode == 0:
        return
    report = [f"sha256sum -c in {mnt} ({dev}) failed:\n{r.stdout}{r.stderr}"]

    def probe(command: str) -> str:
        out = sh(vm, command, check=False, timeout=600)
        report.append(f"$ {command}\n{out.stdout}{out.stderr}")
        return out.stdout

    kernel = probe("dmesg | grep -iE 'ext4|jbd2|i/o error|buffer|reset|abort' | tail -n 40")
    blocks = {int(b) for b in re.findall(r"\b(?:pblk|block) (\d+)", kernel)}
    for ino in sorted({int(i) for i in re.findall(r"inode #(\d+)", kernel)})[:4]:
        where = probe(f"debugfs -c -R 'imap <{ino}>' {dev} 2>&1 | tail -n 1")
        blocks.update(int(b) for b in re.findall(r"located at block (\d+)", where))
    if blocks:
        spans = " ".join(f"{b * 4096}:{(b + 1) * 4096}" for b in sorted(blocks)[:6])
        probe(
            f"python3 - {demo.SECONDARY}/journal"
            f" /var/lib/cdp/volumes/{demo.VOLUME}/catalog.sqlite {spans}"
            " < /root/journal_probe.py 2>&1 | tail -n 80"
        )
    probe(f"umount {mnt}; e2fsck -fn {dev} 2>&1 | head -n 40")
    probe("journalctl -u cdp-handlerd -o cat --no-pager | grep -v '\"info\"' | tail -n 40")
    probe("targetcli /cdp/demo status; targetcli /cdp/demo points")
    raise AssertionError("\n".join(report))


def drop_caches(dev: str) -> str:
    # After umount the block device's page cache may still hold old blocks.
    return f"sync; blockdev --flushbufs {dev}; echo 3 > /proc/sys/vm/drop_caches"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    image = ai.current_image(build=True)
    work = tmp_path_factory.mktemp("story")
    disks = ai.appliance_disks(work / "disks")
    (work / "disks").mkdir(exist_ok=True)
    vm = ai.ApplianceVM(image, workdir=work / "vm", disks=disks)
    with vm:
        wait_ready(vm)
        text = vm.ssh("cat /var/lib/cdp/identity.env").stdout
        vm.ident = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        out = vm.ssh(demo.TARGETCLI, input=demo.targetcli_script(vm.ident), timeout=600)
        vm.setup_output = out.stdout + out.stderr
        vm.ssh("cat > /root/journal_probe.py", input=PROBE.read_text())
        yield vm


def test_targetcli_shows_cdp_beside_lio(appliance):
    vm = appliance
    assert "targetcli-cdp" in sh(vm, "readlink -f $(command -v targetcli)").stdout
    out = cdp(vm, "ls / 1")
    for node in ("backstores", "iscsi", "cdp"):
        assert f"o- {node}" in out, out
    assert "demo" in cdp(vm, "ls /backstores/user:cdp"), vm.setup_output
    # The primary disk is copied into the journal first (the baseline job).
    wait_guest(vm, "targetcli ls /cdp | grep -q 'demo.*in-sync'", "baseline", 1800)
    listing = cdp(vm, "ls /cdp")
    assert "demo" in listing and "in-sync, sync" in listing, listing


def test_ransomware_restore_while_reading(appliance):
    vm = appliance
    iqn = vm.ident["IQN"]
    dev = lun_dev(iqn, 0)
    sh(vm, login_script(vm.ident), timeout=300)
    sh(vm, f"mkfs.ext4 -q -F {dev} && mkdir -p {MNT} && mount {dev} {MNT}", timeout=600)
    sh(
        vm,
        f"for i in $(seq {FILES}); do head -c $((65536 * i)) /dev/urandom > {MNT}/f$i; done;"
        f" sync; cd {MNT} && sha256sum f* > /root/good.sha256",
    )
    assert "Bookmark good is seq" in cdp(vm, "/cdp/demo bookmark name=good")
    # Ransomware: every file overwritten, half of them deleted.
    sh(
        vm,
        f"for i in $(seq {FILES}); do head -c 4096 /dev/urandom | dd of={MNT}/f$i"
        f" conv=notrunc status=none; done; rm -f {MNT}/f1? ; sync",
    )
    assert sh(vm, f"cd {MNT} && sha256sum -c /root/good.sha256", check=False).returncode != 0
    points = cdp(vm, "/cdp/demo points kind=bookmark")
    assert "good" in points, points

    # Restore while the file system is read: the job runs in the background.
    sh(vm, f"umount {MNT}; {drop_caches(dev)}")
    out = cdp(vm, "/cdp/demo restore point=good wait=false")
    job = re.search(r"restore-\d+", out).group(0)
    running = "running" in cdp(vm, "/cdp/demo jobs")
    sh(vm, f"mount -o ro {dev} {MNT}")
    verify_files(vm, MNT, dev)
    print(f"\nrestore {job} still running at the first read: {running}")
    cdp(vm, f"/cdp/demo wait job={job}")
    sh(vm, f"umount {MNT}; {drop_caches(dev)}; mount {dev} {MNT}")
    verify_files(vm, MNT, dev)
    assert sh(vm, f"ls {MNT} | grep -c '^f'").stdout.strip() == str(FILES)


def test_expose_a_point_as_a_lun_while_reading(appliance):
    vm = appliance
    iqn = vm.ident["IQN"]
    # The initiator keeps reading the live LUN in the background meanwhile.
    sh(vm, f"(while true; do cat {MNT}/f* > /dev/null; done) >/dev/null 2>&1 & echo $! > /root/rd")
    out = cdp(vm, f"/cdp/demo expose point=good name=demo-good target={iqn}")
    assert "Exposed demo-good" in out and "tpg1/lun1" in out, out
    img = lun_dev(iqn, 1)
    sh(vm, f"iscsiadm -m session --rescan; udevadm settle; for i in $(seq 60);"
           f" do [ -b {img} ] && break; sleep 1; done; [ -b {img} ]")  # fmt: skip
    sh(vm, f"mkdir -p /mnt/img && mount -o ro,noload {img} /mnt/img")
    verify_files(vm, "/mnt/img", img)
    # Read-only: a write is refused by the LUN (DATA PROTECT), never applied.
    r = sh(vm, f"dd if=/dev/zero of={img} bs=4096 count=1 oflag=direct", check=False)
    assert r.returncode != 0
    sh(vm, "umount /mnt/img")
    vm.exposed_before_reboot = cdp(vm, "/cdp/demo status")
    sh(vm, "kill $(cat /root/rd)")


def test_daemon_sigkill_under_fio_verify(appliance):
    vm = appliance
    before = sh(vm, "systemctl show -p NRestarts --value cdp-handlerd").stdout.strip()
    fio = (
        f"fio --name=story --filename={MNT}/fio.dat --size=48M --rw=randwrite --bs=4k"
        " --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --do_verify=1"
        " --verify_fatal=1 --output-format=terse > /root/fio.out 2>&1; echo $? > /root/fio.rc"
    )
    # The target holds commands up to cmd_time_out (180 s, images/demo.py) while
    # the daemon restarts; the initiator must not give up on them first.
    dev = sh(vm, f"basename $(readlink -f {lun_dev(vm.ident['IQN'], 0)})").stdout.strip()
    sh(vm, f"echo 300 > /sys/block/{dev}/device/timeout")
    attr = f"/sys/kernel/config/target/core/user_*/{demo.VOLUME}/attrib/cmd_time_out"
    assert sh(vm, f"cat {attr}").stdout.strip() == str(demo.CMD_TIME_OUT)
    sh(vm, f"rm -f /root/fio.rc; ({fio}) >/dev/null 2>&1 &")
    time.sleep(8)
    sh(vm, "systemctl kill -s KILL cdp-handlerd")
    wait_guest(vm, f"test $(systemctl show -p NRestarts --value cdp-handlerd) -gt {before}",
               "restart", 120)  # fmt: skip
    wait_guest(vm, "systemctl is-active -q cdp-handlerd", "cdp-handlerd again", 180)
    wait_guest(vm, "test -s /root/fio.rc", "fio", 1200)
    rc = sh(vm, "cat /root/fio.rc").stdout.strip()
    assert rc == "0", sh(vm, "cat /root/fio.out; dmesg | tail -n 40").stdout
    dmesg = sh(vm, "dmesg").stdout
    assert "ring is broken" not in dmesg and "blocked for more than" not in dmesg


def test_reboot_brings_target_volume_points_back(appliance):
    vm = appliance
    iqn = vm.ident["IQN"]
    out = cdp(vm, "saveconfig")
    assert "CDP configuration saved" in out, out
    sh(vm, f"umount {MNT}; iscsiadm -m node --logoutall=all; sync")
    vm.shutdown()
    vm.boot_again()
    wait_ready(vm)
    wait_guest(vm, f"test -d /sys/kernel/config/target/iscsi/{iqn}/tpgt_1/lun/lun_0",
               "restored target", 300)  # fmt: skip
    assert "good" in cdp(vm, "/cdp/demo points kind=bookmark")
    assert "demo-good" in cdp(vm, "/cdp/demo status")
    sh(vm, login_script(vm.ident), timeout=300)
    sh(vm, f"mount {lun_dev(iqn, 0)} {MNT}")
    verify_files(vm, MNT, lun_dev(iqn, 0))
    sh(vm, f"mount -o ro,noload {lun_dev(iqn, 1)} /mnt/img")
    verify_files(vm, "/mnt/img", lun_dev(iqn, 1))
