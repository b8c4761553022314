"""fio through open-iscsi in the test VM: user:cdp vs LIO fileio vs tcmu-runner.

One run boots the same VM image once per backstore (tcmu-runner and
cdp-handlerd must never run together: both answer TCMU netlink and own
``org.kernel.TCMUService1``).  Each boot gets the same fresh disks:

* ``virtio-primary``: a sparse raw file on the host, the backstore's data disk
  (fileio uses it directly; user:cdp uses it as the volume's primary); for
  tcmu-runner it holds a qcow2 image (see ``TCMU_HANDLER``: Debian ships no
  plain ``user:file`` handler);
* ``virtio-journal``: a second virtio disk with ext4, the secondary journal of
  user:cdp (present, unused, for the other two so the VM is the same).

The guest's own open-iscsi initiator logs in to the guest's target over
loopback and fio runs on the raw ``/dev/sdX`` (``direct=1``, libaio):

    4 KiB randwrite QD16, 64 KiB seqwrite QD8, 4 KiB randread QD16

The figures go between the ``fio-vm`` markers of docs/PERFORMANCE.md
(``tests.bench.run`` keeps that section when it regenerates the file)::

    CDP_KEEP_BASES=10 python -m tests.bench.fio_vm --out docs/PERFORMANCE.md [--runtime 30]

The image is the base built with ``CDP_EXTRA_PACKAGES=tcmu-runner`` (its own
cache key); for the cdp and fileio boots tcmu-runner is stopped and masked.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import fio_section
from tests.vm import vmctl
from tests.vm.durability_guest import (
    PYTHON,
    Lun,
    build_site,
    install_project,
    log_events,
    login,
    make_luns,
    start_daemon_unit,
)

REPO = Path(__file__).resolve().parents[2]
PRIMARY = "/dev/disk/by-id/virtio-primary"
BACKSTORES = ("cdp", "fileio", "tcmu")
# name, fio arguments, what the figure is
WORKLOADS = (
    ("4k-randwrite-qd16", ["--rw=randwrite", "--bs=4k", "--iodepth=16"]),
    ("64k-seqwrite-qd8", ["--rw=write", "--bs=64k", "--iodepth=8"]),
    ("4k-randread-qd16", ["--rw=randread", "--bs=4k", "--iodepth=16"]),
)
REGION = 64 << 20  # every workload stays in the first 64 MiB (pre-filled for the reads)


# Debian 12's tcmu-runner (1.5.4) ships handler_file_optical, _file_zbc, _qcow and _rbd:
# upstream's plain file handler (file_example.c, "user:file") is not packaged.  The
# closest packaged handler is qcow: the primary disk then holds a qcow2 image with
# preallocated metadata (made on the host), so every write is a plain pwrite at a
# known offset after an L2 lookup that stays cached.
TCMU_HANDLER = "qcow"


def primary_disk(kind: str, work: Path) -> vmctl.Disk:
    if kind != "tcmu":
        return vmctl.Disk("primary", 1 << 30)
    path = work / f"{kind}-primary.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10,preallocation=metadata",
         str(path), "1G"],
        check=True, timeout=300,
    )  # fmt: skip
    return vmctl.Disk("primary", path=path)  # attached raw: the guest sees the qcow2 bytes


def tcmu_base() -> vmctl.Base:
    """The base image with tcmu-runner (built on first use, cached under its own key)."""
    env = {**os.environ, "CDP_EXTRA_PACKAGES": "tcmu-runner"}
    env.setdefault("CDP_KEEP_BASES", "10")
    proc = subprocess.run(
        [str(vmctl.BUILD_SCRIPT)], env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, timeout=1800, check=True,
    )  # fmt: skip
    return vmctl.Base(Path(proc.stdout.strip().splitlines()[-1])).check()


def lun_for(kind: str, size: int) -> Lun:
    if kind == "cdp":
        cfg = f"cdp/bench;primary={PRIMARY};secondary=/srv/journal/bench;mode=sync"
        return Lun("bench", size, cfgstring=cfg)
    if kind == "tcmu":
        return Lun("bench", size, cfgstring=f"{TCMU_HANDLER}/{PRIMARY}")
    return Lun("bench", 0, plugin="fileio", cfgstring=PRIMARY)  # size: the disk's


PREPARE = """\
set -e
mkfs.ext4 -q /dev/disk/by-id/virtio-journal
mkdir -p /srv/journal && mount /dev/disk/by-id/virtio-journal /srv/journal
systemctl stop tcmu-runner 2>/dev/null || true
{tcmu}
"""


def fio_job(dev: str, args: list[str], runtime: int) -> list[str]:
    return [
        "fio", "--output-format=json", "--name=bench", f"--filename={dev}", "--direct=1",
        "--ioengine=libaio", f"--size={REGION}", "--time_based", f"--runtime={runtime}",
        "--ramp_time=3", "--randrepeat=0", "--norandommap", *args,
    ]  # fmt: skip


def parse_fio(text: str) -> dict:
    report = json.loads(text[text.find("{") :])
    job = report["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] else job["read"]
    pct = side["clat_ns"].get("percentile", {})
    return {
        "iops": side["iops"],
        "mbs": side["bw_bytes"] / 1e6,
        "p99_ms": pct.get("99.000000", 0) / 1e6,
        "p50_ms": pct.get("50.000000", 0) / 1e6,
        "errors": job["error"],
    }


def run_backstore(
    base: vmctl.Base, kind: str, site: Path, runtime: int, work: Path, profile: bool = False
) -> dict:
    """Boot, set up one backstore, run the three workloads; figures and timings.

    ``work``: a fresh folder for this boot's disks.  ``profile``: run the cdp
    daemon under tests/bench/daemon_sampler.py and return its per-thread
    sample counts (the figures are then not comparable)."""
    work.mkdir(parents=True)
    disks = [primary_disk(kind, work), vmctl.Disk("journal", 2 << 30)]
    out: dict = {"timings": {}}
    with vmctl.VM(base, workdir=work / kind, disks=disks, cpu="Nehalem") as vm:
        out["timings"]["boot"] = vm.boot_seconds
        tcmu = "systemctl mask --now tcmu-runner" if kind != "tcmu" else ""
        vm.ssh(PREPARE.format(tcmu=tcmu), timeout=300)
        if kind == "cdp":
            out["timings"]["install"] = install_project(vm, site)
            command = ""
            if profile:
                vm.copy_in(REPO / "tests/bench/daemon_sampler.py", "/root/daemon_sampler.py")
                command = f"{PYTHON} /root/daemon_sampler.py /root/profile.json"
            out["timings"]["daemon start"] = start_daemon_unit(vm, timeout=900, command=command)
        elif kind == "tcmu":
            vm.ssh("modprobe -a target_core_user iscsi_target_mod; systemctl start tcmu-runner")
        else:
            vm.ssh("modprobe -a target_core_file iscsi_target_mod")
        lun = lun_for(kind, 1 << 30)
        make_luns(vm, [lun])
        if kind == "cdp":
            out["timings"]["baseline"] = wait_baseline(vm)
        login(vm, [lun], queue_depth=128)
        t0 = time.monotonic()
        vm.ssh(shlex.join(["fio", "--name=fill", f"--filename={lun.dev}", "--direct=1",
                           "--ioengine=libaio", "--rw=write", "--bs=1M", "--iodepth=4",
                           f"--size={REGION}"]) + " >/dev/null", timeout=1800)  # fmt: skip
        out["timings"]["prefill 64 MiB"] = time.monotonic() - t0
        server = {"cdp": "cdp-handlerd", "tcmu": "tcmu-runner"}.get(kind)
        for name, args in WORKLOADS:
            procs = proc_ticks(vm)
            before = cpu_ticks(vm, server)
            r = vm.ssh(shlex.join(fio_job(lun.dev, args, runtime)), timeout=runtime * 10 + 600)
            after = cpu_ticks(vm, server)
            procs = proc_ticks(vm) - procs
            out[name] = parse_fio(r.stdout)
            out[name].update(cpu_per_io(before, after, out[name]["iops"]))
            ios = out[name]["iops"] * (after[-1] - before[-1])
            cpu = collections.Counter({k: v for k, v in procs.items() if " " not in k})
            out[name]["top_ms_per_io"] = {
                comm: round(10 * ticks / ios, 2) for comm, ticks in cpu.most_common(8)
            } if ios else {}  # fmt: skip
            out[name]["disk_per_io"] = {
                k: round(v / ios, 2) for k, v in sorted(procs.items()) if " " in k and v
            } if ios else {}  # fmt: skip
            print(f"{kind} {name}: {out[name]}", flush=True)
        out["load"] = os.getloadavg()
        if kind == "cdp":
            out["daemon"] = [
                e
                for e in log_events(vm)
                if e.get("event")
                in ("crc32c.chosen", "malloc.tuned", "daemon.ready", "device.attached")
            ]
            if profile:
                time.sleep(3)  # one more dump of the counts
                out["profile"] = json.loads(vm.ssh("cat /root/profile.json").stdout)
    return out


# Guest CPU accounting around one fio run: /proc/stat's busy ticks (all CPUs,
# everything but idle and iowait), the serving process's utime and stime (its
# main PID, all threads) and its context switches (voluntary + involuntary,
# summed over its threads: each is a futex or a blocking call, and costly under
# TCG).  USER_HZ is 100 on Debian's kernel.
CPU_TICKS = r"""
awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
pid=$(systemctl show -p MainPID --value {unit} 2>/dev/null || echo 0)
if [ -n "$pid" ] && [ "$pid" != 0 ]; then
  awk '{print $14, $15}' /proc/$pid/stat
  cat /proc/$pid/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
else echo 0 0; echo 0; fi
awk '{print $1}' /proc/uptime
"""


def cpu_ticks(vm: vmctl.VM, unit: str | None) -> tuple[float, ...]:
    """(guest busy ticks, guest total ticks, process utime, stime, context
    switches, uptime s)."""
    r = vm.ssh(CPU_TICKS.replace("{unit}", unit or "none.service"))
    return tuple(float(x) for x in r.stdout.split())


# CPU ticks per command name (digits folded: kworker/u4:2 -> kworker/uN:N), all
# processes and kernel threads: where the guest's time goes besides the server.
PROC_TICKS = r"""python3 - <<'EOF'
import json, os, re
out = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            s = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        end = s.rindex(")")
        comm = re.sub(r"[0-9]+", "N", s[s.index("(") + 1 : end])
        f = s[end + 2 :].split()
        out[comm] = out.get(comm, 0) + int(f[11]) + int(f[12])
for line in open("/proc/diskstats"):
    f = line.split()
    if re.fullmatch(r"[sv]d[a-z]", f[2]):  # writes, sectors written, flushes
        for key, i in (("writes", 7), ("sectors", 9), ("flushes", 18)):
            out[f"{f[2]} {key}"] = int(f[i]) if len(f) > i else 0
for info in __import__("glob").glob("/proc/fs/jbd2/*/info"):
    first = open(info).readline().split()[0]  # "N transactions (M requested), ..."
    out["jbd2 " + info.split("/")[4] + " commits"] = int(first)
print(json.dumps(out))
EOF"""


def proc_ticks(vm: vmctl.VM) -> collections.Counter:
    return collections.Counter(json.loads(vm.ssh(PROC_TICKS).stdout))


def cpu_per_io(before, after, iops: float) -> dict:
    """Guest CPU per I/O (ms, all vCPUs) and the serving process's part of it."""
    busy, total, utime, stime, switches, wall = (a - b for a, b in zip(after, before, strict=True))
    ios = iops * wall  # fio's IOPS over its runtime; the ramp adds a little
    if not ios:
        return {}
    return {
        "guest_busy_pct": round(100 * busy / total, 1) if total else 0.0,
        "guest_cpu_ms_per_io": round(10 * busy / ios, 2),
        "server_cpu_ms_per_io": round(10 * (utime + stime) / ios, 2),
        "server_user_ms_per_io": round(10 * utime / ios, 2),
        "server_sys_ms_per_io": round(10 * stime / ios, 2),
        "server_switches_per_io": round(switches / ios, 1),
    }


def wait_baseline(vm: vmctl.VM, timeout: float = 3600) -> float:
    """Wait for the new volume's baseline (the copy of the existing 1 GiB
    primary into the journal, [0055]) to finish: measured while it ran, the
    figures were those of a copy competing for the guest's 2 vCPUs, not of
    protection in steady state.  Returns how long it took."""
    t0 = time.monotonic()
    while not any(e.get("event") == "baseline.done" for e in log_events(vm)):
        if time.monotonic() - t0 > timeout:
            raise vmctl.VMError(f"the baseline did not finish in {timeout:.0f} s")
        time.sleep(5)
    return time.monotonic() - t0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def round_order(kinds: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, backstore) in the order they boot: every other round reversed,
    so that a host slowing down or speeding up over the run does not always
    favour the same backstore."""
    return [(r, kind) for r in range(rounds) for kind in (kinds if r % 2 == 0 else kinds[::-1])]


def combine(runs: list[dict]) -> dict:
    """One backstore's rounds as one result: per workload, the round with the
    median IOPS (its latency and CPU columns with it; an odd number of rounds,
    so it is a real round), plus every round's IOPS in ``round_iops`` (boot
    order); the boots' timings and loads in ``boots``."""
    if len(runs) == 1:
        return runs[0]
    out: dict = {"boots": [{"timings": r["timings"], "load": r.get("load", ())} for r in runs]}
    for name, _ in WORKLOADS:
        have = [r[name] for r in runs if name in r]
        if not have:
            continue
        median = sorted(have, key=lambda x: x["iops"])[len(have) // 2]
        out[name] = {**median, "round_iops": [x["iops"] for x in have]}
    daemon = next((r["daemon"] for r in runs if "daemon" in r), None)
    if daemon is not None:
        out["daemon"] = daemon
    return out


def paired_ratios(results: dict, name: str, other: str) -> list[float]:
    """cdp / ``other`` for ``name`` round by round (boots close in time)."""
    c = results.get("cdp", {}).get(name, {}).get("round_iops", [])
    o = results.get(other, {}).get(name, {}).get("round_iops", [])
    return [a / b for a, b in zip(c, o, strict=False) if b]


def spread(results: dict, name: str, other: str) -> str:
    """`` (round by round a-b)`` when there were rounds, else nothing."""
    pairs = paired_ratios(results, name, other)
    if len(pairs) < 2:
        return ""
    return f" (round by round {min(pairs):.2f}-{max(pairs):.2f})"


def section(results: dict, runtime: int, when: str, took: float) -> str:
    n = max((len(r.get("boots", ())) for r in results.values() if isinstance(r, dict)), default=0)
    rounds = f" --rounds {n}" if n > 1 else ""
    lines = [
        fio_section.BEGIN,
        "## fio through open-iscsi in the test VM (user:cdp vs fileio vs tcmu-runner)",
        "",
        f"Produced by `python -m tests.bench.fio_vm --runtime {runtime}{rounds}` (finished {when}; "
        f"the last invocation took {took / 60:.0f} min).",
        "Debian 12 guest, kernel 6.1, **TCG** (no KVM), 2 vCPUs, `-cpu Nehalem`; one boot per",
        "backstore from the same image (the base with tcmu-runner, masked for the other two);",
        "the backstore's data on a 1 GiB virtio disk (raw file, host cache writeback), the",
        "cdp journal on a second virtio disk (ext4). The guest's open-iscsi logs in to its",
        "own target over loopback; fio on the raw `/dev/sdX`, `direct=1`, libaio, within the",
        f"first 64 MiB (pre-filled), {runtime} s each after a 3 s ramp. user:cdp in `sync`",
        "mode, 4 workers, `hw_max_sectors=16384`; fileio with write-back (WCE=1, as the",
        "other two report). tcmu-runner: Debian 12's package (1.5.4) has no plain `file`",
        "handler (upstream's file_example.c is not packaged), so its `user:qcow` handler",
        "serves a qcow2 image with preallocated metadata written onto the same kind of",
        "virtio disk: each write is one pwrite after a cached L2 lookup.",
        "",
        "**Load.** The host's load average at the end of each boot's run is given below: well",
        "above 2 (the VM's own two vCPUs) means the host was shared and the absolute figures",
        "are low. Even on a quiet host they move by a third between runs (the host's own",
        "speed varies), so compare the ratios and the CPU per I/O, which come from one run.",
        *(
            [
                f"With {n} rounds (every backstore booted {n} times, every other round in reverse",
                "order), a row is the workload's median round (every round's IOPS in brackets, in",
                "boot order) and the ratios are of the medians, with their range round by round.",
            ]
            if n > 1
            else []
        ),
        "",
        "CPU columns: the guest's busy time per I/O over all vCPUs (fio, open-iscsi, LIO,",
        "the handler, the page cache: everything), and the part of it the serving process",
        "(cdp-handlerd or tcmu-runner; fileio has none) spent, split into user and kernel",
        "time, and that process's context switches per I/O (all its threads; each is a",
        "futex or a blocking call); `/proc/stat`, `/proc/<pid>/stat` and",
        "`/proc/<pid>/task/*/status` read before and after each fio run.",
        "",
        "| workload | backstore | IOPS | MB/s | p50 ms | p99 ms | guest busy | guest CPU ms/IO "
        "| server CPU ms/IO (user + sys) | server switches/IO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in WORKLOADS:
        for kind in BACKSTORES:
            r = results.get(kind, {}).get(name)
            if r is None:
                lines.append(f"| {name} | {kind} | failed | | | | | | | |")
                continue
            cpu = " | | | "
            if "guest_busy_pct" in r:
                cpu = f"{r['guest_busy_pct']:.0f}% | {r['guest_cpu_ms_per_io']:.2f} | "
                if "server_user_ms_per_io" in r:
                    cpu += (
                        f"{r['server_cpu_ms_per_io']:.2f} ({r['server_user_ms_per_io']:.2f} "
                        f"+ {r['server_sys_ms_per_io']:.2f}) | {r['server_switches_per_io']:.1f}"
                    )
                else:  # recorded before the split was measured
                    cpu += f"{r['server_cpu_ms_per_io']:.2f} | "
            iops = f"{r['iops']:.0f}"
            if len(r.get("round_iops", ())) > 1:
                iops += " (" + ", ".join(f"{x:.0f}" for x in r["round_iops"]) + ")"
            lines.append(
                f"| {name} | {kind} | {iops} | {r['mbs']:.2f} | {r['p50_ms']:.1f} "
                f"| {r['p99_ms']:.1f} | {cpu} |"
            )
    lines += ["", "| workload | cdp / tcmu-runner (goal >= 1.0) | cdp / fileio |", "|---|---|---|"]
    for name, _ in WORKLOADS:
        c, f, t = (results.get(k, {}).get(name) for k in ("cdp", "fileio", "tcmu"))
        if c and t and f:
            goal = " (goal >= 0.7)" if name.startswith("64k") else ""
            vs_tcmu = ratio(c["iops"], t["iops"]) + spread(results, name, "tcmu")
            vs_fileio = ratio(c["iops"], f["iops"]) + goal + spread(results, name, "fileio")
            lines.append(f"| {name} | {vs_tcmu} | {vs_fileio} |")
    lines += ["", "Per boot (seconds) and the host's load average at the end:", ""]
    for kind in BACKSTORES:
        r = results.get(kind, {})
        for i, boot in enumerate(r.get("boots") or [r]):
            t = ", ".join(f"{k} {v:.0f}" for k, v in boot.get("timings", {}).items())
            load = "/".join(f"{x:.1f}" for x in boot.get("load", ()))
            label = f"{kind} round {i + 1}" if "boots" in r else kind
            lines.append(f"* {label}: {t}; load {load}")
    notes = results.get("notes")
    if notes:
        lines += ["", notes]
    lines.append(fio_section.END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs/PERFORMANCE.md"))
    ap.add_argument("--runtime", type=int, default=30)
    ap.add_argument("--only", choices=BACKSTORES, action="append", help="run just these")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="boot every backstore this many times (odd), every other round in reverse "
        "order; the tables give each workload's median round and every round's IOPS",
    )
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--merge", help="results JSON of an earlier run: keep its backstores")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="no VM: rewrite the section from --merge (e.g. with new --notes)",
    )
    ap.add_argument("--notes", help="a paragraph appended to the section (findings)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cdp only, the daemon under the sampler; prints, does not touch --out",
    )
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.rounds % 2 == 0:
        ap.error("--rounds must be odd (the median is then one of the rounds)")
    t0 = time.monotonic()
    results: dict = json.loads(Path(args.merge).read_text()) if args.merge else {}
    if args.profile:
        kinds = ["cdp"]
    elif args.report_only:
        kinds = []
    else:
        kinds = args.only or [k for k in BACKSTORES if k not in results]
    if kinds:
        base = tcmu_base()
        with tempfile.TemporaryDirectory(prefix="fio-vm-") as tmp:
            work = Path(tmp)
            site = build_site(work / "site")
            runs: dict[str, list[dict]] = {}
            for r, kind in round_order(kinds, args.rounds):
                try:
                    runs.setdefault(kind, []).append(
                        run_backstore(
                            base, kind, site, args.runtime, work / f"{kind}-{r}", args.profile
                        )
                    )
                except (vmctl.VMError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                    print(f"{kind} round {r + 1}: failed: {exc}", file=sys.stderr, flush=True)
            results.update({kind: combine(rs) for kind, rs in runs.items()})
    if kinds:  # what the header says; --report-only keeps the measuring run's
        results["run"] = {
            "runtime": args.runtime,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "took_s": time.monotonic() - t0,
        }
    if args.notes:
        results["notes"] = args.notes
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.profile:
        print(json.dumps(results, indent=1))
        return 0 if "cdp" in results else 1
    run = results.get("run", {})
    text = section(
        results,
        run.get("runtime", args.runtime),
        run.get("when", "?"),
        run.get("took_s", time.monotonic() - t0),
    )
    out = Path(args.out)
    out.write_text(fio_section.splice(out.read_text() if out.exists() else "", text))
    print(text)
    return 0 if all(k in results for k in BACKSTORES) else 1


if __name__ == "__main__":
    sys.exit(main())
