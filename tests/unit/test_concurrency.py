"""Many writer threads on overlapping ranges: sequence order rules everywhere."""

import random
import threading

from .helpers import make_volume, pattern, reopen

SIZE = 1 << 20
BS = 512


def test_overlapping_concurrent_writes_follow_sequence_order(tmp_path):
    vol = make_volume(tmp_path, size=SIZE, map_records=16)
    log = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def writer(t):
        rnd = random.Random(t)
        barrier.wait()
        for i in range(150):
            nblocks = rnd.choice([1, 4, 32])
            off = rnd.randrange(0, 64 - nblocks) * BS  # a hot 32 KiB: heavy overlap
            tag = t * 1000 + i
            data = pattern(tag, nblocks * BS)
            if i % 10 == 9:
                seq = vol.write(off, data, fua=True)
            else:
                seq = vol.write(off, data)
            with lock:
                log.append((seq, off, data))
            if i % 50 == 0:
                vol.flush()

    def reader():
        barrier.wait()
        for _ in range(100):
            vol.read(0, 64 * BS)  # never fails, never tears a block

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(5)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vol.flush()
    log.sort()
    seqs = [s for s, _, _ in log]
    assert len(set(seqs)) == len(seqs)
    model = bytearray(SIZE)
    checkpoints = {}
    for k, (seq, off, data) in enumerate(log):
        model[off : off + len(data)] = data
        if k % 97 == 0:
            checkpoints[seq] = bytes(model[: 64 * BS])
    assert vol.read(0, SIZE) == bytes(model)
    assert vol.image().read(0, SIZE) == bytes(model)
    for seq, expect in checkpoints.items():
        assert vol.image(seq=seq).read(0, 64 * BS) == expect
    vol.close()
    vol = reopen(tmp_path)
    for seq, expect in checkpoints.items():
        assert vol.image(seq=seq).read(0, 64 * BS) == expect
    vol.close()
