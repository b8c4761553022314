"""Fixtures for tests that boot the Debian test VM (see tests/vm/README.md).

Tests marked ``@pytest.mark.vm`` are skipped unless ``CDP_VM_TESTS=1``: they need
root, qemu and a few minutes, and are not wired into CI yet.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.vm import vmctl

ENABLED = os.environ.get("CDP_VM_TESTS") == "1"
_TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots the QEMU test VM (slow; skipped unless CDP_VM_TESTS=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="VM test: set CDP_VM_TESTS=1 to run")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:
    if _TIMINGS:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in _TIMINGS.items())
        terminalreporter.write_line(f"test VM timings: {parts}")


@pytest.fixture(scope="session")
def vm_base() -> vmctl.Base:
    """The cached base image, built on first use (several minutes, then cached).

    Running the build script also installs the host tools the tests use
    (qemu, ssh, iscsi-inq) when they are missing."""
    t0 = time.monotonic()
    base = vmctl.find_base(build=True)
    _TIMINGS["base ready"] = time.monotonic() - t0
    return base


@pytest.fixture(scope="module")
def vm(vm_base: vmctl.Base, tmp_path_factory: pytest.TempPathFactory):
    """One VM per test module, booted from a throwaway overlay.

    Its serial console and qemu logs stay in pytest's temp folder
    (``/tmp/pytest-of-$USER/pytest-N/vm*/serial.log``) for post-mortems."""
    workdir = tmp_path_factory.mktemp("vm")
    with vmctl.VM(vm_base, workdir=workdir) as machine:
        _TIMINGS["boot to SSH"] = machine.boot_seconds
        yield machine
        t0 = time.monotonic()
        machine.shutdown()
        _TIMINGS["poweroff"] = time.monotonic() - t0
