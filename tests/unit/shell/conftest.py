import io
import os
import sys

import pytest

EXT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "targetcli-ext")
if os.path.abspath(EXT) not in map(os.path.abspath, sys.path):
    sys.path.insert(0, os.path.abspath(EXT))  # until targetcli-ext is pip-installed

from targetcli_cdp.compat import ExecutionError  # noqa: E402
from targetcli_cdp.main import PlainShell  # noqa: E402
from targetcli_cdp.root import CDPOnlyRoot  # noqa: E402

from appliance.control.client import ControlClient  # noqa: E402
from tests.unit.control.serving import ServerThread, seed_vol0  # noqa: E402


class Driver:
    """A shell driven with run_cmdline; output captured from configshell's console."""

    def __init__(self, shell, root, out, err):
        self.shell, self.root, self._out, self._err = shell, root, out, err

    def run(self, cmdline: str) -> str:
        self._out.seek(0)
        self._out.truncate()
        self.shell.run_cmdline(cmdline)
        return self._out.getvalue()

    def fail(self, cmdline: str) -> str:
        with pytest.raises(ExecutionError) as info:
            self.run(cmdline)
        msg = str(info.value)
        assert "\n" not in msg and "Traceback" not in msg, msg
        return msg

    def node(self, path: str):
        return self.root.get_node(path)


@pytest.fixture
def served(tmp_path):
    srv = ServerThread(tmp_path / "root").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(served):
    with ControlClient(served.path, timeout=30) as c:
        yield c


@pytest.fixture
def vol0(served, tmp_path):
    return seed_vol0(served.manager, tmp_path)


@pytest.fixture
def sh(served, tmp_path):
    shell = PlainShell(str(tmp_path / "tchome"))
    shell.prefs["color_mode"] = False
    con = shell.con  # a borg: every Console shares this state
    saved = (con._stdout, con._stderr)
    out, err = io.StringIO(), io.StringIO()
    con._stdout, con._stderr = out, err
    c = ControlClient(served.path, timeout=30)
    root = CDPOnlyRoot(shell, as_root=True, client=c)
    root.refresh()
    try:
        yield Driver(shell, root, out, err)
    finally:
        con._stdout, con._stderr = saved
        c.close()
