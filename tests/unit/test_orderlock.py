"""The volume's order lock (appliance/engine/orderlock.py): ranges, exclusivity, fairness."""

import threading
import time

from appliance.engine.orderlock import OrderLock

WAIT = 0.2


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, event set when fn got through)."""
    got = threading.Event()

    def run():
        fn()
        got.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


def test_disjoint_ranges_are_held_together():
    lock = OrderLock()
    with lock.write_range(0, 4096):
        t, got = in_thread(lambda: lock.write_range(4096, 8192).__enter__())
        assert got.wait(5), "a disjoint range must not wait"
        assert lock.held_ranges() == [(0, 4096), (4096, 8192)]


def test_an_overlapping_range_waits_for_the_first():
    lock = OrderLock()
    order = []
    held = lock.write_range(0, 4096)
    held.__enter__()

    def second():
        with lock.write_range(2048, 6144):
            order.append("second")

    t, got = in_thread(second)
    assert not got.wait(WAIT)
    order.append("first")
    held.__exit__(None, None, None)
    assert got.wait(5)
    assert order == ["first", "second"] and lock.held_ranges() == []


def test_exclusive_waits_for_ranges_and_keeps_new_ones_out():
    lock = OrderLock()
    held = lock.write_range(0, 512)
    held.__enter__()
    leave = threading.Event()

    def exclusive():
        with lock:
            leave.wait(10)

    tx, x_done = in_thread(exclusive)
    time.sleep(WAIT)
    assert lock._owner is None, "exclusive must wait for the held range"
    # A waiting exclusive holder blocks new (even disjoint) ranges: no starvation.
    tr, r_got = in_thread(lambda: lock.write_range(1 << 20, (1 << 20) + 512).__enter__())
    assert not r_got.wait(WAIT)
    held.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while lock._owner != tx.ident and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock._owner == tx.ident
    assert not r_got.wait(WAIT), "the exclusive holder still holds it"
    leave.set()
    assert x_done.wait(5) and r_got.wait(5)


def test_exclusive_is_reentrant_and_a_write_inside_it_passes_through():
    lock = OrderLock()
    with lock:
        with lock:
            with lock.write_range(0, 512):  # COMPARE AND WRITE: exclusive, then write
                assert lock.held_ranges() == []
        t, got = in_thread(lambda: lock.write_range(0, 512).__enter__())
        assert not got.wait(WAIT)
    assert got.wait(5)


def test_exclusive_if_turns_a_write_exclusive():
    lock = OrderLock()
    restoring = [True]
    with lock.write_range(0, 512, lambda: restoring[0]):
        assert lock._owner == threading.get_ident()
        t, got = in_thread(lambda: lock.write_range(1 << 20, (1 << 20) + 512).__enter__())
        assert not got.wait(WAIT), "during a restore writes do not overlap"
    assert got.wait(5)


def test_release_by_another_thread_is_refused():
    lock = OrderLock()
    lock.__enter__()
    errors = []

    def other():
        try:
            lock.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "does not hold it" in errors[0]
    assert lock._owner == threading.get_ident()
    lock.__exit__(None, None, None)
    assert lock._owner is None


def test_many_writers_never_overlap():
    """8 threads, random small ranges: at no moment are two overlapping ranges held."""
    import random

    lock = OrderLock()
    live: list[tuple[int, int]] = []
    guard = threading.Lock()
    errors = []

    def worker(seed):
        rnd = random.Random(seed)
        for _ in range(300):
            a = rnd.randrange(0, 64) * 512
            b = a + rnd.randrange(1, 8) * 512
            if rnd.random() < 0.05:
                with lock:
                    with guard:
                        if live:
                            errors.append(("exclusive with", list(live)))
                continue
            with lock.write_range(a, b):
                with guard:
                    if any(s < b and a < e for s, e in live):
                        errors.append(((a, b), list(live)))
                    live.append((a, b))
                time.sleep(0)
                with guard:
                    live.remove((a, b))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and lock.held_ranges() == []


def test_write_ranges_holds_them_all_at_once():
    lock = OrderLock()
    with lock.write_ranges([(8192, 12288), (0, 4096), (2048, 6144), (6144, 7168)]):
        # Overlapping and touching ranges of the run are held merged.
        assert lock.held_ranges() == [(0, 7168), (8192, 12288)]
        t, got = in_thread(lambda: lock.write_range(7168, 8192).__enter__())
        assert got.wait(5), "the gap between the run's ranges is free"
        _, blocked = in_thread(lambda: lock.write_range(12000, 13000).__enter__())
        assert not blocked.wait(WAIT)
    assert blocked.wait(5)


def test_write_ranges_waits_until_none_overlaps():
    lock = OrderLock()
    first = lock.write_range(4096, 8192)
    first.__enter__()
    order = []

    def run():
        with lock.write_ranges([(0, 512), (6144, 6656)]):
            order.append("run")

    t, got = in_thread(run)
    assert not got.wait(WAIT)
    assert lock.held_ranges() == [(4096, 8192)]  # all or none: not even (0, 512)
    order.append("first")
    first.__exit__(None, None, None)
    assert got.wait(5)
    assert order == ["first", "run"] and lock.held_ranges() == []


def test_write_ranges_exclusive_if_and_inside_exclusive():
    lock = OrderLock()
    with lock.write_ranges([(0, 512), (4096, 4608)], lambda: True):
        assert lock._owner is not None and lock.held_ranges() == []
    with lock:  # a thread holding it exclusively passes through
        with lock.write_ranges([(0, 512)]):
            pass
    assert lock._owner is None and lock.held_ranges() == []
