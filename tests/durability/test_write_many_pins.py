"""``write_many`` across a journal restart keeps the DRL pins right.

The run's version of ``bugs.unpinned_write_across_journal_restart`` (BUG O):
a run that marked its DRL regions without pinning, because the volume was out
of sync, and takes the order lock after the journal came back appends records
that unpin when durable, so it must pin under the lock first.  Otherwise the
durable records of the run remove the pin of another write to the same
region whose record is not durable yet, and a DRL reset could clear a region
where primary and journal differ.
"""

from __future__ import annotations

import threading

from appliance.engine import faults

from . import bugs
from .faultfs import FaultFS
from .helpers import create, scratch_dir

REGION = 64 << 10


def _pins(vol) -> dict[int, int]:
    with vol._drl._lock:
        return dict(vol._drl._pins)


def test_write_many_across_journal_restart_keeps_pins(root):
    with bugs._no_timer_sync(), scratch_dir(root, "wm-pin") as d:
        fs = FaultFS()
        vol = create(d, bugs.SIZE, io=fs, region_size=REGION)
        held, go = threading.Event(), threading.Event()
        later, later_go = threading.Event(), threading.Event()
        try:
            bugs._fail_a_group_commit(vol, fs)
            # The run: two items in region 1, one in region 2; the single write
            # shares region 1 with it.
            run = [(REGION, b"a" * 4096), (2 * REGION, b"c" * 4096), (REGION + 8192, b"d" * 512)]
            single = REGION + 4096
            assert vol._drl.regions(single, 4096) == vol._drl.regions(REGION, 4096)

            def hold(offset, **_):
                if offset == REGION and not held.is_set():
                    held.set()
                    go.wait(10)
                elif offset == single and not later.is_set():
                    later.set()
                    later_go.wait(10)

            out: dict[str, object] = {}

            def run_writer():
                out["run"] = vol.write_many(run)

            def single_writer():
                out["single"] = vol.write(single, b"b" * 4096)

            with faults.inject("write.after_drl", hold):
                t1 = threading.Thread(target=run_writer)
                t1.start()  # out of sync: marks without a pin, then waits
                assert held.wait(5), "the run never reached its DRL marks"
                assert not {1, 2} & _pins(vol).keys()  # out of sync: the run pinned nothing
                assert vol._restart_journal(), "the journal did not come back"
                t2 = threading.Thread(target=single_writer)
                t2.start()  # in sync again: pins, then waits before its record
                assert later.wait(5), "the single write never reached its DRL mark"
                assert _pins(vol) == {1: 1}
                go.set()
                t1.join(10)
                seqs, error = out["run"]
                assert error is None and None not in seqs, "the run was not journaled"
                vol._journal.sync(seqs[-1])  # durable: the run's unpins run
                pins_after_run = _pins(vol)
                later_go.set()
                t2.join(10)
            assert pins_after_run == {1: 1}, (
                "a write whose record is not journaled yet lost its DRL pin to the "
                f"unpin of a run that never pinned: {pins_after_run}"
            )
            assert out["single"] is not None
            vol.flush()
            assert _pins(vol) == {}  # nothing leaked either
            assert vol.read(REGION, 4096) == b"a" * 4096
            assert vol.read(single, 4096) == b"b" * 4096
            assert vol.read(REGION + 8192, 512) == b"d" * 512
            assert vol.read(2 * REGION, 4096) == b"c" * 4096
        finally:
            for e in (go, later_go):
                e.set()
            vol.close()


def test_write_many_out_of_sync_pins_nothing(root):
    """No restart: the run goes to the primary alone, pinning nothing, and
    the regions it wrote stay dirty for the resync."""
    with bugs._no_timer_sync(), scratch_dir(root, "wm-oos") as d:
        fs = FaultFS()
        vol = create(d, bugs.SIZE, io=fs, region_size=REGION)
        try:
            bugs._fail_a_group_commit(vol, fs)
            seqs, error = vol.write_many([(REGION, b"a" * 4096), (3 * REGION, b"c" * 512)])
            assert error is None and seqs == [None, None]  # as write() returns then
            assert not {1, 3} & _pins(vol).keys()
            assert vol._drl.is_dirty(1) and vol._drl.is_dirty(3)
            assert vol._restart_journal()
            vol.flush()
            assert _pins(vol) == {}
        finally:
            vol.close()
