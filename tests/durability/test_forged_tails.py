"""Forged ends of the journal, in the style of PostgreSQL's 039_end_of_wal.pl.

Each case forges the last segment of a known journal (forge.py), then checks:
recovery stops at the last valid record (``last_seq``, image content), with
the exact reason (``Journal.scan().end_reason``, read before the open, which
appends a resync marker after the unclean stop), and no byte of an invalid
record is ever served: not at the recovered end, not at the forged record's
seq, not after a second open, not after a catalog rebuilt from the journal
(which reads past the forged bytes into the next segment).
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from appliance.engine import JournalCorrupt, PointNotAvailable
from appliance.engine import record as R
from appliance.engine.journal import segment_path

from .forge import FORGED, SIZE, Base, build_template, clone
from .helpers import journal_of, open_tracked, paths, remove_catalog, scratch_dir, settle


@pytest.fixture(scope="module")
def templates(root):
    with scratch_dir(root, "forge-crash") as crash, scratch_dir(root, "forge-clean") as clean:
        build_template(crash, "crash")
        build_template(clean, "clean")
        yield {"crash": crash, "clean": clean}


@pytest.fixture
def template(templates):
    return templates["crash"]


@pytest.fixture(params=["crash", "clean"])
def base(request, templates, root):
    with scratch_dir(root, "forge") as d:
        yield clone(templates[request.param], d, request.param)


def reason(b: Base, pos: int | None, why: str) -> str:
    return f"segment {b.segno}: " + (
        "end of segment" if pos is None else f"at {b.segno}:{pos}: {why}"
    )


def tail_reason(b: Base) -> str:
    """Why a scan of the untouched segment ends after its last record: past the
    PAD that follows it, at the zeros the journal wrote ahead (docs/FORMAT.md,
    "Alignment"), or at the end of the file."""
    with open(b.seg_path, "rb") as f:
        data = f.read()
    pos = b.end
    h = R.parse_record_header(data[pos : pos + 64], segno=b.segno, vtag=R.volume_tag(b.uuid))
    if not isinstance(h, str) and h.kind == R.PAD:
        pos += R.RECORD_HEADER_SIZE + h.payload_len
    if pos >= len(data):
        return reason(b, None, "")
    return reason(b, pos, "zeroed record header")


def check_recovery(b: Base, want_last: int, want_reason: str, forged_seq: int | None = None):
    """The checks every case shares; see the module docstring."""
    scan = journal_of(b.d).scan()
    assert (scan.last_seq, scan.end_reason) == (want_last, want_reason)
    want = b.model(want_last)
    for label in ("recovery", "second open", "catalog rebuilt"):
        if label == "catalog rebuilt":
            remove_catalog(b.d)
        vol = open_tracked(b.d)
        try:
            if b.stop == "clean":  # no resync appends past the end: last_seq is the end
                assert vol.last_seq == want_last, label
            settle(vol)
            assert vol.image(seq=want_last).read(0, SIZE) == want, label
            if forged_seq is not None and want_last < forged_seq:
                try:
                    got = vol.image(seq=forged_seq).read(0, SIZE)
                except PointNotAvailable:
                    pass
                else:  # a seq with no record: the state after the last one before it
                    assert got == want, label
            present = vol.image().read(0, SIZE)
            assert FORGED * 512 not in present, label
            assert set(vol._maps.bookmarks) == {"before"}, label
        finally:
            vol.close()


# ---------------------------------------------------------------- the cases
# Each returns (last valid seq, exact reason, seq the forgery claims or None).


def case_no_records(b: Base):
    """Zero-length record area: the segment is its header alone."""
    b.truncate(4096)
    return b.prev.seq, reason(b, None, ""), None


def case_zero_length_write_header(b: Base):
    """A write record claiming a zero-length payload for a 512-byte extent."""
    head, _ = b.header(length=512, payload=b"")
    at = b.append(head)
    return b.last.seq, reason(b, at, "write record payload length 0 != length 512"), None


def case_header_truncated(b: Base):
    head, payload = b.header()
    at = b.append(head[:40])
    b.truncate(at + 40)  # the file ends there (not in the zeros written ahead)
    return b.last.seq, reason(b, at, "record header truncated"), b.last.seq + 1


def case_payload_truncated(b: Base):
    head, payload = b.header(length=4096)
    at = b.append(head + payload[:1000])
    b.truncate(at + len(head) + 1000)
    return b.last.seq, reason(b, at, f"payload of seq {b.last.seq + 1} truncated"), b.last.seq + 1


def case_seq_equal(b: Base):
    head, payload = b.header(seq=b.last.seq)
    at = b.append(head + payload)
    why = f"sequence {b.last.seq} not after {b.last.seq}"
    return b.last.seq, reason(b, at, why), None


def case_seq_lower(b: Base):
    head, payload = b.header(seq=b.last.seq - 2)
    at = b.append(head + payload)
    why = f"sequence {b.last.seq - 2} not after {b.last.seq}"
    return b.last.seq, reason(b, at, why), None


def case_time_backwards(b: Base):
    head, payload = b.header(time_ns=b.last.time_ns - 1)
    at = b.append(head + payload)
    why = f"timestamp of seq {b.last.seq + 1} goes backwards"
    return b.last.seq, reason(b, at, why), b.last.seq + 1


def case_crc_flipped_in_header(b: Base):
    """A bit of the primary offset flipped: the data would land elsewhere."""
    head, payload = b.header()
    at = b.append(head + payload)
    b.flip(at + 25)
    return b.last.seq, reason(b, at, f"crc mismatch in record seq {b.last.seq + 1}"), None


def case_crc_field_flipped(b: Base):
    head, payload = b.header()
    at = b.append(head + payload)
    b.flip(at + 61)
    return b.last.seq, reason(b, at, f"crc mismatch in record seq {b.last.seq + 1}"), None


def case_crc_flipped_in_payload(b: Base):
    head, payload = b.header()
    at = b.append(head + payload)
    b.flip(at + R.RECORD_HEADER_SIZE + 300)
    why = f"crc mismatch in record seq {b.last.seq + 1}"
    return b.last.seq, reason(b, at, why), b.last.seq + 1


def case_crc_flipped_in_last_good_record(b: Base):
    """The last real record's payload damaged: recovery ends one record earlier."""
    last = b.last
    b.flip(b.seg_off(last) + R.RECORD_HEADER_SIZE + 7)
    return (
        b.recs[-2].seq,
        reason(b, b.seg_off(last), f"crc mismatch in record seq {last.seq}"),
        None,
    )


def case_zeroed_page(b: Base):
    at = b.append(bytes(4096))
    return b.last.seq, reason(b, at, "zeroed record header"), None


def case_garbage_page(b: Base):
    junk = random.Random(39).randbytes(4096)
    at = b.append(junk)
    return b.last.seq, reason(b, at, f"bad record magic {junk[:4]!r}"), None


def case_recycled_record(b: Base):
    """A valid earlier record of this segment (magic, crc, volume, segment all right)."""
    first = b.recs[0]
    with open(b.seg_path, "rb") as f:
        f.seek(b.seg_off(first))
        raw = f.read(R.RECORD_HEADER_SIZE + first.payload_len)
    at = b.append(raw)
    return b.last.seq, reason(b, at, f"sequence {first.seq} not after {b.last.seq}"), None


def case_other_volume(b: Base):
    head, payload = b.header(vtag=b"\x01" * 8)
    at = b.append(head + payload)
    return b.last.seq, reason(b, at, "record belongs to another volume"), b.last.seq + 1


def case_other_segment(b: Base):
    head, payload = b.header(segno=b.segno + 1)
    at = b.append(head + payload)
    why = f"record was written for segment {b.segno + 1}, found in segment {b.segno}"
    return b.last.seq, reason(b, at, why), b.last.seq + 1


def case_unknown_kind(b: Base):
    head, payload = b.header(kind=99, length=0, payload=b"")
    at = b.append(head + payload)
    return b.last.seq, reason(b, at, "unknown record kind 99"), None


def case_version_changed(b: Base):
    head, payload = b.header()
    at = b.append(head + payload)
    b.flip(at + 4, R.FORMAT_VERSION ^ 7)  # the current version -> 7
    return b.last.seq, reason(b, at, "record format version 7 not supported"), None


def case_payload_above_limit(b: Base):
    n = R.MAX_PAYLOAD + 512
    head, _ = b.header(length=n, payload=b"", payload_len=n)
    at = b.append(head + FORGED * 4096)
    return b.last.seq, reason(b, at, f"payload length {n} above the limit"), None


def case_write_payload_not_length(b: Base):
    head, payload = b.header(length=1024, payload=FORGED * 512)
    at = b.append(head + payload)
    why = "write record payload length 512 != length 1024"
    return b.last.seq, reason(b, at, why), None


def case_bookmark_empty_name(b: Base):
    head, payload = b.header(kind=R.BOOKMARK, offset=0, length=0, payload=b"")
    at = b.append(head + payload)
    return b.last.seq, reason(b, at, "bookmark name length 0 out of range"), None


def case_bookmark_name_too_long(b: Base):
    head, payload = b.header(kind=R.BOOKMARK, offset=0, length=0, payload=b"n" * 256)
    at = b.append(head + payload)
    return b.last.seq, reason(b, at, "bookmark name length 256 out of range"), None


def case_zero_with_payload(b: Base):
    head, payload = b.header(kind=R.ZERO, payload=FORGED * 512)
    at = b.append(head + payload)
    return b.last.seq, reason(b, at, "zero record with a payload"), None


def case_valid_record_after_garbage(b: Base):
    """PostgreSQL's rule: never skip garbage to a valid-looking record after it."""
    at = b.append(random.Random(7).randbytes(100).replace(b"CDPR", b"XXXX"))
    head, payload = b.header()
    b.append(head + payload, at + 100)
    with open(b.seg_path, "rb") as f:
        junk = f.read()[at : at + 4]
    return b.last.seq, reason(b, at, f"bad record magic {junk!r}"), b.last.seq + 1


def case_valid_record_after_zeros(b: Base):
    at = b.append(bytes(512))
    head, payload = b.header()
    b.append(head + payload, at + 512)
    return b.last.seq, reason(b, at, "zeroed record header"), b.last.seq + 1


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forged_tail(base, case):
    want_last, want_reason, forged = CASES[case](base)
    check_recovery(base, want_last, want_reason, forged)


def expect_cut(b: Base, cut: int) -> tuple[int, str]:
    """Where recovery must stop, and why, with the segment cut at byte ``cut``."""
    recs = b.recs[-3:]
    if cut >= b.end:
        return recs[-1].seq, reason(b, None, "")
    i = max(k for k in range(3) if b.seg_off(recs[k]) <= cut)
    start = b.seg_off(recs[i])
    prev = recs[i - 1].seq if i else b.prev.seq
    if cut == start:
        return prev, reason(b, None, "")
    if cut - start < R.RECORD_HEADER_SIZE:
        return prev, reason(b, start, "record header truncated")
    return prev, reason(b, start, f"payload of seq {recs[i].seq} truncated")


def test_truncation_at_every_offset_of_the_last_three_records(template, root):
    """Cut the segment at every byte of its last three records (write, zero, write).

    Every cut: the scan's end and exact reason.  At each record boundary and
    its neighbours, and every 29th cut besides: a full recovery as above.
    """
    with scratch_dir(root, "forge-cuts") as d:
        b = clone(template, d)
        with open(b.seg_path, "rb") as f:
            pristine = f.read()
        first = b.seg_off(b.recs[-3])
        for cut in range(first, b.end + 1):
            with open(b.seg_path, "wb") as f:
                f.write(pristine[:cut])
            scan = journal_of(d).scan()
            assert (scan.last_seq, scan.end_reason) == expect_cut(b, cut), f"cut at {cut}"
    bounds = [b.seg_off(r) for r in b.recs[-3:]] + [b.end]
    full = {x + k for x in bounds for k in (-1, 0, 1, 63, 64, 65)}
    full |= set(range(first, b.end + 1, 29))
    for cut in sorted(c for c in full if first <= c <= b.end):
        with scratch_dir(root, "forge-cut") as d:
            b2 = clone(template, d)
            b2.truncate(cut)
            check_recovery(b2, *expect_cut(b2, cut))


def test_later_segment_prev_last_seq_above_what_was_found_is_refused(base):
    """Durable records missing in the middle: refused (JournalCorrupt), never shortened."""
    # Segment 1 loses its last record (the bookmark); segment 2 says it follows it.
    b = base
    seg1 = segment_path(paths(b.d)["journal"], b.segno - 1)
    j = journal_of(b.d)
    recs1 = [r for r in j.scan().records if r.addr >> 32 == b.segno - 1]
    with open(seg1, "r+b") as f:
        f.truncate(recs1[-1].addr & 0xFFFFFFFF)
    msg = (
        f"segment {b.segno} follows seq {recs1[-1].seq} but the journal before it ends at "
        f"seq {recs1[-2].seq}: durable records are missing"
    )
    with pytest.raises(JournalCorrupt) as exc:
        journal_of(b.d).scan()
    assert str(exc.value) == f"journal corrupt: {msg}"
    remove_catalog(b.d)  # a rebuild reads the journal from the start
    with pytest.raises(JournalCorrupt, match="durable records are missing"):
        open_tracked(b.d)


def test_later_segment_prev_last_seq_below_what_was_found_is_accepted(base):
    """Lower is what a restart after a failed sync writes (docs/FORMAT.md): accepted."""
    b = base
    with open(b.seg_path, "r+b") as f:
        raw = bytearray(f.read(R.SEGMENT_HEADER_SIZE))
        struct.pack_into("<Q", raw, 40, b.prev.seq - 1)
        struct.pack_into("<I", raw, 60, R.crc32c(bytes(raw[:60])))
        f.seek(0)
        f.write(raw)
    check_recovery(b, b.last.seq, tail_reason(b))


def test_middle_segment_with_a_bad_header_is_refused(base):
    b = base
    seg1 = segment_path(paths(b.d)["journal"], b.segno - 1)
    with open(seg1, "r+b") as f:
        f.seek(50)
        byte = f.read(1)[0]
        f.seek(50)
        f.write(bytes([byte ^ 0xFF]))  # flipped: writing 0xff over a 0xff changed nothing
    with pytest.raises(JournalCorrupt, match=f"segment {b.segno - 1}: segment header crc mismatch"):
        journal_of(b.d).scan()


def test_renamed_segment_is_refused(base):
    b = base
    os.rename(b.seg_path, segment_path(paths(b.d)["journal"], b.segno + 5))
    with pytest.raises(JournalCorrupt, match=f"segment file {b.segno + 5} says it is segment"):
        journal_of(b.d).scan()


def test_last_segment_with_an_unreadable_header(base):
    """Treated as a segment whose header never became durable (so none of its records
    was acknowledged): dropped, none of its bytes served.  When the catalog already
    maps records in it (a clean close), it is not that case: refused, never shortened.
    """
    b = base
    with open(b.seg_path, "r+b") as f:
        f.seek(0)
        f.write(random.Random(1).randbytes(64))
    scan = journal_of(b.d).scan()
    assert scan.torn_segment == b.segno and scan.last_seq == b.prev.seq
    assert scan.end_reason.startswith(f"segment {b.segno}: bad segment magic")
    if b.stop == "clean":
        with pytest.raises(JournalCorrupt, match=f"segment {b.segno}: bad segment magic"):
            open_tracked(b.d)
    else:
        check_recovery(b, b.prev.seq, scan.end_reason)
