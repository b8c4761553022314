"""The journal's O_DIRECT layout (docs/FORMAT.md, "Alignment"; engine/segfile.py):
PAD records end every batch on a block boundary, so no write rewrites a
block holding records; zeros are written ahead of the records; a file system
that refuses O_DIRECT gets records back to back through the page cache;
version-1 journals stay readable."""

from __future__ import annotations

import errno
import os
import uuid as uuidlib

import pytest

from appliance.engine import record as R
from appliance.engine import segfile
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, segment_path

from .helpers import make_volume, pattern, reopen

SEG = 1 << 20


class WriteLog(OsFileIO):
    """OsFileIO that notes every write to a segment file: (path, offset, length,
    kind): ``v`` records (pwritev), ``w`` headers, probes and zeros (pwrite)."""

    def __init__(self, refuse_direct: bool = False) -> None:
        self.refuse_direct = refuse_direct
        self.writes: list[tuple[str, int, int, str]] = []

    def open(self, path, flags, mode=0o600):
        if self.refuse_direct and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused", path)
        return super().open(path, flags, mode)

    def _note(self, fd, offset, n, kind):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".seg"):
            self.writes.append((path, offset, n, kind))

    def pwrite_all(self, fd, data, offset):
        self._note(fd, offset, len(memoryview(data).cast("B")), "w")
        return super().pwrite_all(fd, data, offset)

    def pwritev_all(self, fd, buffers, offset):
        self._note(fd, offset, sum(len(memoryview(b).cast("B")) for b in buffers), "v")
        return super().pwritev_all(fd, buffers, offset)


def open_journal(tmp_path, io=None, **kw) -> Journal:
    j = Journal(io or OsFileIO(), str(tmp_path / "j"), uuidlib.uuid4(), SEG, **kw)
    j.start(0, 0, clean=True)
    return j


def scan(j: Journal):
    return Journal(OsFileIO(), j.folder, j.uuid, j.segment_size).scan()


def test_every_write_starts_on_a_block_and_no_block_is_written_twice(tmp_path):
    io = WriteLog()
    j = open_journal(tmp_path, io)
    try:
        assert j._align in segfile.ALIGNS  # this file system takes O_DIRECT
        io.writes.clear()
        recs, payloads = [], []
        for n in (1, 3, 1, 7, 2):  # batches of records of 512 B to 4.5 KiB
            with j.batch():
                for _ in range(n):
                    payloads.append(pattern(len(payloads), 512 * (1 + len(payloads) % 9)))
                    recs.append(j.append(R.WRITE, 0, len(payloads[-1]), payloads[-1]))
        j.sync()
        blocks: set[tuple[str, int]] = set()
        records_end = 0
        for path, offset, n, kind in io.writes:
            assert offset % j._align == 0 and n % j._align == 0
            if kind == "w":  # zeros ahead: only past every record
                assert offset >= records_end
                continue
            mine = {(path, b) for b in range(offset // j._align, (offset + n) // j._align)}
            assert not mine & blocks, "a block holding records was written again"
            blocks |= mine
            records_end = max(records_end, offset + n)
        assert records_end and blocks
        found = scan(j)
        assert [r.seq for r in found.records] == [r.seq for r in recs]  # PADs skipped
        assert [r.addr for r in found.records] == [r.addr for r in recs]
        for r, p in zip(recs, payloads, strict=True):
            assert j.read_payload(r.payload_addr, r.payload_len) == p
    finally:
        j.close()


def test_payloads_read_back_and_the_next_open_continues(tmp_path):
    vol = make_volume(tmp_path, segment_size=SEG)
    seqs = [vol.write(i * 4096 % (1 << 20), pattern(i, 4096 + 512 * (i % 3))) for i in range(600)]
    vol.flush()
    image = vol.image(seq=seqs[300]).read(0, 1 << 20)
    vol.close()
    vol = reopen(tmp_path)
    try:
        assert vol.last_seq == seqs[-1]
        assert vol.image(seq=seqs[300]).read(0, 1 << 20) == image
        assert len(os.listdir(os.path.join(vol._journal.folder))) > 3  # rolled over
    finally:
        vol.close()


def test_zeros_run_ahead_of_the_records(tmp_path):
    j = Journal(OsFileIO(), str(tmp_path / "j"), uuidlib.uuid4(), 32 << 20)
    j.start(0, 0, clean=True)
    try:
        path = segment_path(j.folder, j.current_segment)
        payload = pattern(1, 64 << 10)
        j.append(R.WRITE, 0, len(payload), payload)
        j.sync()
        ahead = R.SEGMENT_HEADER_SIZE + segfile.ZERO_AHEAD
        assert os.path.getsize(path) == ahead
        with open(path, "rb") as f:
            f.seek(R.SEGMENT_HEADER_SIZE + 64 + len(payload) + j._align)
            assert f.read(1 << 20) == bytes(1 << 20)
        while j._pos < ahead:
            j.append(R.WRITE, 0, len(payload), payload)
        j.sync()
        assert os.path.getsize(path) == ahead + segfile.ZERO_AHEAD
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == list(range(1, j._last_seq + 1))


class NoRoom(WriteLog):
    """Big writes (the zeros ahead) fail with ENOSPC; records still fit."""

    def pwrite_all(self, fd, data, offset):
        if len(memoryview(data).cast("B")) >= segfile.CHUNK:
            raise OSError(errno.ENOSPC, "no room", "seg")
        return super().pwrite_all(fd, data, offset)


def test_zeros_that_do_not_fit_are_skipped(tmp_path):
    j = open_journal(tmp_path, NoRoom())
    try:
        recs = [j.append(R.WRITE, 0, 4096, pattern(i, 4096)) for i in range(50)]
        j.sync()
        assert j.failed is None
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == [r.seq for r in recs]


def test_a_file_system_without_o_direct_gets_records_back_to_back(tmp_path):
    io = WriteLog(refuse_direct=True)
    j = open_journal(tmp_path, io)
    try:
        assert j._align == 0
        with j.batch():
            a = j.append(R.WRITE, 0, 512, pattern(1, 512))
        j.sync()
        b = j.append(R.WRITE, 512, 512, pattern(2, 512))
        j.sync()
        assert b.addr == a.end_addr  # no PAD
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == [a.seq, b.seq]


def test_a_version_1_journal_is_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "FORMAT_VERSION", 1)
    vol = make_volume(tmp_path, segment_size=SEG)
    old = vol._journal
    seqs = [vol.write(i * 512, pattern(i, 512)) for i in range(20)]
    vol.close()
    for path in (segment_path(old.folder, s) for s in range(1, 3)):
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert R.SEGMENT_HEADER.unpack_from(f.read(64))[1] == 1
    monkeypatch.setattr(R, "FORMAT_VERSION", 2)
    vol = reopen(tmp_path)
    try:
        assert vol.last_seq >= seqs[-1]
        assert vol.image(seq=seqs[-1]).read(0, 20 * 512) == b"".join(
            pattern(i, 512) for i in range(20)
        )
    finally:
        vol.close()


def test_a_pad_record_is_refused_in_a_version_1_record():
    vtag = R.volume_tag(uuidlib.uuid4())
    pad = bytearray(R.pack_pad(512, 7, 1, 1, vtag))
    assert isinstance(R.parse_record_header(bytes(pad), segno=1, vtag=vtag), R.RecordHeader)
    pad[4] = 1
    assert R.parse_record_header(bytes(pad), segno=1, vtag=vtag) == (
        "pad record in a version 1 journal"
    )


@pytest.mark.parametrize("gap", [64, 65 + 511])
def test_pad_sizes(gap):
    vtag = R.volume_tag(uuidlib.uuid4())
    raw = R.pack_pad(gap, 3, 4, 1, vtag)
    assert len(raw) == gap
    h = R.parse_record_header(raw, segno=1, vtag=vtag)
    assert h.kind == R.PAD and h.payload_len == gap - 64
    assert R.record_crc_ok(raw[:64], raw[64:])


def test_records_larger_than_the_copy_buffer_and_runs_of_many(tmp_path):
    j = open_journal(tmp_path)
    try:
        big = [pattern(i, segfile.CHUNK + 512 * (3 + i)) for i in range(2)]
        small = [pattern(10 + i, 4096) for i in range(300)]  # > CHUNK in all
        with j.batch():
            recs = [j.append(R.WRITE, 0, len(p), p) for p in big[:1] + small + big[1:]]
        j.sync()
        for r, p in zip(recs, big[:1] + small + big[1:], strict=True):
            assert j.read_payload(r.payload_addr, r.payload_len) == p
    finally:
        j.close()
    assert [r.seq for r in scan(j).records] == [r.seq for r in recs]


class Captured:
    """A FileIO stand-in for DirectWriter: keeps what each write carried."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def pwritev_all(self, fd, buffers, offset):
        self.writes.append((offset, b"".join(bytes(b) for b in buffers)))


@pytest.mark.parametrize(
    "sizes",
    [
        [64, 4096, 448],  # one 4 KiB record and its PAD: one block-aligned write
        [64, 65536] * 8 + [448],  # a run of 64 KiB records, under the buffer
        [64, 4096] * 300,  # many small buffers, over the buffer in all
        [64, segfile.CHUNK + 1024, 64, 100],  # one buffer larger than the buffer
        [segfile.CHUNK],  # exactly one buffer's worth
    ],
)
def test_direct_writer_writes_the_run_in_whole_blocks_from_its_buffer(sizes):
    """Whatever the run, the bytes land at their offsets in writes of whole
    blocks (full buffers, then one tail zero-filled to the block), and
    nothing else is written."""
    io = Captured()
    w = segfile.DirectWriter(io)
    w.align = 512
    bufs = [os.urandom(n) for n in sizes]
    w.write(7, bufs, 8192)
    data = b"".join(bufs)
    pos = 8192
    for offset, chunk in io.writes:
        assert offset == pos and len(chunk) % 512 == 0 and len(chunk) <= segfile.CHUNK
        pos += len(chunk)
    assert sum(len(c) for _, c in io.writes) == -(-len(data) // 512) * 512
    written = b"".join(c for _, c in io.writes)
    assert written[: len(data)] == data and not any(written[len(data) :])
    if len(data) <= segfile.CHUNK:
        assert len(io.writes) == 1
    with pytest.raises(ValueError, match="boundary"):
        w.write(7, bufs, 100)
    w.close()
