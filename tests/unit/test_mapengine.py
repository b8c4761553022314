"""The map engine: triggers, levels, and the cost of opening a point."""

import time

from appliance.engine import mapengine

from .helpers import make_volume, pattern, reopen


def test_time_trigger_closes_a_map(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, map_records=10_000, map_seconds=0.2)
    before = len(vol._maps.level0)
    vol.write(0, b"a" * 512)
    vol.flush()
    deadline = time.monotonic() + 10
    while len(vol._maps.level0) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(vol._maps.level0) == before + 1
    m = vol._maps.level0[-1]
    assert m.first_seq <= m.last_seq and m.first_time_ns <= m.last_time_ns
    vol.close()


def test_count_trigger_and_on_demand(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, map_records=5, map_seconds=3600)
    for i in range(12):
        vol.write(i * 512, pattern(i, 512))
    vol.flush()
    deadline = time.monotonic() + 10
    # 2 baseline records + 12 writes: maps of 5 and 5, 4 left in the tail
    while len(vol._maps.tail) > 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [m.records for m in vol._maps.level0] == [5, 5]
    vol.close_map()  # on demand: the last 4 records
    assert vol._maps.level0[-1].records == 4 and not vol._maps.tail
    vol.close()


def test_levels_bound_the_layers_of_any_point(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, map_records=1, map_seconds=3600)
    seqs = [vol.write((i % 64) * 512, pattern(i, 512)) for i in range(600)]
    vol.flush()
    vol.close_map()
    deadline = time.monotonic() + 30
    while len(vol._maps.merged) < 600 // 8 + 600 // 64 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(vol._maps.level0) >= 600
    worst = 0
    for s in seqs[::7] + [seqs[-1]]:
        layers = vol._maps.layers(s)
        worst = max(worst, len(layers.map_ids))
    # 600 maps: at most 7 per level over levels 0..3, far fewer than 600.
    assert worst <= 7 * 4
    assert worst <= 25
    for s in (seqs[0], seqs[300], seqs[-1]):
        model = bytearray(64 * 512)
        for i in range(seqs.index(s) + 1):
            model[(i % 64) * 512 : (i % 64 + 1) * 512] = pattern(i, 512)
        assert vol.image(seq=s).read(0, 64 * 512) == bytes(model)
    vol.close()


def test_decompose_tiles_prefix_exactly(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, map_records=1, map_seconds=3600)
    for i in range(130):
        vol.write(0, pattern(i, 512))
    vol.close()
    vol = reopen(tmp_path, map_records=1, map_seconds=3600)
    deadline = time.monotonic() + 30
    while (2, 1) not in vol._maps.merged and time.monotonic() < deadline:
        time.sleep(0.05)
    maps = vol._maps
    for n in range(0, len(maps.level0) + 1):
        tiles = maps.decompose(n)
        covered = sum(mapengine.FANOUT**t.level for t in tiles)
        assert covered == n
        # contiguous, in order
        if tiles:
            assert tiles[0].first_seq == maps.level0[0].first_seq
            assert tiles[-1].last_seq == maps.level0[n - 1].last_seq
    vol.close()


# --- the level-0 build, column-wise, against the per-record reference ---------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from appliance.engine import record as R  # noqa: E402
from appliance.engine.catalog import Catalog  # noqa: E402
from appliance.engine.extents import ZERO, ExtentMap  # noqa: E402
from appliance.engine.journal import Rec  # noqa: E402


def reference_level0(recs):
    """What build_level0 hands the catalog, one record at a time (the code
    before the column-wise build, kept as the specification)."""
    data = []
    for r in recs:
        if r.kind == R.WRITE:
            data.append((r.offset, r.length, r.payload_addr))
        elif r.kind == R.ZERO and r.length:
            data.append((r.offset, r.length, ZERO))
        elif r.kind == R.REF:
            data.extend((a, b - a, addr) for a, b, addr in r.refs)
    done = next((r for r in recs if r.kind == R.BASELINE_DONE), None)
    bl_end = max(
        (r.offset + r.length for r in recs if r.flags & R.FLAG_BASELINE and r.kind in R.DATA_KINDS),
        default=0,
    )
    segs = {}
    for r in recs:
        s = segs.setdefault(r.addr >> 32, [r.seq, r.seq, 0])
        s[1] = r.seq
        s[2] = max(s[2], r.end_addr & 0xFFFFFFFF)
    return {
        "extents": ExtentMap.from_records(data),
        "bookmarks": [(r.name, r.seq, r.time_ns) for r in recs if r.kind == R.BOOKMARK],
        "unbookmarks": [r.name for r in recs if r.kind == R.UNBOOKMARK],
        "baseline_done_seq": done.seq if done is not None else None,
        "meta": {
            **({"baseline_done_time_ns": str(done.time_ns)} if done is not None else {}),
            **({"baseline_end": str(bl_end)} if bl_end else {}),
        },
        "segments": [(k, *v) for k, v in segs.items()],
    }


@st.composite
def record_runs(draw):
    """Records as the journal appends them: seqs and addresses increasing,
    a new segment now and then; every kind, baseline flags, REF extents."""
    n = draw(st.integers(1, 40))
    recs, seq, segno, pos = [], draw(st.integers(1, 10**6)), draw(st.integers(0, 3)), 4096
    for _ in range(n):
        if draw(st.integers(0, 9)) == 0:
            segno, pos = segno + 1, 4096
        kind = draw(st.sampled_from([R.WRITE] * 4 + [R.ZERO, R.REF, R.BOOKMARK, R.UNBOOKMARK,
                                                     R.BASELINE_DONE]))  # fmt: skip
        flags = draw(st.sampled_from([0, R.FLAG_BASELINE]))
        off = draw(st.integers(0, 63)) * 512
        length = draw(st.integers(0 if kind == R.ZERO else 1, 8)) * 512
        plen, name, refs = 0, None, None
        if kind == R.WRITE:
            plen = length
        elif kind in (R.BOOKMARK, R.UNBOOKMARK):
            name, off, length = f"b{draw(st.integers(0, 3))}", 0, 0
            plen = len(name)
        elif kind == R.REF:
            a = draw(st.integers(0, 63)) * 512
            refs = ((a, a + 1024, draw(st.sampled_from([ZERO, 4096 * 7]))),)
            plen = 24
        elif kind == R.BASELINE_DONE:
            off = length = 0
        addr = R.jaddr(segno, pos)
        recs.append(Rec(seq, seq * 10, kind, flags, off, length, addr, plen, name, refs))
        seq += 1
        pos += R.RECORD_HEADER_SIZE + plen
    return recs


class _Capture:
    """A catalog stand-in that keeps what add_map was given."""

    def __init__(self):
        self.calls = []

    def add_map(self, level, idx, first_seq, last_seq, first_t, last_t, extents, **kw):
        self.calls.append({"extents": extents, **kw})
        return mapengine.MapInfo(len(self.calls), level, idx, first_seq, last_seq, first_t,
                                 last_t, kw["j_first"], kw["j_last"], kw["j_end"],
                                 kw["records"], len(extents))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(record_runs())
def test_level0_columns_match_the_per_record_build(recs):
    cap = _Capture()
    me = mapengine.MapEngine(cap, journal=None)
    me.build_level0(recs)
    got = cap.calls[0]
    want = reference_level0(recs)
    assert got["extents"] == want["extents"]
    for key in ("bookmarks", "unbookmarks", "baseline_done_seq", "meta", "segments"):
        assert got[key] == want[key], key
    assert mapengine.records_to_map(recs) == want["extents"]
    assert got["records"] == len(recs)
    assert (got["j_first"], got["j_last"], got["j_end"]) == (
        recs[0].addr, recs[-1].addr, recs[-1].end_addr)  # fmt: skip


def test_records_to_map_of_nothing_is_empty():
    assert len(mapengine.records_to_map([])) == 0
    assert mapengine.record_columns([]).shape == (0, 7)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 255), min_size=64 * 3, max_size=64 * 3))
def test_merges_from_memory_equal_merges_from_the_catalog(tmp_path_factory, blocks):
    """Level-1 and level-2 maps built from the extents kept in memory are the
    maps the catalog's own rows give; every kept map is dropped once merged."""
    cat = Catalog(str(tmp_path_factory.mktemp("cat") / "catalog.db"))
    me = mapengine.MapEngine(cat, journal=None, map_records=3)
    seq, addr = 1, 4096
    for i in range(64):
        recs = []
        for b in blocks[i * 3 : i * 3 + 3]:
            recs.append(Rec(seq, seq, R.WRITE, 0, b * 512, 512, addr, 512))
            seq, addr = seq + 1, addr + R.RECORD_HEADER_SIZE + 512
        me.build_level0(recs)
        me._merge_ready()
    assert sorted(me.merged) == [(1, i) for i in range(8)] + [(2, 0)]
    assert not me._unmerged  # 64 level-0 maps: all merged, and so are the 8 level-1 maps
    for (level, idx), info in me.merged.items():
        span = mapengine.FANOUT**level
        children = me.level0[idx * span : (idx + 1) * span]
        want = ExtentMap.merge([cat.load_map(c.id) for c in children])
        assert cat.load_map(info.id) == want
    top = cat.load_map(me.merged[(2, 0)].id)
    model = {}
    a = 4096
    for b in blocks:
        model[b] = a + R.RECORD_HEADER_SIZE
        a += R.RECORD_HEADER_SIZE + 512
    got = {}
    for s, e, ad in zip(top.starts.tolist(), top.ends.tolist(), top.addrs.tolist(), strict=True):
        for x in range(s, e, 512):
            got[x // 512] = ad + (x - s)
    assert got == model  # every block at its newest record's payload


def test_a_retention_swap_drops_the_kept_extents(tmp_path):
    vol = make_volume(tmp_path, size=1 << 20, map_records=2, map_seconds=3600)
    for i in range(6):
        vol.write(i * 512, pattern(i, 512))
    vol.flush()
    vol.close_map()
    me = vol._maps
    assert me._unmerged  # fewer than 8 level-0 maps: kept for their merge
    with me.structure_lock:
        me.swap_chain(list(me.level0), [], me.oldest_seq)
    assert not me._unmerged
    vol.close()


def test_the_kept_extents_are_bounded_when_a_replay_builds_many_maps(tmp_path):
    """A catalog rebuilt at open builds a level-0 map per map_records records
    before the first merge runs: only the newest UNMERGED_MAPS are kept, and
    the merges that follow read the others from the catalog."""
    cat = Catalog(str(tmp_path / "catalog.db"))
    me = mapengine.MapEngine(cat, journal=None, map_records=2)
    recs, addr = [], 4096
    for seq in range(1, 2 * 8 * 8 + 1):
        recs.append(Rec(seq, seq, R.WRITE, 0, (seq % 16) * 512, 512, addr, 512))
        addr += R.RECORD_HEADER_SIZE + 512
    me.replay(recs)
    assert len(me.level0) == 64 and not me.merged
    assert len(me._unmerged) == mapengine.UNMERGED_MAPS
    assert list(me._unmerged) == [m.id for m in me.level0[-mapengine.UNMERGED_MAPS :]]
    me._merge_ready()
    assert len(me._unmerged) <= mapengine.UNMERGED_MAPS
    top = cat.load_map(me.merged[(2, 0)].id)
    assert top == ExtentMap.merge([cat.load_map(m.id) for m in me.level0])
