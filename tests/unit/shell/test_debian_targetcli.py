"""/cdp under the real targetcli: Debian's targetcli-fb 2.1.53 (the appliance's), on the
system python.  There is no LIO here (no configfs, no system D-Bus), so rtslib's RTSRoot
and the backstores node are stubbed in the driver; everything else is stock targetcli:
UIRoot.refresh, the TargetCLI shell class and lock from /usr/bin/targetcli, configshell_fb."""

import os
import subprocess
import sysconfig

import pytest

from .test_entry_point import EXT, REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SYSTEM_PY = "/usr/bin/python3"
DRIVER = r"""
import sys
sys.path.append({venv_site!r})      # structlog for the appliance package, after Debian's
sys.path[:0] = [{ext!r}, {repo!r}]
import targetcli.ui_root as ui_root
from targetcli.ui_node import UINode

class FakeRTSRoot:
    fabric_modules = []
    def invalidate_caches(self): pass
    def save_to_file(self, path): open(path, "w").write("{{}}\n")

class FakeBackstores(UINode):
    def __init__(self, parent): UINode.__init__(self, "backstores", parent)

ui_root.RTSRoot = FakeRTSRoot
ui_root.UIBackstores = FakeBackstores

from targetcli_cdp import compat, main
assert compat.UIRoot is ui_root.UIRoot, compat.targetcli_error
assert compat.configshell.__name__ == "configshell_fb", compat.configshell.__name__
stock = compat.stock_main()
assert stock is not None and hasattr(stock, "TargetCLI"), "stock main not loaded"
if sys.argv[1] == "refresh":
    from appliance.control.client import ControlClient
    from targetcli_cdp.root import CDPRoot
    shell = stock.TargetCLI(None)
    root = CDPRoot(shell, as_root=True, client=ControlClient(sys.argv[2]))
    root.refresh()
    shell.run_cmdline("set global tree_max_depth=0")   # UINode: root.refresh()
    shell.run_cmdline("refresh")
    print(sorted(c.name for c in root.children), [c.name for c in root.get_child("cdp").children])
    root.ui_command_saveconfig(savefile=sys.argv[3])
    sys.exit(0)
sys.exit(main.main(sys.argv[1:]))
"""


def debian_targetcli() -> bool:
    if not os.path.exists(SYSTEM_PY):
        return False
    p = subprocess.run([SYSTEM_PY, "-c", "import targetcli.ui_root, configshell_fb"],
                       capture_output=True)  # fmt: skip
    return p.returncode == 0


needs_debian = pytest.mark.skipif(
    not debian_targetcli(), reason="Debian's targetcli-fb is not installed (apt-get install)"
)


def run(tmp_path, *args):
    driver = tmp_path / "driver.py"
    site = sysconfig.get_paths()["purelib"]
    driver.write_text(DRIVER.format(venv_site=site, ext=EXT, repo=REPO))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TARGETCLI_HOME"] = str(tmp_path / "tchome")
    return subprocess.run([SYSTEM_PY, str(driver), *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


@needs_debian
def test_one_shot_under_debian_targetcli(served, vol0, tmp_path):
    p = run(tmp_path, "--socket", served.path, "ls")
    assert p.returncode == 0, p.stderr
    assert "o- backstores" in p.stdout and "o- cdp" in p.stdout and "o- vol0" in p.stdout
    p = run(tmp_path, "--socket", served.path, "/cdp/vol0", "bookmark", "name=deb")
    assert p.returncode == 0 and "Bookmark deb is seq" in p.stdout, p.stderr
    p = run(tmp_path, "--socket", served.path, "/cdp/vol0", "bookmark", "name=deb")
    assert p.returncode == 1 and "already exists" in p.stderr and "Traceback" not in p.stderr


@needs_debian
def test_cdp_survives_refresh_and_saveconfig_saves_both(served, vol0, tmp_path):
    lio = tmp_path / "saveconfig.json"
    p = run(tmp_path, "refresh", served.path, str(lio))
    assert p.returncode == 0, p.stderr
    assert "['backstores', 'cdp'] ['vol0']" in p.stdout
    assert lio.read_text() == "{}\n"
    assert "CDP configuration saved to" in p.stdout
    assert os.path.exists(served.manager.config_file)
