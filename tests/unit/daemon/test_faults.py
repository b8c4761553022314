"""The handler's fault hooks (tests only): parsing, matching, fire-once."""

import time

import pytest

from appliance.daemon import faults
from appliance.daemon.errors import ConfigError
from tests.unit.scsi.cdbs import rw6, rw10, rw16


def test_off_by_default():
    assert not faults.parse("").armed
    faults.before_execute("any", rw10(0x2A, 0, 1))  # a no-op, returns at once


def test_write_ranges():
    assert faults.write_range(rw10(0x2A, 100, 8)) == (100, 8)
    assert faults.write_range(rw16(0x8A, 1 << 40, 3)) == (1 << 40, 3)
    assert faults.write_range(rw6(0x0A, 7, 0)) == (7, 256)  # 0 blocks means 256
    assert faults.write_range(rw10(0x28, 100, 8)) is None  # READ(10)
    assert faults.write_range(b"\x2a\x00") is None  # short


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stall=dev:1:2", "unknown fault"),
        ("stall_write=dev:1", "DEV:LBA:SECONDS"),
        ("stall_write=dev:x:1", "DEV:LBA:SECONDS"),
        ("stall_write=:1:1", "out of range"),
        ("stall_write=dev:1:0", "out of range"),
    ],
)
def test_malformed_plans_are_refused(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        faults.parse(text)


def test_stall_fires_once_for_the_matching_device_and_lba():
    plan = faults.parse("stall_write=ghost0:100:0.2")
    t0 = time.monotonic()
    plan.before_execute("other", rw10(0x2A, 96, 8))  # other device
    plan.before_execute("ghost0", rw10(0x2A, 0, 8))  # other LBAs
    plan.before_execute("ghost0", rw10(0x28, 96, 8))  # a READ
    assert time.monotonic() - t0 < 0.15
    plan.before_execute("ghost0", rw10(0x2A, 96, 8))  # covers LBA 100: stalls
    assert time.monotonic() - t0 >= 0.2
    t1 = time.monotonic()
    plan.before_execute("ghost0", rw10(0x2A, 96, 8))  # fired already
    assert time.monotonic() - t1 < 0.15
