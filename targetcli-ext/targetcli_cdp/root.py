"""Root nodes: targetcli's tree plus ``/cdp``, or ``/cdp`` alone.

targetcli's ``UIRoot.refresh()`` empties the root and rebuilds backstores and
fabrics from configfs, and it runs after ``restoreconfig``, ``clearconfig``
and every ``set global``: a ``/cdp`` node attached from outside would vanish.
:class:`CDPRoot` therefore subclasses ``UIRoot`` and adds ``/cdp`` at the end
of every refresh.  Its ``saveconfig`` saves the LIO configuration (the stock
command, unchanged) and then the cdp configuration through the daemon.

:class:`CDPOnlyRoot` is a root without LIO (``targetcli-cdp --cdp-only``): for
hosts with no configfs (tests, a container), or without targetcli at all.
"""

from __future__ import annotations

import inspect

from appliance.control.protocol import ControlError

from . import compat
from .compat import ExecutionError, UINode
from .ui_cdp import UICDP


def _save_cdp(root) -> None:
    cdp = root.get_child("cdp")
    try:
        out = cdp.cdp_client.call("saveconfig")
    except ControlError as exc:
        raise ExecutionError(
            f"LIO configuration saved; the cdp configuration was not: {exc}"
        ) from None
    root.shell.log.info(
        f"CDP configuration saved to {out['file']} "
        f"({out['volumes']} volumes, {out['exposed']} exposed images)"
    )


class CDPOnlyRoot(UINode):
    """
    The root of a shell holding only the /cdp branch (no LIO).
    """

    def __init__(self, shell, as_root: bool = False, client=None):
        UINode.__init__(self, "/", shell=shell)
        self.as_root = as_root
        self.cdp_client = client

    def refresh(self):
        self._children = set()
        UICDP(self, self.cdp_client)

    def ui_command_saveconfig(self):
        """
        Saves the cdp configuration (volumes, modes, retention policies, exposed
        images) to the daemon's file.

        SEE ALSO
        ========
        /cdp saveconfig
        """
        self.assert_root()
        _save_cdp(self)


if compat.UIRoot is not None:
    _STOCK_SAVEFILE = (
        inspect.signature(compat.UIRoot.ui_command_saveconfig).parameters["savefile"].default
    )

    class CDPRoot(compat.UIRoot):
        """targetcli's root, with /cdp re-attached by every refresh."""

        def __init__(self, shell, as_root: bool = False, client=None):
            self.cdp_client = client  # before UIRoot.__init__: it may refresh
            compat.UIRoot.__init__(self, shell, as_root=as_root)

        def refresh(self):
            compat.UIRoot.refresh(self)
            UICDP(self, self.cdp_client)

        def ui_command_saveconfig(self, savefile=_STOCK_SAVEFILE):
            """
            Saves the current configuration to a file so that it can be restored
            on next boot: the LIO configuration to SAVEFILE (targetcli's own
            command), then the cdp configuration (volumes, modes, retention,
            exposed images) to the daemon's file.

            SEE ALSO
            ========
            /cdp saveconfig, /cdp restoreconfig
            """
            compat.UIRoot.ui_command_saveconfig(self, savefile)
            _save_cdp(self)

else:
    CDPRoot = None
