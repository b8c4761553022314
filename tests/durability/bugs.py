"""Minimal reproducers of engine bugs the durability tests found (all fixed).

Each function returns None when the engine behaves, else one line saying what
went wrong.  ``test_regressions.py::test_bug[<name>]`` calls them, and the
seeded crash-state test uses them to decide whether a failure it sees is
still explained by a known bug (``crashsim.known_bug``): a fixed bug is
tolerated nowhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import time
import uuid as uuidlib

from appliance.engine import CdpError, faults
from appliance.engine import journalthreads as JT
from appliance.engine import record as R
from appliance.engine.fileio import OsFileIO
from appliance.engine.journal import Journal, list_segments

from .faultfs import FaultFS
from .helpers import (
    abandon,
    create,
    journal_of,
    open_tracked,
    open_volume,
    paths,
    scratch_dir,
    settle,
)

SIZE = 256 << 10


class ReproducerBroken(RuntimeError):
    """The engine changed under a reproducer: it no longer sets up its scenario."""


@contextlib.contextmanager
def _no_timer_sync():
    """The syncer's 1 s timer must not sync what a reproducer leaves unsynced on purpose."""
    interval, JT.SYNC_INTERVAL = JT.SYNC_INTERVAL, 3600.0
    try:
        yield
    finally:
        JT.SYNC_INTERVAL = interval


def _wait_unsynced(fs: FaultFS, pattern: str, timeout: float = 5.0) -> None:
    """Until the journal writer has put something in the page cache."""
    deadline = time.monotonic() + timeout
    while not fs.unsynced(pattern):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing unsynced in {pattern}")
        time.sleep(0.001)


def _open_after_power_loss(
    d: str, writes: list[tuple[int, int, bytes]], points_from: int | None = None
) -> str | None:
    """Open with plain I/O: every acknowledged (seq, offset, data) must read back.

    In the present image; with ``points_from``, also at every offered point
    from that seq on (the writes at or before the point; none overlap).
    """
    try:
        vol = open_tracked(d)
    except CdpError as exc:
        return f"open after the power loss refused: {exc}"
    try:
        settle(vol)
        for _seq, off, data in writes:
            if vol.image().read(off, len(data)) != data:
                return f"acknowledged write at {off} lost"
        for p in vol.points() if points_from is not None else ():
            if p.seq < points_from:
                continue
            image = vol.image(seq=p.seq)
            for seq, off, data in writes:
                got = image.read(off, len(data))
                if seq <= p.seq and got != data:
                    bad = sum(x != y for x, y in zip(got, data, strict=True))
                    return (
                        f"offered {p.kind} point at seq {p.seq} (suspect={image.suspect}) "
                        f"serves {bad} garbage bytes of an acknowledged write"
                    )
        return None
    except CdpError as exc:
        return f"after the power loss: {exc}"
    finally:
        vol.close()


def unsynced_tail_after_kill(root: str) -> str | None:
    """kill -9, reopen, flush, power loss: every write the flush acknowledged is there.

    The reopen replays records the dead process wrote but never fdatasynced
    (still in the page cache): into delta maps in the catalog, and into the
    new segment's prev_last_seq.  Nothing ever fdatasyncs them, yet the next
    flush() acknowledges them.  The power loss tears them: offered points
    (not suspect) read the torn journal bytes as data, or fail with a short
    read, and a scan from the start refuses the journal ("durable records are
    missing").  The resync after the second unclean stop repairs only the
    present image, from the primary.
    """
    problems = []
    for seed in range(4):
        with scratch_dir(root, "bug-tail") as d, _no_timer_sync():
            fs = FaultFS()
            vol = create(d, SIZE, io=fs)
            w = [(vol.write(0, b"1" * 4096), 0, b"1" * 4096)]
            vol.flush()
            w.append((vol.write(4096, b"2" * 4096), 4096, b"2" * 4096))  # never synced
            _wait_unsynced(fs, "*.seg")
            fs.kill()
            abandon(vol, fs)
            fs.restart()
            vol = open_tracked(d, io=fs)
            settle(vol)
            w.append((vol.write(8192, b"3" * 4096), 8192, b"3" * 4096))
            vol.flush()  # acknowledges everything up to here, the replayed write included
            fs.crash(random.Random(seed), mode="tear")
            abandon(vol, fs)
            got = _open_after_power_loss(d, w, points_from=w[1][0])
            if got:
                problems.append(got)
    if not problems:
        return None
    return min(problems, key=lambda p: "garbage" not in p)


def rollover_header_unsynced_at_kill(root: str) -> str | None:
    """kill -9 between a rollover's header write and its fdatasync, reopen, ack, power loss.

    Found by the seeded crash states (CI, seed 1154).  The writer thread
    rolls over to segment 2: header written (page cache), then killed before
    the fdatasync.  The reopen finds segment 2 with a valid header and no
    record, and since its scan (from the last closed map) found no record
    either, it made nothing durable.  The new process writes segment 3 and
    acknowledges; the power loss empties segment 2, which is no longer the
    last one, so the journal is refused as corrupt
    (by a scan from the start, as a catalog rebuild makes).
    """
    with scratch_dir(root, "bug-rollover-kill") as d, _no_timer_sync():
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        w = []
        per_segment = ((1 << 20) - R.SEGMENT_HEADER_SIZE) // (R.RECORD_HEADER_SIZE + 65536)
        for i in range(per_segment):  # segment 1, full
            data = bytes([0x30 + i % 4]) * 65536
            w = [x for x in w if x[1] != (i % 4) * 65536]
            w.append((vol.write((i % 4) * 65536, data), (i % 4) * 65536, data))
        vol.flush()
        vol.close_map()  # the catalog covers every record: the next scan finds none
        killed = threading.Event()

        def kill_once(path):
            if not killed.is_set():
                fs.kill()
                killed.set()

        fs.before("fdatasync", "*0000000000000002.seg", kill_once)
        vol.write(0, b"x" * 65536)  # never acknowledged: the writer rolls over, dies
        if not killed.wait(5):
            raise ReproducerBroken("the writer never reached segment 2's fdatasync")
        abandon(vol, fs)
        fs.clear_rules()
        fs._hooks.clear()
        fs.restart()
        if fs.unsynced("*0000000000000002.seg") == 0:
            raise ReproducerBroken("segment 2's header is not left in the page cache")
        vol = open_tracked(d, io=fs)
        settle(vol)
        data = b"3" * 4096
        w = [x for x in w if x[1] != 0]
        w.append((vol.write(0, data), 0, data))
        vol.flush()  # acknowledged
        fs.crash(random.Random(0), mode="drop")
        abandon(vol, fs)
        try:  # what a catalog rebuild reads
            journal_of(d).scan()
        except CdpError as exc:
            return f"after the power loss the journal is refused: {exc}"
        return _open_after_power_loss(d, w)


def segment_header_never_synced(root: str) -> str | None:
    """Clean close, open, clean close, open, ack a write, power loss: the volume must open.

    An open begins a segment (header written, folder fsynced) but nothing
    fdatasyncs the header unless a record lands in it; a clean close with no
    new record leaves it in the page cache.  The power loss empties it, and
    as it is not the last segment, the journal is refused as corrupt.
    """
    with scratch_dir(root, "bug-header") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        w = [(vol.write(0, b"1" * 4096), 0, b"1" * 4096)]
        vol.close()
        open_volume(d, io=fs).close()  # segment 2: header only, never synced
        vol = open_volume(d, io=fs)
        w.append((vol.write(4096, b"3" * 4096), 4096, b"3" * 4096))
        vol.flush()  # acknowledged
        fs.crash(random.Random(0), mode="drop")
        abandon(vol, fs)
        return _open_after_power_loss(d, w)


def failed_open_leaks_threads(root: str) -> str | None:
    """An open that raises must leave nothing running.

    ``ProtectedVolume._init`` starts the map engine's thread (and the
    journal's writer and syncer) before ``_recover``; when recovery fails (here
    the resync marker's fdatasync after an unclean stop), ``open`` raises and
    nobody stops them: the map engine keeps its catalog connection and keeps
    closing maps into the catalog, beside the next open's own map engine
    (seen in the crash-state runs as ``UNIQUE constraint failed:
    delta_map.level, delta_map.idx``).
    """
    with scratch_dir(root, "bug-open") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        vol.write(0, b"1" * 4096)
        vol.flush()
        fs.kill()
        abandon(vol, fs)
        fs.restart()
        fs.fail_on("fdatasync", "*.seg", nth=1, times=1 << 30)
        before = set(threading.enumerate())
        leaked = []
        try:
            open_volume(d, io=fs)
        except (CdpError, OSError):
            pass
        else:
            raise ReproducerBroken("the open did not fail")
        finally:
            time.sleep(0.05)
            leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
            fs.kill()  # stop them, so the test run goes on cleanly
            for t in leaked:
                t.join(0.5)
            fs.close_stale()
        if leaked:
            return "a failed open left threads running: " + ", ".join(t.name for t in leaked)
        return None


def primary_fsync_error_retried(root: str) -> str | None:
    """A failed fdatasync of the primary must not be followed by a successful ack.

    Like the journal before PostgreSQL's fsyncgate fix: after a failed
    fdatasync the kernel may have dropped the dirty pages (marked clean), so
    the next fdatasync succeeds without writing them.  ``_sync`` raises
    PrimaryIOError once, and the next ``flush()`` returns: the write is
    acknowledged although the primary never got it.  The power loss then
    loses it from the live volume, and the resync after the unclean stop
    copies the primary (without it) into the present image as well.
    """
    with scratch_dir(root, "bug-pfsync") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        vol.write(0, b"1" * 4096)
        vol.flush()
        fs.fail_on("fdatasync", "primary.img", nth=1, err=errno.EIO, lose=True)
        vol.write(4096, b"2" * 4096)
        try:
            vol.flush()
            raise ReproducerBroken("the first flush did not fail")
        except OSError:
            pass
        try:
            vol.flush()
        except (CdpError, OSError):
            fs.kill()
            abandon(vol, fs)
            return None  # fail-stop: nothing acknowledged
        fs.crash(random.Random(0), mode="keep")
        abandon(vol, fs)
        with open(paths(d)["primary"], "rb") as f:
            f.seek(4096)
            if f.read(4096) != b"2" * 4096:
                return "flush() acknowledged a write the primary lost to a failed fdatasync"
        return None


def journal_eio_then_restart(root: str) -> str | None:
    """EIO on the journal's fdatasync, restart without a reboot, ack, power loss: must open.

    After the failed fdatasync the failed group's bytes are still readable
    (page cache) but will never reach the disk (the kernel marked them clean).
    The reopen replays them as if durable (the journal docstring promises
    "Reopening the volume replays up to the last durable group"), maps them,
    and the next flush() acknowledges them; the power loss removes them.  An
    fdatasync at recovery would not help here: the pages are clean.
    """
    with scratch_dir(root, "bug-eio") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        w = [(vol.write(0, b"1" * 4096), 0, b"1" * 4096)]
        vol.flush()
        fs.fail_on("fdatasync", "*.seg", nth=1, lose=True)
        s2 = vol.write(4096, b"2" * 4096)
        try:
            vol.flush()
        except (CdpError, OSError):
            pass
        fs.kill()
        abandon(vol, fs)
        fs.restart()
        fs.clear_rules()
        vol = open_tracked(d, io=fs)
        settle(vol)
        if vol.image().read(4096, 4096) == b"2" * 4096:
            replayed = "the failed group was replayed"
        else:
            replayed = ""
        if replayed:
            w.append((s2, 4096, b"2" * 4096))
        w.append((vol.write(8192, b"3" * 4096), 8192, b"3" * 4096))
        vol.flush()  # acknowledges everything the reopened journal holds
        fs.crash(random.Random(0), mode="drop")
        abandon(vol, fs)
        got = _open_after_power_loss(d, w)
        return f"{replayed}; {got}" if got else None


def journal_eio_before_first_durable_group(root: str) -> str | None:
    """EIO on the first group commit after an open, then the in-process restart.

    ``_restart_journal`` cut the failed group's page-cache ghosts off only
    when the session already had a durable record (``durable_end`` was 0
    until then): a journal that failed before its first durable group kept
    the ghosts, and a later open replayed records that never reached the
    disk and may vanish under later, durable ones (a hole).  The restart
    must leave no record past the durable seq.
    """
    with _no_timer_sync(), scratch_dir(root, "bug-eio0") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        vol.write(0, b"1" * 4096)
        vol.flush()
        vol.close()
        vol = open_tracked(d, io=fs)
        try:
            settle(vol)
            durable = vol._journal.durable_seq
            fs.fail_on("fdatasync", "*.seg", nth=1, lose=True)
            ghost = vol.write(4096, b"2" * 4096)
            with contextlib.suppress(CdpError, OSError):
                vol.flush()
            fs.clear_rules()
            if vol.state != "out-of-sync" or ghost is None:
                raise ReproducerBroken("the failed sync did not take the volume out of sync")
            if not vol._restart_journal():
                raise ReproducerBroken("the journal did not come back")
            folder = vol._journal.folder
            seqs = [r.seq for r in Journal(fs, folder, vol.uuid, 1 << 20).scan().records]
            late = [q for q in seqs if durable < q <= ghost]
            settle(vol)
        finally:
            vol.close()
        if late:
            return f"records {late} of the failed group are still in the journal after the restart"
        return None


def _fail_a_group_commit(vol, fs: FaultFS) -> None:
    """One durable write, then one whose group commit fails: the volume goes out of sync."""
    vol.write(0, b"1" * 4096)
    vol.flush()
    fs.fail_on("fdatasync", "*.seg", nth=1, lose=True)
    vol.write(4096, b"2" * 4096)
    with contextlib.suppress(CdpError, OSError):
        vol.flush()
    fs.clear_rules()
    if vol.state != "out-of-sync":
        raise ReproducerBroken("the failed sync did not take the volume out of sync")


def failed_group_keeps_its_drl_pins(root: str) -> str | None:
    """The syncer's fdatasync fails: the group's records must be listed as undelivered.

    Found with the next reproducer.  The syncer took its group off
    ``_inflight`` before the fdatasync and, when it failed, dropped it: the
    journal restart, which unpins every undelivered record, never saw those
    records, so their DRL pins stayed for the life of the process.  Safe
    (the regions only stay dirty), but the resync's ``clear`` and every
    reset skip a pinned region, so they are resynced again at every open.
    """
    with _no_timer_sync(), scratch_dir(root, "bug-pin-leak") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        try:
            _fail_a_group_commit(vol, fs)
            if not vol._restart_journal():
                raise ReproducerBroken("the journal did not come back")
            vol.flush()
            with vol._drl._lock:
                pins = dict(vol._drl._pins)
            return f"DRL pins left with no record pending: {pins}" if pins else None
        finally:
            vol.close()


def unpinned_write_across_journal_restart(root: str) -> str | None:
    """A host write that began out of sync and appended after the journal came back.

    Found by review.  ``_host_write`` decided whether its DRL marks pin
    (``not self._oos``) before it took the order lock; the journal restart
    (under the exclusive order lock) could run in between.  The write then
    appended a record that had pinned nothing, and when that record became
    durable its unpin removed the pin of another write to the same region
    whose record was not durable yet: a DRL reset could then clear a region
    where primary and journal differ.
    """
    with _no_timer_sync(), scratch_dir(root, "bug-pin") as d:
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        try:
            _fail_a_group_commit(vol, fs)
            a, b = 65536, 65536 + 4096
            region = vol._drl.regions(a, 4096)
            if region != vol._drl.regions(b, 4096):
                raise ReproducerBroken("the two writes are not in one DRL region")
            held = {a: threading.Event(), b: threading.Event()}
            go = {a: threading.Event(), b: threading.Event()}

            def hold(offset, **_):
                if offset in held and not held[offset].is_set():
                    held[offset].set()
                    go[offset].wait(10)

            seqs: dict[int, int] = {}

            def writer(off):
                seqs[off] = vol.write(off, bytes([off >> 12]) * 4096)

            with faults.inject("write.after_drl", hold):
                t1 = threading.Thread(target=writer, args=(a,))
                t1.start()  # out of sync: marks without a pin, then waits
                if not held[a].wait(5):
                    raise ReproducerBroken("the first write never reached its DRL mark")
                if not vol._restart_journal():
                    raise ReproducerBroken("the journal did not come back")
                t2 = threading.Thread(target=writer, args=(b,))
                t2.start()  # in sync again: pins, then waits before its record
                if not held[b].wait(5):
                    raise ReproducerBroken("the second write never reached its DRL mark")
                go[a].set()
                t1.join(10)
                if seqs.get(a) is None:
                    raise ReproducerBroken("the first write was not journaled")
                vol._journal.sync(seqs[a])  # durable: its unpin runs
                with vol._drl._lock:
                    pinned = [r for r in region if vol._drl._pins.get(r, 0) > 0]
                go[b].set()
                t2.join(10)
            if len(pinned) != len(region):
                return (
                    "a write whose record is not journaled yet lost its DRL pin to the "
                    "unpin of a record that never pinned"
                )
            return None
        finally:
            for e in (*locals().get("go", {}).values(),):
                e.set()
            vol.close()


class _TornPrimaryFS(FaultFS):
    """The next primary write lands half, then fails with EIO (a dying disk)."""

    tear_next = False

    def pwrite_all(self, fd, data, offset):
        if self.tear_next and str(self._fds.get(fd, "")).endswith("primary.img"):
            self.tear_next = False
            super().pwrite_all(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().pwrite_all(fd, data, offset)


def primary_write_error_never_resynced(root: str) -> str | None:
    """A primary write fails half-way; clean close; reopen: live volume = newest image.

    The failed write is not acknowledged and never journaled, but part of it
    reached the primary.  Its regions stayed dirty in the DRL only in memory
    terms: the clean close wrote the clean marker, the next open saw a clean
    stop and did not resync, and the next DRL reset forgot the regions.  The
    primary then differed from every image for good.
    """
    with scratch_dir(root, "bug-torn") as d:
        fs = _TornPrimaryFS()
        vol = create(d, SIZE, io=fs)
        vol.write(0, b"1" * 8192)
        vol.flush()
        fs.tear_next = True
        try:
            vol.write(0, b"2" * 4096)
        except CdpError:
            pass
        else:
            raise ReproducerBroken("the torn primary write did not fail")
        vol.close()
        vol = open_tracked(d)
        try:
            settle(vol)
            live, newest = vol.read(0, 8192), vol.image().read(0, 8192)
        finally:
            vol.close()
        if live != newest:
            return "after a clean reopen the live volume differs from the newest image"
        return None


def pooled_segment_reused_then_power_loss(root: str) -> str | None:
    """Retention pools a reclaimed segment; an open reuses it; power loss: must open.

    ``_open_segment`` renames a pooled file to the new segment's name, writes
    the new header over the old one and fsyncs the folder, but does not
    fdatasync the header.  The power loss keeps the rename and drops the
    header write: the file still carries the old, valid header of another
    segment number, and ``scan`` refuses it ("segment file N says it is
    segment M") although it is the last segment and held nothing
    acknowledged.  The same happens on a rollover into a pooled file.
    """
    size, chunk = 1 << 20, 256 << 10
    with scratch_dir(root, "bug-pool") as d:
        fs = FaultFS()
        vol = create(d, size, io=fs, map_seconds=3600)
        vol.segment_pool = 4
        ends, rng = [], random.Random(4)
        for _ in range(6):
            for off in range(0, size, chunk):
                vol.write(off, rng.randbytes(chunk))
            vol.flush()
            vol.close_map()
            ends.append(vol._maps.level0[-1].last_time_ns)
        vol.set_retention("all:1h")
        vol.apply_retention(now=ends[3] / 1e9 + 3600 - 1e-4).wait(30)
        if not os.listdir(os.path.join(paths(d)["journal"], "free")):
            raise ReproducerBroken("nothing was pooled")
        last = vol.last_seq
        want = vol.read(0, size)
        vol.close()  # clean: everything acknowledged
        vol = open_volume(d, io=fs)  # its new segment is a pooled file
        fs.crash(random.Random(0), mode="drop")
        abandon(vol, fs)
        try:
            vol = open_tracked(d)
        except CdpError as exc:
            return f"open after the power loss refused: {exc}"
        try:
            settle(vol)
            if vol.image(seq=last).read(0, size) != want:
                return "acknowledged writes lost"
        finally:
            vol.close()
        return None


def clean_flag_outlives_power_loss(root: str) -> str | None:
    """Clean close, open, a write (never acknowledged), power loss: the stop is unclean.

    The open clears ``clean_close_seq`` with a catalog write, and the catalog
    runs ``synchronous=NORMAL``: SQLite may lose that transaction on power
    loss (modelled by putting back the catalog as it was at the clean close).
    The next open then takes the stop for a clean one: the sequence number
    of the lost write is handed out again (docs/FORMAT.md promises it never
    is), and no resync runs, although the write reached the primary and the
    DRL marked it.
    """
    with scratch_dir(root, "bug-clean") as d, _no_timer_sync():
        fs = FaultFS()
        vol = create(d, SIZE, io=fs)
        vol.write(0, b"1" * 4096)
        vol.close()
        cat = paths(d)["catalog"]
        saved = {}
        for sfx in ("", "-wal", "-shm"):
            if os.path.exists(cat + sfx):
                with open(cat + sfx, "rb") as f:
                    saved[sfx] = f.read()
        vol = open_volume(d, io=fs)
        lost = vol.write(4096, b"2" * 4096)  # handed out, never acknowledged
        fs.crash(random.Random(0), mode="drop", modes={"primary.img": "keep"})
        abandon(vol, fs)
        for sfx in ("", "-wal", "-shm"):  # SQLite lost its unsynced WAL frames
            if os.path.exists(cat + sfx):
                os.unlink(cat + sfx)
            if sfx in saved:
                with open(cat + sfx, "wb") as f:
                    f.write(saved[sfx])
        vol = open_tracked(d)
        try:
            settle(vol)
            again = vol.write(8192, b"3" * 4096)
            vol.flush()
            problems = []
            if again <= lost:
                problems.append(f"seq {lost} of a lost write handed out again ({again})")
            if vol.image().read(4096, 4096) != vol.read(4096, 4096):
                problems.append("no resync: the primary holds a write the journal lacks")
            return "; ".join(problems) or None
        finally:
            vol.close()


def journal_failure_during_rollover(root: str) -> str | None:
    """The syncer's fdatasync fails while the writer rolls over: the journal must stay openable.

    The writer fdatasyncs the full segment before it begins the next one.  If
    the syncer's fdatasync of that segment has just failed (fail-stop: the
    unsynced records are lost), the writer's own fdatasync "succeeds" (the
    error was reported once: fsyncgate), and it begins the next segment with
    ``prev_last_seq`` = its last record, which never became durable.  After a
    power loss the scan finds the segment shorter than the next one claims
    and refuses the whole journal, acknowledged records included.  The test
    holds the writer at its fdatasync until the syncer's has failed, so the
    interleaving happened every time (now the two syncs are serialized and
    it cannot happen at all).
    """
    with _no_timer_sync():
        return _journal_failure_during_rollover(root)


def _journal_failure_during_rollover(root: str) -> str | None:
    with scratch_dir(root, "bug-roll") as d:
        fs = FaultFS()
        j = Journal(fs, os.path.join(d, "journal"), uuidlib.uuid4(), 1 << 20)
        j.start(0, 0, clean=True)
        acked = [j.append(R.WRITE, 0, 65536, b"a" * 65536).seq for _ in range(4)][-1]
        j.sync()
        writer_held, syncer_failed = threading.Event(), threading.Event()

        def hold_writer(path):
            if threading.current_thread().name == "cdp-journal-writer":
                writer_held.set()
                # Since syncs are serialized (Journal._segment_sync) the syncer
                # cannot fail meanwhile: the wait times out and the writer's
                # sync runs first, for real.
                syncer_failed.wait(1)

        fs.before("fdatasync", "*.seg", hold_writer)
        fs.fail_on("fdatasync", "*.seg", thread="cdp-journal-syncer", lose=True)
        per_segment = ((1 << 20) - R.SEGMENT_HEADER_SIZE) // (R.RECORD_HEADER_SIZE + 65536)
        for _ in range(per_segment - 4):  # fill segment 1 ...
            seq = j.append(R.WRITE, 0, 65536, b"b" * 65536).seq
        deadline = time.monotonic() + 5
        while j._written_seq < seq and time.monotonic() < deadline:  # ... in the page cache
            time.sleep(0.001)
        j.append(R.WRITE, 0, 65536, b"c" * 65536)  # a new batch: the writer rolls over
        if not writer_held.wait(5):
            raise ReproducerBroken("the writer never reached its rollover fdatasync")
        j.request_sync(seq)  # the syncer's fdatasync of segment 1 fails
        deadline = time.monotonic() + 10
        while j.failed is None and time.monotonic() < deadline:
            time.sleep(0.001)
        syncer_failed.set()
        j.close()
        # The kernel writes back what it still holds (segment 2's header); the
        # pages of the failed fdatasync are gone.
        fs.crash(random.Random(0), mode="keep")
        fs.close_stale()
        if len(list_segments(j.folder)) < 2:
            # Fixed behaviour: after the syncer's failure the writer stops instead
            # of beginning a segment that would claim the lost records.
            if j.failed is None:
                raise ReproducerBroken("the journal did not fail")
        try:
            end = Journal(OsFileIO(), j.folder, j.uuid, 1 << 20).scan().last_seq
        except CdpError as exc:
            return f"after the power loss the journal is refused: {exc}"
        return None if end >= acked else f"acknowledged seq {acked} lost (end {end})"


# Bugs whose symptoms the seeded crash-state runs meet (crashsim.known_bug).
CRASH_STATE_BUGS = {
    "unsynced-tail-after-kill": unsynced_tail_after_kill,
    "segment-header-never-synced": segment_header_never_synced,
}


def still_present(name: str, root: str) -> bool:
    """Does the bug still reproduce?  A reproducer that breaks says no (tolerate nothing)."""
    try:
        return CRASH_STATE_BUGS[name](root) is not None
    except Exception:
        return False
