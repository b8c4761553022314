"""VolumeManager beyond single ops: suspect flags, configuration round trips, restarts."""

import json
import os
import stat

import pytest

from appliance.control.client import ControlClient
from appliance.control.manager import VolumeManager
from appliance.control.protocol import ControlError

from .serving import MiB, ServerThread, make_volume
from .test_ops import wait_job


def test_suspect_flags_match_the_engine(served, client, vol0, tmp_path):
    """A change behind the engine's back, found by a re-baseline: the points of the
    interval are flagged suspect, exactly as vol.image(seq).suspect says."""
    for i in range(3):
        vol0.write(i * MiB, bytes([i + 1]) * 4096)
        vol0.flush()
        vol0.close_map()
    with open(tmp_path / "vol0.img", "r+b") as f:  # the primary drifts
        f.seek(MiB)
        f.write(b"X" * 4096)
    job = client.call("rebaseline", volume="vol0")
    assert wait_job(client, job["id"])["state"] == "done"
    vol0.bookmark("after")
    points = client.call("points", volume="vol0")
    engine = [vol0.image(seq=p["seq"], _internal=True).suspect for p in points]
    assert [p["suspect"] for p in points] == engine
    assert any(engine), "the re-baseline should have flagged some points"
    assert points[-1]["suspect"] is False


def test_saveconfig_restoreconfig_round_trip(served, client, vol0, tmp_path):
    client.call("retention", volume="vol0", policy="all:48h,1h:14d")
    client.call("expose", volume="vol0", point="first", name="ro")
    client.call("expose", volume="vol0", point="first", writable=True, name="rw")
    served.manager.images.get("rw").image.write(0, b"w" * 512)
    out = client.call("saveconfig")
    assert out == {"file": str(tmp_path / "root" / "cdp.json"), "volumes": 1, "exposed": 2}
    doc = json.loads(open(out["file"]).read())
    assert doc["format"] == 1
    (v,) = doc["volumes"]
    assert v["name"] == "vol0" and v["mode"] == "sync" and v["retention"] == "all:2d,1h:2w"
    assert v["primary"] == str(tmp_path / "vol0.img")
    assert {e["name"]: e["writable"] for e in doc["exposed"]} == {"ro": False, "rw": True}
    # Change everything, then restore the saved configuration.
    client.call("retention", volume="vol0", clear=True)
    client.call("unexpose", name="ro")
    client.call("unexpose", name="rw", discard=False)
    back = client.call("restoreconfig")
    assert back["errors"] == [] and back["retention"] == ["vol0"]
    assert sorted(back["exposed"]) == ["ro", "rw"]
    assert client.call("retention", volume="vol0")["policy"] == "all:2d,1h:2w"
    assert served.manager.images.get("rw").image.read(0, 512) == b"w" * 512
    # Already as saved: nothing to do.
    again = client.call("restoreconfig")
    assert again["exposed"] == [] and again["retention"] == [] and again["errors"] == []


def test_saveconfig_to_a_named_file(client, vol0, tmp_path):
    path = str(tmp_path / "etc" / "cdp" / "saved.json")
    assert client.call("saveconfig", file=path)["file"] == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n]


def test_reboot_reopens_volumes_and_reexposes_saved_images(tmp_path):
    root = tmp_path / "root"
    srv = ServerThread(root).start()
    try:
        make_volume(srv.manager, tmp_path)
        vol = srv.manager.get("vol0")
        vol.write(0, b"a" * 4096)
        vol.bookmark("b")
        c = ControlClient(srv.path)
        c.call("expose", volume="vol0", point="b", writable=True, name="img")
        srv.manager.images.get("img").image.write(0, b"w" * 512)
        c.call("saveconfig")
    finally:
        srv.stop()
    mgr = VolumeManager(str(root), boot_id="another-boot")
    try:
        out = mgr.start()
        assert out["exposed"] == ["img"] and out["errors"] == []
        assert mgr.images.get("img").image.read(0, 512) == b"w" * 512
        assert [v["name"] for v in mgr.volumes()] == ["vol0"]
    finally:
        mgr.close()


def _running(root) -> dict:
    doc = json.loads((root / "exposed.json").read_text())
    return {e["name"]: (e["seq"], e["writable"]) for e in doc["exposed"]}


def test_restart_in_the_same_boot_reexposes_without_saveconfig(tmp_path):
    """Regression (story step 5): a daemon killed after ``expose`` and before
    any ``saveconfig`` came back without the image, so LIO's ``vol@image``
    backstore could no longer be served.  Exposures are durable when
    ``expose`` returns; a restart in the same boot brings them back, a reboot
    (another boot id) does not: then the saved configuration rules."""
    root = tmp_path / "root"
    mgr = VolumeManager(str(root), boot_id="boot-1")
    mgr.start()
    try:
        make_volume(mgr, tmp_path)
        vol = mgr.get("vol0")
        vol.write(0, b"a" * 4096)
        vol.bookmark("b")
        vol.write(0, b"z" * 4096)
        vol.flush()
        ro = mgr.expose("vol0", "b", name="ro")
        mgr.expose("vol0", "b", writable=True, name="rw")
        mgr.images.get("rw").image.write(512, b"w" * 512)
        mgr.expose("vol0", "b", name="gone")
        mgr.unexpose("gone")
        mgr.attach_image("vol0", "b", "user/0/implicit")  # a backstore's own: not kept
        assert _running(root) == {"ro": (ro["seq"], False), "rw": (ro["seq"], True)}
        assert stat.S_IMODE(os.stat(root / "exposed.json").st_mode) == 0o600
        mgr.images.flush()
    finally:
        mgr.close()
    again = VolumeManager(str(root), boot_id="boot-1")
    try:
        out = again.start()
        assert out == {"file": None, "errors": []}  # no saveconfig was ever made
        assert sorted(e["name"] for e in again.exposed()) == ["ro", "rw"]
        assert again.images.get("ro").image.read(0, 4096) == b"a" * 4096
        assert again.images.get("rw").image.read(0, 1024) == b"a" * 512 + b"w" * 512
        again.attach_image("vol0", "ro", "user/1/vol0@ro")
        assert again.served_by("ro") == "user/1/vol0@ro"
    finally:
        again.close()
    rebooted = VolumeManager(str(root), boot_id="boot-2")
    try:
        rebooted.start()
        assert rebooted.exposed() == []
        assert _running(root) == {}
    finally:
        rebooted.close()


def test_an_unreadable_exposures_file_is_logged_not_fatal(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "exposed.json").write_text("{not json")
    mgr = VolumeManager(str(root), boot_id="b")
    try:
        mgr.start()
        assert mgr.exposed() == [] and _running(root) == {}
    finally:
        mgr.close()


def test_expose_is_refused_when_the_exposures_file_cannot_be_written(tmp_path):
    root = tmp_path / "root"
    mgr = VolumeManager(str(root), boot_id="b")
    mgr.start()
    try:
        make_volume(mgr, tmp_path)
        mgr.get("vol0").bookmark("b")
        os.unlink(root / "exposed.json")
        os.mkdir(root / "exposed.json")  # rename over a folder fails
        with pytest.raises(OSError):
            mgr.expose("vol0", "b", name="x")
        assert mgr.exposed() == []
    finally:
        mgr.close()


def test_restoreconfig_creates_missing_volumes_and_reports_conflicts(tmp_path):
    cfg = tmp_path / "cdp.json"
    cfg.write_text(
        json.dumps(
            {
                "format": 1,
                "volumes": [
                    {
                        "name": "v1",
                        "uuid": "0",
                        "primary": str(tmp_path / "v1.img"),
                        "secondary": str(tmp_path / "v1-sec"),
                        "size": MiB,
                        "block_size": 512,
                        "mode": "async",
                        "retention": "all:1d",
                    }
                ],
                "exposed": [{"name": "gone", "volume": "v9", "seq": 1, "writable": False}],
            }
        )
    )
    mgr = VolumeManager(str(tmp_path / "root"), config_file=str(cfg))
    try:
        assert mgr.start()["errors"][0].startswith("volume v1: in the configuration but not")
        out = mgr.restoreconfig()
        assert out["created"] == ["v1"] and out["retention"] == ["v1"]
        assert out["errors"] == ["image gone: no volume named 'v9' (volumes: v1)"]
        assert mgr.status("v1")["mode"] == "async"
        doc = json.loads(cfg.read_text())
        doc["volumes"][0]["secondary"] = "/elsewhere"
        cfg.write_text(json.dumps(doc))
        errors = mgr.restoreconfig()["errors"]
        assert "volume v1: on this appliance uuid is" in errors[0]
    finally:
        mgr.close()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json", "is not JSON"),
        ('{"format": 9}', "format 9 not supported"),
        ('{"format": 1, "volumes": {}}', "must be lists"),
        ('{"format": 1, "volumes": [{"name": "x"}]}', "'uuid' missing"),
    ],
)
def test_bad_configuration_files(tmp_path, content, words):
    cfg = tmp_path / "cdp.json"
    cfg.write_text(content)
    mgr = VolumeManager(str(tmp_path / "root"), config_file=str(cfg))
    try:
        with pytest.raises(ControlError, match=words):
            mgr.start()
    finally:
        mgr.close()


def test_a_volume_that_fails_to_open_is_listed_not_fatal(tmp_path):
    mgr = VolumeManager(str(tmp_path / "root"))
    make_volume(mgr, tmp_path)
    mgr.close()
    os.unlink(tmp_path / "vol0.img")
    mgr = VolumeManager(str(tmp_path / "root"))
    try:
        mgr.start()
        (v,) = mgr.volumes()
        assert v["state"] == "failed" and "primary" in v["summary"]
        with pytest.raises(ControlError) as info:
            mgr.status("vol0")
        assert info.value.type == "io_error" and "failed to open" in str(info.value)
        assert mgr.remove("vol0", confirm=True)["removed"] is True
        assert mgr.volumes() == []
    finally:
        mgr.close()


def test_baseline_job_is_listed(tmp_path):
    primary = tmp_path / "full.img"
    primary.write_bytes(os.urandom(4 * MiB))
    mgr = VolumeManager(str(tmp_path / "root"))
    try:
        mgr.create("full", str(primary), str(tmp_path / "full-sec"))
        jobs = mgr.list_jobs(all=True)
        assert [j["kind"] for j in jobs] == ["baseline"]
        with pytest.raises(ControlError) as info:
            mgr.cancel(jobs[0]["id"])
        assert info.value.type == "not_cancellable"
        mgr.get("full").wait_baseline(30)
        assert mgr.job(jobs[0]["id"])["state"] == "done"
    finally:
        mgr.close()
