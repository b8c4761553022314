"""Attach, detach, reconfigure and recover devices over a fake sysfs/configfs."""

import errno

import pytest

from appliance.daemon.errors import DeviceSetupError
from appliance.daemon.kernel import DeviceKnobs
from appliance.daemon.main import Daemon
from appliance.daemon.netlink import Cmd, DeviceEvent
from appliance.scsi.constants import Status
from tests.unit.scsi.cdbs import inquiry

from .conftest import SIZE, add_device


def test_attach_serves_and_detach_closes(env):
    root, mgr, sims, cfg = env
    name = add_device(root, 0, 1, "cdp0", cfg)
    att = mgr.attach(0, name)
    assert att.volume.size == SIZE and att.device.running
    assert (
        root / "sys/kernel/config/target/core/user_1/cdp0/attrib/tmr_notification"
    ).read_text() == "1"
    q = sims[0].queue(inquiry(), data_in=96)
    assert sims[0].completion(q).status == Status.GOOD
    assert mgr.detach(0)
    assert not att.device.running and sims[0].closed
    # Re-attaching opens the existing volume (same identity).
    again = mgr.attach(0)
    assert again.volume.uuid == att.volume.uuid


def test_volume_served_once(env):
    root, mgr, sims, cfg = env
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    add_device(root, 1, 2, "cdp1", "cdp/vol0")
    with pytest.raises(DeviceSetupError) as info:
        mgr.attach(1)
    assert info.value.errno == errno.EBUSY


def test_size_must_match_the_volume(env):
    root, mgr, sims, cfg = env
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    mgr.detach(0)
    add_device(root, 1, 2, "cdp1", "cdp/vol0", size=2 * SIZE)
    with pytest.raises(DeviceSetupError, match="holds 1048576 bytes") as info:
        mgr.attach(1)
    assert info.value.status == -errno.EINVAL


def test_refusals(env):
    root, mgr, sims, cfg = env
    add_device(root, 0, 1, "f0", "file/x")
    with pytest.raises(DeviceSetupError) as info:
        mgr.attach(0)
    assert info.value.errno == errno.ENOENT
    add_device(root, 1, 2, "bad", "cdp/vol:0")
    with pytest.raises(DeviceSetupError, match="not allowed"):
        mgr.attach(1)
    with pytest.raises(DeviceSetupError) as info:
        mgr.attach(7)
    assert info.value.errno == errno.ENODEV
    add_device(root, 2, 3, "nov", "cdp/missing")
    with pytest.raises(DeviceSetupError, match="does not exist"):
        mgr.attach(2)
    assert not mgr.devices


def test_reconfigure(env):
    root, mgr, sims, cfg = env
    att = mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    mgr.reconfigure(0, writecache=0)
    assert att.device.scsi.write_cache is False
    mgr.reconfigure(0, dev_size=SIZE, dev_cfg="cdp/vol0")
    with pytest.raises(DeviceSetupError) as info:
        mgr.reconfigure(0, dev_size=2 * SIZE)
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DeviceSetupError):
        mgr.reconfigure(0, dev_cfg="cdp/other")


def test_recover_existing_does_the_restart_dance(env, monkeypatch):
    root, mgr, sims, cfg = env
    add_device(root, 0, 1, "cdp0", cfg)
    add_device(root, 1, 2, "f0", "file/x")  # not ours: left alone
    steps = []
    monkeypatch.setattr(DeviceKnobs, "block", lambda self, on: steps.append(("block", on)))
    monkeypatch.setattr(
        DeviceKnobs, "reset_ring", lambda self, level=1: steps.append(("reset_ring", level))
    )
    real_attach = mgr.attach
    monkeypatch.setattr(
        mgr,
        "attach",
        lambda minor, name=None: (steps.append(("attach", minor)), real_attach(minor))[1],
    )
    assert mgr.recover_existing() == [0]
    assert steps == [("block", True), ("reset_ring", 1), ("attach", 0), ("block", False)]


def test_daemon_answers_events(env):
    root, mgr, sims, cfg = env
    daemon = Daemon(mgr.config)
    daemon.manager = mgr
    name = add_device(root, 0, 1, "cdp0", cfg)
    assert daemon.handle_event(DeviceEvent(Cmd.ADDED_DEVICE, name, 0, 5)) == 0
    assert daemon.handle_event(DeviceEvent(Cmd.ADDED_DEVICE, name, 0, 5)) == -errno.EEXIST
    other = add_device(root, 1, 2, "f0", "file/x")
    assert daemon.handle_event(DeviceEvent(Cmd.ADDED_DEVICE, other, 1, 6)) == -errno.ENOENT
    ev = DeviceEvent(Cmd.RECONFIG_DEVICE, name, 0, 5, dev_size=2 * SIZE)
    assert daemon.handle_event(ev) == -errno.EOPNOTSUPP
    assert daemon.handle_event(DeviceEvent(Cmd.REMOVED_DEVICE, name, 0, 5)) == 0
    assert daemon.handle_event(DeviceEvent(Cmd.REMOVED_DEVICE, other, 1, 6)) == 0
    assert not mgr.devices
