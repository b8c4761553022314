"""Which targetcli and configshell this host has.

targetcli has no plugin hook, so the ``/cdp`` branch is a subclass of its
root node; everything here finds the classes to subclass and the parts of
the stock main to reuse, on both lines in use:

* Debian bookworm's ``targetcli-fb`` 2.1.53 (the appliance): the package
  ``targetcli`` (``UIRoot``, ``UINode``) on ``configshell_fb``; its main, the
  ``TargetCLI`` shell class (the preferences) and the lock helpers live only
  in the ``/usr/bin/targetcli`` script, which is loaded as a module (its
  ``main()`` is guarded by ``__name__``, so nothing runs);
* PyPI ``targetcli`` 3.x: the same, on ``configshell``, with the main in
  ``targetcli.targetcli_shell``.

Without an importable targetcli (no package, or no ``gi`` for its D-Bus
code), the nodes use configshell directly with a small ``UINode`` of our own
and only ``targetcli-cdp --cdp-only`` works.  ``TARGETCLI_CDP_PLAIN=1`` forces
that (tests).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys

STOCK_SCRIPTS = ("/usr/bin/targetcli",)
PLAIN = os.environ.get("TARGETCLI_CDP_PLAIN") == "1"

UIRoot = None
targetcli_error: str | None = None
if not PLAIN:
    try:
        from targetcli.ui_node import UINode  # noqa: F401 - re-exported
        from targetcli.ui_root import UIRoot  # noqa: F811
    except Exception as exc:  # ImportError, or gi/rtslib failing at import
        targetcli_error = f"{type(exc).__name__}: {exc}"
        UIRoot = None
else:
    targetcli_error = "TARGETCLI_CDP_PLAIN=1"

if UIRoot is not None:
    configshell = importlib.import_module(UINode.__mro__[1].__module__.rpartition(".")[0])
else:
    try:
        import configshell
    except ImportError:
        import configshell_fb as configshell

ConfigNode = configshell.ConfigNode
ConfigShell = configshell.ConfigShell
ExecutionError = configshell.ExecutionError

if UIRoot is None:

    class UINode(ConfigNode):
        """The part of targetcli's ``UINode`` the ``/cdp`` nodes use."""

        def assert_root(self):
            if getattr(self.get_root(), "as_root", True) is False:
                raise ExecutionError("This privileged command is disabled: you are not root.")

        def new_node(self, new_node):
            self.shell.prefs["bookmarks"]["last"] = new_node.path
            return None

        def refresh(self):
            for child in self.children:
                child.refresh()

        def ui_command_refresh(self):
            """
            Refreshes and updates the objects tree from the current path.
            """
            self.refresh()

        def ui_command_status(self):
            """
            Displays the current node's status summary.

            SEE ALSO
            ========
            ls
            """
            description, _ = self.summary()
            self.shell.log.info(f"Status for {self.path}: {description}")


def stock_main():
    """The stock targetcli main module (``TargetCLI``, ``lock_file``, lock helpers), or None."""
    if UIRoot is None:
        return None
    try:
        return importlib.import_module("targetcli.targetcli_shell")  # 3.x
    except ImportError:
        pass
    for path in (*STOCK_SCRIPTS, shutil.which("targetcli")):
        if not path or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            head = f.read(8192)
        if b"python" not in head.split(b"\n", 1)[0] or b"class TargetCLI" not in head:
            continue
        name = "targetcli_stock_main"
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_loader(name, loader)
        module = importlib.util.module_from_spec(spec)
        try:
            loader.exec_module(module)  # defines; main() runs only as __main__
        except Exception:
            continue
        sys.modules[name] = module
        return module
    return None


def rtslib_error_types() -> tuple[type, ...]:
    """The ``RTSLibError`` of the rtslib targetcli uses (caught like ExecutionError)."""
    for name in ("rtslib", "rtslib_fb"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "RTSLibError"):
            return (module.RTSLibError,)
    return ()
