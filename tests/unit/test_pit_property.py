"""Any point in time, single-write granularity, against an in-memory model."""

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import make_volume, pattern, reopen

BS = 512
SIZE = 4 << 20
BLOCKS = SIZE // BS

write_op = st.tuples(
    st.integers(0, BLOCKS - 1),  # first block
    st.integers(1, 2048),  # blocks: 512 B .. 1 MiB
    st.booleans(),  # zero instead of data (UNMAP-like)
)


def apply(model: bytearray, op, tag):
    block, nblocks, zero = op
    nblocks = min(nblocks, BLOCKS - block)
    off, ln = block * BS, nblocks * BS
    data = bytes(ln) if zero else pattern(tag, ln)
    model[off : off + ln] = data
    return off, ln, zero, data


@settings(
    max_examples=int(os.environ.get("CDP_PROP_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(write_op, min_size=1, max_size=70),
    map_records=st.sampled_from([1, 3, 8]),
    samples=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
    bookmark_every=st.integers(0, 9),
)
def test_image_at_seq_equals_model(ops, map_records, samples, bookmark_every):
    tmp = Path(tempfile.mkdtemp(prefix="cdp-prop-"))
    try:
        vol = make_volume(tmp, size=SIZE, map_records=map_records)
        model = bytearray(SIZE)
        history = [(vol.last_seq, bytes(model))]
        marks = {}
        for i, op in enumerate(ops):
            off, ln, zero, data = apply(model, op, i)
            seq = vol.write_zeros(off, ln) if zero else vol.write(off, data)
            history.append((seq, bytes(model)))
            if bookmark_every and i % bookmark_every == 0:
                p = vol.bookmark(f"b{i}")
                marks[p.name] = bytes(model)
        picks = sorted({history[k % len(history)] for k in samples} | {history[-1]})
        for seq, expect in picks:
            assert vol.image(seq=seq).read(0, SIZE) == expect, f"seq {seq}"
        assert vol.read(0, SIZE) == bytes(model)
        vol.close()
        vol = reopen(tmp, map_records=map_records)
        for seq, expect in picks:
            assert vol.image(seq=seq).read(0, SIZE) == expect, f"seq {seq} after reopen"
        for name, expect in marks.items():
            assert vol.image(bookmark=name).read(0, SIZE) == expect
        # Partial reads resolve the same bytes as a whole read.
        seq, expect = picks[0]
        img = vol.image(seq=seq)
        for k in samples:
            off = (k * 37 % BLOCKS) * BS
            ln = min(SIZE - off, (k % 300 + 1) * BS)
            assert img.read(off, ln) == expect[off : off + ln]
        vol.close()
    finally:
        shutil.rmtree(tmp)
