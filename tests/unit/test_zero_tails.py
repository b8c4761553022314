"""Every open starts a new journal segment, and a segment gets zeros written
ahead of its records (segfile.py).  The open gives back the zeros of the
segments that will take no more records (``Journal.trim_zero_tails``): before
it, every restart kept ~8 MiB per volume (``make soak``'s 50 SIGKILLs filled
a 1 GiB secondary with them).  Only zeros are cut; records and anything that
is not zeros stay."""

from __future__ import annotations

import os

import pytest

from appliance.engine import journal as J
from appliance.engine import record as R

from .helpers import make_volume, pattern, reopen


def segment_sizes(vol) -> dict[int, int]:
    folder = vol._journal.folder
    return {s: os.path.getsize(J.segment_path(folder, s)) for s in J.list_segments(folder)}


def one_write(tmp_path) -> str:
    """A volume with one 4 KiB write, flushed and closed; its last segment's path."""
    vol = make_volume(tmp_path)
    vol.write(0, pattern(1, 4096))
    vol.flush()
    seg = J.segment_path(vol._journal.folder, vol._journal.current_segment)
    vol.close()
    if vol._journal._align == 0:
        pytest.skip("no O_DIRECT on this file system: no zeros are written ahead")
    return seg


def test_each_open_gives_back_the_zeros_of_the_segments_before(tmp_path):
    one_write(tmp_path)
    written = {0: pattern(1, 4096)}
    for i in range(1, 5):
        vol = reopen(tmp_path)
        try:
            written[i * 8192] = pattern(i, 4096)
            vol.write(i * 8192, written[i * 8192])
            vol.flush()
            sizes = segment_sizes(vol)
            *older, current = sorted(sizes)
            # The older segments: their header and one block of records, no more.
            assert all(sizes[s] == 3 * R.SEGMENT_HEADER_SIZE for s in older), sizes
            assert sizes[current] > J.segfile.ZERO_AHEAD  # the live one keeps its zeros
        finally:
            vol.close()
    vol = reopen(tmp_path)
    try:
        for off, data in written.items():
            assert vol.read(off, len(data)) == data
        assert len(vol._journal.scan().records) >= len(written)
    finally:
        vol.close()


def test_a_segment_with_no_records_keeps_its_header_only(tmp_path):
    one_write(tmp_path)
    for _ in range(2):  # opened and closed with nothing written
        reopen(tmp_path).close()
    vol = reopen(tmp_path)
    try:
        sizes = segment_sizes(vol)
        empty = sorted(sizes)[-3:-1]  # the two opens that wrote nothing
        assert [sizes[s] for s in empty] == [R.SEGMENT_HEADER_SIZE] * 2, sizes
        assert vol.read(0, 4096) == pattern(1, 4096)
    finally:
        vol.close()


def test_bytes_that_are_not_zeros_are_left_as_they_are(tmp_path):
    seg = one_write(tmp_path)
    size = os.path.getsize(seg)
    # A torn record's bytes far past the last record (as a kill mid-write leaves).
    with open(seg, "r+b") as f:
        f.seek(size - 4096)
        f.write(b"\x5a" * 512)
    vol = reopen(tmp_path)
    try:
        assert os.path.getsize(seg) == size  # not cut: something there is not zeros
        assert vol.read(0, 4096) == pattern(1, 4096)
    finally:
        vol.close()
