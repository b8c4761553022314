"""Background jobs (baseline now; re-baseline, resync, restore later)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("cdp.jobs")


class JobCancelled(Exception):
    pass


class Job:
    """A background job: ``wait()``, ``done``, ``progress`` (0.0-1.0), ``result``.

    The work function gets the job and calls :meth:`advance` as it goes; it
    checks :attr:`cancelled` between steps.  An exception ends the job and is
    kept in :attr:`error` (``wait`` re-raises it).
    """

    def __init__(self, kind: str, total: int, work: Callable[[Job], object]):
        self.kind = kind
        self.total = max(total, 1)
        self.done_units = 0
        self.started = time.monotonic()
        self.finished: float | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.stats: dict = {}  # live figures the work publishes (e.g. bytes_copied)
        self._work = work
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cdp-{kind}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._work(self)
        except BaseException as exc:  # kept for wait()
            self.error = exc
            if not isinstance(exc, JobCancelled):
                log.error("job.failed", kind=self.kind, error=repr(exc))
        finally:
            self.finished = time.monotonic()
            self._event.set()

    def advance(self, units: int) -> None:
        self.done_units = min(self.total, self.done_units + units)

    @property
    def done(self) -> bool:
        return self._event.is_set()

    @property
    def progress(self) -> float:
        return 1.0 if self.done and self.error is None else self.done_units / self.total

    @property
    def rate(self) -> float:
        """Units (bytes) per second so far."""
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.done_units / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        r = self.rate
        return None if r <= 0 else (self.total - self.done_units) / r

    def cancel(self) -> None:
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> object:
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self.kind} job still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result
