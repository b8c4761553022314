"""Property tests: random and mutated CDBs never break the dispatcher.

For every input: ``execute`` returns (never raises), the status is GOOD or
CHECK CONDITION (the in-memory backend is never busy), CHECK CONDITION
carries well-formed fixed sense with a known code and a field pointer inside
the CDB or parameter list, no input is an internal error, and a command that
is not GOOD changed no byte of the volume and not the write-cache state.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.scsi import DeviceIdentity, Limits, MemoryBackend, ScsiDevice, Status
from appliance.scsi.cdb import COMMANDS, lba_and_length

BS = 512
BLOCKS = 64
KNOWN_CODES = {
    (0x0E, 0x03),
    (0x1A, 0x00),
    (0x1D, 0x00),
    (0x20, 0x00),
    (0x21, 0x00),
    (0x24, 0x00),
    (0x26, 0x00),
    (0x27, 0x00),
    (0x39, 0x00),
}
VOLUME = bytes(i % 251 for i in range(BLOCKS * BS))  # initial content, not all zeros
# Commands whose data-out is TRANSFER LENGTH blocks.
BLOCK_DATA_OPS = {0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x2F, 0xAF, 0x8F, 0x8B}
UNSUPPORTED = [0x01, 0x04, 0x1D, 0x1E, 0x3B, 0x3C, 0x48, 0x4C, 0x5E, 0x7F, 0x83, 0x9C, 0xA0]

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_device(read_only: bool = False, wce: bool = True) -> tuple[ScsiDevice, MemoryBackend]:
    backend = MemoryBackend(BLOCKS * BS, BS)
    backend.data[:] = VOLUME
    limits = Limits(
        max_transfer_bytes=16 * 1024,
        max_unmap_bytes=8 * 1024,
        max_write_same_bytes=16 * 1024,
        max_unmap_descriptors=8,
        max_compare_and_write_blocks=4,
    )
    dev = ScsiDevice(
        backend, DeviceIdentity("fuzz"), limits=limits, read_only=read_only, write_cache=wce
    )
    return dev, backend


small_byte = st.one_of(st.just(0), st.integers(0, 3), st.integers(0, 255), st.just(BLOCKS))


# (LBA offset, LBA bytes, length offset, length bytes) by CDB length.
FIELDS = {6: (2, 2, 4, 1), 10: (2, 4, 7, 2), 12: (2, 4, 6, 4), 16: (2, 8, 10, 4)}


@st.composite
def plausible_cdb(draw) -> bytes:
    """A CDB of a supported command with only usage bits set, mostly small
    numbers in the LBA/length positions (meaningful for block commands,
    harmless for the others), then maybe a few random bit flips."""
    spec = draw(st.sampled_from(COMMANDS))
    cdb = bytearray(spec.cdb_len)
    cdb[0] = spec.opcode
    for i in range(1, spec.cdb_len - 1):
        cdb[i] = draw(small_byte) & spec.usage[i]
    if draw(st.integers(0, 9)):
        lba_at, lba_len, len_at, len_len = FIELDS[spec.cdb_len]
        lba = draw(st.integers(0, BLOCKS + 2))
        blocks = draw(
            st.one_of(
                st.integers(1, 16),
                st.integers(1, 16),
                st.integers(0, 40),
                st.sampled_from([0, 255, 0x10000]),
            )
        )
        cdb[lba_at : lba_at + lba_len] = lba.to_bytes(lba_len, "big")
        cdb[len_at : len_at + len_len] = (blocks % (1 << (8 * len_len))).to_bytes(len_len, "big")
        if spec.opcode == 0x89:
            cdb[10:14] = bytes([0, 0, 0, draw(st.integers(0, 6))])
        if spec.opcode in (0x1A, 0x5A):  # MODE SENSE: mostly pages that exist
            page = draw(st.sampled_from([0x08, 0x0A, 0x1C, 0x3F, draw(st.integers(0, 63))]))
            cdb[2] = draw(st.integers(0, 3)) << 6 | page
            cdb[3] = draw(st.sampled_from([0, 0, 0xFF, 1]))
        for i in range(1, spec.cdb_len - 1):
            cdb[i] &= spec.usage[i]
    if spec.service_action is not None:
        cdb[1] = spec.service_action
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        i = draw(st.integers(0, len(cdb) - 1))
        cdb[i] ^= 1 << draw(st.integers(0, 7))
    tail = draw(st.sampled_from([b"", bytes(4), b"\xff" * 6]))
    return bytes(cdb) + tail


random_cdb = st.one_of(
    st.binary(min_size=0, max_size=32),
    st.builds(
        lambda op, rest: bytes([op]) + rest,
        st.sampled_from(sorted({c.opcode for c in COMMANDS}) + UNSUPPORTED),
        st.binary(min_size=0, max_size=20),
    ),
)


@st.composite
def unmap_list(draw) -> bytes:
    n = draw(st.integers(0, 10))
    descriptors = b"".join(
        draw(st.integers(0, BLOCKS + 2)).to_bytes(8, "big")
        + draw(st.integers(0, 20)).to_bytes(4, "big")
        + bytes(4)
        for _ in range(n)
    )
    head = (6 + len(descriptors)).to_bytes(2, "big") + len(descriptors).to_bytes(2, "big")
    params = bytearray(head + bytes(4) + descriptors)
    if params and draw(st.booleans()):
        params[draw(st.integers(0, len(params) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(params)


@st.composite
def mode_list(draw, ten: bool | None = None) -> bytes:
    if ten is None:
        ten = draw(st.booleans())
    header = bytes(8) if ten else bytes(4)
    page = bytearray(bytes.fromhex("08 12") + bytes(18))
    page[2] = draw(st.sampled_from([0, 0x04]))
    params = bytearray(header + page)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        params[draw(st.integers(0, len(params) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(params)


@st.composite
def data_out(draw):
    kind = draw(st.integers(0, 5))
    size = draw(st.sampled_from([0, 1, 511, 512, 1024, 2048, 4096, 8192, 16384]))
    if kind == 0:
        data = draw(st.binary(max_size=64))
    elif kind == 1:
        data = bytes(size)
    elif kind == 2:
        data = bytes([draw(st.integers(0, 255))]) * size
    elif kind == 3:
        data = draw(unmap_list())
    elif kind == 4:
        data = draw(mode_list())
    else:
        data = VOLUME[:size]  # matches the volume: VERIFY / COMPARE AND WRITE succeed
    if data and draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        return [memoryview(data)[:cut], memoryview(data)[cut:]]
    return data


@st.composite
def fitting_command(draw) -> tuple[bytes, object]:
    """A plausible CDB with a data-out buffer of the size it asks for (half the
    time; otherwise any data-out), so that writes and parameter lists get past
    the length checks and exercise the backend."""
    cdb = bytearray(draw(plausible_cdb()))
    if not cdb or not draw(st.booleans()):
        return bytes(cdb), draw(data_out())
    op = cdb[0]
    if op == 0x42 and len(cdb) >= 10:
        data = draw(unmap_list())
        cdb[7:9] = len(data).to_bytes(2, "big")
    elif op in (0x15, 0x55) and len(cdb) >= (10 if op == 0x55 else 6):
        data = draw(mode_list(ten=op == 0x55))
        cdb[1] = draw(st.sampled_from([0x10, 0x10, 0x10, cdb[1]]))  # PF=1, SP=0
        if op == 0x15:
            cdb[4] = len(data)
        else:
            cdb[7:9] = len(data).to_bytes(2, "big")
    elif op == 0x89 and len(cdb) >= 16:
        data = VOLUME[: 2 * cdb[13] * BS]
    elif op in (0x41, 0x93):
        data = draw(st.sampled_from([bytes(BS), b"\x07" * BS, VOLUME[:BS]]))
    elif op in BLOCK_DATA_OPS and len(cdb) >= {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[op >> 5]:
        _, blocks, _ = lba_and_length(bytes(cdb))
        data = VOLUME[: min(blocks, BLOCKS) * BS]
    else:
        data = draw(data_out())
    return bytes(cdb), data


def data_len(data) -> int:
    return sum(len(p) for p in data) if isinstance(data, list) else len(data)


def check(dev: ScsiDevice, backend: MemoryBackend, cdb: bytes, data) -> None:
    before, wce = backend.snapshot(), dev.write_cache
    res = dev.execute(cdb, data)
    assert res.status in (Status.GOOD, Status.CHECK_CONDITION), res
    if res.status == Status.GOOD:
        assert res.sense == b""
        assert res.read_len <= 1 << 16
        return
    s = res.sense
    assert res.read_len == 0
    assert len(s) == 18 and s[0] & 0x7F == 0x70 and s[7] == 10
    key, code = s[2] & 0x0F, (s[12], s[13])
    assert key in (0x5, 0xE, 0x7), s.hex()  # never HARDWARE ERROR: no internal bugs
    assert code in KNOWN_CODES, s.hex()
    if key == 0xE:
        assert code == (0x1D, 0x00) and s[0] & 0x80
    if s[15] & 0x80:
        pointer = int.from_bytes(s[16:18], "big")
        assert pointer < (len(cdb) if s[15] & 0x40 else data_len(data)), s.hex()
    assert backend.snapshot() == before, f"refused command changed data: {s.hex()}"
    assert dev.write_cache == wce


@SETTINGS
@given(command=fitting_command(), wce=st.booleans())
def test_plausible_cdbs(command, wce):
    dev, backend = make_device(wce=wce)
    check(dev, backend, *command)


@SETTINGS
@given(cdb=random_cdb, data=data_out())
def test_random_cdbs(cdb, data):
    dev, backend = make_device()
    check(dev, backend, cdb, data)


@SETTINGS
@given(command=fitting_command())
def test_read_only_device(command):
    dev, backend = make_device(read_only=True)
    before = backend.snapshot()
    check(dev, backend, *command)
    assert backend.snapshot() == before
    assert all(op[0] in ("read", "flush") for op in backend.ops)


@settings(max_examples=60, deadline=None)
@given(st.lists(fitting_command(), min_size=1, max_size=12))
def test_command_sequences(commands):
    dev, backend = make_device()
    for cdb, data in commands:
        check(dev, backend, cdb, data)
