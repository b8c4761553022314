"""The adapter: engine calls forwarded, engine errors mapped to SCSI errors."""

import errno

import pytest

from appliance.daemon.backend import VolumeBackend
from appliance.engine import (
    InvalidRange,
    JournalCorrupt,
    PrimaryIOError,
    VolumeClosed,
)
from appliance.engine.protection import Busy
from appliance.scsi import (
    BackendBusy,
    BackendError,
    MediumError,
    NotReady,
    SpaceAllocationFailed,
)


class FakeVolume:
    size = 1 << 20
    block_size = 512
    uuid = "fake"
    closed = False

    def __init__(self, exc=None):
        self.exc = exc
        self.calls = []

    def _call(self, *args):
        self.calls.append(args)
        if self.exc is not None:
            raise self.exc
        return b"\0" * 512 if args[0] == "read" else None

    def read(self, offset, length):
        return self._call("read", offset, length)

    def write(self, offset, data, *, fua=False):
        return self._call("write", offset, bytes(data), fua)

    def write_zeros(self, offset, length, *, fua=False):
        return self._call("write_zeros", offset, length, fua)

    def flush(self):
        return self._call("flush")

    def compare_and_write(self, offset, expected, new, *, fua=False):
        return self._call("caw", offset, fua)

    def write_many(self, items):
        self._call("write_many", len(items))
        return [1] * len(items), None


def _enospc() -> PrimaryIOError:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise PrimaryIOError("write: no space") from inner
    except PrimaryIOError as exc:
        return exc


def test_calls_are_forwarded():
    vol = FakeVolume()
    be = VolumeBackend(vol)
    assert (be.size, be.block_size) == (1 << 20, 512)
    be.write(512, memoryview(b"x" * 512), fua=True)
    be.write_zeros(0, 1024, unmap=True)
    be.flush()
    be.compare_and_write(0, b"a", b"b", fua=False)
    assert be.read(0, 512) == bytes(512)
    assert vol.calls == [
        ("write", 512, b"x" * 512, True),
        ("write_zeros", 0, 1024, False),
        ("flush",),
        ("caw", 0, False),
        ("read", 0, 512),
    ]
    be.check_ready()
    vol.closed = True
    with pytest.raises(NotReady):
        be.check_ready()


@pytest.mark.parametrize(
    "engine_exc, scsi_exc",
    [
        (PrimaryIOError("read of 512 bytes at 0: EIO"), MediumError),
        (JournalCorrupt("bad record"), MediumError),
        (_enospc(), SpaceAllocationFailed),
        (OSError(errno.EDQUOT, "quota"), SpaceAllocationFailed),
        (OSError(errno.EIO, "eio"), MediumError),
        (VolumeClosed("u"), NotReady),
        (Busy("a job holds the lock"), BackendBusy),
        (InvalidRange("range past the end"), BackendError),
    ],
)
def test_errors_are_mapped(engine_exc, scsi_exc):
    be = VolumeBackend(FakeVolume(engine_exc))
    for call in (
        lambda: be.read(0, 512),
        lambda: be.write(4096, b"x" * 512),
        lambda: be.write_many([(4096, b"x" * 512)]),  # refused as a whole
        lambda: be.flush(),
    ):
        with pytest.raises(scsi_exc) as info:
            call()
        assert type(info.value) is scsi_exc or scsi_exc is BackendError
        assert info.value.__cause__ is engine_exc


def test_medium_error_carries_the_offset():
    be = VolumeBackend(FakeVolume(PrimaryIOError("EIO")))
    with pytest.raises(MediumError) as info:
        be.write(4096, b"x" * 512)
    assert info.value.offset == 4096


def test_unknown_exceptions_pass_through():
    # The SCSI layer turns these into HARDWARE ERROR and logs the trace.
    bug = RuntimeError("bug")
    be = VolumeBackend(FakeVolume(bug))
    for call in (
        lambda: be.read(0, 512),
        lambda: be.write(0, b"x" * 512),
        lambda: be.write_many([(0, b"x" * 512)]),
        lambda: be.flush(),
    ):
        with pytest.raises(RuntimeError) as info:
            call()
        assert info.value is bug and info.value.__cause__ is None


def test_end_to_end_sense_through_the_scsi_layer():
    from appliance.scsi import DeviceIdentity, ScsiDevice

    dev = ScsiDevice(VolumeBackend(FakeVolume(PrimaryIOError("EIO"))), DeviceIdentity("v"))
    result = dev.execute(bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0]))  # READ(10) lba 8
    assert result.status == 0x02
    assert (result.sense[2] & 0x0F, result.sense[12]) == (0x3, 0x11)  # UNRECOVERED READ ERROR
