"""The daemon's LUNs and its control API share one set of open volumes.

A backstore ``cdp/vol0`` and the control socket act on the same
``ProtectedVolume``; ``cdp/vol0@<image>`` serves a point in time (read-only,
or through a writable image's overlay); removing a served volume or
unexposing a served image is refused.
"""

import errno

import pytest

from appliance.control.protocol import ControlError
from appliance.daemon import cfgstring
from appliance.daemon.errors import CfgStringError, DeviceSetupError
from appliance.scsi.constants import Status
from tests.unit.scsi.cdbs import inquiry, rw10

from .conftest import SIZE, add_device

BS = 512
READ10, WRITE10 = 0x28, 0x2A


def sense_key_asc(done) -> tuple[int, int, int]:
    s = done.sense
    return s[2] & 0x0F, s[12], s[13]


def write(sim, lba: int, data: bytes):
    return sim.completion(sim.queue(rw10(WRITE10, lba, len(data) // BS), data_out=data))


def read(sim, lba: int, blocks: int) -> bytes:
    done = sim.completion(sim.queue(rw10(READ10, lba, blocks), data_in=blocks * BS))
    assert done.status == Status.GOOD
    return done.data


def test_cfgstring_image_syntax():
    cfg = cfgstring.parse("vol0@vol0-12")
    assert (cfg.volume, cfg.image, cfg.label) == ("vol0", "vol0-12", "vol0@vol0-12")
    assert cfgstring.parse(cfg.dev_config(), subtype=True) == cfg
    assert cfgstring.parse("vol0").image is None
    for bad, why in (
        ("vol0@", "bad image name"),
        ("vol0@-15m", "bad image name"),
        ("vol0@x;mode=sync", "takes no options"),
        ("@x", "bad volume name"),
    ):
        with pytest.raises(CfgStringError, match=why):
            cfgstring.parse(bad)


def test_lun_and_control_share_the_volume(env):
    root, mgr, sims, cfg = env
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    volumes = mgr.store.manager
    assert write(sims[0], 0, b"A" * BS).status == Status.GOOD
    volumes.bookmark("vol0", "before")
    assert write(sims[0], 0, b"B" * BS).status == Status.GOOD
    # The control API sees the LUN's writes and its bookmark.
    assert volumes.get("vol0").read(0, BS) == b"B" * BS
    points = volumes.points("vol0", kind="bookmark")
    assert [p["name"] for p in points] == ["before"]
    # A served volume cannot be removed.
    with pytest.raises(ControlError, match="served by backstore") as err:
        volumes.remove("vol0", confirm=True)
    assert err.value.type == "busy"
    # Detaching keeps the volume open for the control API.
    assert mgr.detach(0)
    assert volumes.get("vol0").read(0, BS) == b"B" * BS
    assert volumes.served_by("vol0") is None


def test_image_lun_serves_the_point_read_only(env):
    root, mgr, sims, cfg = env
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    volumes = mgr.store.manager
    assert write(sims[0], 8, b"old!" * (BS // 4)).status == Status.GOOD
    volumes.bookmark("vol0", "good")
    assert write(sims[0], 8, b"new!" * (BS // 4)).status == Status.GOOD

    name = add_device(root, 1, 1, "img0", "cdp/vol0@good")
    att = mgr.attach(1, name)
    img = sims[1]
    assert read(img, 8, 1) == b"old!" * (BS // 4)
    assert read(sims[0], 8, 1) == b"new!" * (BS // 4)
    # WRITE to a read-only image: DATA PROTECT / WRITE PROTECTED, nothing changes.
    done = write(img, 8, b"X" * BS)
    assert done.status == Status.CHECK_CONDITION
    assert sense_key_asc(done) == (0x7, 0x27, 0x00)
    assert read(img, 8, 1) == b"old!" * (BS // 4)
    # Its own identity: VPD 0x80 serial differs from the volume's.
    serials = []
    for sim in (sims[0], img):
        done = sim.completion(sim.queue(inquiry(evpd=1, page=0x80), data_in=255))
        serials.append(done.data[4 : 4 + done.data[3]])
    assert serials[0] != serials[1]
    # The point was exposed for the backstore only; gone with it.
    exposed = volumes.exposed("vol0")
    assert [e["seq"] for e in exposed] == [att.served.backend.image.seq]
    assert mgr.detach(1)
    assert volumes.exposed("vol0") == []


def test_image_lun_of_a_writable_exposed_image(env):
    root, mgr, sims, cfg = env
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    volumes = mgr.store.manager
    assert write(sims[0], 0, b"v1" * (BS // 2)).status == Status.GOOD
    volumes.bookmark("vol0", "p1")
    ex = volumes.expose("vol0", "p1", writable=True, name="test-failover")
    mgr.attach(1, add_device(root, 1, 1, "img0", "cdp/vol0@test-failover"))
    img = sims[1]
    assert write(img, 0, b"T" * BS).status == Status.GOOD
    assert read(img, 0, 1) == b"T" * BS
    assert read(sims[0], 0, 1) == b"v1" * (BS // 2)  # the volume never sees it
    # Unexposing an image a LUN serves is refused.
    with pytest.raises(ControlError, match="served by backstore"):
        volumes.unexpose(ex["name"])
    assert mgr.detach(1)
    # Explicitly exposed: it stays exposed (with its overlay) after the LUN goes.
    assert [e["name"] for e in volumes.exposed("vol0")] == ["test-failover"]
    assert volumes.exposed("vol0")[0]["written_bytes"] == BS
    volumes.unexpose("test-failover")


def test_image_lun_refusals(env):
    root, mgr, sims, cfg = env
    with pytest.raises(DeviceSetupError, match="does not exist") as err:
        mgr.attach(9, add_device(root, 9, 1, "img0", "cdp/vol0@1"))
    assert err.value.status == -errno.EINVAL
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    with pytest.raises(DeviceSetupError, match="nosuch") as err:
        mgr.attach(1, add_device(root, 1, 1, "img1", "cdp/vol0@nosuch"))
    volumes = mgr.store.manager
    assert volumes.exposed("vol0") == []
    with pytest.raises(DeviceSetupError, match="bytes"):
        mgr.attach(2, add_device(root, 2, 1, "img2", "cdp/vol0@0", size=2 * SIZE))
    # One backstore per image.
    volumes.bookmark("vol0", "b")
    volumes.expose("vol0", "b", name="shared")
    mgr.attach(3, add_device(root, 3, 1, "img3", "cdp/vol0@shared"))
    with pytest.raises(DeviceSetupError, match="already served") as err:
        mgr.attach(4, add_device(root, 4, 1, "img4", "cdp/vol0@shared"))
    assert err.value.status == -errno.EBUSY


def test_check_config_for_images(env):
    root, mgr, sims, cfg = env
    store = mgr.store
    with pytest.raises(CfgStringError, match="does not exist"):
        store.check(cfgstring.parse("vol0@1"))
    mgr.attach(0, add_device(root, 0, 1, "cdp0", cfg))
    assert "sequence number 1" in store.check(cfgstring.parse("vol0@1"))
    store.manager.bookmark("vol0", "bm")
    store.manager.expose("vol0", "bm", writable=True, name="w1")
    assert "exposed image w1" in store.check(cfgstring.parse("vol0@w1"))
    assert "writable" in store.check(cfgstring.parse("vol0@w1"))
    with pytest.raises(CfgStringError, match="bytes"):
        store.check(cfgstring.parse("vol0@w1"), size=SIZE * 2)
    store.manager.unexpose("w1")
