"""A small volume with a known journal, cloned per test, and helpers to forge its tail.

The base (built once per module, then copied): session 1 writes, zeroes and
bookmarks, then closes cleanly; session 2 (segment 2) writes three small
records (write, zero, write), flushes, and then either dies (``crash``: the
open after it runs a resync, which appends past the recovered end) or closes
cleanly (``clean``: its delta map covers the tail, so a forgery that removes
a real record also makes the open set the catalog aside and rebuild it).
Forgeries change segment 2, the journal's last segment.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from appliance.engine import record as R
from appliance.engine.journal import Rec, segment_path

from .helpers import abandon, create, journal_of, open_volume, paths

SIZE = 256 << 10
A, B, C = b"A" * 4096, b"B" * 512, b"C" * 512
FORGED = b"\xee"  # the byte every forged payload is made of: must never be served


@dataclass
class Base:
    d: str
    uuid: object
    segno: int  # the last segment (the one forged)
    recs: list[Rec]  # its records
    first_seq: int  # the first seq of the workload (s3)
    prev: Rec  # the last record before the segment
    stop: str = "crash"  # how the template's last session ended

    @property
    def last(self) -> Rec:
        return self.recs[-1]

    @property
    def seg_path(self) -> str:
        return segment_path(paths(self.d)["journal"], self.segno)

    def seg_off(self, rec: Rec) -> int:
        return rec.addr & 0xFFFFFFFF

    @property
    def end(self) -> int:
        """Byte offset just past the last good record of the segment."""
        return self.last.end_addr & 0xFFFFFFFF

    def model(self, seq: int) -> bytes:
        """The image right after record ``seq`` (the base workload's records only)."""
        img = bytearray(SIZE)
        s = self.first_seq
        steps = [
            (s, lambda: img.__setitem__(slice(0, 4096), A)),
            (s + 1, lambda: img.__setitem__(slice(1024, 2048), bytes(1024))),
            (self.recs[0].seq, lambda: img.__setitem__(slice(4096, 4608), B)),
            (self.recs[1].seq, lambda: img.__setitem__(slice(5120, 5632), bytes(512))),
            (self.recs[2].seq, lambda: img.__setitem__(slice(8192, 8704), C)),
        ]
        for at, apply in steps:
            if at <= seq:
                apply()
        return bytes(img)

    def header(
        self,
        *,
        kind: int = R.WRITE,
        flags: int = 0,
        seq: int | None = None,
        time_ns: int | None = None,
        offset: int = 12288,
        length: int = 512,
        payload_len: int | None = None,
        segno: int | None = None,
        vtag: bytes | None = None,
        payload: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        """A record header (valid CRC) and its payload; defaults: the next valid write."""
        if payload is None:
            payload = FORGED * length if kind == R.WRITE else b""
        plen = len(payload) if payload_len is None else payload_len
        head = R.pack_record_header(
            kind,
            flags,
            self.last.seq + 1 if seq is None else seq,
            self.last.time_ns + 1 if time_ns is None else time_ns,
            offset,
            length,
            plen,
            self.segno if segno is None else segno,
            R.volume_tag(self.uuid) if vtag is None else vtag,
            R.payload_crc(payload),
        )
        return head, payload

    # ------------------------------------------------------------ editing

    def append(self, data: bytes, at: int | None = None) -> int:
        """Write ``data`` at ``at`` (default: just past the last good record); returns at."""
        at = self.end if at is None else at
        with open(self.seg_path, "r+b") as f:
            f.seek(at)
            f.write(data)
        return at

    def truncate(self, length: int) -> None:
        with open(self.seg_path, "r+b") as f:
            f.truncate(length)

    def flip(self, at: int, mask: int = 0x40) -> None:
        with open(self.seg_path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ mask]))


def build_template(d: str, stop: str) -> None:
    """``stop``: "crash" (the process dies after the flush) or "clean" (a clean close)."""
    vol = create(d, SIZE, map_records=1 << 20, map_seconds=3600)
    vol.write(0, A)
    vol.write_zeros(1024, 1024)
    vol.bookmark("before")
    vol.close()
    vol = open_volume(d, map_records=1 << 20, map_seconds=3600)
    # One journal write for the three (the caller writes them when the batch
    # ends): records back to back and one PAD after them, every time.  Left to
    # the writer thread, it sometimes took the first alone, and a PAD then sat
    # between the records the cut tests expect back to back (a flaky test).
    with vol.batch():
        vol.write(4096, B)
        vol.write_zeros(5120, 512)
        vol.write(8192, C)
    vol.flush()
    if stop == "clean":
        vol.close()
    else:
        abandon(vol)  # dies: everything is durable, no clean close


def clone(template: str, d: str, stop: str = "crash") -> Base:
    """Copy the template volume to ``d`` (paths in volume.json rewritten)."""
    for name in os.listdir(template):
        src = os.path.join(template, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(d, name))
        else:
            shutil.copy2(src, os.path.join(d, name))
    p = paths(d)
    meta_path = os.path.join(p["state"], "volume.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["primary"], meta["secondary"] = p["primary"], p["secondary"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    j = journal_of(d)
    scan = j.scan()
    segno = scan.last_segno
    recs = [r for r in scan.records if r.addr >> 32 == segno]
    before = [r for r in scan.records if r.addr >> 32 < segno]
    first = next(r.seq for r in scan.records if r.kind == R.WRITE and not r.flags)
    return Base(d, j.uuid, segno, recs, first, before[-1], stop)
