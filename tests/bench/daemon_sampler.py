"""Run cdp-handlerd with a tiny sampling profiler (py-spy is not available offline).

Copied into the benchmark VM and started instead of the daemon's entry point::

    PYTHONPATH=/opt/cdp/site python3 daemon_sampler.py /root/profile.json [daemon args]

A background thread looks at every other thread's stack every 5 ms
(``sys._current_frames``) and counts, per thread group (the ring thread,
the workers, the journal threads, the rest), the innermost frame and the
innermost frame inside the project (``appliance/``).  The counts are written
to the JSON file every 2 s, so the figures survive a SIGKILL.  Standard
library only; the sampler needs the GIL like any thread, so a thread that
holds it for long stretches is under-sampled a little.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

INTERVAL = 0.005
WAITING = ("wait", "poll", "select", "acquire", "sleep", "get", "_wait_for_tstate_lock")


def _group(name: str) -> str:
    if name.startswith("tcmu-") and "-w_" in name:
        return "worker"
    if name.startswith("tcmu-"):
        return "ring"
    if name == "MainThread":
        return "main"
    return name.rstrip("0123456789_-") or "other"


def _where(code) -> str:
    path = code.co_filename
    cut = path.find("/site/")
    short = path[cut + 6 :] if cut >= 0 else os.path.basename(path)
    return f"{short}:{code.co_name}"


def _sampler(out: str) -> None:
    me = threading.get_ident()
    leaf: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    samples = 0
    last_dump = time.monotonic()
    while True:
        time.sleep(INTERVAL)
        names = {t.ident: t.name for t in threading.enumerate()}
        for tid, frame in sys._current_frames().items():
            if tid == me:
                continue
            group = _group(names.get(tid, "?"))
            leaf[group][_where(frame.f_code)] += 1
            f = frame
            while f is not None and "/appliance/" not in f.f_code.co_filename:
                f = f.f_back
            if f is not None:
                own[group][_where(f.f_code)] += 1
        samples += 1
        if time.monotonic() - last_dump > 2:
            last_dump = time.monotonic()
            data = {
                "samples": samples,
                "interval_s": INTERVAL,
                "leaf": {g: c.most_common(25) for g, c in leaf.items()},
                "appliance": {g: c.most_common(25) for g, c in own.items()},
            }
            tmp = out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, out)


def main() -> int:
    out = sys.argv[1]
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    threading.Thread(target=_sampler, args=(out,), name="sampler", daemon=True).start()
    from appliance.daemon import handlerd as daemon_main

    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
