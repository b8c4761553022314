"""Names for the engine's background jobs, and how one is reported.

The engine's :class:`~appliance.engine.jobs.Job` has no name; the control
API gives each one an id (``<kind>-<n>``, e.g. ``restore-3``) the first time
it sees it, whether the job came from a request (restore, resync,
re-baseline, retention) or from the engine itself (the baseline at create,
the resync after the secondary comes back).  Finished jobs stay listed until
:data:`KEEP_FINISHED` newer ones have finished, so a client that detached
from a restore can still read how it ended.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

from .protocol import ControlError

KEEP_FINISHED = 32
#: Jobs that stop halfway would leave the volume half done: a restore or a
#: baseline only ever finishes (a restart resumes it).
NOT_CANCELLABLE = {
    "restore": "a restore cannot be cancelled: it completes in the background (and resumes "
    "after a restart); undo it afterwards by restoring the point before it",
    "baseline": "the baseline cannot be cancelled: no point exists until it completes",
}


@dataclass
class Tracked:
    id: str
    volume: str
    job: object  # appliance.engine.Job
    seen_done: float | None = None


def _plain(value: object) -> object:
    """JSON-safe copy of a job's result or stats (numbers, strings, lists, dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    return str(value)


class JobRegistry:
    """Ids for jobs, per manager.  Thread-safe."""

    def __init__(self, keep_finished: int = KEEP_FINISHED):
        self._lock = threading.Lock()
        self._by_id: dict[str, Tracked] = {}
        self._by_job: dict[int, Tracked] = {}
        self._counter = itertools.count(1)
        self._keep = keep_finished

    def track(self, volume: str, job) -> str:
        """The id of ``job`` (a new one the first time); idempotent."""
        with self._lock:
            t = self._by_job.get(id(job))
            if t is None or t.job is not job:
                t = Tracked(f"{job.kind}-{next(self._counter)}", volume, job)
                self._by_id[t.id] = t
                self._by_job[id(job)] = t
            self._prune()
            return t.id

    def _prune(self) -> None:
        now = time.monotonic()
        done = []
        for t in self._by_id.values():
            if t.job.done:
                if t.seen_done is None:
                    t.seen_done = now
                done.append(t)
        done.sort(key=lambda t: t.seen_done)
        for t in done[: max(0, len(done) - self._keep)]:
            del self._by_id[t.id]
            self._by_job.pop(id(t.job), None)

    def get(self, job_id: str) -> Tracked:
        with self._lock:
            t = self._by_id.get(job_id)
            if t is None:
                known = ", ".join(sorted(self._by_id)) or "none"
                raise ControlError("not_found", f"no job {job_id!r} (jobs: {known})")
            return t

    def all(self, volume: str | None = None) -> list[Tracked]:
        with self._lock:
            self._prune()
            return [t for t in self._by_id.values() if volume is None or t.volume == volume]

    def forget_volume(self, volume: str) -> None:
        with self._lock:
            for t in [t for t in self._by_id.values() if t.volume == volume]:
                del self._by_id[t.id]
                self._by_job.pop(id(t.job), None)


def job_state(job) -> str:
    from appliance.engine.jobs import JobCancelled

    if not job.done:
        return "cancelling" if job.cancelled else "running"
    if job.error is None:
        return "done"
    return "cancelled" if isinstance(job.error, JobCancelled) else "failed"


def describe(t: Tracked) -> dict:
    """The ``job`` op's result: progress as a fraction, bytes, rate, ETA."""
    job = t.job
    state = job_state(job)
    in_bytes = job.kind != "retention"  # retention counts steps, not bytes
    eta = job.eta if state in ("running", "cancelling") else None
    return {
        "id": t.id,
        "volume": t.volume,
        "kind": job.kind,
        "state": state,
        "progress": round(job.progress, 6),
        "done_bytes": job.done_units if in_bytes else None,
        "total_bytes": job.total if in_bytes else None,
        "rate_bytes_per_s": round(job.rate, 1) if in_bytes else None,
        "eta_seconds": None if eta is None else round(eta, 1),
        "elapsed_seconds": round((job.finished or time.monotonic()) - job.started, 3),
        "cancellable": job.kind not in NOT_CANCELLABLE,
        "stats": _plain(job.stats),
        "result": _plain(job.result) if state == "done" else None,
        "error": None if job.error is None or state == "cancelled" else str(job.error),
    }
