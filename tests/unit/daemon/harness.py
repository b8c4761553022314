"""A TCMU device over the simulated kernel, for the daemon's unit tests.

:class:`SimUio` stands in for :class:`appliance.tcmu.UioDevice`: its event fd is
a pipe the test pokes after queueing commands, and its kick runs the simulated
kernel's completion handling, under one lock shared with the test thread (the
simulation is not thread-safe; the kernel is).
"""

from __future__ import annotations

import os
import threading
import time

from appliance.tcmu import CommandRing
from tests.unit.tcmu.sim_kernel import SimKernel


class SimUio:
    def __init__(self, **sim_kwargs) -> None:
        self.sim = SimKernel(**sim_kwargs)
        self.lock = threading.Lock()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.closed = False

    # -- the UioDevice surface the daemon uses -------------------------------
    def fileno(self) -> int:
        return self._r

    def wait_event(self) -> int | None:
        try:
            data = os.read(self._r, 4096)
        except BlockingIOError:
            return None
        return len(data)

    def kick(self) -> None:
        with self.lock:
            self.sim.irq()

    def ring(self, *, out_of_order=None) -> CommandRing:
        return CommandRing(self.sim.mm, self.kick, out_of_order=out_of_order)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)

    # -- the test's side ---------------------------------------------------------
    def queue(self, cdb: bytes, **kw):
        """Queue one command and raise the uio event; returns the SimCmd."""
        with self.lock:
            cmd = self.sim.queue_cmd(cdb, **kw)
        assert cmd is not None, "simulated ring or data area full"
        self.notify()
        return cmd

    def notify(self) -> None:
        os.write(self._w, b"\1")

    def completion(self, queued, timeout: float = 10.0):
        """Wait for the completion of ``queued`` (a SimCmd)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for done in self.sim.completions:
                    if done.seq == queued.seq:
                        return done
            time.sleep(0.002)
        raise AssertionError(f"command {queued.cmd_id} not completed in {timeout} s")


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)
