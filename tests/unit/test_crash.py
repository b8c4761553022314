"""SIGKILL mid-stream, torn tails, and a lost catalog."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from appliance.engine import ProtectedVolume, faults, record
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, segment_path

from . import crash_writer as W
from .helpers import make_volume, pattern, reopen

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_and_kill(tmp_path, seed: int, min_acks: int) -> tuple[int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.crash_writer", str(tmp_path), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = acked = 0
    acks = 0
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            word, num = line.split()
            if word == "READY":
                first = int(num)
            else:
                acked = int(num)
                acks += 1
            if acks >= min_acks:
                time.sleep(random.Random(seed).random() * 0.05)
                break
            assert time.monotonic() < deadline, "writer too slow"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert first and acked, "writer never acknowledged anything"
    return first, acked


def journal_end(tmp_path) -> int:
    import json
    import uuid

    from appliance.engine.fileio import OsFileIO
    from appliance.engine.journal import Journal

    meta = json.loads((tmp_path / "state" / "volume.json").read_text())
    j = Journal(
        OsFileIO(),
        str(tmp_path / "secondary" / "journal"),
        uuid.UUID(meta["uuid"]),
        meta["segment_size"],
    )
    return j.scan().last_seq


def model_upto(seed, first, last_seq) -> tuple[bytearray, list[bytearray]]:
    """The model after every write up to last_seq, and per block all later candidates."""
    model = bytearray(W.SIZE)
    for i in range(last_seq - first + 1):
        off, ln = W.plan(seed, i)
        model[off : off + ln] = pattern(i, ln)
    return model


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_loses_no_acknowledged_write(tmp_path, seed):
    first, acked = run_and_kill(tmp_path, seed, min_acks=3 + seed)
    last = journal_end(tmp_path)  # the journal's valid end after the kill
    assert last >= acked
    gate = threading.Event()
    with faults.inject("resync.scan", lambda index, job: gate.wait(30)):
        vol = reopen(tmp_path)
        # The unclean stop left dirty DRL regions: a resync runs by itself and
        # journals what reached the primary but not the journal.
        assert vol.state == "resyncing"
        gate.set()
        vol._proc_job.wait(60)
    assert vol.state == "in-sync"
    journaled = model_upto(seed, first, last)
    # The journal holds exactly a prefix (no holes) up to its end.
    assert vol.image(seq=last).read(0, W.SIZE) == bytes(journaled)
    # After the resync, the present image is the live volume, and it is not suspect.
    present = vol.image()
    assert not present.suspect
    assert present.read(0, W.SIZE) == vol.read(0, W.SIZE)
    # Every acknowledged write is in the live volume, unless a later write (acked
    # or not) covered the same bytes; check block by block.
    acked_model = model_upto(seed, first, acked)
    live = vol.read(0, W.SIZE)
    later = {}
    for i in range(acked - first + 1, acked - first + 1 + 4096):
        off, ln = W.plan(seed, i)
        for b in range(off, off + ln, W.BS):
            later.setdefault(b, []).append(pattern(i, ln)[b - off : b - off + W.BS])
    for b in range(0, W.SIZE, W.BS):
        got = live[b : b + W.BS]
        if got != acked_model[b : b + W.BS]:
            assert got in later.get(b, []), f"block {b}: acknowledged data lost"
    # Every acknowledged point reads back exactly.
    for seq in (first, (first + acked) // 2, acked):
        assert vol.image(seq=seq).read(0, W.SIZE) == bytes(model_upto(seed, first, seq))
    # New writes after recovery get fresh sequence numbers past any handed out.
    s = vol.write(0, b"n" * 512)
    assert s > last
    vol.close()


def last_record(tmp_path, uuid, segment_size) -> tuple[str, int, int]:
    """The journal's last record: its segment file, where it starts and ends
    (segments are written ahead with zeros: the file does not end there)."""
    jdir = tmp_path / "secondary" / "journal"
    rec = Journal(OsFileIO(), str(jdir), uuid, segment_size).scan().records[-1]
    segno, start = record.jsplit(rec.addr)
    end = start + record.RECORD_HEADER_SIZE + rec.payload_len
    return segment_path(str(jdir), segno), start, end


@pytest.mark.parametrize(
    "damage",
    ["truncate-payload", "truncate-header", "flip-payload", "flip-header", "garbage-after"],
)
def test_torn_tail_is_cut_off_and_never_served(tmp_path, damage):
    vol = make_volume(tmp_path, size=1 << 20)
    good = vol.write(0, b"g" * 4096)
    vol.flush()
    bad = vol.write(0, b"B" * 4096)  # the record we damage: the journal's last
    vol.close()
    seg, rec_start, size = last_record(tmp_path, vol.uuid, vol.segment_size)
    with open(seg, "r+b") as f:
        if damage == "truncate-payload":
            f.truncate(size - 100)
        elif damage == "truncate-header":
            f.truncate(rec_start + 30)
        elif damage == "flip-payload":
            f.seek(size - 10)
            f.write(b"X")
        elif damage == "flip-header":
            f.seek(rec_start + 25)
            f.write(b"\x7f")
        elif damage == "garbage-after":
            f.seek(size)
            f.write(os.urandom(3000))
    vol = reopen(tmp_path)
    if damage == "garbage-after":
        assert vol.last_seq == bad  # garbage after a valid record changes nothing
        assert vol.image().read(0, 4096) == b"B" * 4096
    else:
        assert vol.last_seq == good
        assert vol.image().read(0, 4096) == b"g" * 4096
        with pytest.raises(LookupError):
            vol.image(seq=bad)
    s = vol.write(512, b"n" * 512)
    vol.close()
    vol = reopen(tmp_path)  # the cut tail stays behind; nothing after it is lost
    assert vol.image(seq=s).read(512, 512) == b"n" * 512
    vol.close()


def test_catalog_loss_rebuilds_identical_images(tmp_path):
    vol = make_volume(tmp_path, size=2 << 20, map_records=5)
    rnd = random.Random(7)
    seqs = []
    for i in range(120):
        off = rnd.randrange(0, (2 << 20) // 512 - 16) * 512
        seqs.append(vol.write(off, pattern(i, rnd.choice([512, 4096, 8192]))))
        if i % 40 == 0:
            vol.bookmark(f"m{i}")
    vol.flush()
    picks = seqs[::13] + [seqs[-1]]
    before = {s: vol.image(seq=s).read(0, 2 << 20) for s in picks}
    points = vol.points()
    vol.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / "state" / f"catalog.sqlite{suffix}"
        if p.exists():
            p.unlink()
    vol = reopen(tmp_path, map_records=5)
    assert vol._catalog.integrity_check() == "ok"
    for s in picks:
        assert vol.image(seq=s).read(0, 2 << 20) == before[s]
    assert [p for p in vol.points() if p.kind == "bookmark"] == [
        p for p in points if p.kind == "bookmark"
    ]
    vol.close()


def test_damaged_catalog_is_set_aside_and_rebuilt(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20)
    s = vol.write(0, b"q" * 512)
    vol.close()
    cat = tmp_path / "state" / "catalog.sqlite"
    cat.write_bytes(b"this is not a database" * 100)
    vol = reopen(tmp_path)
    assert vol.image(seq=s).read(0, 512) == b"q" * 512
    assert any(p.name.startswith("catalog.sqlite.bad-") for p in (tmp_path / "state").iterdir())
    vol.close()


def test_newer_catalog_schema_refused(tmp_path):
    import sqlite3

    from appliance.engine import CatalogVersionError

    make_volume(tmp_path, size=1 << 20).close()
    c = sqlite3.connect(tmp_path / "state" / "catalog.sqlite")
    c.execute("PRAGMA user_version = 99")
    c.close()
    with pytest.raises(CatalogVersionError, match="version 99 is newer"):
        reopen(tmp_path)


def test_segment_of_another_volume_refused(tmp_path):
    from appliance.engine import JournalCorrupt

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_volume(tmp_path / "a", size=1 << 20)
    a.write(0, b"a" * 512)
    a.close()
    b = make_volume(tmp_path / "b", size=1 << 20)
    b.write(0, b"b" * 512)
    b.close()
    ja, jb = (tmp_path / x / "secondary" / "journal" for x in "ab")
    seg = sorted(jb.iterdir())[0]
    os.replace(sorted(ja.iterdir())[0], seg.parent / "tmp")
    os.replace(seg, ja / seg.name)
    with pytest.raises(JournalCorrupt, match="belongs to volume"):
        ProtectedVolume.open(str(tmp_path / "a" / "state"))
