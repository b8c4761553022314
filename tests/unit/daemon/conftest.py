from pathlib import Path

import pytest

from appliance.daemon.backend import VolumeBackend
from appliance.daemon.config import HandlerConfig
from appliance.daemon.device import DeviceOptions, TcmuDevice
from appliance.daemon.manager import DeviceManager
from appliance.daemon.volumes import VolumeStore
from appliance.engine import ProtectedVolume
from appliance.scsi import DeviceIdentity, Limits, ScsiDevice

from .harness import SimUio

SIZE = 1 << 20
BS = 512


class SpyVolume:
    """A ProtectedVolume that records the calls the adapter makes."""

    def __init__(self, vol: ProtectedVolume):
        self._vol = vol
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self._vol, name)

    def write(self, offset, data, *, fua=False):
        self.calls.append(("write", offset, len(data), fua))
        return self._vol.write(offset, data, fua=fua)

    def write_many(self, items):
        # the handler's fast path: a run of plain writes, each a write() to the spy
        self.calls.extend(("write", offset, len(data), False) for offset, data in items)
        return self._vol.write_many(items)

    def write_zeros(self, offset, length, *, fua=False):
        self.calls.append(("write_zeros", offset, length, fua))
        return self._vol.write_zeros(offset, length, fua=fua)

    def flush(self):
        self.calls.append(("flush",))
        return self._vol.flush()


@pytest.fixture
def volume(tmp_path):
    vol = ProtectedVolume.create(
        str(tmp_path / "state"),
        primary=str(tmp_path / "primary.img"),
        secondary=str(tmp_path / "secondary"),
        size=SIZE,
        block_size=BS,
        segment_size=1 << 20,
    )
    yield vol
    vol.close()


@pytest.fixture
def served(volume):
    """served(workers=0, **opts) -> (uio, device, spy); stopped after the test."""
    made = []

    def _make(workers=0, sim=None, clock=None, **opts):
        uio = SimUio(data_blocks=64, mb_cmdr_size=4 * 4096, **(sim or {}))
        spy = SpyVolume(volume)
        scsi = ScsiDevice(
            VolumeBackend(spy), DeviceIdentity(str(volume.uuid)), limits=Limits(64 * 1024)
        )
        kw = {"clock": clock} if clock else {}
        dev = TcmuDevice("t0", uio.ring(), uio, scsi, DeviceOptions(workers, **opts), **kw)
        dev.start()
        made.append((uio, dev))
        return uio, dev, spy

    yield _make
    for uio, dev in made:
        if dev.running:
            dev.stop(5)
        dev.ring.close()
        uio.close()
        uio.sim.close()


# -- a fake sysfs/configfs and a DeviceManager over it (test_manager, test_images_*)


def add_device(root: Path, minor: int, hba: int, name: str, cfg: str, size=SIZE, bs=512):
    uio = root / f"sys/class/uio/uio{minor}"
    (uio / "maps/map0").mkdir(parents=True)
    (uio / "name").write_text(f"tcm-user/{hba}/{name}/{cfg}\n")
    (uio / "maps/map0/size").write_text("0x40800000\n")
    dev = root / f"sys/kernel/config/target/core/user_{hba}/{name}"
    for sub in ("attrib", "action", "wwn"):
        (dev / sub).mkdir(parents=True, exist_ok=True)
    for attr, value in (
        ("hw_block_size", bs),
        ("dev_size", size),
        ("hw_max_sectors", 128),
        ("tmr_notification", 0),
    ):
        (dev / "attrib" / attr).write_text(f"{value}\n")
    return f"tcm-user/{hba}/{name}/{cfg}"


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    config = HandlerConfig(state_dir=tmp_path / "volumes", root=root, workers=1)
    sims: list[SimUio] = []

    def opener(info):
        uio = SimUio(data_blocks=16)
        sims.append(uio)
        return uio

    mgr = DeviceManager(config, VolumeStore(config.state_dir), opener=opener)
    cfg = f"cdp/vol0;primary={tmp_path}/p.img;secondary={tmp_path}/journal"
    yield root, mgr, sims, cfg
    mgr.detach_all(timeout=5)
    mgr.store.manager.close()
    for uio in sims:
        uio.sim.close()
