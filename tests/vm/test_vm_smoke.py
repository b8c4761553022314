"""Smoke tests for the test VM: the guest kernel has LIO and TCMU, a target made
inside the guest answers an iSCSI initiator on the host, and a ``user:`` backstore
makes a TCMU uio device.  Run with ``CDP_VM_TESTS=1`` (see tests/vm/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.vm

IQN = "iqn.2003-01.org.example.cdp:t1"
LIO_MODULES = ("target_core_user", "iscsi_target_mod", "target_core_file")


def test_lio_modules_load_and_configfs_is_mounted(vm):
    # modprobe takes one module name unless -a: the rest would be module parameters.
    vm.ssh("modprobe -a " + " ".join(LIO_MODULES))
    loaded = {line.split()[0] for line in vm.ssh("cat /proc/modules").stdout.splitlines()}
    assert set(LIO_MODULES) | {"target_core_mod", "uio", "configfs"} <= loaded

    mounts = [line.split() for line in vm.ssh("cat /proc/mounts").stdout.splitlines()]
    assert ["configfs", "/sys/kernel/config", "configfs"] in [m[:3] for m in mounts]
    entries = vm.ssh("ls /sys/kernel/config/target").stdout.split()
    # Fabric folders (iscsi/, loopback/ ...) appear only when rtslib mkdirs them.
    assert {"core", "dbroot", "version"} <= set(entries)
    version = vm.ssh("cat /sys/kernel/config/target/version").stdout
    assert "Target Engine Core" in version


TARGETCLI_SCRIPT = f"""\
/backstores/fileio create name=f0 file_or_dev=/var/tmp/f0.img size=64M
/iscsi create {IQN}
/iscsi/{IQN}/tpg1/luns create /backstores/fileio/f0
/iscsi/{IQN}/tpg1 set attribute authentication=0 demo_mode_write_protect=0 \
generate_node_acls=1 cache_dynamic_acls=1
exit
"""


def _host(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def _inquiry_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def test_fileio_target_reachable_from_host_initiator(vm):
    assert shutil.which("iscsi-inq"), "libiscsi-bin missing (images/build-base.sh installs it)"
    # One targetcli process for all commands: each start costs ~10 s under TCG.
    # targetcli talks to the system D-Bus; the guest runs systemd, so it is there.
    out = vm.ssh("targetcli", input=TARGETCLI_SCRIPT, timeout=300)
    assert "Created LUN 0" in out.stdout, out.stdout + out.stderr
    try:
        url = f"iscsi://127.0.0.1:{vm.iscsi_port}/{IQN}/0"
        inq = _host(["iscsi-inq", url])
        assert inq.returncode == 0, inq.stderr
        fields = _inquiry_fields(inq.stdout)
        assert fields["Vendor"] == "LIO-ORG"
        assert fields["Product"] == "f0"  # LIO reports the backstore name as product
        assert fields["Peripheral Device Type"] == "DIRECT_ACCESS"

        cap = _host(["iscsi-readcapacity16", "-s", url])
        assert cap.returncode == 0, cap.stderr
        assert int(cap.stdout.split()[0]) == 64 << 20
    finally:
        vm.ssh(
            f"targetcli /iscsi delete {IQN} && targetcli /backstores/fileio delete f0",
            timeout=120,
            check=False,
        )


TCMU_SCRIPT = """\
import glob, json, os
from rtslib_fb import UserBackedStorageObject

so = UserBackedStorageObject("cdp0", size=64 << 20, config="cdp/vol0")
try:
    uios = {}
    for d in sorted(glob.glob("/sys/class/uio/uio*")):
        with open(d + "/name") as f:
            name = f.read().strip()
        with open(d + "/maps/map0/size") as f:
            size = int(f.read(), 16)
        uios[os.path.basename(d)] = {"name": name, "map0_size": size,
                                     "dev": os.path.exists("/dev/" + os.path.basename(d))}
    print(json.dumps({"so_path": so.path, "uios": uios}))
finally:
    so.delete()
print(json.dumps({"after_delete": sorted(os.listdir("/sys/class/uio"))}))
"""


def test_user_backstore_creates_tcmu_uio_device(vm):
    vm.ssh("modprobe target_core_user")
    out = vm.ssh("python3 -", input=TCMU_SCRIPT, timeout=180).stdout.splitlines()
    created, after = json.loads(out[0]), json.loads(out[1])

    assert "/target/core/user_" in created["so_path"]
    uio0 = created["uios"]["uio0"]
    assert uio0["dev"], "/dev/uio0 missing"
    assert uio0["name"].startswith("tcm-user/")
    # tcm-user/<hba index>/<backstore name>/<handler>/<config string>
    assert uio0["name"].split("/", 2)[2] == "cdp0/cdp/vol0"
    assert uio0["map0_size"] > 8 << 20  # command ring + data area
    assert after["after_delete"] == []
