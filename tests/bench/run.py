"""Engine benchmarks: each figure is a ratio against a reference measured in
the same run on the same filesystem, written to docs/PERFORMANCE.md.

    python -m tests.bench.run --workdir DIR --out docs/PERFORMANCE.md [--quick]

--quick shrinks every size so the whole run takes seconds (used by the test
suite to keep this script working); its figures are not meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from appliance.engine import ProtectedVolume
from appliance.engine import record as R
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal
from tests.bench import fio_section

MiB = 1 << 20


def new_volume(d: Path, **options) -> ProtectedVolume:
    """A volume whose files live in ``d`` (primary, secondary, state)."""
    return ProtectedVolume.create(
        str(d / "state"), primary=str(d / "primary"), secondary=str(d / "sec"), **options
    )


def fresh(workdir: Path, name: str) -> Path:
    d = workdir / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _plain_seq(d: Path, block: bytes, n: int) -> float:
    fd = os.open(d / "plain", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, block)
    os.fdatasync(fd)
    took = time.perf_counter() - t0
    os.close(fd)
    os.unlink(d / "plain")
    return took


def _journal_seq(d: Path, block: bytes, n: int) -> float:
    shutil.rmtree(d / "journal", ignore_errors=True)
    j = Journal(OsFileIO(), str(d / "journal"), uuid.uuid4(), 256 * MiB)
    j.start(0, 0, clean=True)
    t0 = time.perf_counter()
    for i in range(n):
        j.append(R.WRITE, (i * len(block)) % (1 << 40), len(block), block)
    j.sync()
    took = time.perf_counter() - t0
    j.close()
    shutil.rmtree(d / "journal")
    return took


def bench_journal_append(workdir: Path, total: int, rounds: int = 3) -> dict:
    """64 KiB sequential journal appends vs plain sequential writes, both synced at the end.

    Alternated ``rounds`` times; the median of each side is compared.
    """
    block = os.urandom(64 << 10)
    n = total // len(block)
    d = fresh(workdir, "append")
    plain, journal = [], []
    for _ in range(rounds):
        plain.append(_plain_seq(d, block, n))
        journal.append(_journal_seq(d, block, n))
    p, j = statistics.median(plain), statistics.median(journal)
    shutil.rmtree(d)
    mb = n * len(block) / MiB
    return {
        "name": "64 KiB sequential journal appends vs plain sequential writes",
        "ratio": p / j,
        "goal": ">= 0.9",
        "detail": f"{mb:.0f} MiB x {rounds} alternated rounds (medians): journal "
        f"{mb / j:.0f} MiB/s, plain {mb / p:.0f} MiB/s",
    }


def bench_random_writes(workdir: Path, count: int, size: int) -> dict:
    """4 KiB random vol.write, flush every 64, vs plain pwrite + fdatasync every 64."""
    rnd = random.Random(1)
    offsets = [rnd.randrange(0, size // 4096) * 4096 for _ in range(count)]
    data = os.urandom(4096)
    d = fresh(workdir, "randw")
    fd = os.open(d / "plain", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    t0 = time.perf_counter()
    for i, off in enumerate(offsets):
        os.pwrite(fd, data, off)
        if i % 64 == 63:
            os.fdatasync(fd)
    os.fdatasync(fd)
    plain = time.perf_counter() - t0
    os.close(fd)
    vol = new_volume(
        d,
        size=size,
        block_size=4096,
    )
    t0 = time.perf_counter()
    for i, off in enumerate(offsets):
        vol.write(off, data)
        if i % 64 == 63:
            vol.flush()
    vol.flush()
    engine = time.perf_counter() - t0
    vol.close()
    shutil.rmtree(d)
    return {
        "name": "4 KiB random vol.write (journal + primary, flush every 64) vs plain pwrite",
        "ratio": plain / engine,
        "goal": ">= 0.5",
        "detail": f"{count} writes: engine {count / engine:.0f} IOPS, "
        f"plain {count / plain:.0f} IOPS",
    }


def _filled_volume(d: Path, size: int, region: int, **opts) -> ProtectedVolume:
    """A volume whose primary holds random data, baselined (every region copied)."""
    with open(d / "primary", "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(chunk)
    vol = new_volume(
        d,
        size=size,
        region_size=region,
        **opts,
    )
    vol.wait_baseline()
    return vol


def _drop_caches() -> None:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def bench_resync_vs_rebaseline(workdir: Path, size: int) -> list[dict]:
    """Resync of 1 % dirty regions vs a full re-baseline; scan rate vs plain reads."""
    d = fresh(workdir, "resync")
    region = MiB
    vol = _filled_volume(d, size, region, drl_reset_interval=None)
    nreg = size // region
    dirty = max(1, nreg // 100)
    for i in range(dirty):
        vol.write(i * (nreg // dirty) * region, os.urandom(4096))
    vol.flush()
    _drop_caches()
    t0 = time.perf_counter()
    r1 = vol.resync().wait()
    resync = time.perf_counter() - t0
    _drop_caches()
    t0 = time.perf_counter()
    r2 = vol.rebaseline().wait()
    full = time.perf_counter() - t0
    vol.close()
    # Reference: plain sequential reads of the primary and of the journal segments.
    _drop_caches()
    t0 = time.perf_counter()
    nbytes = 0
    for path in [d / "primary"] + sorted((d / "sec" / "journal").glob("*.seg")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                nbytes += len(chunk)
    plain = time.perf_counter() - t0
    shutil.rmtree(d)
    mb = size / MiB
    return [
        {
            "name": "resync with 1 % of regions dirty vs full re-baseline (time ratio)",
            "value": resync / full,
            "goal": "<= 0.03",
            "detail": f"{mb:.0f} MiB volume, {r1['regions_compared']} of {nreg} regions: "
            f"resync {resync:.2f} s, re-baseline {full:.2f} s",
        },
        {
            "name": "re-baseline scan rate vs plain sequential reads of primary + journal",
            "ratio": plain / r2["scan_seconds"],
            "goal": ">= 0.8",
            "detail": f"scan {2 * mb / r2['scan_seconds']:.0f} MiB/s compared "
            f"({r2['scan_seconds']:.2f} s), plain {nbytes / MiB / plain:.0f} MiB/s "
            f"({plain:.2f} s for {nbytes / MiB:.0f} MiB)",
        },
    ]


def bench_drl_latency(workdir: Path, size: int, seconds: float) -> list[dict]:
    """4 KiB write latency with DRL reset every 1 s, every 60 s, never."""
    rows = []
    for label, interval in (("1 s", 1.0), ("60 s", 60.0), ("never", None)):
        d = fresh(workdir, "drl")
        vol = new_volume(
            d,
            size=size,
            drl_reset_interval=interval,
        )
        rnd = random.Random(4)
        data = os.urandom(4096)
        lat = []
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            off = rnd.randrange(0, size // 4096) * 4096
            t0 = time.perf_counter()
            vol.write(off, data)
            lat.append(time.perf_counter() - t0)
            i += 1
            if i % 64 == 0:
                vol.flush()
        lat.sort()
        dirty = vol.drl_dirty_regions()
        syncs = vol._drl.syncs
        vol.close()
        shutil.rmtree(d)
        p50, p99 = lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6
        rows.append(
            {
                "name": f"4 KiB write latency p50 / p99 (us), DRL reset every {label}",
                "value": p50,
                "text": f"{p50:.0f} / {p99:.0f}",
                "goal": "(trade-off)",
                "detail": f"{len(lat)} writes in {seconds:.0f} s, {syncs} DRL syncs; "
                f"{dirty} of {size // MiB} regions dirty at the end "
                "(what a resync after a crash would scan)",
            }
        )
    return rows


def bench_restore(workdir: Path, size: int) -> list[dict]:
    """Restore: time to the first correct read; copy throughput vs a plain copy."""
    d = fresh(workdir, "restore")
    vol = new_volume(
        d,
        size=size,
        map_seconds=3600,
    )
    chunk = os.urandom(MiB)
    for off in range(0, size, MiB):
        vol.write(off, chunk)
    good = vol.bookmark("good")
    other = os.urandom(MiB)
    for off in range(0, size, MiB):
        vol.write(off, other)
    vol.flush()
    t0 = time.perf_counter()
    job = vol.restore(bookmark="good")
    first = vol.read(size // 2, 4096)
    first_read = time.perf_counter() - t0
    assert first == chunk[(size // 2) % MiB : (size // 2) % MiB + 4096]
    job.wait()
    vol.flush()
    restore_s = time.perf_counter() - t0
    assert job.result["bytes_copied"] == size and good.seq
    vol.close()
    # Reference: a plain sequential copy of the same number of bytes, synced.
    src = d / "primary"
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fi, open(d / "copy", "wb", buffering=0) as fo:
        while block := fi.read(MiB):
            fo.write(block)
        os.fdatasync(fo.fileno())
    plain = time.perf_counter() - t0
    shutil.rmtree(d)
    mb = size / MiB
    return [
        {
            "name": "time from restore() to the first correct 4 KiB read (ms)",
            "value": first_read * 1000,
            "goal": "< 50 ms",
            "detail": f"{mb:.0f} MiB volume",
        },
        {
            "name": "restore copy throughput vs a plain sequential copy of the same bytes",
            "ratio": plain / restore_s,
            "goal": ">= 0.8",
            "detail": f"restore {mb / restore_s:.0f} MiB/s, plain copy {mb / plain:.0f} MiB/s "
            "(the journal gets REF records, not the bytes again)",
        },
    ]


def bench_retention(workdir: Path, size: int, rounds: int) -> list[dict]:
    """Retention compaction rate, and 4 KiB write latency while it runs."""
    d = fresh(workdir, "retention")
    vol = new_volume(
        d,
        size=size,
        map_seconds=3600,
        segment_size=16 * MiB,
    )
    vol.segment_pool = 0
    chunk = os.urandom(MiB)
    for _ in range(rounds):  # full overwrites: all but the last are garbage
        for off in range(0, size, MiB):
            vol.write(off, chunk)
        vol.flush()
        vol.close_map()
    vol.set_retention("all:1h")

    def latencies(seconds: float) -> list[float]:
        out, end, rnd = [], time.perf_counter() + seconds, random.Random(5)
        data = os.urandom(4096)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            vol.write(rnd.randrange(0, size // 4096) * 4096, data)
            out.append(time.perf_counter() - t0)
        return sorted(out)

    quiet = latencies(1.0)
    t0 = time.perf_counter()
    job = vol.apply_retention(now=time.time() + 7200)
    busy = []
    while not job.done:
        busy += latencies(0.05)
    result = job.wait()
    took = time.perf_counter() - t0
    vol.close()
    shutil.rmtree(d)
    busy.sort()

    def p99(xs):
        return xs[int(len(xs) * 0.99)] * 1e6 if xs else 0.0

    mib = result["bytes_reclaimed"] / MiB
    return [
        {
            "name": "retention compaction rate (MiB of journal reclaimed per second)",
            "value": mib / took,
            "goal": "(reported)",
            "detail": f"{mib:.0f} MiB reclaimed in {took:.2f} s from {rounds} full overwrites",
        },
        {
            "name": "4 KiB write latency p99 (us): quiet / while retention runs",
            "value": p99(quiet),
            "text": f"{p99(quiet):.0f} / {p99(busy):.0f}",
            "goal": "(reported)",
            "detail": f"{len(busy)} writes during the run",
        },
    ]


def build_big(d: Path, writes: int, maps: int, size: int) -> None:
    vol = new_volume(
        d,
        size=size,
        block_size=4096,
        map_records=max(1, writes // maps),
        map_seconds=3600,
    )
    rnd = random.Random(2)
    data = os.urandom(4096)
    blocks = size // 4096
    for i in range(writes):
        vol.write(rnd.randrange(blocks) * 4096, data)
        if i % 4096 == 4095:
            vol.flush()
    vol.close()


def bench_open_image(workdir: Path, writes: int, maps: int, size: int) -> list[dict]:
    d = fresh(workdir, "bigchain")
    t0 = time.perf_counter()
    build_big(d, writes, maps, size)
    build = time.perf_counter() - t0
    probe = subprocess.run(
        [sys.executable, "-m", "tests.bench.open_probe", str(d / "state")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    r = json.loads(probe.stdout.strip().splitlines()[-1])
    shutil.rmtree(d)
    detail = (
        f"{writes} writes of 4 KiB, {r['maps']} delta maps ({r['merged']} merged), "
        f"built in {build:.0f} s"
    )
    return [
        {
            "name": "open an image and read 1 MiB from it (seconds, median of 5 points)",
            "value": r["image_read_s"],
            "goal": "< 1 s",
            "detail": detail,
        },
        {
            "name": "open the volume itself (catalog load, journal tail scan), seconds",
            "value": r["open_s"],
            "goal": "(reported)",
            "detail": detail,
        },
        {
            "name": "peak RSS of that process (MiB)",
            "value": r["rss_mib"],
            "goal": "(reported)",
            "detail": "ru_maxrss after opening the volume and 5 images",
        },
    ]


def write_report(out: Path, rows: list[dict], argv: list[str], quick: bool) -> None:
    lines = [
        "# Performance",
        "",
        "Produced by `make bench` (`python -m " + " ".join(["tests.bench.run"] + argv) + "`)",
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores.",
        "Ratios are engine throughput / reference throughput measured in the same run on",
        "the same filesystem: 1.0 means as fast as the reference.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: sizes shrunk to seconds; these figures mean nothing.**", ""]
    lines += ["| benchmark | figure | goal | detail |", "|---|---|---|---|"]
    for r in rows:
        if "text" in r:
            fig = r["text"]
        elif "ratio" in r:
            fig = f"{r['ratio']:.2f}x"
        else:
            fig = f"{r['value']:.3f}"
        lines.append(f"| {r['name']} | {fig} | {r['goal']} | {r['detail']} |")
    text = "\n".join(lines) + "\n"
    old = out.read_text() if out.exists() else ""
    # The reader's notes on these figures are written by hand: keep them (to
    # be brought up to date with the new figures).
    reading = _reading_section(old)
    if reading is not None and not quick:
        text += "\n" + reading
    # The fio-in-the-VM figures (tests.bench.fio_vm) come from another run: keep them.
    previous = fio_section.extract(old)
    if previous is not None:
        text = fio_section.splice(text, previous)
    out.write_text(text)


READING = "## Reading these figures"


def _reading_section(text: str) -> str | None:
    """The hand-written section after the table, up to the fio section."""
    start = text.find(READING)
    if start < 0:
        return None
    end = text.find(fio_section.BEGIN, start)
    return text[start : end if end >= 0 else len(text)].rstrip("\n") + "\n"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big-writes", type=int, default=1_000_000)
    ap.add_argument("--big-maps", type=int, default=10_000)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    q = args.quick
    rows = [
        bench_journal_append(workdir, 16 * MiB if q else 1024 * MiB),
        bench_random_writes(workdir, 640 if q else 20_000, 64 * MiB if q else 1024 * MiB),
    ]
    rows += bench_resync_vs_rebaseline(workdir, 32 * MiB if q else 2048 * MiB)
    rows += bench_drl_latency(workdir, 64 * MiB if q else 1024 * MiB, 1.0 if q else 8.0)
    rows += bench_restore(workdir, 32 * MiB if q else 1024 * MiB)
    rows += bench_retention(workdir, 32 * MiB if q else 256 * MiB, 3 if q else 8)
    from tests.bench.handler_path import (  # they use new_volume from here
        bench_compiled_loop,
        bench_handler_path,
    )

    rows += bench_handler_path(workdir, 320 if q else 20_000, 64 * MiB if q else 256 * MiB)
    rows += bench_compiled_loop(workdir, 320 if q else 20_000, 64 * MiB if q else 256 * MiB)
    for r in rows:
        fig = r.get("text") or (f"{r['ratio']:.2f}x" if "ratio" in r else f"{r['value']:.3f}")
        print(f"{r['name']}: {fig} ({r['detail']})", flush=True)
    big = bench_open_image(
        workdir,
        2000 if q else args.big_writes,
        40 if q else args.big_maps,
        64 * MiB if q else 1024 * MiB,
    )
    for r in big:
        print(f"{r['name']}: {r['value']:.3f} ({r['detail']})", flush=True)
    rows += big
    write_report(Path(args.out), rows, argv, q)


if __name__ == "__main__":
    main()
