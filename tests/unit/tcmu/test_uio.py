"""UIO discovery against a fake sysfs/dev tree."""

import mmap
import os

import pytest

from appliance.tcmu import (
    UioDevice,
    UioName,
    list_tcmu_devices,
    parse_uio_name,
    read_uio_info,
)
from appliance.tcmu import layout as L

from .sim_kernel import ALL_CAPS, PAGE, tagged_cdb


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("tcm-user/0/cdp0/cdp/vol0\n", UioName(0, "cdp0", "cdp", "vol0")),
        ("tcm-user/3/d/cdp/a/b/c", UioName(3, "d", "cdp", "a/b/c")),
        ("tcm-user/1/dev", UioName(1, "dev")),
        ("tcm-user/1/dev/cdp", UioName(1, "dev", "cdp")),
        ("tcm-user/1/dev/cdp/", UioName(1, "dev", "cdp", "")),
        ("uio_pci_generic", None),
        ("tcm-user/x/dev/cdp/a", None),
        ("tcm-user/1//cdp/a", None),
        ("tcm-user", None),
    ],
)
def test_parse_uio_name(name, parsed):
    assert parse_uio_name(name) == parsed


def test_configfs_dir():
    name = UioName(0, "cdp0", "cdp", "vol0")
    assert str(name.configfs_dir()) == "/sys/kernel/config/target/core/user_0/cdp0"
    assert str(name.configfs_dir("/r")) == "/r/sys/kernel/config/target/core/user_0/cdp0"


def fake_uio(root, index, name, size, *, device=True):
    sysdir = root / "sys/class/uio" / f"uio{index}"
    (sysdir / "maps/map0").mkdir(parents=True)
    (sysdir / "name").write_text(name + "\n")
    (sysdir / "maps/map0/size").write_text(f"{size:#x}\n")
    if device:
        (root / "dev").mkdir(exist_ok=True)
        dev = root / "dev" / f"uio{index}"
        dev.write_bytes(bytes(size))
        with open(dev, "r+b") as f, mmap.mmap(f.fileno(), size) as mm:
            L.MAILBOX.pack_into(mm, 0, 2, ALL_CAPS, 128, PAGE - 128, 0, 0)


def test_discovery(tmp_path):
    fake_uio(tmp_path, 0, "tcm-user/0/cdp0/cdp/vol0", 4 * PAGE)
    fake_uio(tmp_path, 2, "tcm-user/0/other/rbd/pool/img", 2 * PAGE)
    fake_uio(tmp_path, 10, "tcm-user/1/cdp1/cdp/vol1", 0x40800000, device=False)
    fake_uio(tmp_path, 3, "uio_hv_generic", PAGE, device=False)
    (tmp_path / "sys/class/uio/uiox").mkdir()
    infos = list_tcmu_devices(tmp_path)
    assert [i.index for i in infos] == [0, 2, 10]
    assert infos[2].map_size == 0x40800000  # 8 MiB ring + 1 GiB data area
    assert [i.name.device for i in list_tcmu_devices(tmp_path, "cdp")] == ["cdp0", "cdp1"]
    assert infos[0].dev_path == tmp_path / "dev/uio0"
    assert read_uio_info(3, tmp_path) is None and read_uio_info(7, tmp_path) is None
    assert list_tcmu_devices(tmp_path / "nowhere") == []


def test_open_map_and_ring(tmp_path):
    fake_uio(tmp_path, 0, "tcm-user/0/cdp0/cdp/vol0", 4 * PAGE)
    info = read_uio_info(0, tmp_path)
    with UioDevice.open(info) as dev:
        assert len(dev.map) == 4 * PAGE and dev.fileno() >= 0
        kicks = []
        dev.kick = lambda: kicks.append(1)  # a regular file is no uio: don't write to it
        ring = dev.ring()
        assert ring.out_of_order and ring.data_off == PAGE
        # Queue one entry by hand, as the kernel would, and serve it.
        start = 128
        L.CMD_REQUEST.pack_into(dev.map, start, 128 | L.OP_CMD, 7, 0, 0, 0, 0, 0, start + 112)
        dev.map[start + 112 : start + 128] = tagged_cdb(1)
        head_at = L.CMD_HEAD_OFFSET
        dev.map[head_at : head_at + 4] = (128).to_bytes(4, "little")
        [cmd] = ring.poll()
        assert cmd.cmd_id == 7 and cmd.cdb == tagged_cdb(1)
        ring.complete(cmd)
        ring.flush()
        assert kicks == [1]
        assert int.from_bytes(dev.map[64:68], "little") == 128
        ring.close()
    assert dev.map is None and dev.fd == -1
    dev.close()  # idempotent


def test_kick_and_wait_on_a_pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        reader = UioDevice(r, None)
        writer = UioDevice(w, None)
        assert reader.wait_event() is None  # nothing pending
        writer.kick()
        assert os.read(r, 4) == b"\0\0\0\0"
        os.write(w, (5).to_bytes(4, "little"))
        assert reader.wait_event() == 5
    finally:
        os.close(r)
        os.close(w)


def test_open_missing_device(tmp_path):
    fake_uio(tmp_path, 0, "tcm-user/0/cdp0/cdp/vol0", PAGE, device=False)
    with pytest.raises(FileNotFoundError):
        UioDevice.open(read_uio_info(0, tmp_path))
