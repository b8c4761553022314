"""The handler's data plane on the simulated ring, against the engine alone.

What one SCSI command costs the daemon beyond the engine call it becomes:
the ring parse (entry header, CDB, iovecs as memoryviews), the SCSI layer
(CDB decode, range checks, data-out gathering), the completion and the
``cmd_tail`` store.  The command path is :class:`TcmuDevice` with
``workers=0`` (everything on the ring thread, as inline I/O does for reads
and writes without FUA), fed by the byte-exact simulated kernel side of
tests/unit/tcmu/sim_kernel.py in batches of 16 (QD16); only the daemon's
``_serve_once`` is timed, not the simulation's queueing nor its completion
handling (the kernel's side of the kick).  The reference is
the same engine calls (``vol.write``/``vol.read`` of the same offsets) made
directly, in the same run, on the same filesystem.

Plain writes without FUA take another way in production: the compiled loop
(``_fastring.serve`` in the device's own thread, ``TcmuDevice._loop_writes``,
the journal's late batch).  :func:`bench_compiled_loop` times that way, 4 KiB
writes at QD16 and 64 KiB writes at QD8, against ``write_many`` in a late
batch of the same runs, made directly, with the daemon's allocator settings.
Both sides are CPU time of the thread
that does the work (the device's thread, read through its CPU clock; the
caller's), so the simulated kernel's side, done by the caller between
batches, is in neither.

The figure says how much the handler layer costs natively; under TCG (the
test VM) every interpreted instruction costs far more, which is what
docs/PERFORMANCE.md's fio section measures.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from functools import partial
from pathlib import Path

from appliance import malloctune
from appliance.daemon.backend import VolumeBackend
from appliance.daemon.device import DeviceOptions, TcmuDevice
from appliance.engine import ProtectedVolume
from appliance.scsi import DeviceIdentity, Limits, ScsiDevice
from appliance.tcmu import CommandRing, fastpath
from tests.bench.run import new_volume
from tests.unit.daemon.harness import SimUio
from tests.unit.scsi.cdbs import rw10

READ_10, WRITE_10 = 0x28, 0x2A
QD = 16
BS = 512


def _through_ring(vol: ProtectedVolume, offsets: list[int], payload: bytes, write: bool) -> float:
    uio = SimUio(data_blocks=QD * 2, mb_cmdr_size=64 * 4096)
    scsi = ScsiDevice(VolumeBackend(vol), DeviceIdentity(str(vol.uuid)), limits=Limits(1 << 20))
    # The kick is the kernel's work (completion handling): the simulation does
    # it after the timed part, not inside the daemon's flush.
    ring = CommandRing(uio.sim.mm, lambda: None)
    dev = TcmuDevice("bench", ring, uio, scsi, DeviceOptions(workers=0))
    n = len(payload)
    took = 0.0
    try:
        for i in range(0, len(offsets), QD):
            for off in offsets[i : i + QD]:
                cdb = rw10(WRITE_10 if write else READ_10, off // BS, n // BS)
                if write:
                    queued = uio.sim.queue_cmd(cdb, data_out=payload)
                else:
                    queued = uio.sim.queue_cmd(cdb, data_in=n)
                assert queued is not None, "simulated ring full"
            t0 = time.perf_counter()
            dev._serve_once()
            took += time.perf_counter() - t0
            uio.sim.irq()
        assert all(c.status == 0 for c in uio.sim.completions), "a command failed"
    finally:
        dev.ring.close()
        uio.close()
        uio.sim.close()
    return took


def _direct(vol: ProtectedVolume, offsets: list[int], payload: bytes, write: bool) -> float:
    t0 = time.perf_counter()
    if write:  # in batches of QD, as the ring thread writes a poll's records
        for i in range(0, len(offsets), QD):
            with vol.batch():
                for off in offsets[i : i + QD]:
                    vol.write(off, payload)
    else:
        for off in offsets:
            vol.read(off, len(payload))
    return time.perf_counter() - t0


def _alternated(first, second, offsets: list[int], half: int) -> tuple[float, float]:
    """``first`` and ``second`` (each timing one part of ``offsets``) on both
    halves, alternated, so that a cache or a neighbour affects both alike."""
    a = first(offsets[:half])
    b = second(offsets[half:])
    a += first(offsets[half:])
    b += second(offsets[:half])
    return a, b


def bench_handler_path(workdir: Path, count: int, size: int) -> list[dict]:
    """4 KiB WRITE(10) and READ(10) through ring + SCSI vs the engine calls alone."""
    rnd = random.Random(3)
    offsets = [rnd.randrange(0, size // 4096) * 4096 for _ in range(count)]
    payload = os.urandom(4096)
    rows = []
    for write in (True, False):
        d = workdir / f"handler-{'w' if write else 'r'}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        vol = new_volume(d, size=size, block_size=BS)
        try:
            # Write every offset once first: blocks allocated, DRL regions already
            # dirty (a first touch costs a DRL sync), page cache warm for the reads.
            _direct(vol, offsets, payload, True)
            vol.flush()
            ring, direct = _alternated(
                partial(_through_ring, vol, payload=payload, write=write),
                partial(_direct, vol, payload=payload, write=write),
                offsets, len(offsets) // 2,
            )  # fmt: skip
        finally:
            vol.close()
            shutil.rmtree(d, ignore_errors=True)
        what = "WRITE(10)" if write else "READ(10)"
        rows.append({
            "name": f"4 KiB {what} through the TCMU ring + SCSI layer vs the engine call alone",
            "ratio": direct / ring,
            "goal": ">= 0.5",
            "detail": f"{count} commands in batches of {QD}: {ring / count * 1e6:.0f} µs per "
                      f"command through the ring, {direct / count * 1e6:.0f} µs engine alone",
        })  # fmt: skip
    return rows


def _loop_cpu(vol: ProtectedVolume, offsets: list[int], payload: bytes, qd: int) -> float:
    """CPU seconds of the device's thread for ``offsets`` written through the
    compiled loop, ``qd`` commands queued at a time."""
    n = len(payload)
    # No guard pages: their mprotect calls (TLB shootdowns) would land on the
    # device thread's clock; the kernel maps the data area once.
    uio = SimUio(data_blocks=qd * n // 4096 * 2 + 16, mb_cmdr_size=64 * 4096, guard=False)
    scsi = ScsiDevice(VolumeBackend(vol), DeviceIdentity(str(vol.uuid)), limits=Limits(1 << 20))
    # The kick is the kernel's completion handling: done here, between batches.
    dev = TcmuDevice("bench", CommandRing(uio.sim.mm, lambda: None), uio, scsi,
                     DeviceOptions(workers=0))  # fmt: skip
    assert dev._fast_loop, "the compiled loop is not available"
    journal = vol._journal
    dev.start()
    try:
        clock = time.pthread_getcpuclockid(dev._thread.ident)  # (started: ident set)
        cpu = 0.0
        for i in range(0, len(offsets), qd):
            with uio.lock:
                for off in offsets[i : i + qd]:
                    assert uio.sim.queue_cmd(rw10(WRITE_10, off // BS, n // BS), data_out=payload)
            head = uio.sim.head
            t0 = time.clock_gettime(clock)
            uio.notify()
            # Done: every answer published and the last run's journal write made.
            while uio.sim.tail != head or journal._late_run is not None:
                time.sleep(0.0002)
            cpu += time.clock_gettime(clock) - t0
            with uio.lock:
                uio.sim.irq()
        assert all(c.status == 0 for c in uio.sim.completions), "a command failed"
    finally:
        dev.stop()
        dev.ring.close()
        uio.close()
        uio.sim.close()
    assert dev.ring.stats.fast == len(offsets), "not every write took the compiled loop"
    return cpu


def _write_many_cpu(vol: ProtectedVolume, offsets: list[int], payload: bytes, qd: int) -> float:
    t0 = time.thread_time()
    for i in range(0, len(offsets), qd):
        with vol.batch(late=True):
            vol.write_many([(off, payload) for off in offsets[i : i + qd]])
    return time.thread_time() - t0


def bench_compiled_loop(workdir: Path, count: int, size: int) -> list[dict]:
    """Plain WRITE(10)s through the compiled loop vs ``write_many`` alone.

    Sets the daemon's allocator settings in this process first (malloctune,
    as the daemon's entry point does): the loop allocates every payload it
    gathers, and glibc's defaults would make that trim and fault pages in
    again, as the daemon does not."""
    malloctune.configure()
    rnd = random.Random(5)
    rows = []
    for kib, qd, sequential in ((4, 16, False), (64, 8, True)):
        name = f"{kib} KiB WRITE(10) at QD{qd} through the compiled loop vs write_many alone"
        if not fastpath.AVAILABLE:
            why = "the compiled loop is not built (no C compiler at install)"
            rows.append({"name": name, "text": "n/a", "goal": ">= 0.7", "detail": why})
            continue
        n = kib << 10
        k = max(count * 4 // kib, 2 * qd)
        if sequential:
            offsets = [(i * n) % size for i in range(k)]
        else:
            offsets = [rnd.randrange(0, size // n) * n for _ in range(k)]
        payload = os.urandom(n)
        d = workdir / f"loop-{kib}k"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        vol = new_volume(d, size=size, block_size=BS)
        try:
            _write_many_cpu(vol, offsets, payload, qd)  # blocks allocated, regions dirty
            vol.flush()
            loop, alone = _alternated(
                partial(_loop_cpu, vol, payload=payload, qd=qd),
                partial(_write_many_cpu, vol, payload=payload, qd=qd),
                offsets, len(offsets) // 2 // qd * qd,
            )  # fmt: skip
        finally:
            vol.close()
            shutil.rmtree(d, ignore_errors=True)
        rows.append({
            "name": name,
            "ratio": alone / loop,
            "goal": ">= 0.7",
            "detail": f"{k} commands, {qd} queued at a time, CPU per command: "
                      f"{loop / k * 1e6:.0f} µs on the device's thread, "
                      f"{alone / k * 1e6:.0f} µs for write_many alone",
        })  # fmt: skip
    return rows
