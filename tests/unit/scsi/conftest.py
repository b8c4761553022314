import pytest

from appliance.scsi import DeviceIdentity, Limits, MemoryBackend, ScsiDevice

from .cdbs import BLOCKS, BS


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(BLOCKS * BS, BS)


@pytest.fixture
def dev(backend) -> ScsiDevice:
    return ScsiDevice(
        backend,
        DeviceIdentity("vol-0001", product="Test LUN", revision="0.1"),
        limits=Limits(max_transfer_bytes=64 * 1024, max_compare_and_write_blocks=4),
    )
