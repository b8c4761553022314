"""Random command mixes, random completion orders, against the simulated kernel.

Invariants: every queued command reaches the handler once with its own CDB and
Data-Out bytes, is completed exactly once with its own status, sense and
Data-In bytes, the kernel side never marks the ring broken, all ring space is
reclaimed at the end, and (without OOOC) completions reach the kernel in ring
order.  Unallocated data pages are PROT_NONE, so any read outside the live
commands' buffers would crash the run.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.tcmu import Command, CommandRing, TmrNotification
from appliance.tcmu import layout as L

from .sim_kernel import ALL_CAPS, PAGE, SimKernel, cdb_tag, pattern, tagged_cdb

KINDS = ["none", "write", "read", "bidi"]
ACTIONS = ["queue", "queue", "queue", "tmr", "poll", "complete", "flush"]


def expected_response(seq: int, kind: str, data_in: int):
    """What the handler answers for command ``seq``: (status, sense, read_len)."""
    if seq % 5 == 0:
        return L.STATUS_CHECK_CONDITION, L.fixed_sense(seq % 16, seq % 251, 0), None
    if kind == "read" and seq % 3 == 0:
        return L.STATUS_GOOD, b"", max(1, data_in - seq % 1000)
    return L.STATUS_GOOD, b"", None


class Handler:
    """The test's stand-in for the SCSI layer."""

    def __init__(self, ring: CommandRing, queued: dict):
        self.ring = ring
        self.queued = queued  # seq -> (SimCmd, kind)
        self.held: dict[int, Command] = {}  # seq -> command received, not completed
        self.received: list[int] = []
        self.tmrs: list[TmrNotification] = []

    def poll(self) -> None:
        for item in self.ring.poll():
            if isinstance(item, TmrNotification):
                self.tmrs.append(item)
                continue
            seq = cdb_tag(item.cdb)
            sim_cmd, kind = self.queued[seq]
            assert item.cdb == sim_cmd.cdb and item.cmd_id == sim_cmd.cmd_id
            assert seq not in self.received
            self.received.append(seq)
            if kind in ("write", "bidi"):
                assert item.data_length == len(sim_cmd.data_out)
                assert b"".join(item.iovecs) == sim_cmd.data_out
            if kind == "read":
                assert item.data_length == sim_cmd.data_in_len and not item.bidi_iovecs
            if kind == "bidi":
                assert item.bidi_length == sim_cmd.data_in_len
            self.held[seq] = item

    def complete(self, seq: int) -> None:
        cmd = self.held.pop(seq)
        sim_cmd, kind = self.queued[seq]
        views = cmd.bidi_iovecs if kind == "bidi" else cmd.iovecs
        if kind in ("read", "bidi"):
            fill = pattern(seq + 1_000_000, sum(len(v) for v in views))
            pos = 0
            for view in views:
                view[:] = fill[pos : pos + len(view)]
                pos += len(view)
        status, sense, read_len = expected_response(seq, kind, sim_cmd.data_in_len)
        assert self.ring.complete(cmd, status, sense, read_len)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    flags=st.sampled_from([ALL_CAPS, ALL_CAPS & ~L.CAP_OOOC, L.CAP_OOOC, 0]),
    ring_pages=st.sampled_from([1, 2]),
)
def test_random_mix_completes_everything_exactly_once(data, flags, ring_pages):
    sim = SimKernel(flags=flags, mb_cmdr_size=ring_pages * PAGE, data_blocks=12)
    ring = CommandRing(sim.mm, sim.irq)
    queued: dict[int, tuple] = {}
    handler = Handler(ring, queued)
    try:
        for _ in range(data.draw(st.integers(1, 80), label="steps")):
            action = data.draw(st.sampled_from(ACTIONS), label="action")
            if action == "queue":
                kind = data.draw(st.sampled_from(KINDS), label="kind")
                cdb_len = data.draw(st.sampled_from([6, 10, 12, 16, 32]), label="cdb")
                size = data.draw(st.integers(1, 3 * PAGE), label="size")
                tag = sim._seq + 1  # the seq the simulator will assign
                kw = {
                    "none": {},
                    "write": {"data_out": pattern(tag, size)},
                    "read": {"data_in": size},
                    "bidi": {
                        "data_out": pattern(tag, size // 2 + 1),
                        "data_in": size,
                        "bidi": True,
                    },
                }[kind]
                sim_cmd = sim.queue_cmd(tagged_cdb(tag, cdb_len), **kw)
                if sim_cmd is not None:
                    assert sim_cmd.seq == tag
                    queued[tag] = (sim_cmd, kind)
            elif action == "tmr":
                ids = sorted(sim.commands)[: data.draw(st.integers(0, 6), label="tmr ids")]
                sim.queue_tmr(data.draw(st.sampled_from([1, 2, 5, 128])), ids)
            elif action == "poll":
                handler.poll()
            elif action == "complete" and handler.held:
                order = data.draw(st.permutations(sorted(handler.held)), label="order")
                for seq in order[: data.draw(st.integers(1, len(order)), label="how many")]:
                    handler.complete(seq)
            elif action == "flush":
                ring.flush()
        for _ in range(200):  # drain
            handler.poll()
            for seq in list(handler.held):
                handler.complete(seq)
            ring.flush()
            if not sim.commands and sim.idle():
                break

        assert not sim.broken
        assert sim.idle() and not sim.commands and not ring.outstanding()
        assert sorted(handler.received) == sorted(queued)
        done = [c.seq for c in sim.completions]
        assert sorted(done) == sorted(queued)  # exactly once each
        if not flags & L.CAP_OOOC:
            assert done == sorted(done)  # ring order without OOOC
        for c in sim.completions:
            check_completion(c, *queued[c.seq], read_len_cap=bool(flags & L.CAP_READ_LEN))
        assert all(isinstance(t.cmd_ids, tuple) for t in handler.tmrs)
    finally:
        ring.close()
        sim.close()


def check_completion(done, sim_cmd, kind, *, read_len_cap: bool) -> None:
    data_in = sim_cmd.data_in_len
    status, sense, read_len = expected_response(done.seq, kind, data_in)
    assert done.status == status and done.cmd_id == sim_cmd.cmd_id
    if status == L.STATUS_CHECK_CONDITION:
        assert done.sense == sense + bytes(L.SENSE_BUFFER_SIZE - len(sense))
        assert done.data is None
        return
    if kind not in ("read", "bidi"):
        assert done.data is None
        return
    fill = pattern(done.seq + 1_000_000, data_in)
    valid = read_len_cap and read_len is not None and kind == "read"
    assert done.read_len_valid == valid
    assert done.data == (fill[:read_len] if valid else fill)
