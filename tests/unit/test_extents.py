"""Tests for appliance.engine.extents against a per-byte model.

The model of a map over the small address space ``[0, SPACE)`` is an int64 array holding,
for each byte, its journal address, ZERO, or NONE (not in the map).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.engine.extents import ZERO, ExtentMap, uncovered

SPACE = 1024
NONE = -2  # model value: byte not in the map

# per-test settings (a loaded profile would leak into other test modules)
prop = settings(deadline=None, max_examples=100)


# -- model ----------------------------------------------------------------------------


def paint(model: np.ndarray, start: int, end: int, addr: int) -> None:
    model[start:end] = ZERO if addr == ZERO else addr + np.arange(end - start)


def replay(records, space: int = SPACE) -> np.ndarray:
    model = np.full(space, NONE, dtype=np.int64)
    for start, length, addr in records:
        paint(model, start, min(start + length, space), addr)
    return model


def model_of(m: ExtentMap, space: int = SPACE) -> np.ndarray:
    model = np.full(space, NONE, dtype=np.int64)
    for start, end, addr in m:
        assert end <= space
        paint(model, start, end, addr)
    return model


def overlay_model(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.where(new != NONE, new, old)


def assert_canonical(m: ExtentMap) -> None:
    for arr in (m.starts, m.ends, m.addrs):
        assert arr.dtype == np.int64 and arr.ndim == 1 and len(arr) == len(m)
        assert not arr.flags.writeable
    assert np.all(m.ends > m.starts), "empty extent"
    assert np.all(m.starts[1:] >= m.ends[:-1]), "unsorted or overlapping"
    assert np.all(m.addrs >= ZERO)
    ext = list(m)
    for (s0, e0, a0), (s1, _e1, a1) in zip(ext, ext[1:], strict=False):
        if e0 == s1:
            both_zero = a0 == ZERO and a1 == ZERO
            continues = a0 != ZERO and a1 == a0 + (e0 - s0)
            assert not (both_zero or continues), f"not coalesced: {(s0, e0, a0)} {(s1, a1)}"


def naive_lookup(m: ExtentMap, lo: int, hi: int) -> list[tuple[int, int, int]]:
    out = []
    for s, e, a in m:
        if lo < hi and s < hi and e > lo:
            cs = max(s, lo)
            out.append((cs, min(e, hi), a if a == ZERO else a + (cs - s)))
    return out


# -- strategies -----------------------------------------------------------------------

addresses = st.one_of(st.just(ZERO), st.integers(0, 4096))


@st.composite
def record_lists(draw, max_records: int = 20):
    """Write histories: random addresses, or an appending journal (continuous addresses)."""
    raw = draw(
        st.lists(
            st.tuples(
                st.integers(0, SPACE - 1),
                st.one_of(st.integers(0, 64), st.integers(0, SPACE)),
                st.one_of(st.none(), addresses),  # None: next address in the journal
            ),
            max_size=max_records,
        )
    )
    journal = draw(st.integers(0, 100))
    records = []
    for start, length, addr in raw:
        length = min(length, SPACE - start)
        if addr is None:
            addr = journal
            journal += length
        records.append((start, length, addr))
    return records


maps = record_lists().map(lambda r: (ExtentMap.from_records(r), replay(r)))
bounds = st.tuples(st.integers(0, SPACE + 10), st.integers(0, SPACE + 10))


# -- property tests -------------------------------------------------------------------


@prop
@given(record_lists())
def test_from_records_matches_replay(records):
    m = ExtentMap.from_records(records)
    assert_canonical(m)
    assert np.array_equal(model_of(m), replay(records))
    assert m.covered_bytes() == int(np.count_nonzero(replay(records) != NONE))
    assert m.nbytes() == 3 * 8 * len(m)
    # canonical form: the same content always gives the same arrays
    assert ExtentMap.from_records([(s, e - s, a) for s, e, a in m]) == m
    assert ExtentMap.from_records(np.array(records, dtype=np.int64).reshape(-1, 3)) == m


@prop
@given(record_lists())
def test_from_arrays_coalesces_split_extents(records):
    m = ExtentMap.from_records(records)
    # cut every extent into one-byte pieces; from_arrays must join them back
    s, e, a = [], [], []
    for start, end, addr in m:
        for x in range(start, end):
            s.append(x)
            e.append(x + 1)
            a.append(ZERO if addr == ZERO else addr + x - start)
    rebuilt = ExtentMap.from_arrays(s, e, a)
    assert_canonical(rebuilt)
    assert rebuilt == m
    assert ExtentMap.from_arrays(m.starts, m.ends, m.addrs, check=False) == m


@prop
@given(st.lists(maps, min_size=0, max_size=5))
def test_merge_is_newest_wins(items):
    merged = ExtentMap.merge(m for m, _ in items)
    assert_canonical(merged)
    expected = functools.reduce(
        overlay_model, (model for _, model in items), np.full(SPACE, NONE, np.int64)
    )
    assert np.array_equal(model_of(merged), expected)
    assert merged == functools.reduce(ExtentMap.overlay, (m for m, _ in items), ExtentMap.empty())


@prop
@given(maps, maps)
def test_overlay_matches_model(old, new):
    result = old[0].overlay(new[0])
    assert_canonical(result)
    assert np.array_equal(model_of(result), overlay_model(old[1], new[1]))


@prop
@given(maps, maps, maps)
def test_merge_is_associative(a, b, c):
    a, b, c = a[0], b[0], c[0]
    merged = ExtentMap.merge([a, b, c])
    assert merged == a.overlay(b).overlay(c)
    assert merged == a.overlay(b.overlay(c))
    assert merged == ExtentMap.merge([a, ExtentMap.merge([b, c])])


@prop
@given(maps, bounds)
def test_lookup_clips_exactly(item, lohi):
    m, model = item
    lo, hi = lohi
    got = m.lookup(lo, hi)
    assert got == naive_lookup(m, lo, hi)
    assert all(type(v) is int for ext in got for v in ext)
    clipped = np.full(SPACE, NONE, dtype=np.int64)
    for s, e, a in got:
        assert lo <= s < e <= hi
        paint(clipped, s, e, a)
    lo_c, hi_c = min(lo, SPACE), min(max(lo, hi), SPACE)
    assert np.array_equal(clipped[lo_c:hi_c], model[lo_c:hi_c])


@prop
@given(maps, bounds)
def test_restrict_is_exact(item, lohi):
    m, model = item
    lo, hi = lohi
    r = m.restrict(lo, hi)
    assert_canonical(r)
    expected = np.full(SPACE, NONE, dtype=np.int64)
    if lo < hi:
        expected[lo:hi] = model[lo:hi]
    assert np.array_equal(model_of(r), expected)
    assert list(r) == m.lookup(lo, hi)


@st.composite
def disjoint_ranges(draw):
    """Sorted disjoint ranges, some of them adjacent to each other."""
    cuts = sorted(set(draw(st.lists(st.integers(0, SPACE), max_size=12))))
    pairs = zip(cuts, cuts[1:], strict=False)
    return [pair for pair in pairs if draw(st.booleans())]


@prop
@given(maps, disjoint_ranges(), st.booleans())
def test_uncovered_complements_lookup(item, ranges, hull):
    m, model = item
    if hull and ranges:
        extents = m.lookup(ranges[0][0], ranges[-1][1])  # one lookup spanning the gaps
    else:
        extents = [ext for s, e in ranges for ext in m.lookup(s, e)]
    holes = uncovered(ranges, extents)
    assert holes == sorted(holes)
    wanted = np.zeros(SPACE, dtype=bool)
    for s, e in ranges:
        wanted[s:e] = True
    got = np.zeros(SPACE, dtype=bool)
    for s, e in holes:
        assert s < e
        assert not got[s:e].any(), "holes overlap"
        got[s:e] = True
    assert np.array_equal(got, wanted & (model == NONE))


# -- hand-written examples ------------------------------------------------------------


def test_adjacent_continuous_writes_coalesce():
    m = ExtentMap.from_records([(0, 10, 100), (10, 5, 110), (15, 5, 999)])
    assert list(m) == [(0, 15, 100), (15, 20, 999)]
    assert len(m) == 2


def test_zero_extents_coalesce_but_not_with_data():
    m = ExtentMap.from_records([(0, 10, ZERO), (10, 10, ZERO), (20, 5, 0), (25, 5, ZERO)])
    assert list(m) == [(0, 20, ZERO), (20, 25, 0), (25, 30, ZERO)]


def test_newer_write_splits_older_extent():
    m = ExtentMap.from_records([(0, 100, 1000), (40, 10, 5000)])
    assert list(m) == [(0, 40, 1000), (40, 50, 5000), (50, 100, 1050)]
    # rewriting the middle with the continuing address joins it again
    assert list(m.overlay(ExtentMap.from_records([(40, 10, 1040)]))) == [(0, 100, 1000)]
    assert list(ExtentMap.from_records([(0, 100, ZERO), (40, 10, 7)])) == [
        (0, 40, ZERO),
        (40, 50, 7),
        (50, 100, ZERO),
    ]


def test_lookup_and_restrict_adjust_addresses():
    m = ExtentMap.from_records([(0, 100, 1000), (200, 100, ZERO)])
    assert m.lookup(10, 20) == [(10, 20, 1010)]
    assert m.lookup(50, 250) == [(50, 100, 1050), (200, 250, ZERO)]
    assert m.lookup(100, 200) == []
    assert m.lookup(20, 10) == []
    assert list(m.restrict(90, 210)) == [(90, 100, 1090), (200, 210, ZERO)]
    assert uncovered([(50, 250), (260, 400)], m.lookup(50, 400)) == [(100, 200), (300, 400)]
    # an extent reaching one byte into the next (adjacent) range still covers that byte
    assert uncovered([(0, 10), (10, 20)], [(5, 11, 0)]) == [(0, 5), (11, 20)]
    assert uncovered([(0, 10), (12, 20)], [(2, 4, 0), (8, 14, 0)]) == [(0, 2), (4, 8), (14, 20)]


def test_empty_and_trivial_cases():
    e = ExtentMap.empty()
    assert len(e) == 0 and list(e) == [] and e.covered_bytes() == 0
    assert ExtentMap.from_records([]) == e == ExtentMap.merge([])
    assert ExtentMap.from_records([(5, 0, 1)]) == e
    m = ExtentMap.from_records([(0, 4, 8)])
    assert m.overlay(e) == m == e.overlay(m)
    assert m != e and m != "not a map"
    assert hash(m) == hash(ExtentMap.from_arrays([0, 2], [2, 4], [8, 10]))
    with pytest.raises(ValueError):
        m.starts[0] = 1
    assert uncovered([(0, 10)], []) == [(0, 10)]


@pytest.mark.parametrize(
    ("starts", "ends", "addrs", "problem"),
    [
        ([0, 5], [10, 15], [0, 100], "overlap"),
        ([0, 9], [10, 15], [0, 100], "overlap"),
        ([10, 0], [20, 5], [0, 100], "unsorted"),
        ([0, 10], [0, 20], [0, 100], "empty"),
        ([0, 10], [5, 8], [0, 100], "empty"),
        ([0, 10], [5, 20], [0], "length"),
        ([-5, 10], [5, 20], [0, 100], "negative start"),
        ([0, 10], [5, 20], [0, -7], "below ZERO"),
    ],
)
def test_from_arrays_rejects_bad_input(starts, ends, addrs, problem):
    with pytest.raises(ValueError, match=problem):
        ExtentMap.from_arrays(starts, ends, addrs)


@prop
@given(st.lists(st.tuples(st.integers(-2, 40), st.integers(-2, 40), addresses), max_size=6))
def test_from_arrays_accepts_exactly_canonical_input(triples):
    starts, ends, addrs = (
        (list(col) for col in zip(*triples, strict=True)) if triples else ([],) * 3
    )
    valid = all(0 <= s < e for s, e, _ in triples) and all(
        e0 <= s1 for (_, e0, _), (s1, _, _) in zip(triples, triples[1:], strict=False)
    )
    if not valid:
        with pytest.raises(ValueError):
            ExtentMap.from_arrays(starts, ends, addrs)
        return
    m = ExtentMap.from_arrays(starts, ends, addrs)
    assert_canonical(m)
    records = [(s, e - s, a) for s, e, a in triples]
    assert m == ExtentMap.from_records(records)


def test_from_records_rejects_bad_input():
    with pytest.raises(ValueError, match="negative length"):
        ExtentMap.from_records([(0, 10, 0), (5, -1, 0)])
    with pytest.raises(ValueError, match="negative start"):
        ExtentMap.from_records([(-1, 10, 0)])
    with pytest.raises(ValueError, match="below ZERO"):
        ExtentMap.from_records([(0, 10, -3)])


# -- larger deterministic tests -------------------------------------------------------


def test_ten_thousand_records_match_replay():
    rng = np.random.default_rng(7)
    space = 1 << 20
    n = 10_000
    starts = rng.integers(0, space, n)
    lengths = np.minimum(rng.integers(0, 4096, n), space - starts)
    addrs = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # appending journal
    addrs[rng.random(n) < 0.1] = ZERO
    records = list(zip(starts.tolist(), lengths.tolist(), addrs.tolist(), strict=True))
    m = ExtentMap.from_records(records)
    assert_canonical(m)
    assert np.array_equal(model_of(m, space), replay(records, space))


def random_map(rng: np.random.Generator, n: int, space: int) -> ExtentMap:
    cuts = np.unique(rng.integers(0, space, 2 * n))
    cuts = cuts[: len(cuts) // 2 * 2]
    addrs = rng.integers(0, 1 << 40, len(cuts) // 2)
    addrs[rng.random(len(addrs)) < 0.1] = ZERO
    return ExtentMap.from_arrays(cuts[0::2], cuts[1::2], addrs)


@pytest.mark.slow
def test_merge_of_eight_large_maps():
    rng = np.random.default_rng(2024)
    layers = [random_map(rng, 50_000, space) for space in [1 << 30] * 6 + [1 << 22] * 2]
    merged = ExtentMap.merge(layers)
    assert_canonical(merged)
    probes = np.concatenate(
        [
            rng.integers(0, 1 << 30, 1000),
            *(rng.choice(layer.starts, 100) for layer in layers),
            *(rng.choice(layer.ends, 100) - 1 for layer in layers),
            *(rng.choice(layer.ends, 50) for layer in layers),
        ]
    ).tolist()
    for x in probes:
        expected = []
        for layer in reversed(layers):
            expected = layer.lookup(x, x + 1)
            if expected:
                break
        assert merged.lookup(x, x + 1) == expected, x
    assert merged == functools.reduce(ExtentMap.overlay, layers)
    assert merged.covered_bytes() <= sum(layer.covered_bytes() for layer in layers)
