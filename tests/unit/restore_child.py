"""Child for the crash-mid-restore test: SIGKILLs itself at the N-th region copied."""

import os
import signal
import sys
from pathlib import Path

from appliance.engine import ProtectedVolume, faults

from .helpers import pattern

RS = 64 << 10
SIZE = 4 << 20


def main() -> None:
    d, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    vol = ProtectedVolume.create(
        str(d / "state"),
        primary=str(d / "primary.img"),
        secondary=str(d / "secondary"),
        size=SIZE,
        region_size=RS,
        map_records=16,
    )
    for i in range(SIZE // RS):
        vol.write(i * RS, pattern(i, RS))
    vol.bookmark("good")
    (d / "good.bin").write_bytes(vol.read(0, SIZE))
    for i in range(SIZE // RS):
        vol.write(i * RS + 512, os.urandom(1024))
    vol.flush()
    host = b"W" * 4096

    def at(region, job):
        if region == 2:
            vol.write(20 * RS, host, fua=True)  # acknowledged mid-restore
            (d / "host.bin").write_bytes(host)
        if region >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    faults.set_point("restore.copy", at)
    vol.restore(bookmark="good").wait(60)


if __name__ == "__main__":
    main()
