"""The volume's order lock: host writes to disjoint ranges overlap, everything else is exclusive.

What it guarantees (the write path's W3 in volume.py): for any two host
writes that *overlap*, one finishes both its primary write and its journal
append before the other starts either, so the journal orders them as the
primary saw them.  Writes to disjoint ranges need no order between them and
run side by side (the handler has several workers; ``pwrite`` releases the
GIL).

Everything else that used to hold the one lock -- bookmarks, COMPARE AND
WRITE, restore's copier and restore-before-write, a journal restart -- takes
it **exclusively**: it waits until no write range is held and keeps new ones
out.  The copiers that journal the primary's bytes (the baseline, the
re-baseline's and resync's fix-up and recheck) hold the write range of what
they copy instead, so host writes elsewhere go on.  ``with lock:`` is the
exclusive form, re-entrant in its own thread, so these call sites read as
they did with an ``RLock``.  A thread that holds it exclusively and then
writes (COMPARE AND WRITE) passes through :meth:`OrderLock.write_range`.

A thread that writes a run of ranges in order (the handler's ring thread,
one run of plain writes per ring poll: ``ProtectedVolume.write_many``) takes
them all at once with :meth:`OrderLock.write_ranges`: granted when none of
them overlaps a range held by anybody, so the run behaves, towards every
other writer, as that many ``write_range`` holds in a row would (ranges of
the run may overlap each other: the one thread writes them in order).

Fairness: a waiting exclusive holder stops new ranges from being granted,
so a bookmark is never starved by a stream of writes.  A thread must not ask
for the exclusive lock while it holds a range (it would wait for itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class OrderLock:
    def __init__(self) -> None:
        # The lock itself is taken on the hot paths (a C call, where the
        # Condition's ``with`` is two interpreted calls); waits use the Condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._owner: int | None = None  # thread holding it exclusively
        self._depth = 0
        self._x_waiting = 0
        self._ranges: dict[int, tuple[int, int]] = {}
        self._next = 0
        self._waiters = 0  # threads in _cond.wait(): a release wakes only if any

    def _wait(self) -> None:
        self._waiters += 1
        try:
            self._cond.wait()
        finally:
            self._waiters -= 1

    # ------------------------------------------------------------ exclusive

    def __enter__(self) -> OrderLock:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return self
            self._wait_exclusive(me)
        return self

    def _wait_exclusive(self, me: int) -> None:
        """Condition held: wait for no owner and no range, then own it."""
        self._x_waiting += 1
        try:
            while self._owner is not None or self._ranges:
                self._wait()
        finally:
            self._x_waiting -= 1
        self._owner, self._depth = me, 1

    def __exit__(self, *exc) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("order lock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._waiters:
                    self._cond.notify_all()

    # ------------------------------------------------------------ write ranges

    def write_range(
        self, start: int, end: int, exclusive_if: Callable[[], bool] | None = None
    ) -> _HeldMany:
        """Hold ``[start, end)`` against overlapping writes and all exclusive
        holders.  ``exclusive_if`` is asked when the range would be granted
        (no exclusive holder then, so what it reads cannot change until this
        is released); if true the lock is taken exclusively instead."""
        return _HeldMany(self, [(start, end)], exclusive_if)

    def write_ranges(
        self, ranges: list[tuple[int, int]], exclusive_if: Callable[[], bool] | None = None
    ) -> _HeldMany:
        """Hold every ``[start, end)`` of ``ranges`` at once (all or none, so no
        deadlock between two such holders); otherwise as :meth:`write_range`."""
        return _HeldMany(self, ranges, exclusive_if)

    def _grant_many(self, ranges: list[tuple[int, int]], exclusive_if) -> list[int] | None:
        me = threading.get_ident()
        merged: list[list[int]] = []  # sorted, coalesced: fewer to compare and to hold
        for s, e in sorted(ranges):
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        with self._lock:
            if self._owner == me:
                self._depth += 1
                return None
            while (
                self._owner is not None
                or self._x_waiting
                or any(s < e2 and s2 < e for s, e in self._ranges.values() for s2, e2 in merged)
            ):
                self._wait()
            if exclusive_if is not None and exclusive_if():
                self._wait_exclusive(me)
                return None
            tokens = []
            for s2, e2 in merged:
                tokens.append(self._next)
                self._ranges[self._next] = (s2, e2)
                self._next += 1
            return tokens

    def _release_many(self, tokens: list[int] | None) -> None:
        if tokens is None:
            self.__exit__(None, None, None)
            return
        with self._lock:
            for token in tokens:
                del self._ranges[token]
            if self._waiters:
                self._cond.notify_all()

    def held_ranges(self) -> list[tuple[int, int]]:
        """The write ranges held now (tests, diagnostics)."""
        with self._cond:
            return sorted(self._ranges.values())


class _HeldMany:
    __slots__ = ("_lock", "_args", "_tokens")

    def __init__(self, lock: OrderLock, ranges, exclusive_if) -> None:
        self._lock, self._args, self._tokens = lock, (ranges, exclusive_if), None

    def __enter__(self) -> None:
        self._tokens = self._lock._grant_many(*self._args)

    def __exit__(self, *exc) -> None:
        self._lock._release_many(self._tokens)
