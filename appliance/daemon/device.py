"""One TCMU device served: the ring thread, its workers, the SCSI device.

Threads and queues (per device)::

    kernel --(uio event)--> ring thread --(submit)--> worker pool (N threads)
                                 ^                           |
                                 +---- completion queue <----+  (+ eventfd wake)

* The **ring thread** (``tcmu-<name>``) owns the :class:`CommandRing`, which is
  not thread-safe.  It waits in ``poll()`` on the uio fd and a wake eventfd,
  consumes the uio event *before* reading the ring (no lost wake-up), parses
  every new entry, hands each command to the pool, takes finished results
  off the completion queue, stages them (``ring.complete``), and publishes
  the whole batch with one ``cmd_tail`` store and one kick (``ring.flush``).
  The writes it ran itself have their journal records written by it too,
  once per poll (``backend.batch()``), before the completions go out: no
  hand-off to the journal's writer thread per write.
  With ``CAP_OOOC`` a fast command does not wait for a slow one.
* Reads, writes without FUA and data-less queries run **on the ring thread**
  (``DeviceOptions.inline``, :data:`INLINE_OPCODES`): they touch only the page
  cache, and a worker hop (two thread switches, GIL handoffs) costs more than
  the command.  Everything else goes to the pool.
* A **worker** runs ``ScsiDevice.execute(cdb, iovecs)``: data-out is the
  ring's memoryviews (the engine copies them), data-in is copied straight into
  the command's iovecs (one copy: engine bytes -> shared pages), then the
  result goes on the completion queue and the eventfd wakes the ring thread.
  With ``workers=0`` the ring thread executes commands itself (tests).

Back-pressure, never blocking forever: more than ``max_queued`` commands
waiting for a worker -> TASK SET FULL at once; a command that waited longer
than ``queue_timeout`` (keep it below the kernel's ``cmd_time_out``) -> BUSY
without executing it, so a command the kernel already timed out is never
applied late (no ghost write).  TMR entries (ABORT TASK, LUN RESET...) are
logged and mark the commands they name: those not started yet complete
without being executed; those running complete normally, and the kernel
discards their status.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from appliance.scsi import ScsiDevice
from appliance.scsi.constants import Op, Status
from appliance.tcmu import Command, CommandRing, FastWrites, RingError, TmrNotification, fastpath
from appliance.tcmu import layout as L

from . import faults

log = structlog.get_logger("cdp.handler.device")

TMR_NAMES = {
    L.TMR_ABORT_TASK: "ABORT_TASK",
    L.TMR_ABORT_TASK_SET: "ABORT_TASK_SET",
    L.TMR_CLEAR_ACA: "CLEAR_ACA",
    L.TMR_CLEAR_TASK_SET: "CLEAR_TASK_SET",
    L.TMR_LUN_RESET: "LUN_RESET",
    L.TMR_TARGET_WARM_RESET: "TARGET_WARM_RESET",
    L.TMR_TARGET_COLD_RESET: "TARGET_COLD_RESET",
    L.TMR_LUN_RESET_PRO: "LUN_RESET_PRO",
}
# Run by the ring thread itself (``DeviceOptions.inline``): commands that touch
# only the page cache (a read, a write without FUA) or no data at all.  A worker
# hop costs two thread switches and GIL handoffs -- milliseconds under
# emulation, more than the command: measured in the VM, inline doubled IOPS
# (docs/PERFORMANCE.md).  Whatever may wait for a disk (FUA, SYNCHRONIZE CACHE,
# WRITE SAME, UNMAP, EXTENDED COPY, VERIFY, COMPARE AND WRITE) goes to a worker.
INLINE_OPCODES = frozenset(
    {
        Op.TEST_UNIT_READY,
        Op.REQUEST_SENSE,
        Op.READ_6,
        Op.WRITE_6,  # no FUA bit
        Op.INQUIRY,
        Op.MODE_SENSE_6,
        Op.READ_CAPACITY_10,
        Op.READ_10,
        Op.MODE_SENSE_10,
        Op.READ_16,
        Op.READ_12,
    }
)
INLINE_UNLESS_FUA = frozenset({Op.WRITE_10, Op.WRITE_12, Op.WRITE_16})  # FUA: byte 1 bit 3
FUA_BIT = 0x08
POLL_MS = 1000  # wake up at least this often (a lost kick costs at most this)


class EventSource(Protocol):
    """The uio fd: readable when the kernel queued commands."""

    def fileno(self) -> int: ...

    def wait_event(self) -> int | None: ...


@dataclass(frozen=True)
class DeviceOptions:
    workers: int = 4
    max_queued: int = 256
    queue_timeout: float = 20.0
    inline: bool = True  # INLINE_OPCODES (and writes without FUA) on the ring thread


@dataclass
class DeviceStats:
    commands: int = 0
    busy: int = 0
    queue_full: int = 0
    aborted: int = 0
    tmrs: int = 0
    ring_errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def _late_batch(backend):
    """What ``_loop_writes`` opens per run: the backend's late journal batch
    (``batch(late=True)``), or nothing for a backend that does not journal."""
    batch = getattr(backend, "batch", None)
    if batch is None:
        return contextlib.nullcontext
    return functools.partial(batch, late=True)


def _runs_inline(cdb: bytes, write_cache: bool = True) -> bool:
    """On the ring thread?  A write only when it need not wait for a disk: no
    FUA bit, and the write cache on (with WCE=0 every write is FUA)."""
    op = cdb[0]
    if op in INLINE_OPCODES:
        return write_cache or op != Op.WRITE_6
    return op in INLINE_UNLESS_FUA and write_cache and not cdb[1] & FUA_BIT


class _Done:
    __slots__ = ("cmd", "status", "sense", "read_len")

    def __init__(self, cmd: Command, status: int, sense: bytes, read_len: int | None):
        self.cmd, self.status, self.sense, self.read_len = cmd, status, sense, read_len


class TcmuDevice:
    """Serve ``ring`` with ``scsi`` until :meth:`stop`.

    :param reset_ring: called when the ring is found corrupt (writes
        ``action/reset_ring``) before the ring's own state is reset.
    """

    def __init__(
        self,
        name: str,
        ring: CommandRing,
        events: EventSource,
        scsi: ScsiDevice,
        options: DeviceOptions | None = None,
        *,
        reset_ring: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.ring = ring
        self.scsi = scsi
        self.options = options or DeviceOptions()
        # A stall a test injects must hold one worker, not the ring thread.
        self._inline = self.options.inline and not faults.active().stalls
        self.stats = DeviceStats()
        self._events = events
        self._reset_ring = reset_ring
        self._clock = clock
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done: deque[_Done] = deque()  # append/popleft are atomic
        self._outstanding: dict[int, Command] = {}  # ring thread only
        self._aborted: set[Command] = set()
        self._inflight = 0  # ring thread only
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._log = log.bind(device=name)
        # Backends that journal (VolumeBackend) group a poll's writes.
        self._batch = getattr(scsi.backend, "batch", None) or contextlib.nullcontext
        self._late_batch = _late_batch(scsi.backend)
        # Plain READ/WRITE answered by the compiled fast path (fastpath.py),
        # where they would run on the ring thread anyway.
        self._fast = self._inline and fastpath.AVAILABLE and hasattr(scsi.backend, "direct_read_fd")
        # ... and, while the ring is idle, the waiting too (_serve_fast).
        self._fast_loop = self._fast

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        if self.options.workers:
            self._pool = ThreadPoolExecutor(self.options.workers, f"tcmu-{self.name}-w")
        self._thread = threading.Thread(target=self._run, name=f"tcmu-{self.name}", daemon=True)
        self._thread.start()
        self._log.info(
            "device.serving",
            workers=self.options.workers,
            ooo=self.ring.out_of_order,
            read_len=self.ring.supports_read_len,
            tmr=self.ring.supports_tmr,
            fast=self._fast,
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Drain (serve what is in the ring, up to ``timeout``), then stop.

        Call with the device blocked (``block_dev=1``) or already removed, so
        that no new commands arrive.  :returns: True if everything drained.
        """
        self._stop_deadline = self._clock() + timeout
        self._stop.set()
        self._kick_self()
        drained = True
        if self._thread is not None:
            self._thread.join(timeout + 5)
            drained = not self._thread.is_alive() and self._inflight == 0
        if self._pool is not None:
            self._pool.shutdown(wait=drained, cancel_futures=True)
        if drained:  # a worker still running may yet write to the eventfd: keep it
            fd, self._wake = self._wake, -1
            os.close(fd)
        self._log.info("device.stopped", drained=drained, **self.stats.__dict__)
        return drained

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- ring thread -----------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        uio_fd = self._events.fileno()
        poller.register(uio_fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        while True:
            if (
                self._fast
                and self._fast_loop
                and self._inflight == 0
                and self.ring.idle
                and not self._stop.is_set()
            ):
                self._serve_fast()  # waits, reads and writes in C until Python is needed
            else:
                for fd, _ in poller.poll(POLL_MS):
                    if fd != uio_fd:
                        self._drain_wake()
                        continue
                    try:
                        self._events.wait_event()  # clear the event before reading the ring
                    except OSError as exc:  # the uio device is going away (removal)
                        self._log.warning("device.uio_error", error=str(exc))
                        self._stop.wait(0.1)
            try:
                new = self._serve_once()
            except RingError:
                self._log.exception("device.ring_error")
                self._recover()
                continue
            except Exception:  # never let the ring thread die silently
                self._log.exception("device.loop_error")
                continue
            if self._stop.is_set():
                if (not new and self._inflight == 0) or self._clock() > self._stop_deadline:
                    break

    def _fast_server(self):
        """The compiled loop for this device, or None (a kick it cannot make)."""
        kick = getattr(self._events, "kick_fd", None)
        if kick is None:
            kick = self.ring.kick
        if kick is None:
            return None
        scsi = self.scsi
        return fastpath.server(
            state=self._loop_state,
            on_writes=self._loop_writes,
            block_size=scsi.block_size,
            size=scsi.backend.size,
            max_blocks=scsi.limits.max_transfer,
            uio_fd=self._events.fileno(),
            wake_fd=self._wake,
            kick=kick,
            timeout_ms=POLL_MS,
        )

    def _loop_state(self) -> tuple[int, bool]:
        """Asked by the compiled loop before every run (as ``_fast_scan`` is
        per poll): the primary's fd for direct reads (-1: none now), and
        whether plain writes may be answered before the engine ran them (the
        write cache on -- MODE SELECT or a netlink reconfigure may turn it
        off -- and a writable LUN)."""
        scsi = self.scsi
        fd = scsi.backend.direct_read_fd()
        return -1 if fd is None else fd, scsi.write_cache and not scsi.read_only

    def _loop_writes(self, writes: list[tuple[int, int, bytes]]):
        """A run of writes the compiled loop took: through the engine in one
        late journal batch (``ProtectedVolume.batch``), before the loop
        publishes their answers.  Returns the batch's end, which the loop
        calls once it published them: the run's journal records are written
        then (a write without FUA is durable at the next flush)."""
        batch = self._late_batch()
        batch.__enter__()
        try:
            self._fast_writes(FastWrites(self.ring.generation, writes))
        except BaseException:
            batch.__exit__(None, None, None)
            raise
        end = getattr(batch, "end", None)
        if end is None:  # (no journal: nothing to write later) ended now
            batch.__exit__(None, None, None)
        return end

    def _serve_fast(self) -> None:
        """One turn of the compiled loop on the idle ring (what it answers
        counts as GOOD, less the writes ``_fail_fast`` took back; as BUSY
        what it answered so because ``_loop_writes`` raised).  Then the
        Python path takes over."""
        serve = self._fast_server()
        if serve is None:
            self._fast_loop = False
            return
        stats = self.ring.stats
        fast, busy = stats.fast, stats.fast_busy
        try:
            try:
                reason, err = self.ring.serve_fast(serve)
            finally:
                busy = stats.fast_busy - busy
                served = stats.fast - fast - busy
                self.stats.commands += served + busy
                self.stats.busy += busy
                if served:
                    self._count(Status.GOOD, served)
                if busy:
                    self._count(Status.BUSY, busy)
        except RingError:  # not idle after all: the Python path looks
            self._log.exception("device.ring_error")
            return
        except Exception:  # a callback or the kick raised: log, go the Python way
            self._log.exception("device.loop_error")
            return
        if reason == fastpath.WAKE:
            self._drain_wake()
        elif reason == fastpath.ERROR:  # the uio device is going away (removal)
            self._log.warning("device.uio_error", error=os.strerror(err))
            self._stop.wait(0.1)

    def _serve_once(self) -> int:
        ring = self.ring
        before = ring.stats.fast
        items = ring.poll(self._fast_scan() if self._fast else None)
        fast = ring.stats.fast - before
        if fast:
            self.stats.commands += fast
            self._count(Status.GOOD, fast)
        if items:
            # The journal records of the poll's inline writes are written here,
            # in one pwritev, before their completions are published below.
            with self._batch():
                for item in items:
                    if isinstance(item, TmrNotification):
                        self._on_tmr(item)
                    elif isinstance(item, FastWrites):
                        self._fast_writes(item)
                    else:
                        self._dispatch(item)
        self._collect()
        ring.flush()
        return len(items) + fast  # (a FastWrites counts once more: a drain check only)

    def _fast_scan(self):
        scsi = self.scsi
        return fastpath.scanner(
            fd=scsi.backend.direct_read_fd,  # asked after cmd_head is read
            block_size=scsi.block_size,
            size=scsi.backend.size,
            max_blocks=scsi.limits.max_transfer,
            writes=scsi.write_cache and not scsi.read_only,
        )

    def _fast_writes(self, run: FastWrites) -> None:
        """The engine part of the writes the fast path took (answered GOOD in
        their slots): one ``write_many`` for the run where the backend has it;
        a refused write gets the sense ``execute`` would give, and the writes
        after it go one by one, as they would have without the run."""
        backend = self.scsi.backend
        writes = run.writes
        done = 0
        many = getattr(backend, "write_many", None)
        if many is not None:
            try:
                done, error = many([(offset, payload) for _, offset, payload in writes])
            except Exception as exc:  # refused as a whole: no write of the run is GOOD
                for slot, _, _ in writes:
                    self._fail_fast(run, slot, exc)
                return
            if error is not None:
                self._fail_fast(run, writes[done][0], error)
                done += 1
        for slot, offset, payload in writes[done:]:
            try:
                backend.write(offset, payload)
            except Exception as exc:
                self._fail_fast(run, slot, exc)

    def _fail_fast(self, run: FastWrites, slot: int, exc: Exception) -> None:
        result = self.scsi.error_result(exc, writes=True)
        self._count(Status.GOOD, -1)
        self._count(result.status)
        self.ring.fail_served(run.generation, slot, result.status, result.sense)

    def _count(self, status: int, n: int = 1) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + n

    def _recover(self) -> None:
        self.stats.ring_errors += 1
        try:
            if self._reset_ring is not None:
                self._reset_ring()
            self.ring.reset()
        except Exception:
            self._log.exception("device.ring_reset_failed")
            time.sleep(1)  # do not spin on a ring that cannot be reset
        self._outstanding.clear()
        self._aborted.clear()

    def _dispatch(self, cmd: Command) -> None:
        self.stats.commands += 1
        if self._pool is None or (self._inline and _runs_inline(cmd.cdb, self.scsi.write_cache)):
            self._complete(self._execute(cmd, self._clock()))
            return
        if self._inflight >= self.options.max_queued:
            self.stats.queue_full += 1
            self._complete(_Done(cmd, Status.TASK_SET_FULL, b"", None))
            return
        self._inflight += 1
        self._outstanding[cmd.cmd_id] = cmd
        try:
            self._pool.submit(self._work, cmd, self._clock())
        except RuntimeError:  # pool shut down under us
            self._inflight -= 1
            del self._outstanding[cmd.cmd_id]
            self._complete(_Done(cmd, Status.BUSY, b"", None))

    def _collect(self) -> None:
        done = self._done
        while done:
            item = done.popleft()
            self._inflight -= 1
            if self._outstanding.get(item.cmd.cmd_id) is item.cmd:
                del self._outstanding[item.cmd.cmd_id]
            self._aborted.discard(item.cmd)
            self._complete(item)

    def _complete(self, item: _Done) -> None:
        self._count(item.status)
        try:
            self.ring.complete(item.cmd, item.status, item.sense, item.read_len)
        except (RingError, ValueError):
            self._log.exception("device.complete_failed", cmd_id=item.cmd.cmd_id)

    def _on_tmr(self, tmr: TmrNotification) -> None:
        self.stats.tmrs += 1
        hit = [self._outstanding[i] for i in tmr.cmd_ids if i in self._outstanding]
        self._aborted.update(hit)
        self._log.warning(
            "device.tmr",
            tmr=TMR_NAMES.get(tmr.tmr_type, tmr.tmr_type),
            cmd_ids=list(tmr.cmd_ids),
            still_ours=len(hit),
        )

    def _kick_self(self) -> None:
        if self._wake >= 0:
            try:
                os.eventfd_write(self._wake, 1)
            except OSError:
                pass

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass

    # -- workers ---------------------------------------------------------------

    def _work(self, cmd: Command, queued_at: float) -> None:
        try:
            item = self._execute(cmd, queued_at)
        except BaseException:  # _execute does not raise; be sure the slot is freed
            self._log.exception("device.worker_failed", cmd_id=cmd.cmd_id)
            item = _Done(cmd, Status.BUSY, b"", None)
        self._done.append(item)
        self._kick_self()

    def _execute(self, cmd: Command, queued_at: float) -> _Done:
        faults.before_execute(self.name, cmd.cdb)  # tests only (CDP_HANDLER_FAULTS)
        if cmd in self._aborted:
            self.stats.aborted += 1
            return _Done(cmd, Status.BUSY, b"", None)
        if self._clock() - queued_at > self.options.queue_timeout:
            self.stats.busy += 1
            return _Done(cmd, Status.BUSY, b"", None)
        result = self.scsi.execute(cmd.cdb, cmd.iovecs if cmd.iovecs else None)
        read_len = None
        if result.data:
            try:
                read_len = self._deliver(cmd, result.data)
            except ValueError:  # views released: the ring was reset meanwhile
                return _Done(cmd, Status.BUSY, b"", None)
        return _Done(cmd, result.status, result.sense, read_len)

    def _deliver(self, cmd: Command, data) -> int:
        """Copy data-in into the command's buffers; returns the bytes copied."""
        views = cmd.bidi_iovecs if cmd.bidi_length else cmd.iovecs
        src = memoryview(data).cast("B")
        pos, total = 0, len(src)
        for view in views:
            if pos >= total:
                if not self.ring.supports_read_len:
                    view[:] = bytes(len(view))  # never hand out stale pages
                continue
            n = min(len(view), total - pos)
            view[:n] = src[pos : pos + n]
            if n < len(view) and not self.ring.supports_read_len:
                view[n:] = bytes(len(view) - n)
            pos += n
        return pos
