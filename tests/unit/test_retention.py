"""Retention: policy syntax, fading out, space reclaimed, kept points unchanged."""

import json
import os
import uuid

import pytest

from appliance.engine import InvalidArgument, PointNotAvailable
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, list_segments
from appliance.engine.retention import Policy

from .helpers import make_volume, pattern, reopen

SIZE = 1 << 20
CHUNK = 256 << 10


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("all:48h,1h:14d,1d:90d", "all:2d,1h:2w,1d:90d"),
        ("all:30m", "all:30m"),
        (" all:2d , 1d:8w , bookmarks:52w", "all:2d,1d:8w,bookmarks:52w"),
        ("1h:1d", "1h:1d"),
    ],
)
def test_policy_syntax(text, canonical):
    assert str(Policy.parse(text)) == canonical
    assert str(Policy.parse(canonical)) == canonical


@pytest.mark.parametrize(
    "bad,word",
    [
        ("", "empty"),
        ("all", "<every>:<keep>"),
        ("all:3x", "bad duration"),
        ("all:2d,1h:1d", "keep longer"),
        ("1d:1h", "cannot be kept"),
        ("1h:2d,all:3d", "keep longer"),
    ],
)
def test_policy_errors(bad, word):
    with pytest.raises(InvalidArgument, match=word):
        Policy.parse(bad)


def phases(vol, n):
    """n full overwrites of the volume, each closing its own delta map."""
    ends = []
    for k in range(n):
        for off in range(0, SIZE, CHUNK):
            vol.write(off, pattern(100 * k + off // CHUNK, CHUNK))
        vol.flush()
        vol.close_map()
        ends.append(
            (vol._maps.level0[-1].last_seq, vol._maps.level0[-1].last_time_ns, vol.read(0, SIZE))
        )
    return ends


def live_segment_bytes(tmp_path):
    jdir = tmp_path / "secondary" / "journal"
    return sum((jdir / f"{s:016x}.seg").stat().st_size for s in list_segments(str(jdir)))


def segments_with_only(tmp_path, max_seq):
    """Bytes of the segments whose records all have seq <= max_seq."""
    meta = json.loads((tmp_path / "state" / "volume.json").read_text())
    jdir = tmp_path / "secondary" / "journal"
    j = Journal(OsFileIO(), str(jdir), uuid.UUID(meta["uuid"]), meta["segment_size"])
    seqs = {}
    for r in j.scan().records:
        seqs.setdefault(r.addr >> 32, []).append(r.seq)
    return sum(
        (jdir / f"{s:016x}.seg").stat().st_size for s, v in seqs.items() if max(v) <= max_seq
    )


def test_retention_reclaims_dead_segments_and_keeps_points_exact(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, segment_size=1 << 20, map_seconds=3600)
    vol.segment_pool = 0  # give the space back to the filesystem
    ends = phases(vol, 6)
    # Points: phases 0-2 are "old" (beyond the horizon), 3-5 are kept, every write.
    now = ends[3][1] / 1e9 + 3600 - 1e-4  # phases 3.. are within 1 h, 0-2 are not
    expected = segments_with_only(tmp_path, ends[1][0])  # phase 0-1 data: overwritten
    before = live_segment_bytes(tmp_path)
    vol.set_retention("all:1h")
    result = vol.apply_retention(now=now).wait(30)
    after = live_segment_bytes(tmp_path)
    assert result["bytes_reclaimed"] == before - after
    assert before - after >= expected > 0
    # Kept points read exactly as before.
    for seq, _, data in ends[2:]:
        assert vol.image(seq=seq).read(0, SIZE) == data
    # Dropped points are refused, with the oldest recoverable point named.
    with pytest.raises(PointNotAvailable, match="faded out by retention"):
        vol.image(seq=ends[0][0])
    assert vol.points()[0].seq == ends[2][0]
    cap = vol.capacity()
    assert cap["journal_bytes"] == after and cap["oldest_point"]["seq"] == ends[2][0]
    # The volume goes on: writes, reopen, catalog loss (rebuilt from checkpoint + journal).
    s = vol.write(0, b"z" * 512)
    vol.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / "state" / f"catalog.sqlite{suffix}"
        if p.exists():
            p.unlink()
    vol = reopen(tmp_path)
    for seq, _, data in ends[2:]:
        assert vol.image(seq=seq).read(0, SIZE) == data
    assert vol.image(seq=s).read(0, 512) == b"z" * 512
    with pytest.raises(PointNotAvailable):
        vol.image(seq=ends[1][0])
    vol.close()


def test_coarse_tier_keeps_one_point_per_bucket_and_bookmarks(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, segment_size=1 << 20, map_seconds=3600)
    ends = phases(vol, 3)
    vol.bookmark("keep-me")
    mark_data = vol.read(0, SIZE)
    more = phases(vol, 2)
    # Everything is older than the 'all' tier; a 1-week bucket keeps one point
    # (the newest); the bookmark survives.
    now = more[-1][1] / 1e9 + 7200
    vol.set_retention("all:1h,1w:4w")
    vol.apply_retention(now=now).wait(30)
    assert vol.image(bookmark="keep-me").read(0, SIZE) == mark_data
    assert vol.image(seq=more[-1][0]).read(0, SIZE) == more[-1][2]
    with pytest.raises(PointNotAvailable, match="faded out"):
        vol.image(seq=ends[1][0])
    kinds = [p.kind for p in vol.points()]
    assert "bookmark" in kinds
    vol.close()


def test_segment_pool_reuses_reclaimed_files(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, segment_size=1 << 20, map_seconds=3600)
    vol.segment_pool = 4
    ends = phases(vol, 6)
    now = ends[3][1] / 1e9 + 3600 - 1e-4
    vol.set_retention("all:1h")
    r = vol.apply_retention(now=now).wait(30)
    pool = tmp_path / "secondary" / "journal" / "free"
    pooled = sorted(pool.iterdir())
    assert r["segments_reclaimed"] >= 1 and pooled
    inode = pooled[0].stat().st_ino
    phases(vol, 3)  # new segments come from the pool first
    jdir = tmp_path / "secondary" / "journal"
    assert any((jdir / f"{s:016x}.seg").stat().st_ino == inode for s in list_segments(str(jdir)))
    # And the reused file's stale records are never read back.
    vol.close()
    vol = reopen(tmp_path)
    assert vol.read(0, SIZE) == vol.image().read(0, SIZE)
    vol.close()


def test_emergency_fading_without_a_policy(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, segment_size=1 << 20, map_seconds=3600)
    ends = phases(vol, 6)
    before = len(vol.points())
    r = vol.apply_retention(emergency=True).wait(30)
    assert r["maps_merged"] > 0
    assert len(vol.points()) < before
    assert vol.image(seq=ends[-1][0]).read(0, SIZE) == ends[-1][2]
    vol.close()
    assert not os.path.exists(tmp_path / "nothing")


def test_chain_swap_durable_before_reclaim(tmp_path, monkeypatch):
    """Regression: the swap committed with ``synchronous = NORMAL`` (WAL not
    synced) and the reclaim then deleted the old chain's segments: a power loss
    could bring back maps that point at deleted segments.  The swap's COMMIT
    must run with ``synchronous = FULL``, and the reclaim only after it."""
    from appliance.engine import retention

    vol = make_volume(tmp_path, size=SIZE, segment_size=1 << 20, map_seconds=3600)
    vol.segment_pool = 0
    ends = phases(vol, 6)
    now = ends[3][1] / 1e9 + 3600 - 1e-4
    events = []
    sync_mode = {"now": "NORMAL"}

    def trace(sql):
        if sql.startswith("PRAGMA synchronous"):
            sync_mode["now"] = sql.split("=")[1].strip()
        elif sql == "COMMIT":
            events.append(("commit", sync_mode["now"]))

    vol._catalog.conn.set_trace_callback(trace)
    real_reclaim = retention.reclaim

    def reclaim(v, protect_from):
        events.append(("reclaim", None))
        return real_reclaim(v, protect_from)

    monkeypatch.setattr(retention, "reclaim", reclaim)
    vol.set_retention("all:1h")
    assert vol.apply_retention(now=now).wait(30)["segments_reclaimed"] > 0
    vol._catalog.conn.set_trace_callback(None)
    i = events.index(("reclaim", None))
    assert ("commit", "FULL") in events[:i], events
    assert events[i - 1] == ("commit", "FULL"), events
    (mode,) = vol._catalog.conn.execute("PRAGMA synchronous").fetchone()
    assert mode == 1  # NORMAL again for the write path's commits
    vol.close()
