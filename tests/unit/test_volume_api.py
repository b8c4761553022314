"""The public API of ProtectedVolume: happy paths and every refusal."""

import os
import time

import pytest

from appliance.engine import (
    DuplicateBookmark,
    InvalidArgument,
    InvalidRange,
    PointNotAvailable,
    ProtectedVolume,
    UnknownBookmark,
    VolumeClosed,
    VolumeExists,
    VolumeNotFound,
)

from .helpers import make_volume, reopen


@pytest.fixture
def vol(tmp_path):
    v = make_volume(tmp_path, map_records=8)
    yield v
    v.close()


def test_new_volume_reads_zeros_and_is_in_sync(vol):
    assert vol.state == "in-sync"
    assert vol.read(0, 4096) == bytes(4096)
    assert vol.image().read(0, 4096) == bytes(4096)
    [p] = vol.points()
    assert p.kind == "baseline"


def test_write_read_image_roundtrip(vol):
    a = os.urandom(4096)
    s1 = vol.write(8192, a)
    b = os.urandom(512)
    s2 = vol.write(8192 + 512, b)
    assert s2 > s1
    live = vol.read(8192, 4096)
    assert live == a[:512] + b + a[1024:]
    assert vol.image(seq=s1).read(8192, 4096) == a
    assert vol.image(seq=s2).read(8192, 4096) == live
    assert vol.image().read(8192, 4096) == live
    assert vol.image(seq=s1 - 1).read(8192, 4096) == bytes(4096)


@pytest.mark.parametrize(
    "offset,length,word",
    [
        (1, 512, "offset 1"),
        (512, 100, "length 100"),
        (-512, 512, "offset -512"),
        ((4 << 20) - 512, 1024, "past the volume's end"),
        (4 << 20, 512, "past the volume's end"),
    ],
)
def test_bad_ranges_name_the_value_and_change_nothing(vol, offset, length, word):
    before = vol.last_seq
    with pytest.raises(InvalidRange, match=word) as err:
        vol.write(offset, b"x" * length)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match=word):
        vol.read(offset, length)
    with pytest.raises(ValueError, match=word):
        vol.image().read(offset, length)
    assert vol.last_seq == before
    assert vol.read(0, 4096) == bytes(4096)


def test_zero_length_write_refused(vol):
    with pytest.raises(InvalidRange, match="length 0"):
        vol.write(0, b"")
    assert vol.read(0, 0) == b""


def test_bookmarks(vol):
    vol.write(0, b"a" * 512)
    p = vol.bookmark("before-upgrade")
    vol.write(0, b"b" * 512)
    assert p.kind == "bookmark" and p.name == "before-upgrade"
    assert vol.image(bookmark="before-upgrade").read(0, 512) == b"a" * 512
    assert [q.name for q in vol.points() if q.kind == "bookmark"] == ["before-upgrade"]
    with pytest.raises(DuplicateBookmark, match="already exists"):
        vol.bookmark("before-upgrade")
    with pytest.raises(KeyError) as err:
        vol.image(bookmark="nope")
    assert isinstance(err.value, UnknownBookmark)
    assert "nope" in str(err.value)
    for bad in ("", "-x", "a b", "x" * 129, "123", "a/b"):
        with pytest.raises(InvalidArgument, match="bad bookmark name"):
            vol.bookmark(bad)
    # A bookmark closes the current delta map.
    vol.close_map()
    assert any(m.last_seq == p.seq for m in vol._maps.level0)


def test_image_argument_errors(vol):
    s = vol.write(0, b"a" * 512)
    with pytest.raises(InvalidArgument, match="at most one"):
        vol.image(seq=s, bookmark="x")
    with pytest.raises(PointNotAvailable, match="before the baseline"):
        vol.image(seq=1)
    with pytest.raises(PointNotAvailable, match="not written yet"):
        vol.image(seq=s + 10)
    with pytest.raises(InvalidArgument, match="integer"):
        vol.image(seq="5")


def test_image_by_time(vol):
    s1 = vol.write(0, b"1" * 512)
    vol.flush()
    time.sleep(0.01)
    t = time.time()
    time.sleep(0.01)
    vol.write(0, b"2" * 512)
    img = vol.image(time=t)
    assert img.seq == s1
    assert img.read(0, 512) == b"1" * 512
    with pytest.raises(PointNotAvailable, match="oldest recoverable"):
        vol.image(time=0)


def test_write_zeros(vol):
    vol.write(0, b"\xff" * 8192)
    s = vol.write_zeros(1024, 4096)
    assert vol.read(0, 8192) == b"\xff" * 1024 + bytes(4096) + b"\xff" * 3072
    assert vol.image(seq=s).read(0, 8192) == vol.read(0, 8192)
    assert vol.image(seq=s - 1).read(0, 8192) == b"\xff" * 8192


def test_large_write_is_split_and_readable(tmp_path):
    vol = make_volume(tmp_path, size=32 << 20)
    data = os.urandom(20 << 20)
    seq = vol.write(512, data)
    assert vol.image(seq=seq).read(512, len(data)) == data
    vol.close()


def test_create_refusals(tmp_path):
    with pytest.raises(InvalidArgument, match="block_size 1024"):
        make_volume(tmp_path, block_size=1024)
    with pytest.raises(InvalidArgument, match="size 1000"):
        make_volume(tmp_path, size=1000)
    make_volume(tmp_path).close()
    with pytest.raises(VolumeExists):
        make_volume(tmp_path)
    with pytest.raises(VolumeNotFound, match="no protected volume"):
        ProtectedVolume.open(str(tmp_path / "nowhere"))
    os.unlink(tmp_path / "primary.img")
    with pytest.raises(VolumeNotFound, match="primary .* is missing"):
        reopen(tmp_path)


def test_existing_primary_smaller_than_size_refused(tmp_path):
    (tmp_path / "primary.img").write_bytes(b"x" * 4096)
    with pytest.raises(InvalidArgument, match="holds 4096 bytes"):
        make_volume(tmp_path, size=8192)


def test_closed_volume_refuses(tmp_path):
    vol = make_volume(tmp_path)
    vol.close()
    vol.close()  # twice is fine
    with pytest.raises(VolumeClosed):
        vol.write(0, b"a" * 512)


def test_4k_block_size(tmp_path):
    vol = make_volume(tmp_path, block_size=4096)
    with pytest.raises(InvalidRange, match="multiple of the block size 4096"):
        vol.write(512, b"a" * 4096)
    s = vol.write(4096, b"b" * 4096)
    assert vol.image(seq=s).read(4096, 4096) == b"b" * 4096
    vol.close()


def test_reopen_keeps_everything(tmp_path):
    vol = make_volume(tmp_path, map_records=4)
    seqs = [vol.write(i * 512, bytes([i]) * 512) for i in range(30)]
    vol.bookmark("mid")
    vol.close()
    vol = reopen(tmp_path, map_records=4)
    for i, s in enumerate(seqs):
        img = vol.image(seq=s)
        assert img.read(i * 512, 512) == bytes([i]) * 512
        if i + 1 < 30:
            assert img.read((i + 1) * 512, 512) == bytes(512)
    assert vol.image(bookmark="mid").read(0, 30 * 512) == vol.read(0, 30 * 512)
    s = vol.write(0, b"z" * 512)
    assert s == seqs[-1] + 2  # a clean close hands out the next number
    vol.close()


def test_compare_and_write(vol):
    vol.write(4096, b"a" * 1024)
    assert vol.compare_and_write(4096, b"a" * 512, b"b" * 512) is None
    assert vol.read(4096, 1024) == b"b" * 512 + b"a" * 512
    expected = bytearray(b"b" * 512)
    expected[100] = 0
    assert vol.compare_and_write(4096, bytes(expected), b"c" * 512) == 100
    assert vol.read(4096, 512) == b"b" * 512  # nothing written
    with pytest.raises(InvalidRange, match="compare length"):
        vol.compare_and_write(4096, b"b" * 512, b"c" * 1024)


def test_delete_bookmark_is_journaled(tmp_path):
    vol = make_volume(tmp_path, map_records=4)
    vol.write(0, b"a" * 512)
    vol.bookmark("tmp")
    vol.bookmark("keep")
    vol.delete_bookmark("tmp")
    with pytest.raises(KeyError):
        vol.image(bookmark="tmp")
    with pytest.raises(UnknownBookmark):
        vol.delete_bookmark("tmp")
    vol.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / "state" / f"catalog.sqlite{suffix}"
        if p.exists():
            p.unlink()
    vol = reopen(tmp_path, map_records=4)  # a rebuild does not resurrect it
    assert [p.name for p in vol.points() if p.kind == "bookmark"] == ["keep"]
    vol.close()
