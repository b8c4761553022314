import pytest

from appliance.daemon.backend import VolumeBackend
from appliance.daemon.device import DeviceOptions, TcmuDevice
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
