"""The guest-side CDB fuzzer (tests/vm/durability_sgio.py) on the host: it never
trips over its own CDBs.

Regression: the first 100,000-CDB soak stopped after ~26,000 CDBs with an
IndexError in the fuzzer itself: a random 1-5 byte CDB whose opcode is
READ(6) or WRITE(6) has no transfer-length byte, and ``cdb_range`` read it.
"""

import random

from tests.vm import durability_sgio as sg


def _fuzzer(seed: int) -> sg.Fuzzer:
    fz = sg.Fuzzer.__new__(sg.Fuzzer)  # no device: capacity() is not called
    fz.rng = random.Random(seed)
    fz.nblocks, fz.bs = 1 << 19, 512
    fz.protect = (0, 8192)
    return fz


def test_short_cdbs_of_ranged_opcodes_have_no_range():
    for op in (0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x89):
        for n in range(1, 6):
            cdb = bytes([op]) + bytes(n - 1)
            assert sg.cdb_range(cdb) is None
    assert sg.cdb_range(bytes([0x0A, 0, 0, 8, 4, 0])) == (8, 4)
    assert sg.cdb_range(bytes([0x08, 0, 0, 0, 0, 0])) == (0, 256)


def test_make_and_touched_never_raise_over_many_cdbs():
    for seed in range(10):
        fz = _fuzzer(seed)
        for _ in range(5000):
            cdb, direction, data, length = fz.make()
            assert 1 <= len(cdb) <= 16
            assert direction in (sg.TO_DEV, sg.FROM_DEV)
            assert len(data) <= 1 << 20 and length <= 1 << 20
            sg.touched(cdb, data, fz.nblocks)
