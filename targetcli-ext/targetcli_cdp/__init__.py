"""targetcli with a ``/cdp`` branch (docs/SHELL.md).

* :mod:`.compat`: which targetcli / configshell this host has, and the pieces
  of the stock ``targetcli`` main that are reused;
* :mod:`.root`: the root nodes (targetcli's ``UIRoot`` subclassed, or a plain
  root holding only ``/cdp``);
* :mod:`.ui_cdp`: ``/cdp``; :mod:`.ui_volume`: ``/cdp/<volume>``;
* :mod:`.render`: tables and status text; :mod:`.progress`: live job lines;
* :mod:`.main`: the ``targetcli-cdp`` entry point.
"""

__version__ = "0.1.0"
