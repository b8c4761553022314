"""Every /cdp command, driven with run_cmdline against a real engine behind the socket."""

import os
import time

import pytest

from appliance.control.protocol import ControlError
from appliance.engine import faults
from tests.unit.control.serving import MiB

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def vsh(sh, vol0):
    sh.root.refresh()
    return sh


def test_ls_lists_volumes_with_a_summary(vsh):
    out = vsh.run("ls /")
    assert "o- cdp" in out and "[Volumes: 1]" in out
    assert "o- vol0" in out and "[in-sync, sync, lag 0 s, journal" in out


def test_status(vsh):
    out = vsh.run("/cdp/vol0 status")
    for words in ("state", "in-sync", "RPO lag", "journal", "free of", "oldest point",
                  "baseline", "DRL dirty", "retention", "none (everything is kept)"):  # fmt: skip
        assert words in out
    assert "Status for /cdp: Volumes: 1" in vsh.run("/cdp status")


def test_bookmark_points_unbookmark(vsh):
    assert "Bookmark second is seq" in vsh.run("/cdp/vol0 bookmark name=second")
    out = vsh.run("/cdp/vol0 points")
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "KIND", "NAME", "FLAGS"]
    assert [ln.split()[4] for ln in lines[2:] if "bookmark" in ln] == ["first", "second"]
    out = vsh.run("/cdp/vol0 points kind=bookmark since=second")
    assert len(out.splitlines()) == 3 and "second" in out
    assert "No points." in vsh.run("/cdp/vol0 points until=-1h")
    assert "Deleted bookmark second" in vsh.run("/cdp/vol0 unbookmark name=second")
    assert "second" not in vsh.run("/cdp/vol0 points")


def test_suspect_points_are_flagged(vsh, vol0, tmp_path, client):
    from tests.unit.control.test_ops import wait_job

    vol0.write(MiB, b"1" * 4096)
    vol0.flush()
    vol0.close_map()
    with open(tmp_path / "vol0.img", "r+b") as f:
        f.seek(MiB)
        f.write(b"X" * 4096)
    wait_job(client, client.call("rebaseline", volume="vol0")["id"])
    out = vsh.run("/cdp/vol0 points")
    assert "SUSPECT" in out and "the journal may disagree" in out


def test_restore_shows_progress_and_result(vsh, vol0):
    vol0.write(0, b"z" * 4096)
    vol0.flush()

    def slow(**kw):
        time.sleep(0.6)

    with faults.inject("restore.copy", slow):
        out = vsh.run("/cdp/vol0 restore point=first")
    lines = out.splitlines()
    progress = [ln for ln in lines if ln.startswith("restore-")]
    assert len(progress) >= 2, out  # at least one while running, one at the end
    assert "ETA" in progress[0] and "/4.0 MiB" in progress[0]
    assert progress[-1].startswith("restore-") and "100.0%" in progress[-1]
    assert progress[-1].endswith("done")
    assert "done in" in lines[-1]
    assert vol0.read(0, 4096) == b"a" * 4096


def test_restore_without_waiting_then_wait(vsh, vol0):
    out = vsh.run("/cdp/vol0 restore point=first wait=false")
    assert "Started restore restore-" in out
    job = out.split("Started restore ")[1].split(":")[0]
    out = vsh.run(f"/cdp/vol0 wait job={job}")
    assert "done in" in out


def test_rebaseline_resync_jobs_cancel(vsh):
    assert "done in" in vsh.run("/cdp/vol0 rebaseline")
    assert "done in" in vsh.run("/cdp/vol0 resync")
    out = vsh.run("/cdp/vol0 jobs all=true")
    assert out.splitlines()[0].split() == ["JOB", "VOLUME", "KIND", "STATE", "DONE", "RATE", "ETA"]
    assert "rebaseline-" in out and "resync-" in out
    assert "No jobs." in vsh.run("/cdp/vol0 jobs")
    assert "No jobs." in vsh.run("/cdp jobs")
    job = vsh.run("/cdp/vol0 jobs all=true").split("rebaseline-")[1].split()[0]
    assert "done" in vsh.run(f"/cdp/vol0 cancel job=rebaseline-{job}")


def test_cancel_refused_for_restore(vsh):
    out = vsh.run("/cdp/vol0 restore point=first")
    job = out.split("restore ")[-1].split()[0]
    msg = vsh.fail(f"/cdp/vol0 cancel job={job}")
    assert msg.startswith("a restore cannot be cancelled")


def test_retention(vsh):
    assert "Retention of vol0: none" in vsh.run("/cdp/vol0 retention")
    assert "all:2d,1h:2w" in vsh.run("/cdp/vol0 retention set policy=all:48h,1h:14d")
    assert "all:1d" in vsh.run("/cdp/vol0 retention policy=all:1d")
    assert "all:1d" in vsh.run("/cdp/vol0 retention show")
    out = vsh.run("/cdp/vol0 retention apply")
    assert "retention retention-" in out and "done in" in out
    assert "none" in vsh.run("/cdp/vol0 retention clear")


def test_expose_unexpose(vsh, served):
    out = vsh.run("/cdp/vol0 expose point=first")
    assert "Exposed vol0-" in out and "read-only" in out
    out = vsh.run("/cdp/vol0 expose point=first writable=true name=test")
    assert "Exposed test" in out and "writable" in out
    assert "test: seq" in vsh.run("/cdp/vol0 status")
    assert "vol0-" in vsh.fail("/cdp/vol0 unexpose")
    assert "overlay kept" in vsh.run("/cdp/vol0 unexpose name=test discard=false")
    assert "Unexposed vol0-" in vsh.run("/cdp/vol0 unexpose")


def test_create_delete(vsh, tmp_path):
    out = vsh.run(
        f"/cdp create v2 primary={tmp_path}/v2.img secondary={tmp_path}/v2-sec size=2M mode=async"
    )
    assert "Created volume v2" in out
    assert "o- v2" in vsh.run("ls /cdp")
    assert "confirm=true" in vsh.fail("/cdp delete v2")
    assert "Deleted volume v2" in vsh.run("/cdp delete v2 confirm=true")
    assert "v2" not in vsh.run("ls /cdp")
    assert os.path.exists(tmp_path / "v2.img")


def test_saveconfig_restoreconfig(vsh, tmp_path):
    out = vsh.run("saveconfig")
    assert "CDP configuration saved to" in out and "(1 volumes, 0 exposed images)" in out
    vsh.run("/cdp/vol0 expose point=first name=img")
    path = tmp_path / "saved.json"
    assert str(path) in vsh.run(f"/cdp saveconfig savefile={path}")
    vsh.run("/cdp/vol0 unexpose")
    assert "(1 exposed)" in vsh.run(f"/cdp restoreconfig savefile={path}")
    assert "nothing to change" in vsh.run(f"/cdp restoreconfig savefile={path}")


@pytest.mark.parametrize(
    ("cmd", "words"),
    [
        ("/cdp/vol0 bookmark", "Missing required parameter name"),
        ("/cdp/vol0 bookmark name=first", "bookmark 'first' already exists"),
        ("/cdp/vol0 bookmark name=-x", "bad bookmark name"),
        ("/cdp/vol0 points kind=snap", "kind must be baseline, bookmark, map"),
        ("/cdp/vol0 points since=-5", "relative time"),
        ("/cdp/vol0 restore point=nope", "no bookmark named 'nope'"),
        ("/cdp/vol0 restore point=999999", "not written yet"),
        ("/cdp/vol0 restore", "Missing required parameter point"),
        ("/cdp/vol0 restore point=first color=red", "Unexpected keyword parameter 'color'"),
        ("/cdp/vol0 expose point=first writable=maybe", "writable must be true or false"),
        ("/cdp/vol0 retention set", "retention set needs policy="),
        ("/cdp/vol0 retention policy=often", "bad retention tier"),
        ("/cdp/vol0 retention burn", "action must be show, set, clear, apply"),
        ("/cdp/vol0 retention apply", "no retention policy set"),
        ("/cdp/vol0 cancel job=nope-1", "no job 'nope-1'"),
        ("/cdp/vol0 wait job=nope-1", "no job 'nope-1'"),
        ("/cdp/vol0 unexpose", "no image of vol0 is exposed"),
        ("/cdp/vol0 unbookmark name=zz", "no bookmark named 'zz'"),
        ("/cdp create v3 primary=/tmp/x.img secondary=/tmp/x size=lots", "bad size 'lots'"),
        ("/cdp create vol0 primary=/x secondary=/y size=1M", "volume vol0 exists"),
        ("/cdp delete nope confirm=true", "no volume named 'nope'"),
        ("/cdp/nope status", "No such path /cdp/nope"),
        ("/cdp/vol0 frobnicate", "Command not found frobnicate"),
    ],
)
def test_errors_are_one_line(vsh, cmd, words):
    assert words in vsh.fail(cmd)


def test_unreachable_daemon(sh, served):
    served.stop()
    sh.root.refresh()
    assert "cannot reach the cdp daemon" in sh.run("ls /")
    assert "cannot reach the cdp daemon" in sh.fail("/cdp jobs")


def test_not_root_refuses_changes(vsh):
    vsh.root.as_root = False
    assert "you are not root" in vsh.fail("/cdp/vol0 bookmark name=x")
    assert "in-sync" in vsh.run("/cdp/vol0 status")


def test_cdp_survives_refresh(vsh):
    vsh.run("refresh")
    vsh.run("set global tree_max_depth=0")
    assert "o- vol0" in vsh.run("ls /")


class FakeLio:
    """The LIO side of image LUNs, recorded (the VM tier runs the real one)."""

    def __init__(self, served=None, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail
        self.served = served  # the ServerThread: mark the image served, as the daemon would

    def export(self, volume, image, size, target, lun=None):
        from targetcli_cdp.compat import ExecutionError

        self.calls.append(("export", volume, image, size, target, lun))
        if self.fail:
            raise ExecutionError(self.fail)
        self.served.manager.attach_image(volume, image, f"user/1/{image}")
        return f"{target}/tpg1/lun0"

    def unexport(self, volume, image):
        self.calls.append(("unexport", volume, image))
        self.served.manager.release(image)
        return [f"iqn.x/tpg1/lun0 ({image})"]


def test_expose_as_a_lun_and_unexpose(vsh, served):
    lio = FakeLio(served)
    vsh.root.cdp_lio = lio
    vsh.root.refresh()
    out = vsh.run("/cdp/vol0 expose point=first name=img1 target=iqn.2003-01.org.x:t1 lun=3")
    assert "Exposed img1" in out and "LUN iqn.2003-01.org.x:t1/tpg1/lun0" in out
    size = served.manager.get("vol0").size
    assert lio.calls == [("export", "vol0", "img1", size, "iqn.2003-01.org.x:t1", "3")]
    # The daemon refuses to close an image a backstore serves...
    with pytest.raises(ControlError, match="served by backstore"):
        served.manager.unexpose("img1")
    # ...so the shell deletes the LUN and backstore first.
    out = vsh.run("/cdp/vol0 unexpose name=img1")
    assert lio.calls[-1] == ("unexport", "vol0", "img1")
    assert "Deleted iqn.x/tpg1/lun0 (img1)." in out and "Unexposed img1." in out
    assert served.manager.exposed("vol0") == []


def test_expose_as_a_lun_failure_leaves_nothing_exposed(vsh, served):
    vsh.root.cdp_lio = FakeLio(served, fail="no iSCSI target iqn.nope with a tpg1")
    vsh.root.refresh()
    msg = vsh.fail("/cdp/vol0 expose point=first name=img2 target=iqn.nope")
    assert msg == "no iSCSI target iqn.nope with a tpg1 (image not exposed)"
    assert served.manager.exposed("vol0") == []


def test_expose_target_without_rtslib_is_one_clear_line(vsh, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rtslib(name, *a, **kw):
        if name == "rtslib_fb":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_rtslib)
    msg = vsh.fail("/cdp/vol0 expose point=first name=img3 target=iqn.x")
    assert msg.startswith("rtslib-fb is not installed here") and "(image not exposed)" in msg
