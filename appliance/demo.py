"""Engine demo (until the appliance image exists): protect, write, rewind.

    python -m appliance.demo [--dir DIR]

Protects a 64 MiB volume kept in files, writes "documents", bookmarks them,
lets "ransomware" encrypt them, then finds the last good point and reads the
documents back from it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile

from appliance.engine import ProtectedVolume

DOC = 64 << 10


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to keep the demo volume (default: a temp folder)")
    args = ap.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="cdp-demo-")
    if args.dir:
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
    vol = ProtectedVolume.create(
        os.path.join(base, "state"),
        primary=os.path.join(base, "primary.img"),
        secondary=os.path.join(base, "secondary"),
        size=64 << 20,
    )
    print(f"protected volume {vol.uuid}: 64 MiB, primary and journal under {base}")
    docs = {i: os.urandom(DOC) for i in range(8)}
    for i, data in docs.items():
        vol.write(i * DOC, data)
    good = vol.bookmark("documents-saved")
    print(f"wrote 8 documents, bookmark 'documents-saved' at seq {good.seq}")
    for i in range(8):
        vol.write(i * DOC, hashlib.sha256(docs[i]).digest() * (DOC // 32))
    vol.flush()
    print(f"ransomware overwrote them all; the journal is at seq {vol.last_seq}")
    for p in vol.points():
        print(f"  point seq={p.seq:<6} kind={p.kind:<9} {p.name or ''}")
    img = vol.image(bookmark="documents-saved")
    ok = all(img.read(i * DOC, DOC) == docs[i] for i in range(8))
    print(f"image at 'documents-saved' (seq {img.seq}): documents intact: {ok}")
    first_bad = good.seq + 1
    img = vol.image(seq=first_bad)
    print(
        f"image at seq {first_bad} (the first ransomware write): document 0 intact: "
        f"{img.read(0, DOC) == docs[0]}"
    )
    vol.close()
    if not args.dir:
        shutil.rmtree(base)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
