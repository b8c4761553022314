"""Every op of the protocol, through the client, against the real engine on files."""

import os
import time

import pytest

from appliance.control.protocol import ControlError
from appliance.control.server import OPS

from .serving import MiB


def err(client, op, **args) -> ControlError:
    with pytest.raises(ControlError) as info:
        client.call(op, **args)
    assert "\n" not in str(info.value)
    return info.value


def wait_job(client, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        j = client.call("job", job=job_id)
        if j["state"] not in ("running", "cancelling"):
            return j
        assert time.monotonic() < deadline, j
        time.sleep(0.05)


def test_hello_lists_every_op(client):
    out = client.call("hello")
    assert out["protocol"] == 1
    assert out["ops"] == sorted(OPS)


def test_create_volumes_status(client, served, tmp_path):
    out = client.call(
        "create",
        volume="v1",
        primary=str(tmp_path / "v1.img"),
        secondary=str(tmp_path / "v1-sec"),
        size=2 * MiB,
        mode="async",
    )
    assert out["name"] == "v1" and out["mode"] == "async" and out["size"] == 2 * MiB
    assert os.path.isdir(tmp_path / "root" / "volumes" / "v1")
    (listed,) = client.call("volumes")
    assert listed["name"] == "v1" and listed["state"] == "in-sync"
    assert "in-sync, async, lag 0 s, journal" in listed["summary"]
    st = client.call("status", volume="v1")
    for key in (
        "state", "mode", "lag_seconds", "lag_records", "journal_bytes", "secondary_free_bytes",
        "oldest_point", "newest_point", "drl_dirty_regions", "jobs", "exposed", "retention",
    ):  # fmt: skip
        assert key in st
    assert st["oldest_point"]["kind"] == "baseline"
    assert st["primary"] == str(tmp_path / "v1.img")


def test_create_refusals(client, vol0, tmp_path):
    e = err(client, "create", volume="vol0", primary="/x", secondary="/y", size=MiB)
    assert e.type == "exists"
    e = err(client, "create", volume="bad name", primary="/x", secondary="/y")
    assert e.type == "bad_argument" and "bad volume name" in str(e)
    e = err(client, "create", volume="v2", primary="rel.img", secondary="/y")
    assert e.type == "bad_argument" and "absolute" in str(e)
    e = err(
        client, "create", volume="v2", primary=str(tmp_path / "v2.img"),
        secondary=str(tmp_path / "v2-sec"),
    )  # fmt: skip
    assert e.type == "bad_argument" and "size is required" in str(e)
    assert not os.path.exists(tmp_path / "root" / "volumes" / "v2")
    assert not os.path.exists(tmp_path / "v2-sec")
    e = err(
        client, "create", volume="v2", primary=str(tmp_path / "v2.img"),
        secondary=str(tmp_path / "v2-sec"), size=MiB, mode="fast",
    )  # fmt: skip
    assert e.type == "bad_argument" and "mode 'fast'" in str(e)


@pytest.mark.parametrize(
    ("op", "args", "words"),
    [
        ("status", {}, "status needs argument 'volume' (volume)"),
        ("status", {"volume": 3}, "volume must be a string, not int"),
        ("status", {"volume": "vol0", "verbose": True}, "status takes no argument 'verbose'"),
        ("points", {"volume": "vol0", "limit": "10"}, "limit must be an integer"),
        ("points", {"volume": "vol0", "limit": True}, "limit must be an integer"),
        ("restore", {"volume": "vol0", "point": 1.5}, "point must be a point name"),
        ("expose", {"volume": "vol0", "point": 1, "writable": "yes"}, "true or false"),
        ("bookmark", {"volume": "vol0"}, "bookmark needs argument 'name'"),
        ("points", {"volume": "vol0", "kind": "snapshot"}, "bad kind 'snapshot'"),
        ("points", {"volume": "vol0", "limit": 0}, "limit 0"),
        ("points", {"volume": "vol0", "since": "-5"}, "relative time"),
        ("restore", {"volume": "vol0", "point": "-1x"}, "bad point"),
        ("bookmark", {"volume": "vol0", "name": "-x"}, "bad bookmark name"),
        ("bookmark", {"volume": "vol0", "name": "123"}, "not all digits"),
        ("retention", {"volume": "vol0", "policy": "sometimes"}, "bad retention tier"),
        ("retention", {"volume": "vol0", "policy": "all:1d", "clear": True}, "not both"),
        ("remove", {"volume": "vol0"}, "confirm=true"),
        ("expose", {"volume": "vol0", "point": "first", "name": "a b"}, "bad image name"),
    ],
)
def test_bad_arguments(client, vol0, op, args, words):
    e = err(client, op, **args)
    assert e.type == "bad_argument", e.type
    assert words in str(e)


@pytest.mark.parametrize(
    ("op", "args", "etype", "words"),
    [
        ("status", {"volume": "nope"}, "not_found", "no volume named 'nope' (volumes: vol0)"),
        ("restore", {"volume": "vol0", "point": "nope"}, "not_found", "no bookmark named 'nope'"),
        ("points", {"volume": "vol0", "since": "nope"}, "not_found", "no bookmark named 'nope'"),
        ("restore", {"volume": "vol0", "point": 999999}, "not_available", "not written yet"),
        ("expose", {"volume": "vol0", "point": "-3650d"}, "not_available", "no point at or"),
        ("bookmark", {"volume": "vol0", "name": "first"}, "exists", "already exists"),
        ("job", {"job": "restore-99"}, "not_found", "no job 'restore-99'"),
        ("cancel", {"job": "x"}, "not_found", "no job"),
        ("unexpose", {"name": "img"}, "not_found", "no exposed image named 'img'"),
        ("unexpose", {"volume": "vol0"}, "not_found", "no image of vol0 is exposed"),
        ("delete_bookmark", {"volume": "vol0", "name": "zz"}, "not_found", "no bookmark"),
        ("restoreconfig", {"file": "/nonexistent/cdp.json"}, "not_found", "no cdp configuration"),
    ],
)
def test_refusals(client, vol0, op, args, etype, words):
    e = err(client, op, **args)
    assert e.type == etype, (e.type, str(e))
    assert words in str(e)


def test_bookmark_and_points(client, vol0):
    p = client.call("bookmark", volume="vol0", name="second")
    assert p["kind"] == "bookmark" and p["name"] == "second" and p["suspect"] is False
    pts = client.call("points", volume="vol0")
    assert [x["kind"] for x in pts][0] == "baseline"
    names = [x["name"] for x in pts if x["kind"] == "bookmark"]
    assert names == ["first", "second"]
    assert all(x["time_iso"].endswith("Z") for x in pts)
    first_seq = next(x["seq"] for x in pts if x["name"] == "first")
    since = client.call("points", volume="vol0", since="first")
    assert since[0]["seq"] == first_seq
    assert client.call("points", volume="vol0", until=first_seq)[-1]["seq"] == first_seq
    assert [x["name"] for x in client.call("points", volume="vol0", kind="bookmark")] == names
    assert len(client.call("points", volume="vol0", limit=1)) == 1
    assert client.call("points", volume="vol0", since="-1h") == pts
    assert client.call("points", volume="vol0", until="-1h") == []
    client.call("delete_bookmark", volume="vol0", name="second")
    kinds = client.call("points", volume="vol0", kind="bookmark")
    assert [x["name"] for x in kinds] == ["first"]


def test_restore_job_progress_and_result(client, vol0):
    vol0.write(0, b"z" * 8192)
    vol0.flush()
    job = client.call("restore", volume="vol0", point="first")
    assert job["kind"] == "restore" and job["id"].startswith("restore-")
    for key in ("progress", "done_bytes", "total_bytes", "rate_bytes_per_s", "eta_seconds"):
        assert key in job
    assert job["total_bytes"] == vol0.size and job["cancellable"] is False
    done = wait_job(client, job["id"])
    assert done["state"] == "done" and done["progress"] == 1.0
    assert done["result"]["target_seq"] > 0
    assert vol0.read(0, 8192) == b"a" * 4096 + bytes(4096)
    assert client.call("jobs", volume="vol0") == []
    assert [j["id"] for j in client.call("jobs", all=True)] == [job["id"]]
    e = err(client, "cancel", job=job["id"])
    assert e.type == "not_cancellable"


def test_restore_roll_forward(client, vol0):
    seq_first = client.call("points", volume="vol0", kind="bookmark")[0]["seq"]
    later = client.call("bookmark", volume="vol0", name="later")["seq"]
    vol0.write(0, b"q" * 4096)
    vol0.flush()
    job = client.call("restore", volume="vol0", point=seq_first, roll_forward_to="later")
    assert wait_job(client, job["id"])["result"]["target_seq"] == later
    assert vol0.read(4096, 4096) == b"b" * 4096
    e = err(client, "restore", volume="vol0", point="later", roll_forward_to=seq_first)
    assert e.type in ("bad_argument", "busy")


def test_resync_rebaseline_cancel(client, vol0):
    job = client.call("rebaseline", volume="vol0")
    assert job["kind"] == "rebaseline" and job["cancellable"] is True
    out = client.call("cancel", job=job["id"])
    assert out["state"] in ("cancelling", "cancelled", "done")
    wait_job(client, job["id"])
    job = client.call("resync", volume="vol0")
    assert wait_job(client, job["id"])["state"] == "done"


def test_busy(client, vol0):
    vol0.write(0, b"z" * 4096)
    job = client.call("restore", volume="vol0", point="first")
    e = None
    try:
        client.call("rebaseline", volume="vol0")
    except ControlError as exc:
        e = exc
    wait_job(client, job["id"])
    if e is not None:  # the restore of a 4 MiB volume may already be done
        assert e.type == "busy" and "restore is" in str(e)


def test_retention(client, vol0):
    assert client.call("retention", volume="vol0")["policy"] is None
    out = client.call("retention", volume="vol0", policy="all:48h,1h:14d")
    assert out["policy"] == "all:2d,1h:2w"
    out = client.call("retention", volume="vol0", apply=True)
    assert out["job"]["kind"] == "retention"
    wait_job(client, out["job"]["id"])
    assert client.call("retention", volume="vol0", clear=True)["policy"] is None
    e = err(client, "retention", volume="vol0", apply=True)
    assert e.type == "bad_argument" and "no retention policy" in str(e)


def test_expose_unexpose(client, vol0, served):
    ro = client.call("expose", volume="vol0", point="first")
    assert ro["name"] == f"vol0-{ro['seq']}" and ro["writable"] is False
    assert served.manager.images.get(ro["name"]).image.read(0, 4096) == b"a" * 4096
    rw = client.call("expose", volume="vol0", point="first", writable=True, name="test")
    assert rw["scratch"] == "test" and rw["written_bytes"] == 0
    img = served.manager.images.get("test").image
    img.write(0, b"w" * 512)
    assert vol0.read(0, 512) == b"a" * 512
    assert client.call("expose", volume="vol0", point="first")["name"] == ro["name"] + "-2"
    e = err(client, "expose", volume="vol0", point="first", name="test")
    assert e.type == "exists"
    e = err(client, "unexpose", volume="vol0")
    assert e.type == "bad_argument" and "name one" in str(e)
    assert len(client.call("exposed", volume="vol0")) == 3
    assert client.call("status", volume="vol0")["exposed"][0]["name"] == "test"
    e = err(client, "remove", volume="vol0", confirm=True)
    assert e.type == "busy" and "exposed images" in str(e)
    out = client.call("unexpose", name="test", discard=False)
    assert out["discarded"] is False
    scratch = os.path.join(vol0.state_dir, "scratch", "test")
    assert os.path.exists(scratch)
    client.call("expose", volume="vol0", point=rw["seq"], writable=True, name="test")
    assert served.manager.images.get("test").image.read(0, 512) == b"w" * 512
    assert client.call("unexpose", name="test")["discarded"] is True
    assert not os.path.exists(scratch)
    client.call("unexpose", name=ro["name"])
    client.call("unexpose", volume="vol0")
    assert client.call("exposed") == []


def test_remove(client, vol0, tmp_path):
    out = client.call("remove", volume="vol0", confirm=True)
    assert out["removed"] is True
    assert client.call("volumes") == []
    assert not os.path.exists(tmp_path / "root" / "volumes" / "vol0")
    assert not os.listdir(tmp_path / "vol0-sec")
    assert os.path.getsize(tmp_path / "vol0.img") == 4 * MiB  # the primary stays
