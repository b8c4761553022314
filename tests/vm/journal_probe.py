"""Run inside the appliance VM (stdlib only): the journal's history of some bytes.

``python3 - JOURNAL_DIR CATALOG START:END [START:END ...] < journal_probe.py``
prints, in sequence order, every record (docs/FORMAT.md, record formats 1 and 2;
PAD records cover no bytes and are never printed)
whose range meets one of the byte ranges, with a short sha256 of the bytes it
wrote there, every bookmark and marker record, then the catalog's delta maps
that place any of those bytes.  A VM test prints it when an image's file
system fails its checks, so that one CI failure tells which write an image
holds for the damaged block, or which it lacks.
"""

import glob
import hashlib
import mmap
import os
import sqlite3
import struct
import sys

HEADER = struct.Struct("<4sBBHQQQQII8sI")  # + crc32c at 60: 64 bytes
KINDS = {1: "WRITE", 2: "ZERO", 3: "BOOKMARK", 4: "REF", 5: "UNBOOKMARK", 6: "PAD",
         16: "BASELINE_DONE", 17: "IN_SYNC", 18: "OUT_OF_SYNC", 19: "FIXUP",
         20: "RESTORE"}  # fmt: skip
MARKERS = (3, 5, 16, 17, 18, 19, 20)
REF_ENTRY = struct.Struct("<qqq")


def records(folder):
    for path in sorted(glob.glob(os.path.join(folder, "*.seg"))):
        segno = int(os.path.basename(path)[:16], 16)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size <= 4096:
                continue
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            pos = 4096
            while pos + 64 <= len(data):
                magic, _v, kind, flags, seq, _t, off, length, plen, seg32, _tag, _r = (
                    HEADER.unpack_from(data, pos)
                )
                if magic != b"CDPR" or seg32 != segno & 0xFFFFFFFF:
                    break  # the end of this segment's records
                yield segno, pos, kind, flags, seq, off, length, data[pos + 64 : pos + 64 + plen]
                pos += 64 + plen


def main(folder, catalog, spans):
    ranges = [tuple(int(x) for x in s.split(":")) for s in spans]
    for segno, pos, kind, flags, seq, off, length, payload in records(folder):
        name = KINDS.get(kind, str(kind))
        if kind in MARKERS:
            text = payload.decode(errors="replace") if kind in (3, 5) else f"offset={off}"
            print(f"seq {seq} {name} {text}")
            continue
        for lo, hi in ranges:
            a, b = max(off, lo), min(off + length, hi)
            if a >= b:
                continue
            what = ""
            if kind == 1:
                what = hashlib.sha256(payload[a - off : b - off]).hexdigest()[:16]
            elif kind == 4:
                ents = [e for e in REF_ENTRY.iter_unpack(payload) if e[0] < hi and e[1] > lo]
                what = f"refs={ents}"
            print(f"seq {seq} {name} flags={flags} record=[{off},{off + length})"
                  f" bytes=[{a},{b}) at {segno}:{pos} {what}")  # fmt: skip
    db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    print("bookmarks:", db.execute("SELECT name, seq FROM bookmark ORDER BY seq").fetchall())
    for mid, level, idx, first, last, suspect, fixup in db.execute(
        "SELECT id, level, idx, first_seq, last_seq, suspect, fixup FROM delta_map"
        " ORDER BY level, idx"
    ):
        found = []
        for lo, hi in ranges:
            found += db.execute(
                "SELECT p_start, p_end, addr FROM extent WHERE map_id = ? AND p_start < ?"
                " AND p_end > ?",
                (mid, hi, lo),
            ).fetchall()
        if found:
            print(f"map {mid} level {level} #{idx} seq {first}-{last}"
                  f" suspect={suspect} fixup={fixup}: {found}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
