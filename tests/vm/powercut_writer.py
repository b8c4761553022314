"""The initiator side of the power-cut test: tagged writes and an acknowledgement log.

Run as a child process by ``test_powercut.py`` (it is killed when the VM loses
power, so nothing it holds can hang the test)::

    python -m tests.vm.powercut_writer PORTAL IQN ITERATION SEED LOG

It writes 4 KiB chunks at random chunk numbers of the LUN through libiscsi,
one at a time: half with FUA, the others plain, with a SYNCHRONIZE CACHE
after every eighth write.  Each chunk carries a header (magic, iteration,
write number, chunk number) and bytes derived from them, so the checker can
rebuild any version from the log alone.  The log gets one line per event,
flushed at once::

    I <wseq> <chunk> <fua>    issued (before the command is sent)
    A <wseq>                  GOOD status for that write
    S <wseq>                  GOOD status for a SYNCHRONIZE CACHE sent after write <wseq>

Durable, per the cache model (WCE=1, DPOFUA; docs/DURABILITY.md): a write
acknowledged with FUA, and every write acknowledged before an acknowledged
SYNCHRONIZE CACHE.
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys

CHUNK = 4096
BLOCK = 512
MAGIC = b"PWRCUT01"
HEADER = struct.Struct("<8sIIQ")  # magic, iteration, chunk, wseq


def chunk_bytes(iteration: int, chunk: int, wseq: int) -> bytes:
    """The exact 4 KiB the writer writes for (iteration, chunk, wseq)."""
    head = HEADER.pack(MAGIC, iteration, chunk, wseq)
    seed = hashlib.sha256(head).digest()
    body = (seed * (CHUNK // len(seed) + 1))[: CHUNK - len(head)]
    return head + body


def parse_header(data: bytes) -> tuple[int, int, int] | None:
    """``(iteration, chunk, wseq)`` of a chunk the writer wrote, else None."""
    magic, iteration, chunk, wseq = HEADER.unpack_from(data)
    return (iteration, chunk, wseq) if magic == MAGIC else None


def run(portal: str, iqn: str, iteration: int, seed: int, log_path: str, chunks: int) -> None:
    from tests.vm.handler_iscsi import IscsiLun

    rng = random.Random(seed)
    with open(log_path, "a", buffering=1) as log, IscsiLun(portal, iqn, 0, BLOCK) as lun:
        wseq = 0
        while True:
            chunk = rng.randrange(chunks)
            fua = rng.random() < 0.5
            log.write(f"I {wseq} {chunk} {int(fua)}\n")
            lun.write16(chunk * (CHUNK // BLOCK), chunk_bytes(iteration, chunk, wseq), fua=fua)
            log.write(f"A {wseq}\n")
            if wseq % 8 == 7:
                lun.sync_cache()
                log.write(f"S {wseq}\n")
            wseq += 1


def main(argv: list[str]) -> int:
    portal, iqn, iteration, seed, log_path = argv[:5]
    chunks = int(argv[5]) if len(argv) > 5 else 16384
    try:
        run(portal, iqn, int(iteration), int(seed), log_path, chunks)
    except Exception as exc:  # the target went away: expected at the power cut
        print(f"writer stopped: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
