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
