"""Child process of the benchmark: open a volume, open images, read 1 MiB each."""

import json
import random
import resource
import statistics
import sys
import time

from appliance.engine import ProtectedVolume


def main() -> None:
    t0 = time.perf_counter()
    vol = ProtectedVolume.open(sys.argv[1], map_seconds=3600)
    open_s = time.perf_counter() - t0
    rnd = random.Random(3)
    times = []
    done = vol._maps.baseline_done_seq
    for _ in range(5):
        seq = rnd.randrange(done, vol.last_seq + 1)
        off = rnd.randrange(0, vol.size // (1 << 20)) << 20
        t0 = time.perf_counter()
        img = vol.image(seq=seq)
        img.read(off, 1 << 20)
        times.append(time.perf_counter() - t0)
    maps, merged = len(vol._maps.level0), len(vol._maps.merged)
    vol.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "open_s": open_s,
                "image_read_s": statistics.median(times),
                "rss_mib": rss,
                "maps": maps,
                "merged": merged,
            }
        )
    )


if __name__ == "__main__":
    main()
