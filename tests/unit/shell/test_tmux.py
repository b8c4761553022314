"""An interactive session in tmux: tab completion of a volume name, a live progress line,
and Ctrl-C back to the prompt while the restore goes on."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from appliance.engine import faults

from .test_entry_point import env

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.slow,
]
PROGRESS = re.compile(r"restore-\d+ +\d+\.\d% +[\d.]+ \w+/4\.0 MiB .* ETA \d+:\d\d")


class Tmux:
    def __init__(self, name, command, environ):
        self.name = name
        self.t = ["tmux", "-L", name]
        subprocess.run(
            [*self.t, "new-session", "-d", "-s", name, "-x", "160", "-y", "40", command],
            env=environ, check=True, timeout=10,
        )  # fmt: skip

    def keys(self, *keys):
        subprocess.run([*self.t, "send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def screen(self) -> str:
        return subprocess.run(
            [*self.t, "capture-pane", "-p", "-t", self.name],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip

    def wait_for(self, pattern, timeout=20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared:\n{text}")
            time.sleep(0.1)

    def kill(self):
        subprocess.run([*self.t, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(served, vol0, tmp_path):
    e = env(tmp_path, TERM="xterm")
    cmd = f"{sys.executable} -m targetcli_cdp.main --cdp-only --socket {served.path}"
    t = Tmux(f"cdp{os.getpid()}", cmd, e)
    try:
        t.wait_for(r"(?m)^/>\s*$", 30)
        yield t
    finally:
        t.kill()


def test_tab_completes_a_volume_name_and_restore_shows_live_progress(tmux, vol0, client):
    tmux.keys("cd /cdp/vo", "Tab")
    tmux.wait_for(r"cd /cdp/vol0")
    tmux.keys("Enter")
    tmux.wait_for(r"(?m)^/cdp/vol0>\s*$")
    tmux.keys("restore point=fi", "Tab")
    tmux.wait_for(r"restore point=first")
    vol0.write(0, b"z" * 4096)
    vol0.flush()
    with faults.inject("restore.copy", lambda **kw: time.sleep(1.5)):
        tmux.keys("Enter")
        first = tmux.wait_for(PROGRESS)
        line = PROGRESS.search(first).group(0)
        # the same screen line is redrawn in place: a later state replaces it
        tmux.wait_for(r"restore-\d+ +(2|5|7)\d\.\d%")
        assert len(re.findall(r"restore-\d+ +\d", tmux.screen())) == 1, tmux.screen()
        tmux.keys("C-c")
        screen = tmux.wait_for(r"goes on in the background")
        assert re.search(r"/cdp/vol0> $", screen.rstrip("\n") + " ") or "/cdp/vol0>" in screen
        job = re.search(r"(restore-\d+)", line).group(1)
        running = client.call("job", job=job)
        assert running["state"] == "running"  # Ctrl-C detached; the job goes on
    deadline = time.monotonic() + 30
    while client.call("job", job=job)["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    tmux.keys(f"wait job={job}", "Enter")
    tmux.wait_for(r"done in")
    tmux.keys("exit", "Enter")
