"""One seeded crash-state run: workload on a FaultFS volume, crash, recover, check.

The workload keeps a model: ``history`` (the records the journal may hold, in
sequence order) and ``attempts`` (every call that may have touched the primary,
in time order).  A record is *acknowledged* once a ``flush()``, a ``fua=True``
write, a bookmark or a clean close returned after it (docs/DURABILITY.md).
Ops: writes of 1-16 blocks (some fua), zeros, bookmarks, flushes, map closes,
clean close + reopen, and kill -9 + reopen (the page cache survives).  The
power goes after a random number of ops, or at a random fdatasync.

Checks after recovery (plain OsFileIO, a new "process"):

* the journal's end L (scanned before the open, which appends a resync
  marker after an unclean stop) is at or after the last acknowledged record,
  and is a record of the history: a prefix, no holes, no lost ack;
* images at L, at the last ack, at random earlier records and at every
  bookmark equal the model; acknowledged bookmarks exist, lost ones do not;
* each primary block whose last write (in time) was acknowledged holds it;
* replay is idempotent (close, reopen: same last seq, same images), the
  catalog passes ``PRAGMA integrity_check``, and a catalog rebuilt from the
  journal alone gives the same images and bookmarks.

After a kill the engine's resync journals the primary's unjournaled writes;
what it makes of them is its business (DRL tests), so the model takes the
image after it as a new base and goes on from there.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field

from appliance.engine import CdpError
from appliance.engine.journal import list_segments

from .faultfs import FaultFS
from .helpers import abandon, create, journal_of, open_tracked, paths, remove_catalog, settle

SIZE = 256 << 10
# Where the power may go (method, highest call number): mostly at a sync, also
# between a file's creation and its folder's sync, or in the middle of writes.
CRASH_POINTS = (("fdatasync", 24), ("fdatasync", 24), ("fsync_dir", 3), ("pwritev_all", 12))
CRASH_POINTS += (("pwrite_all", 30),)
OPS = ("write", "fua", "zero", "bookmark", "flush", "close_map", "reopen", "kill")
DEFAULT_WEIGHTS = (50, 8, 8, 4, 16, 3, 3, 3)


@dataclass
class Op:
    kind: str  # write, zero, bookmark, base (the whole image, taken after a resync)
    offset: int = 0
    data: bytes | None = None  # write payload (zero: None, length in `length`)
    length: int = 0
    name: str | None = None
    seq: int | None = None
    acked: bool = False
    lost: bool = False


@dataclass
class Run:
    seed: int
    block_size: int
    map_records: int
    history: list[Op] = field(default_factory=list)
    attempts: list[Op] = field(default_factory=list)
    base_seq: int = 0
    ack_seq: int = 0
    # After a kill, seqs from here hold the engine's own records (resync marker,
    # fix-ups) until the next "base" op: the model does not know them.
    unknown_from: int | None = None
    kill_ends: list[int] = field(default_factory=list)  # journal end found at each kill
    kill_segnos: int = 0  # the highest segment that existed at a kill
    open_segnos: set[int] = field(default_factory=set)  # segments begun by an open
    trace: list[str] = field(default_factory=list)
    crash_note: str = ""

    def ack(self, upto: int | None) -> None:
        if upto is None:
            return
        for op in self.history:
            if op.seq <= upto:
                op.acked = True
        self.ack_seq = max(self.ack_seq, upto)

    def model(self, seq: int) -> bytes:
        img = bytearray(SIZE)
        for op in self.history:
            if op.seq > seq:
                break
            if op.kind in ("write", "base"):
                img[op.offset : op.offset + len(op.data)] = op.data
            elif op.kind == "zero":
                img[op.offset : op.offset + op.length] = bytes(op.length)
        return bytes(img)

    def seqs(self) -> list[int]:
        return [self.base_seq] + [op.seq for op in self.history]

    def known_at_or_before(self, seq: int) -> int:
        """The newest seq <= ``seq`` whose image the model knows."""
        return max(s for s in self.seqs() if s <= seq)


class CheckFailed(AssertionError):
    pass


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


class _Died(Exception):
    """The simulated machine lost power while a step ran."""

    vol = None


def _guard(fs: FaultFS, what: str, fn, *args, **kw):
    """Run one call; after a crash nothing it returns reached anyone."""
    try:
        result = fn(*args, **kw)
    except (CdpError, OSError) as exc:
        if not fs.crashed:
            raise CheckFailed(f"{what} failed without a crash: {exc!r}") from exc
        raise _Died(f"{what} raised {type(exc).__name__}") from exc
    if fs.crashed:  # the power went while it ran (in another thread): no ack
        raise _Died(f"{what} returned after the crash")
    return result


class Workload:
    def __init__(self, run: Run, d: str, fs: FaultFS, rng: random.Random, write_runs=False):
        self.run, self.d, self.fs, self.rng = run, d, fs, rng
        self.write_runs = write_runs  # half the writes: runs of 2-6 through write_many
        self.opts = {"map_records": run.map_records, "map_seconds": rng.choice((0.002, 3600.0))}
        self.vol = None
        self.marks = 0

    def go(self, n_ops: int, weights, arm=None, prefill: int = 0) -> None:
        """Run until n_ops are done or the power went.  ``arm(fs)``: once created.

        ``prefill`` bytes of 64 KiB writes first (acknowledged), so that the
        segment (1 MiB) rolls over during the random part.
        """
        run = self.run
        self.vol = create(self.d, SIZE, run.block_size, io=self.fs, **self.opts)
        self._note_open()
        run.base_seq = run.ack_seq = self.vol.last_seq
        for _ in range(prefill // (64 << 10)):
            op = Op("write", 0, self.rng.randbytes(64 << 10), 64 << 10)
            op.offset = self.rng.randrange(SIZE // op.length) * op.length
            run.attempts.append(op)
            op.seq = self.vol.write(op.offset, op.data)
            run.history.append(op)
        if prefill:
            run.ack(self.vol.flush())
            run.trace.append(f"prefill {prefill // (64 << 10)} x 64 KiB -> {run.ack_seq}")
        if arm is not None:
            arm(self.fs)
        batch = contextlib.ExitStack()
        left = 0  # ops still to run inside the open vol.batch() (the handler's ring poll)
        try:
            for _ in range(n_ops):
                kind = self.rng.choices(OPS, weights)[0]
                if kind in ("reopen", "kill") and left:
                    left = 0
                    batch.close()  # the ring thread's poll ends before any stop
                elif not left and kind not in ("reopen", "kill") and self.rng.random() < 0.3:
                    left = self.rng.randint(1, 8)
                    # With runs, half the batches are late ones (the handler's
                    # compiled loop): a run's records are written at the
                    # batch's end, or at the next journal call or host write.
                    late = self.write_runs and self.rng.random() < 0.5
                    batch.enter_context(self.vol.batch(late=late))
                    run.trace.append(f"{'late ' if late else ''}batch of up to {left} ops")
                self.step(kind)
                if left:
                    left -= 1
                    if not left:
                        batch.close()
                if self.fs.crashed:
                    break
            batch.close()
        except _Died as exc:
            batch.pop_all()  # the process died inside the poll: nothing more is written
            run.trace.append(f"  {exc} (crashed)")
            if exc.vol is not None:
                self.vol = exc.vol

    def _note_open(self) -> None:
        self.run.open_segnos.add(max(list_segments(paths(self.d)["journal"])))

    def step(self, kind: str) -> None:
        run, vol, fs, rng = self.run, self.vol, self.fs, self.rng
        if kind == "write" and self.write_runs and rng.random() < 0.5:
            self.write_run()
        elif kind in ("write", "fua", "zero"):
            bs = run.block_size
            n = rng.randint(1, 16)
            off = rng.randrange(SIZE // bs - n + 1) * bs
            if kind == "zero":
                op = Op("zero", off, None, n * bs)
            else:
                op = Op("write", off, rng.randbytes(n * bs), n * bs)
            fua = kind == "fua" or (kind == "zero" and rng.random() < 0.2)
            if op.kind == "zero":
                call = (vol.write_zeros, off, n * bs)
            else:
                call = (vol.write, off, op.data)
            run.attempts.append(op)
            self._journaled(op, kind, call, fua=fua)
            run.trace.append(f"{kind} {off}+{n * bs} -> {op.seq}")
            if fua:
                run.ack(op.seq)
        elif kind == "bookmark":
            self.marks += 1
            op = Op("bookmark", name=f"m{self.marks}")
            self._journaled(op, kind, (lambda name: vol.bookmark(name).seq, op.name))
            run.trace.append(f"bookmark {op.name} -> {op.seq}")
            run.ack(op.seq)
        elif kind == "flush":
            run.trace.append("flush")
            run.ack(_guard(fs, kind, vol.flush))
        elif kind == "close_map":
            run.trace.append("close_map")
            _guard(fs, kind, vol.close_map)
        elif kind == "reopen":
            run.trace.append("clean close + reopen")
            last = vol.last_seq
            _guard(fs, "close", vol.close)
            run.ack(last)
            self._reopen("clean reopen")
            _require(self.vol.last_seq == last, f"clean reopen: last {self.vol.last_seq} != {last}")
        elif kind == "kill":
            self.kill()

    def write_run(self) -> None:
        """``vol.write_many`` of 2-6 writes, often overlapping (the handler's
        run of plain writes in one ring poll)."""
        run, fs, rng, bs = self.run, self.fs, self.rng, self.run.block_size
        ops = []
        blocks = SIZE // bs
        span = min(48, blocks - 16)
        near = rng.randrange(blocks - 16 - span + 1) * bs
        for _ in range(rng.randint(2, 6)):
            n = rng.randint(1, 16)
            if rng.random() < 0.5:  # overlaps the others
                off = near + rng.randrange(span) * bs
            else:
                off = rng.randrange(SIZE // bs - n + 1) * bs
            ops.append(Op("write", off, rng.randbytes(n * bs), n * bs))
        run.attempts.extend(ops)
        before, first = self.vol.last_seq, self.vol._journal._next_seq
        try:
            seqs, error = _guard(
                fs, "write_many", self.vol.write_many, [(op.offset, op.data) for op in ops]
            )
        except _Died:
            # Records come all at once, consecutive from ``first`` (after an
            # unclean open that is past a SEQ_GAP, not before + 1).
            appended = max(0, self.vol.last_seq - first + 1)
            for i, op in enumerate(ops[:appended]):
                op.seq = first + i
                run.history.append(op)
            run.trace.append(f"write_many x{len(ops)} (appended {appended}, then died)")
            raise
        for op, seq in zip(ops, seqs, strict=False):
            op.seq = seq
            run.history.append(op)
        run.trace.append(
            "write_many " + ", ".join(f"{op.offset}+{op.length}" for op in ops) + f" -> {seqs}"
        )
        if error is not None:
            if not fs.crashed:
                raise CheckFailed(f"write_many failed without a crash: {error!r}")
            raise _Died(f"write_many item {len(seqs)} failed: {type(error).__name__}")
        _require(
            seqs == list(range(first, first + len(ops))) and seqs[-1] == self.vol.last_seq,
            f"write_many returned {seqs}, last is {self.vol.last_seq} (was {before})",
        )

    def _journaled(self, op: Op, kind: str, call, **kw) -> None:
        """One call that appends one record: history gets it even if the call failed."""
        before = self.vol.last_seq
        try:
            op.seq = _guard(self.fs, kind, *call, **kw)
        except _Died:
            if self.vol.last_seq > before:  # appended, then the sync failed: may be there
                op.seq = self.vol.last_seq
                self.run.history.append(op)
                self.run.trace.append(f"{kind} (appended as {op.seq}, then died)")
            raise
        _require(
            op.seq == self.vol.last_seq, f"{kind} returned {op.seq}, last is {self.vol.last_seq}"
        )
        self.run.history.append(op)

    def kill(self) -> None:
        run, fs = self.run, self.fs
        run.trace.append("kill + reopen")
        fs.kill()
        abandon(self.vol, fs)
        self.vol = None
        fs.restart()
        run.kill_segnos = max(run.kill_segnos, max(list_segments(paths(self.d)["journal"])))
        end = journal_of(self.d).scan().last_seq
        check_end(run, end, "after kill")
        run.kill_ends.append(end)
        for op in run.history:
            op.lost = op.seq > end
        run.history = [op for op in run.history if not op.lost]
        run.unknown_from = end + 1
        run.trace.append(f"  journal ends at {end}")
        self._reopen("reopen after kill")
        vol = self.vol
        img = _guard(fs, "image after kill", lambda: vol.image(seq=end).read(0, SIZE))
        _require(img == run.model(end), f"after kill: image at {end} != model")
        # A new base: whatever recovery (resync) made of the unjournaled primary
        # writes is the engine's business; the model goes on from it.
        base = _guard(fs, "flush after kill", vol.flush)
        data = _guard(fs, "image after kill", lambda: vol.image(seq=base).read(0, SIZE))
        run.history.append(Op("base", 0, data, SIZE, seq=base))
        run.ack(base)
        run.unknown_from = None

    def _reopen(self, what: str) -> None:
        fs = self.fs
        try:
            self.vol = open_tracked(self.d, io=fs, **self.opts)
        except (CdpError, OSError) as exc:
            if not fs.crashed:
                raise CheckFailed(f"{what} failed without a crash: {exc!r}") from exc
            raise _Died(f"{what} raised {type(exc).__name__}") from exc
        self._note_open()
        try:
            settle(self.vol)
        except (CdpError, OSError) as exc:
            if not fs.crashed:
                raise CheckFailed(f"{what}: recovery job failed without a crash: {exc!r}") from exc
            raise _Died(f"{what}: recovery job raised {type(exc).__name__}") from exc


def check_end(run: Run, end: int, when: str) -> None:
    """The recovered journal end: not before the last ack, a record the model knows."""
    _require(end >= run.ack_seq, f"{when}: journal ends at {end}, before the ack at {run.ack_seq}")
    if run.unknown_from is not None and end >= run.unknown_from:
        return
    _require(end in run.seqs(), f"{when}: journal ends at {end}, not a record of the history")


def snapshot(run: Run, vol, end: int, rng: random.Random) -> dict:
    """Images (at seqs the model knows, <= end; and the present) for later comparison."""
    cands = [s for s in run.seqs() if s <= end]
    points = {run.ack_seq, run.known_at_or_before(end), vol.last_seq}
    points.update(rng.sample(cands, min(2, len(cands))))
    images = {s: vol.image(seq=s).read(0, SIZE) for s in sorted(points)}
    return {"last": vol.last_seq, "images": images, "bookmarks": dict(vol._maps.bookmarks)}


def verify(run: Run, d: str, rng: random.Random) -> None:
    end = journal_of(d).scan().last_seq
    check_end(run, end, "after crash")
    vol = open_tracked(d, map_records=run.map_records)
    try:
        settle(vol)
        snap = snapshot(run, vol, end, rng)
        for s, img in snap["images"].items():
            if s <= end and (run.unknown_from is None or s < run.unknown_from):
                _require(img == run.model(s), f"image at seq {s} != model (journal end {end})")
        marks = {op.name: op.seq for op in run.history if op.kind == "bookmark"}
        for name, (seq, _t) in snap["bookmarks"].items():
            _require(marks.get(name) == seq, f"bookmark {name} at {seq}: not in the history")
            _require(seq <= end, f"bookmark {name} at {seq} after the journal's end {end}")
        for op in run.history:
            if op.kind == "bookmark" and op.acked:
                _require(op.name in snap["bookmarks"], f"acknowledged bookmark {op.name} lost")
                got = vol.image(bookmark=op.name).read(0, SIZE)
                _require(got == run.model(op.seq), f"image at bookmark {op.name} != model")
        check_primary(run, vol.read(0, SIZE))
        _require(vol._catalog.integrity_check() == "ok", "catalog integrity_check")
        vol.close()
        for label in ("replay again", "catalog rebuilt"):
            if label == "catalog rebuilt":
                remove_catalog(d)
            vol = open_tracked(d, map_records=run.map_records)
            settle(vol)
            _require(
                vol.last_seq == snap["last"], f"{label}: last_seq {vol.last_seq} != {snap['last']}"
            )
            for s, img in snap["images"].items():
                _require(vol.image(seq=s).read(0, SIZE) == img, f"{label}: image at {s} differs")
            _require(dict(vol._maps.bookmarks) == snap["bookmarks"], f"{label}: bookmarks")
            _require(vol._catalog.integrity_check() == "ok", f"{label}: integrity_check")
            vol.close()
    except BaseException:
        if not vol._closed:
            vol.close()
        raise


def check_primary(run: Run, live: bytes) -> None:
    """A block whose last writer (in time) was acknowledged holds that write."""
    bs = run.block_size
    last_op: dict[int, Op] = {}
    for op in run.attempts:
        for b in range(op.offset, op.offset + op.length, bs):
            last_op[b] = op
    for b in range(0, SIZE, bs):
        op = last_op.get(b)
        if op is None:
            want = bytes(bs)
        elif op.acked and not op.lost:
            want = op.data[b - op.offset : b - op.offset + bs] if op.data else bytes(bs)
        else:
            continue
        _require(live[b : b + bs] == want, f"primary block {b}: acknowledged data lost")


# ---------------------------------------------------------------- known engine bugs

_FOLLOWS = re.compile(r"JournalCorrupt: .*segment (\d+) follows seq (\d+) but the journal")
_BAD_HEADER = re.compile(r"JournalCorrupt: .*segment (\d+): (segment header|bad segment magic)")


def known_bug(run: Run, message: str) -> str | None:
    """The id of a known engine bug (see bugs.py) that explains this failure, if any.

    Narrow on purpose: the symptom *and* the history that causes it.
    """
    m = _FOLLOWS.search(message)
    if m and int(m.group(2)) in run.kill_ends:
        return "unsynced-tail-after-kill"
    m = _BAD_HEADER.search(message)
    if m:
        segno = int(m.group(1))
        if segno in run.open_segnos:
            return "segment-header-never-synced"
        if segno <= run.kill_segnos:
            return "unsynced-tail-after-kill"
    return None


@dataclass
class Outcome:
    seed: int
    report: str | None = None  # None: passed
    known: str | None = None  # a known bug explains the failure


def run_seed(
    seed: int, root: str, weights=DEFAULT_WEIGHTS, *, psow: bool = True, write_runs: bool = False
) -> Outcome:
    """One seed: workload, crash, verify.  ``write_runs``: half the writes
    go through ``write_many`` in runs (another workload for the same seed)."""
    rng = random.Random(seed)
    run = Run(seed, rng.choice((512, 512, 4096)), rng.choice((2, 3, 5, 8)))
    fs = FaultFS(psow=psow)
    d = tempfile.mkdtemp(prefix=f"crash{seed}-", dir=root)
    w = Workload(run, d, fs, rng, write_runs)
    try:
        n_ops, arm = rng.randint(1, 30), None
        prefill = rng.choice((0, 0, rng.randrange(12, 16) << 16))
        if rng.random() < 0.5:
            method, top = rng.choice(CRASH_POINTS)
            nth = rng.randint(1, top)

            def arm(fs):
                fs.crash_at(method, "*", nth, random.Random(seed * 7919 + 1))

            run.crash_note, n_ops = f"crash at {method} #{nth}", 45
        w.go(n_ops, weights, arm, prefill)
        if not fs.crashed:
            fs.crash(random.Random(seed * 7919 + 2))
            run.crash_note = f"crash after {len(run.trace)} ops"
        if w.vol is not None:
            abandon(w.vol, fs)
            w.vol = None
        verify(run, d, rng)
        return Outcome(seed)
    except Exception as exc:
        msg = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if not isinstance(exc, CheckFailed):
            msg += "\n" + "".join(traceback.format_tb(exc.__traceback__)[-6:])
        report = (
            f"seed {seed} (bs {run.block_size}, map_records {run.map_records}, "
            f"{run.crash_note}, ack {run.ack_seq}): {msg}\n  crash: {fs.report}\n  ops: "
            + " | ".join(run.trace[-30:])
        )
        return Outcome(seed, report, known_bug(run, msg))
    finally:
        if w.vol is not None:
            if not fs.halted:
                fs.kill()
            abandon(w.vol, fs)
        shutil.rmtree(d, ignore_errors=True)
