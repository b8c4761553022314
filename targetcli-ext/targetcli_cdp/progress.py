"""Following a job: a live progress line until it ends, or until Ctrl-C.

On a terminal the line is redrawn in place (``\\r``) a few times a second; into
a pipe or a file one line is written every :data:`PIPE_EVERY` seconds, so a
script's log stays readable.  Ctrl-C stops the following, never the job:
the prompt comes back and the job goes on in the daemon.
"""

from __future__ import annotations

import time

from appliance.control.protocol import ControlError

from .compat import ExecutionError
from .render import progress_line

INTERVAL = 0.25
PIPE_EVERY = 2.0


def follow(node, job: dict, interval: float = INTERVAL) -> dict:
    """Show ``job`` (a ``job`` op result) until it ends; returns its last state.

    Raises ExecutionError when the job failed; returns quietly when the user
    detached with Ctrl-C (the job goes on).
    """
    con, client = node.shell.con, node.client
    tty = getattr(con._stdout, "isatty", lambda: False)()
    last_print = 0.0
    shown = ""
    try:
        while True:
            line = progress_line(job)
            now = time.monotonic()
            if tty:
                con.display("\r" + line.ljust(len(shown)), no_lf=True)
                shown = line
            elif now - last_print >= PIPE_EVERY or job["state"] != "running":
                con.display(line)
                last_print = now
            if job["state"] not in ("running", "cancelling"):
                break
            time.sleep(interval)
            job = node.call("job", job=job["id"])
    except KeyboardInterrupt:
        client.close()  # a reply may have been cut in half
        if tty:
            con.display("")
        stop = f", 'cancel job={job['id']}' stops it" if job.get("cancellable") else ""
        node.shell.log.info(
            f"{job['kind']} {job['id']} goes on in the background: 'jobs' lists it, "
            f"'wait job={job['id']}' follows it again{stop}."
        )
        return job
    except ControlError as exc:
        raise ExecutionError(f"lost track of {job['id']}: {exc}") from None
    if tty:
        con.display("")
    return finished(node, job)


def finished(node, job: dict) -> dict:
    """Say how ``job`` ended: info when done, warning when cancelled, error when failed."""
    took = f"{job['elapsed_seconds']:.1f} s"
    if job["state"] == "failed":
        raise ExecutionError(f"{job['kind']} {job['id']} failed: {job['error']}")
    if job["state"] == "cancelled":
        node.shell.log.warning(f"{job['kind']} {job['id']} was cancelled after {took}.")
    else:
        node.shell.log.info(f"{job['kind']} {job['id']} done in {took}.")
    return job
