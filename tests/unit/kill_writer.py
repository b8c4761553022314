"""Child process for kill-at-a-step tests: SIGKILLs itself at a fault point.

Usage: python -m tests.unit.kill_writer MODE DIR POINT N

MODE ``writes``: random writes and flushes; killed at the N-th hit of POINT.
MODE ``late``: the same, as the handler's runs: ``write_many`` in a late
journal batch (its records written at the batch's end, after the answers).
MODE ``rebaseline`` / ``resync``: a chain of writes, two lost writes on the
primary, then the procedure; killed at the N-th hit of POINT.
"""

import os
import random
import signal
import sys
from pathlib import Path

from appliance.engine import ProtectedVolume, faults

from .helpers import pattern

RS = 64 << 10
SIZE = 4 << 20  # 64 regions


def killer(n: int):
    hits = [0]

    def cb(**_):
        hits[0] += 1
        if hits[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    return cb


def main() -> None:
    mode, d, point, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    reset = 0.05 if mode == "writes" else None
    vol = ProtectedVolume.create(
        str(d / "state"),
        primary=str(d / "primary.img"),
        secondary=str(d / "secondary"),
        size=SIZE,
        region_size=RS,
        map_records=8,
        drl_reset_interval=reset,
    )
    rnd = random.Random(n)
    if mode == "late":
        faults.set_point(point, killer(n))
        for i in range(2_000):
            run = [(rnd.randrange(0, SIZE // 4096) * 4096, pattern(i * 8 + k, 4096))
                   for k in range(rnd.randint(1, 4))]  # fmt: skip
            with vol.batch(late=True):
                seqs, error = vol.write_many(run)
                assert error is None and len(seqs) == len(run)
                # (the handler answers the run here)
            if i % 5 == 4:
                vol.flush()
        return
    if mode == "writes":
        faults.set_point(point, killer(n))
        for i in range(10_000):
            off = rnd.randrange(0, SIZE // 4096) * 4096
            vol.write(off, pattern(i, 4096), fua=(i % 7 == 0))
            if i % 5 == 4:
                vol.flush()
        return
    for i in range(64):
        vol.write((i % 32) * RS + (i // 32) * 4096, pattern(i, 4096))
    vol.flush()
    with open(d / "primary.img", "r+b") as f:  # two lost writes
        for region in (3, 29):
            f.seek(region * RS + 8192)
            f.write(b"\x5a" * 4096)
    faults.set_point(point, killer(n))
    job = vol.rebaseline() if mode == "rebaseline" else vol.resync()
    job.wait(120)
    vol.close()


if __name__ == "__main__":
    main()
