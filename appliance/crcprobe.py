"""Which CRC32C implementation the daemon uses: measured, once per boot.

Every on-disk format checksums with CRC32C (docs/FORMAT.md), computed by the
``crc32c`` package.  The package chooses, once, when it is first imported:
the CPU's ``crc32`` instruction if the CPU has one, else its slicing-by-8
software code; ``CRC32C_SW_MODE=force`` in the environment makes it take the
software code.  Both give the same checksums.

The instruction is not always the fast one.  Under an emulator without
hardware virtualisation (qemu's TCG, where the test VMs run) each ``crc32``
instruction is emulated one bit at a time: about 40 MB/s, several times
slower than the emulated software code, and the daemon computes a CRC over
every byte it journals.  So the daemon, as the kernel does when it picks a
RAID-6 or crypto implementation, measures both before it imports anything
that checksums (:func:`configure`, called by the ``cdp-handlerd`` entry point)
and sets ``CRC32C_SW_MODE`` for the faster one.  Each measurement runs in a
child interpreter (the package's choice cannot be undone in a process) for
about 50 ms.  The result is kept in the daemon's runtime folder, so a restart
in the same boot does not measure again.

An administrator's own ``CRC32C_SW_MODE`` is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import structlog

ENV = "CRC32C_SW_MODE"
SOFTWARE = "force"  # the package's value for "software code, instruction or not"
HARDWARE = "hardware"  # ENV left unset: the package's default, the instruction if any
CACHE = "/run/cdp/crc32c-mode"
# Software only when clearly faster: on real hardware the instruction wins by
# ~10x, so this never flips there.
MARGIN = 1.5

_MEASURE = """\
import time, crc32c
buf = bytes(range(256)) * 256
n, t0 = 0, time.perf_counter()
while n < 4 or time.perf_counter() - t0 < 0.05:
    crc32c.crc32c(buf)
    n += 1
print(int(crc32c.hardware_based), n * len(buf) / (time.perf_counter() - t0))
"""


def measure(mode: str, python: str = sys.executable, timeout: float = 20.0) -> tuple[bool, float]:
    """``(uses the instruction, bytes per second)`` of the package in ``mode``."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if mode == SOFTWARE:
        env[ENV] = SOFTWARE
    out = subprocess.run(
        [python, "-c", _MEASURE], env=env, capture_output=True, text=True, timeout=timeout,
        check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "1", float(out[1])


def choose(python: str = sys.executable) -> tuple[str, dict]:
    """The faster mode, and the figures it was chosen by."""
    hardware, hw_rate = measure(HARDWARE, python)
    if not hardware:  # no instruction: the package uses the software code anyway
        return HARDWARE, {"instruction": False, "mbs": round(hw_rate / 1e6)}
    _, sw_rate = measure(SOFTWARE, python)
    mode = SOFTWARE if sw_rate > MARGIN * hw_rate else HARDWARE
    return mode, {
        "instruction": True,
        "instruction_mbs": round(hw_rate / 1e6),
        "software_mbs": round(sw_rate / 1e6),
    }


# What configure() did, for log_choice() (the daemon configures its logging later).
CHOSEN: dict | None = None


def configure(cache: str = CACHE) -> str | None:
    """Make this process (and its children) use the faster implementation:
    ``CRC32C_SW_MODE=force`` for the software code, nothing for the
    instruction.  Returns the choice (:data:`SOFTWARE` or :data:`HARDWARE`),
    or None when it was too late (the package is imported already) or the
    administrator set the variable.  What it did is kept in :data:`CHOSEN`.

    Never fails the caller: if the measurement fails, the package's own
    choice stands."""
    global CHOSEN
    if ENV in os.environ or "crc32c" in sys.modules:
        CHOSEN = {"source": "environment" if ENV in os.environ else "too late"}
        return None
    try:
        with open(cache) as f:
            mode = f.read().strip()
        if mode in (HARDWARE, SOFTWARE):
            _apply(mode)
            CHOSEN = {"implementation": _name(mode), "source": cache}
            return mode
    except OSError:
        pass
    try:
        mode, figures = choose()
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        CHOSEN = {"source": "package default", "probe_error": str(exc)}
        return None
    _apply(mode)
    CHOSEN = {"implementation": _name(mode), "source": "measured", **figures}
    try:
        tmp = f"{cache}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(mode + "\n")
        os.replace(tmp, cache)
    except OSError:  # no runtime folder (yet): measure again next time
        pass
    return mode


def log_choice() -> None:
    """Log what :func:`configure` did (``crc32c.chosen``), once logging is set up."""
    if CHOSEN is not None:
        structlog.get_logger("cdp.crc32c").info("crc32c.chosen", **CHOSEN)


def _name(mode: str) -> str:
    return "software" if mode == SOFTWARE else "instruction if any"


def _apply(mode: str) -> None:
    if mode == SOFTWARE:
        os.environ[ENV] = SOFTWARE


if __name__ == "__main__":  # python -m appliance.crcprobe: print the figures
    print(choose())
