"""Kill the process at every step of the write path, of re-baseline and of resync."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from appliance.engine import record as R
from appliance.engine.drl import DirtyRegionLog
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal

from . import kill_writer as K
from .helpers import reopen

ROOT = Path(__file__).resolve().parents[2]


def run_child(mode, tmp_path, point, n):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.kill_writer", mode, str(tmp_path), point, str(n)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    return proc.returncode


def journal_view(tmp_path) -> bytearray:
    """Replay the raw journal (no catalog, no volume open) onto zeros."""
    meta = json.loads((tmp_path / "state" / "volume.json").read_text())
    j = Journal(
        OsFileIO(),
        str(tmp_path / "secondary" / "journal"),
        uuid.UUID(meta["uuid"]),
        meta["segment_size"],
    )
    view = bytearray(meta["size"])
    for r in j.scan().records:
        if r.kind == R.WRITE:
            view[r.offset : r.offset + r.length] = j.read_payload(r.payload_addr, r.length)
        elif r.kind == R.ZERO:
            view[r.offset : r.offset + r.length] = bytes(r.length)
    j.close()
    return view


@pytest.mark.parametrize(
    "point", ["write.after_drl", "write.after_primary", "journal.after_write", "journal.after_sync"]
)
@pytest.mark.parametrize("n", [1, 7, 40])
def test_drl_never_clear_where_primary_and_journal_differ(tmp_path, point, n):
    check_killed_writes(tmp_path, "writes", point, n)


def check_killed_writes(tmp_path, mode, point, n):
    """The child of ``mode`` killed at the n-th ``point``: no clear DRL bit
    where the primary and the journal differ; after the open, image = primary."""
    rc = run_child(mode, tmp_path, point, n)
    assert rc == -9, "the child was not killed at the fault point"
    meta = json.loads((tmp_path / "state" / "volume.json").read_text())
    primary = (tmp_path / "primary.img").read_bytes()
    view = journal_view(tmp_path)
    drl = DirtyRegionLog(
        OsFileIO(), str(tmp_path / "state" / "drl.bin"), uuid.UUID(meta["uuid"]), meta["size"], K.RS
    )
    differing = {
        r
        for r in range(meta["size"] // K.RS)
        if primary[r * K.RS : (r + 1) * K.RS] != view[r * K.RS : (r + 1) * K.RS]
    }
    assert drl.trusted
    if point in ("write.after_primary", "journal.late_write"):
        assert differing  # the killed write reached the primary, not the journal
    assert differing <= set(drl.dirty()), f"clear bits over differing regions {differing}"
    drl.close()
    # And recovery brings them back into agreement.
    vol = reopen(tmp_path)
    if vol._proc_job is not None:
        vol._proc_job.wait(60)
    assert vol.image().read(0, meta["size"]) == vol.read(0, meta["size"])
    vol.close()


@pytest.mark.parametrize("point", ["journal.late_write", "write.after_primary"])
@pytest.mark.parametrize("n", [1, 9, 40])
def test_a_run_killed_before_its_late_journal_write(tmp_path, point, n):
    """The handler's runs (a late batch): killed after the answers went out
    and before the run's records were written (``journal.late_write``), or
    mid-run on the primary.  The run is on the primary, not in the journal;
    its regions are dirty in the DRL; the open resyncs them (image =
    primary): an acknowledged write is never lost."""
    check_killed_writes(tmp_path, "late", point, n)


@pytest.mark.parametrize(
    "mode,point,n",
    [
        ("rebaseline", "rebaseline.scan", 3),
        ("rebaseline", "rebaseline.scan", 40),  # after the first checkpoint (32 regions)
        ("rebaseline", "rebaseline.copy", 1),
        ("rebaseline", "rebaseline.copy", 2),
        ("resync", "resync.scan", 20),
        ("resync", "resync.copy", 1),
    ],
)
def test_crash_during_procedure_resumes_and_ends_correct(tmp_path, mode, point, n):
    rc = run_child(mode, tmp_path, point, n)
    assert rc == -9
    vol = reopen(tmp_path)
    job = vol._proc_job
    assert job is not None and job.kind == mode
    result = job.wait(60)
    assert result["resumed"]
    if point.endswith("scan") and n > 32:
        assert job.done_units >= 32 * K.RS or result["regions_compared"] == K.SIZE // K.RS
    present = vol.image()
    assert present.read(0, K.SIZE) == vol.read(0, K.SIZE)
    assert not present.suspect
    assert vol.state == "in-sync"
    if mode == "rebaseline":
        assert any(m.fixup for m in vol._maps.level0)
    vol.close()
    assert not os.path.exists(tmp_path / "never")
