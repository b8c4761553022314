"""appliance.malloctune: the daemon sets glibc's arenas and thresholds, so the
buffers of every write are reused instead of given back and faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from appliance import malloctune

from .helpers import info_logs

# In a fresh interpreter: after an 8 MiB block was freed, is a 6 MiB block
# mmapped (a fixed threshold of 4 MiB) or taken from the heap (glibc's default
# threshold rose to 8 MiB)?  And once 4 MiB of 100 KiB blocks were freed, how much heap
# does the main arena keep (glibc's default: trimmed at 128 KiB free)?
CHILD = """\
import ctypes, json, sys
from appliance import malloctune

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
tuned = malloctune.configure() if sys.argv[1] == "tune" else None
big = bytes(8 << 20)
del big
before = libc.mallinfo2().hblks
block = bytes(6 << 20)
mmapped = libc.mallinfo2().hblks - before
del block
blocks = [bytes(100_000) for _ in range(40)]
while blocks:
    blocks.pop()
print(json.dumps({"tuned": tuned, "chosen": malloctune.CHOSEN, "mmapped": mmapped,
                  "kept": libc.mallinfo2().keepcost}))
"""


def child(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout)


def glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc(), reason="mallopt and mallinfo2 are glibc's")
def test_configure_fixes_the_thresholds():
    import os

    default = child("default")
    # the settings the unit file had before (trim and mmap at 128 KiB)
    unit_before = child(
        "default",
        {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"},
    )
    tuned = child("tune")
    assert default["mmapped"] == 0  # glibc's default: the threshold rose with the free
    assert unit_before["kept"] < 256 << 10  # the heap trimmed as soon as it was free
    assert tuned["tuned"] is True
    assert tuned["mmapped"] == 1  # still its own mapping, given back when freed
    assert tuned["kept"] >= 3 << 20  # the freed heap top is kept for the next burst
    assert tuned["chosen"] == {
        "source": "set",
        "arena_max": malloctune.ARENA_MAX,
        "mmap_threshold": malloctune.MMAP_THRESHOLD,
        "trim_threshold": malloctune.TRIM_THRESHOLD,
    }


@pytest.mark.parametrize(
    "env",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"},
        {"MALLOC_TRIM_THRESHOLD_": "1048576"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_ARENA_MAX": "4"},
    ],
)
def test_an_administrators_malloc_settings_are_left_alone(env, monkeypatch):
    monkeypatch.setattr(malloctune, "CHOSEN", None)
    assert malloctune.configure(env) is False
    assert malloctune.CHOSEN == {"source": "environment"}


def test_other_tunables_do_not_count_as_malloc_settings(monkeypatch):
    monkeypatch.setattr(malloctune, "CHOSEN", None)
    result = malloctune.configure({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert malloctune.CHOSEN["source"] in ("set", "refused", "no mallopt")
    assert result is (malloctune.CHOSEN["source"] == "set")


def test_the_entry_point_tunes_malloc_before_it_runs_the_daemon(monkeypatch):
    import appliance.daemon
    import appliance.daemon.main
    from appliance import crcprobe

    calls = []
    monkeypatch.setattr(malloctune, "configure", lambda: calls.append("malloc"))
    monkeypatch.setattr(crcprobe, "configure", lambda: calls.append("crc"))
    monkeypatch.setattr(appliance.daemon.main, "main", lambda argv: calls.append("main") or 0)
    assert appliance.daemon.handlerd([]) == 0
    assert calls == ["malloc", "crc", "main"]
    calls.clear()
    appliance.daemon.handlerd(["--help"])
    assert calls == ["main"]  # --help only prints


def test_the_choice_is_logged_once_logging_is_set_up(monkeypatch):
    monkeypatch.setattr(malloctune, "CHOSEN", {"source": "set", "mmap_threshold": 1})
    assert info_logs(malloctune.log_choice) == [
        {"event": "malloc.tuned", "source": "set", "mmap_threshold": 1, "log_level": "info"}
    ]
