"""The READ/WRITE fast path (``block_io.FAST_PATH``) changes cost, not outcome.

Every CDB is run twice, on two identical devices: once through
``ScsiDevice.execute`` as shipped, once with the fast path switched off.
Status, sense, data-in and the volume afterwards must be the same, for valid
commands, every reserved bit, lengths at and past the limits, LBAs at and past
the end, short and split data-out, FUA with and without the write cache, and
read-only LUNs.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.scsi import DeviceIdentity, Limits, MemoryBackend, ScsiDevice, Status
from appliance.scsi import device as device_mod
from appliance.scsi.errors import MediumError

BS = 512
BLOCKS = 64
MAX_BLOCKS = 16
VOLUME = bytes(i % 251 for i in range(BLOCKS * BS))
OPS = (0x28, 0x2A, 0x88, 0x8A)


class FlakyMemory(MemoryBackend):
    """Fails reads or writes at one offset with a medium error."""

    bad_offset = -1

    def read(self, offset, length):
        if offset == self.bad_offset:
            raise MediumError("bad block", offset=offset)
        return super().read(offset, length)

    def write(self, offset, data, *, fua=False):
        if offset == self.bad_offset:
            raise MediumError("bad block", offset=offset)
        return super().write(offset, data, fua=fua)


def make_dev(read_only: bool, wce: bool, bad: int) -> ScsiDevice:
    backend = FlakyMemory(BLOCKS * BS, BS)
    backend.write(0, VOLUME)
    backend.bad_offset = bad
    return ScsiDevice(
        backend,
        DeviceIdentity("vol-fast"),
        limits=Limits(max_transfer_bytes=MAX_BLOCKS * BS),
        read_only=read_only,
        write_cache=wce,
    )


def cdb_for(op: int, lba: int, blocks: int, flags: int, group: int, control: int) -> bytes:
    if op in (0x28, 0x2A):
        lba4, len2 = (lba & 0xFFFFFFFF).to_bytes(4, "big"), (blocks & 0xFFFF).to_bytes(2, "big")
        return bytes([op, flags, *lba4, group, *len2, control])
    return bytes([op, flags, *lba.to_bytes(8, "big"), *blocks.to_bytes(4, "big"), group, control])


def run_both(cdb, data, read_only, wce, bad, monkeypatch):
    fast_dev = make_dev(read_only, wce, bad)
    slow_dev = make_dev(read_only, wce, bad)
    fast = fast_dev.execute(cdb, data)
    with monkeypatch.context() as m:
        m.setattr(device_mod, "_FAST_PATH", {})
        slow = slow_dev.execute(cdb, data)
    assert (fast.status, fast.sense) == (slow.status, slow.sense), cdb.hex()
    assert bytes(fast.data) == bytes(slow.data)
    whole = BLOCKS * BS  # read past the injected fault
    after = [MemoryBackend.read(d.backend, 0, whole) for d in (fast_dev, slow_dev)]
    assert after[0] == after[1]
    return fast


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    op=st.sampled_from(OPS),
    lba=st.one_of(st.integers(0, BLOCKS + 2), st.sampled_from([2**32 - 1, 2**63, 2**64 - 1])),
    blocks=st.one_of(st.integers(0, MAX_BLOCKS + 2), st.sampled_from([0xFFFF, 2**32 - 1])),
    flags=st.one_of(st.just(0), st.just(0x08), st.integers(0, 255)),
    group=st.one_of(st.just(0), st.integers(0, 255)),
    control=st.one_of(st.just(0), st.integers(0, 255)),
    split=st.integers(0, 3),
    short=st.integers(0, 2),
    read_only=st.booleans(),
    wce=st.booleans(),
    bad=st.sampled_from([-1, 0, 4 * BS]),
    truncate=st.integers(0, 2),
)
def test_fast_path_matches_the_generic_path(
    monkeypatch, op, lba, blocks, flags, group, control, split, short, read_only, wce, bad,
    truncate,
):  # fmt: skip
    cdb = cdb_for(op, min(lba, 2**64 - 1), blocks, flags, group, control)
    if truncate:
        cdb = cdb[: len(cdb) - truncate * 3]
    data = None
    if op in (0x2A, 0x8A) and blocks <= MAX_BLOCKS + 2:
        payload = bytes((i * 7 + 3) % 256 for i in range(max(0, blocks * BS - short * 100)))
        if split and payload:
            cut = len(payload) * split // 4
            data = [memoryview(payload)[:cut], memoryview(payload)[cut:]]
        else:
            data = payload
    run_both(cdb, data, read_only, wce, bad, monkeypatch)


@pytest.mark.parametrize("op", OPS)
def test_fast_path_serves_the_plain_commands(monkeypatch, op):
    data = bytes(range(256)) * 4 if op in (0x2A, 0x8A) else None
    r = run_both(cdb_for(op, 8, 2, 0, 0, 0), data, False, True, -1, monkeypatch)
    assert r.status == Status.GOOD
    answers = []
    real = device_mod._FAST_PATH[op]

    def spy(dev, cdb, data_out):
        answers.append(real(dev, cdb, data_out))
        return answers[-1]

    monkeypatch.setitem(device_mod._FAST_PATH, op, spy)
    assert make_dev(False, True, -1).execute(cdb_for(op, 8, 2, 0, 0, 0), data).ok
    assert len(answers) == 1 and answers[0] is not None  # answered, not handed back


def test_wide_item_data_out_is_counted_in_bytes(monkeypatch):
    """A data-out view of 4-byte items holds len()*4 bytes: 2048 bytes as 512
    items is 4 blocks, and a 1-block WRITE takes one block of it, as DataOut does."""
    wide = memoryview(bytes(range(256)) * 8).cast("I")
    r = run_both(cdb_for(0x2A, 0, 1, 0, 0, 0), wide, False, True, -1, monkeypatch)
    assert r.status == Status.GOOD
    r = run_both(cdb_for(0x2A, 4, 1, 0, 0, 0), [wide], False, True, -1, monkeypatch)
    assert r.status == Status.GOOD
