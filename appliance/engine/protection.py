"""Keeping the primary and the journal in agreement.

The volume's states (``vol.state``):

* ``baselining``: the initial copy of the primary runs ([0055]); no point yet.
* ``in-sync``: every write reaches primary and journal; DRL resets run on a timer.
* ``out-of-sync``: the secondary failed (I/O error, disk full, gone): host
  writes go on to the primary alone, the DRL records every region written,
  no DRL reset.
* ``resyncing``: the journal is back; the DRL-dirty regions are compared and
  fixed ([0072]-[0073]).
* ``rebaselining``: a full compare of primary and journal runs ([0054]-[0071]).
* ``restoring``: reserved for the restore issue.

Out of sync: the first failed journal append or sync switches the volume
(never failing the host write that saw it): an ``OUT_OF_SYNC`` flag goes into
the DRL file, points after the last durable record are not offered.  A timer
tries to bring the journal back every ``secondary_retry`` seconds (a new
segment after the last durable record); when it succeeds an ``OUT_OF_SYNC``
marker is journaled and a resync of the DRL-dirty regions starts by itself.
After an unclean stop the same resync runs at open if the DRL has dirty bits.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import structlog

from . import faults, retention
from . import record as R
from .errors import CdpError, InvalidArgument
from .jobs import Job, JobCancelled
from .journal import Journal, JournalFailed, segment_path
from .rebaseline import Procedure
from .restore import Restore

log = structlog.get_logger("cdp.volume")

MODES = ("sync", "async")
DEFAULT_REGION_SIZE = 1 << 20
BASELINE_CHUNK = 1 << 20


class Busy(CdpError):
    """{0}"""


_NO_PIN = R.FLAG_BASELINE | R.FLAG_FIXUP  # records that wrote no pinned range


def _pins_drl(flags: int) -> bool:
    """Records that wrote the primary pinned the DRL: host writes and restore copies."""
    return not flags & _NO_PIN


class Protection:
    """Mixin of ProtectedVolume: baseline, DRL policy, out of sync, resync, re-baseline."""

    def _init_protection(self) -> None:
        self._oos = False
        self._oos_reason = ""
        self._proc_job: Job | None = None
        self.baseline_job: Job | None = None
        self._restore = None
        self._restore_job: Job | None = None
        self._resync_after_restore = False
        self._retention_job: Job | None = None
        self.segment_pool = 2
        self.retention_interval = 300.0
        self.min_free_fraction = 0.05
        self._bg_stop = threading.Event()
        self._bg_thread: threading.Thread | None = None
        self._state_lock = threading.RLock()

    # ------------------------------------------------------------ state

    @property
    def state(self) -> str:
        if self._oos:
            return "out-of-sync"
        if self._restore is not None:
            return "restoring"
        job = self._proc_job
        if job is not None and not job.done:
            return "resyncing" if job.kind == "resync" else "rebaselining"
        if self._maps.baseline_done_seq is None:
            return "baselining"
        if self._drl.out_of_sync:
            return "out-of-sync"
        return "in-sync"

    def drl_dirty_regions(self) -> int:
        return self._drl.dirty_count()

    @property
    def jobs(self) -> list[Job]:
        jobs = (self.baseline_job, self._proc_job, self._restore_job, self._retention_job)
        return [j for j in jobs if j is not None and not j.done]

    def _on_durable(self, recs) -> None:
        """From the journal's syncer: records durable in the journal now."""
        self._maps.add(recs)
        data = R.DATA_KINDS  # (_pins_drl inlined: a call per record counts here)
        self._drl.unpin_many(
            [(r.offset, r.length) for r in recs if r.kind in data and not r.flags & _NO_PIN]
        )

    # ------------------------------------------------------------ open

    def _recover(self, clean: bool, fresh_primary: bool) -> None:
        resume = [k for k in ("resync", "rebaseline") if self._catalog.load_job(k)]
        dirty = self._drl.dirty_count()
        restore = Restore.resume(self) if self._maps.baseline_done_seq is not None else None
        if restore is not None:
            # Reads must see the restore from the first moment: before anything else.
            self._restore = restore
            self._maps.suspect_from = restore.params["marker_seq"]
            self._resync_after_restore = bool(
                resume or self._drl.out_of_sync or (not clean and dirty) or not self._drl.trusted
            )
            self._restore_job = Job("restore", self.size, restore)
            self._restore_job.start()  # assigned before it runs
        elif self._maps.baseline_done_seq is None:
            if not clean and dirty:
                # Regions the crash may have left unjournaled are copied again.
                first = min(self._drl.dirty()) * self.region_size
                self._maps.baseline_end = min(self._maps.baseline_end, first)
            self._start_baseline(inline=fresh_primary)
        elif resume:
            self._start_procedure(resume[0])
        elif (
            self._drl.out_of_sync
            or (not clean and dirty)
            or not self._drl.trusted
            or self._oos_at_open
        ):
            self._begin_resync(
                "recovery after an unclean stop"
                if not clean
                else "the DRL says the journal lags the primary"
            )
        self._bg_thread = threading.Thread(
            target=self._housekeeping, name="cdp-housekeeping", daemon=True
        )
        self._bg_thread.start()

    def _stop_background(self) -> None:
        self._bg_stop.set()
        for job in (self.baseline_job, self._proc_job, self._restore_job, self._retention_job):
            if job is not None and not job.done:
                job.cancel()
                try:
                    job.wait(60)
                except (JobCancelled, CdpError, OSError):
                    pass
        if self._bg_thread is not None:
            self._bg_thread.join()
            self._bg_thread = None

    # ------------------------------------------------------------ out of sync

    def _go_out_of_sync(self, exc: Exception) -> None:
        with self._state_lock:
            if self._oos:
                return
            self._oos = True
            self._oos_reason = str(exc)
            durable = self._journal.durable_seq
            self._maps.suspect_from = durable + 1
            try:  # a restart must not trust anything the journal held past this
                self._write_state_file(
                    "journal-failed.json",
                    {"durable_seq": durable, "durable_end": self._journal.durable_end},
                )
            except OSError as ferr:
                log.error("state.write_failed", error=str(ferr))
            try:
                self._drl.set_out_of_sync(True)
            except OSError as derr:  # the DRL is on the state disk, not the secondary
                log.error("drl.write_failed", error=str(derr))
        log.error(
            "volume.out_of_sync",
            uuid=str(self.uuid),
            last_journaled_seq=durable,
            reason=str(exc),
            action="host writes continue on the primary; "
            "the DRL records them; resync runs when the secondary is back",
        )

    def _restart_journal(self) -> bool:
        """Bring a failed journal back (a new segment); True on success."""
        with self._order_lock:
            old = self._journal
            new = Journal(self._io, old.folder, self.uuid, self.segment_size)
            maps = self._maps
            with maps._lock:
                last = maps.tail[-1] if maps.tail else None
                lmap = maps.last_map
            if last is not None:
                start, pseq, ptime = last.end_addr, last.seq, last.time_ns
            elif lmap is not None:
                start, pseq, ptime = lmap.j_end, lmap.last_seq, lmap.last_time_ns
            else:
                start, pseq, ptime = 0, 0, 0
            try:
                # Records past the last durable one may be page-cache ghosts of a
                # failed sync: cut them off (regression: journal_eio_then_restart).
                new.cut_after(old.durable_end)
                scan = new.scan(start, pseq, ptime)
                if scan.torn_segment is not None:
                    os.unlink(segment_path(new.folder, scan.torn_segment))
                new.start(
                    max(old.last_seq, scan.last_seq),
                    scan.last_time_ns,
                    clean=False,
                    durable_floor=old.durable_seq,
                )
            except (OSError, CdpError) as exc:
                log.info("secondary.still_unavailable", reason=str(exc))
                try:
                    new.close()
                except OSError:
                    pass
                return False
            maps.add([r for r in scan.records if r.seq > pseq and r.seq <= old.durable_seq])
            new.on_durable = self._on_durable
            for r in old.undelivered():
                if r.kind in R.DATA_KINDS and _pins_drl(r.flags):
                    self._drl.unpin(r.offset, r.length)
            try:
                old.close()
            except OSError:
                pass
            self._journal = maps.journal = new
            marker = new.append(R.OUT_OF_SYNC, 0, 0)
            self._oos = False
        try:
            new.sync(marker.seq)
        except JournalFailed as exc:
            self._go_out_of_sync(exc)
            return False
        self._remove_state_file("journal-failed.json")
        log.info("secondary.back", seq=marker.seq)
        self._start_procedure("resync", targets=self._drl.dirty(), oos_seq=marker.seq)
        return True

    def _begin_resync(self, why: str, _after: Job | None = None) -> Job:
        marker = self._journal.append(R.OUT_OF_SYNC, 0, 0)
        self._journal.sync(marker.seq)
        self._drl.set_out_of_sync(True)
        self._maps.suspect_from = marker.seq
        self._remove_state_file("journal-failed.json")
        log.warning("volume.resync", reason=why, dirty_regions=self._drl.dirty_count())
        return self._start_procedure(
            "resync", targets=self._drl.dirty(), oos_seq=marker.seq, _after=_after
        )

    def _housekeeping(self) -> None:
        """Thread: DRL resets on their timer; retries of a failed secondary."""
        last_reset = last_retry = last_retention = time.monotonic()
        while not self._bg_stop.wait(0.1):
            now = time.monotonic()
            try:
                if not self._oos and self._journal.failed is not None:
                    self._go_out_of_sync(self._journal.failed)
                if self._oos and now - last_retry >= self.secondary_retry:
                    last_retry = now
                    self._restart_journal()
                interval = self.drl_reset_interval
                if interval is not None and now - last_reset >= interval:
                    last_reset = now
                    if self.state == "in-sync":
                        self._drl.reset()
                if now - last_retention >= self.retention_interval:
                    last_retention = now
                    self._retention_tick()
            except Exception as exc:  # keep housekeeping alive; say why
                log.error("housekeeping.failed", error=repr(exc))

    # ------------------------------------------------------------ jobs

    def rebaseline(self) -> Job:
        """Compare every region of primary and journal; fix and mark suspect ([0054]-[0071])."""
        self._check_open()
        if self._maps.baseline_done_seq is None:
            raise Busy("the baseline is still running: nothing to re-baseline yet")
        if self._oos:
            raise Busy("the secondary is out of sync: resync it first")
        return self._start_procedure("rebaseline")

    def resync(self) -> Job:
        """Compare and fix the DRL-dirty regions ([0072]-[0073])."""
        self._check_open()
        if self._maps.baseline_done_seq is None:
            raise Busy("the baseline is still running: nothing to resync yet")
        if self._oos:
            if not self._restart_journal():
                raise Busy(f"the secondary is still unavailable: {self._oos_reason}")
            return self._proc_job
        return self._start_procedure("resync", targets=self._drl.dirty())

    def restore(
        self,
        seq: int | None = None,
        time: float | None = None,
        bookmark: str | None = None,
        roll_forward_to=None,
    ) -> Job:
        """Put a point back on the primary in the background; the volume stays online.

        ``roll_forward_to`` (a seq, a bookmark name, or a time as float):
        then apply the journal's changes up to that later point ([0075]).
        """
        self._check_open()
        with self._state_lock:
            self._refuse_if_busy("restore")
            t1 = self.image(seq=seq, time=time, bookmark=bookmark, _internal=True).seq
            target = t1
            if roll_forward_to is not None:
                if isinstance(roll_forward_to, str):
                    t2 = self.image(bookmark=roll_forward_to, _internal=True).seq
                elif isinstance(roll_forward_to, float):
                    t2 = self.image(time=roll_forward_to, _internal=True).seq
                else:
                    t2 = self.image(seq=roll_forward_to, _internal=True).seq
                if t2 < t1:
                    raise InvalidArgument(
                        f"roll_forward_to (seq {t2}) is before the restore point (seq {t1})"
                    )
                target = t2
            with self._order_lock:
                self._restore = Restore.begin(self, target, t1 if target != t1 else None)
                self._maps.suspect_from = self._restore.params["marker_seq"]
            log.warning(
                "restore.start",
                target_seq=target,
                roll_forward_from=t1 if target != t1 else None,
                marker_seq=self._restore.params["marker_seq"],
            )
            self._restore_job = Job("restore", self.size, self._restore)
            self._restore_job.start()  # assigned before it runs
            return self._restore_job

    # ------------------------------------------------------------ retention

    @property
    def retention(self) -> str | None:
        """The retention policy in force (docs in retention.py), or None: keep everything."""
        return self._catalog.get_meta("retention") or None

    def set_retention(self, policy: str | None) -> str | None:
        """Set (or with None clear) the policy; it applies on the housekeeping timer."""
        self._check_open()
        if policy is None:
            self._catalog.set_meta("retention", "")
            return None
        text = str(retention.Policy.parse(policy))
        self._catalog.set_meta("retention", text)
        return text

    def apply_retention(self, now: float | None = None, *, emergency: bool = False) -> Job:
        """Apply the policy now, in the background (``now``: seconds, for tests)."""
        self._check_open()
        policy = self.retention
        if policy is None and not emergency:
            raise InvalidArgument("no retention policy set (set one: all:48h,1h:14d,1d:90d)")
        with self._state_lock:
            self._refuse_if_busy("retention run")
            now_ns = None if now is None else int(now * 1e9)
            pol = retention.Policy.parse(policy) if policy else None

            def work(job):
                return self._apply_retention(pol, now_ns, emergency)

            self._retention_job = Job("retention", 1, work)

            self._retention_job.start()  # assigned before it runs
            return self._retention_job

    def _apply_retention(self, policy, now_ns, emergency: bool) -> dict:
        if policy is None or emergency:
            with self._maps._lock:
                ages = sorted(m.last_time_ns for m in self._maps.level0)
            if not ages:
                return {}
            now = now_ns or time.time_ns()
            median_age = max(1e-6, (now - ages[len(ages) // 2]) / 1e9)
            if policy is None or policy.tiers[0].keep > median_age:
                policy = retention.Policy((retention.Tier(0.0, median_age),), median_age)
        return retention.apply(self, policy, now_ns, emergency=emergency)

    def _retention_tick(self) -> None:
        """Housekeeping: the policy on its timer; fading when the secondary nears full."""
        if self.state != "in-sync" or any(j.kind != "retention" for j in self.jobs):
            return
        try:
            st = os.statvfs(self.secondary_path)
            free = st.f_bavail / max(1, st.f_blocks)
        except OSError:
            free = 1.0
        if free < self.min_free_fraction:
            log.warning(
                "secondary.nearly_full",
                free_fraction=round(free, 4),
                action="the oldest points fade first",
            )
            self._apply_retention(None, None, True)
        elif self.retention:
            self._apply_retention(retention.Policy.parse(self.retention), None, False)

    def capacity(self) -> dict:
        """Journal bytes, free space, the oldest recoverable point, points per tier."""
        try:
            st = os.statvfs(self.secondary_path)
            free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        except OSError:
            free = total = 0
        points = self.points()
        tiers: dict[str, int] = {}
        policy = retention.Policy.parse(self.retention) if self.retention else None
        now = time.time()
        for p in points:
            t = None if policy is None else policy.tier_of(now - p.time)
            if policy is None:
                key = "all"
            elif t is None:
                key = "beyond"
            else:
                key = str(retention.Policy((policy.tiers[t],), policy.tiers[t].keep))
            tiers[key] = tiers.get(key, 0) + 1
        return {
            "journal_bytes": retention.journal_bytes(self),
            "secondary_free_bytes": free,
            "secondary_total_bytes": total,
            "oldest_point": {"seq": points[0].seq, "time": points[0].time} if points else None,
            "points": len(points),
            "points_by_kind": tiers,
            "retention": self.retention,
        }

    def _refuse_if_busy(self, what: str) -> None:
        if self._restore is not None:
            raise Busy(f"a restore is in progress: no {what} until it completes")
        if self._maps.baseline_done_seq is None:
            raise Busy(f"the baseline is still running: no {what} yet")
        if self._oos:
            raise Busy(f"the secondary is out of sync: resync before a {what}")
        for job in (self._proc_job, self._restore_job, self._retention_job):
            if job is not None and not job.done:
                raise Busy(f"a {job.kind} is running ({100 * job.progress:.0f} %)")

    def _finish_restore(self, restore) -> dict:
        """From the copier, every region restored: close the fix-up, mark the interval."""
        seq, n = self._close_map_now()
        marker = restore.params["marker_seq"]
        maps = self._maps
        fix = n - 1
        maps.set_flags([fix], fixup=True, suspect=False)
        inside = [i for i in range(fix) if maps.level0[i].last_seq >= marker]
        if inside:
            maps.set_flags(inside, suspect=True)
        with self._order_lock:
            self._restore = None
            maps.suspect_from = None
        restore.finish_files()
        result = restore.result()
        log.info("restore.done", **result)
        if self._resync_after_restore:
            self._resync_after_restore = False
            self._begin_resync(
                "recovery after an unclean stop during a restore", _after=self._restore_job
            )
        return result

    def _start_procedure(self, kind: str, *, _after: Job | None = None, **kw) -> Job:
        with self._state_lock:
            for job in (self._proc_job, self._restore_job, self._retention_job):
                if job is not None and not job.done and job is not _after:
                    raise Busy(f"a {job.kind} is already running ({100 * job.progress:.0f} %)")
            proc = Procedure(self, kind, **kw)
            if proc.st.get("oos_seq") is not None:
                self._maps.suspect_from = proc.st["oos_seq"]
            self._proc_job = Job(kind, proc.total, proc)
            self._proc_job.start()  # assigned before it runs
            return self._proc_job

    def _close_map_now(self) -> tuple[int, int]:
        """Sync the journal and close every record into delta maps: (last seq, maps)."""
        seq = self._journal.last_seq
        self._journal.sync(seq)
        self._maps.close_map(seq)
        return seq, len(self._maps.level0)

    # ------------------------------------------------------------ baseline

    def _start_baseline(self, *, inline: bool) -> None:
        job = Job("baseline", self.size, self._baseline_work)
        job.done_units = self._maps.baseline_end
        self.baseline_job = job
        if inline:
            job._run()
            job.wait()
        else:
            job.start()

    def wait_baseline(self, timeout: float | None = None) -> None:
        if self.baseline_job is not None:
            self.baseline_job.wait(timeout)

    def _baseline_work(self, job: Job) -> dict:
        """Copy the primary into the journal while I/O goes on ([0055]).

        Each step holds the order lock's *write range* of what it copies, so
        a host write to that range is either in the copy or journaled after
        it, and host writes elsewhere go on (the exclusive lock here stalled
        every write for each chunk's read).  Finding the next data
        (``SEEK_DATA``) holds ``[pos, end)``: a write landing in a hole
        while the hole's ZERO record is made would be journaled before it
        and so read as zeros in every later image.
        """
        pos = self._maps.baseline_end
        copied = zeroed = 0
        zero = bytes(BASELINE_CHUNK)
        lock = self._order_lock
        while pos < self.size:
            if job.cancelled or self._closed:
                raise JobCancelled()
            with lock.write_range(pos, self.size):
                data_at = self._next_data(pos)
                if data_at > pos:
                    self._journal.append(R.ZERO, pos, data_at - pos, flags=R.FLAG_BASELINE)
            if data_at > pos:
                n = data_at - pos
                zeroed += n
            else:
                n = min(BASELINE_CHUNK, self.size - pos)
                with lock.write_range(pos, pos + n):
                    chunk = self.read(pos, n)
                    if chunk == zero[:n]:
                        self._journal.append(R.ZERO, pos, n, flags=R.FLAG_BASELINE)
                        zeroed += n
                    else:
                        self._journal.append(R.WRITE, pos, n, chunk, flags=R.FLAG_BASELINE)
                        copied += n
            pos += n
            job.advance(n)
            faults.point("baseline.chunk", pos=pos, job=job)
        rec = self._journal.append(R.BASELINE_DONE, 0, self.size)
        self._journal.sync(rec.seq)
        log.info("baseline.done", seq=rec.seq, copied=copied, zeroed=zeroed)
        return {"bytes_copied": copied, "bytes_zero": zeroed, "seq": rec.seq}

    def _next_data(self, pos: int) -> int:
        """Start of the next data at or after ``pos`` (holes read as zeros)."""
        try:
            nxt = os.lseek(self._pfd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return self.size
            return pos  # not supported (block device): treat as data
        nxt -= nxt % self.block_size
        return min(max(nxt, pos), self.size)
