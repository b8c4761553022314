"""Writer process for the crash tests: writes forever, reports what is acknowledged.

Usage: python -m tests.unit.crash_writer DIR SEED [threads]

Prints ``READY <first_seq>`` once, then ``ACK <seq>`` after every completed
flush(): every write with a sequence number up to <seq> is acknowledged.
Write number i (seq = first_seq + i) has size and offset drawn from SEED and
payload ``pattern(i, length)``, so the parent can rebuild every write.
"""

import random
import sys
from pathlib import Path

from appliance.engine import ProtectedVolume

from .helpers import pattern

SIZE = 8 << 20
BS = 512


def plan(seed: int, i: int) -> tuple[int, int]:
    r = random.Random(seed * 1_000_003 + i)
    nblocks = r.choice([1, 8, 8, 64, 256])
    block = r.randrange(0, SIZE // BS - nblocks)
    return block * BS, nblocks * BS


def main() -> None:
    d, seed = Path(sys.argv[1]), int(sys.argv[2])
    vol = ProtectedVolume.create(
        str(d / "state"),
        primary=str(d / "primary.img"),
        secondary=str(d / "secondary"),
        size=SIZE,
        map_records=64,
    )
    first = vol.last_seq + 1
    print(f"READY {first}", flush=True)
    i = 0
    while True:
        off, ln = plan(seed, i)
        seq = vol.write(off, pattern(i, ln))
        assert seq == first + i
        i += 1
        if i % 16 == 0:
            vol.flush()
            print(f"ACK {seq}", flush=True)


if __name__ == "__main__":
    main()
