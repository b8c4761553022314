"""``targetcli-cdp``: targetcli's shell with the ``/cdp`` branch.

It goes the way of targetcli's own main and reuses its parts: the
``TargetCLI`` shell class (hence the same preferences in
``$TARGETCLI_HOME``, default ``~/.targetcli``), the same lock file taken
the same way, one-shot (``targetcli-cdp /cdp/vol0 bookmark name=x``) or
interactive, and saveconfig on exit when ``auto_save_on_exit`` is set.  The
main function itself cannot be reused: it builds a plain ``UIRoot``, a
module global it looks up at run time; re-pointing that global would work
but would also send everything to targetclid when ``auto_use_daemon`` is
set, and targetclid builds its own root without ``/cdp``.  So this main
ignores ``auto_use_daemon`` (and says so), and is otherwise the same steps.

Options (before the command): ``--cdp-only`` shows only ``/cdp`` (no LIO, no
lock: for hosts without configfs); ``--socket PATH`` (or
``$CDP_CONTROL_SOCKET``) names the daemon's control socket.
"""

from __future__ import annotations

import fcntl
import os
import sys

from appliance.control.client import ControlClient, default_socket

from . import __version__, compat
from .compat import ConfigShell, ExecutionError
from .root import CDPOnlyRoot, CDPRoot

USAGE = """\
Usage: targetcli-cdp [--cdp-only] [--socket PATH] [--version|--help|CMD]
  --cdp-only     only the /cdp branch (no LIO: hosts without configfs)
  --socket PATH  the cdp daemon's control socket (default $CDP_CONTROL_SOCKET
                 or /run/cdp/control.sock)
  CMD            run one shell command and exit, e.g. /cdp/vol0 bookmark name=x
  <nothing>      enter the interactive shell"""


class PlainShell(ConfigShell):
    """The shell when the stock ``TargetCLI`` class is not available."""

    default_prefs = {**ConfigShell.default_prefs, "auto_save_on_exit": False}


def _options(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"cdp_only": False, "socket": None}
    while argv and argv[0].startswith("--"):
        arg = argv.pop(0)
        if arg == "--cdp-only":
            opts["cdp_only"] = True
        elif arg == "--socket" and argv:
            opts["socket"] = argv.pop(0)
        elif arg.startswith("--socket="):
            opts["socket"] = arg.partition("=")[2]
        elif arg in ("--help", "--version"):
            opts[arg[2:]] = True
        else:
            print(f"targetcli-cdp: unknown option {arg}\n{USAGE}", file=sys.stderr)
            raise SystemExit(2)
    return opts, argv


def _lock(stock, shell):
    """targetcli's lock file, taken as targetcli takes it (serialises configfs use)."""
    path = getattr(stock, "lock_file", "/var/run/targetcli.lock")
    try:
        lkfd = open(path, "w+")  # noqa: SIM115 - held for the whole session
    except OSError as exc:
        shell.con.display(shell.con.render_text(f"opening lockfile failed: {exc}", "red"))
        raise SystemExit(1) from None
    if hasattr(stock, "try_op_lock"):
        stock.try_op_lock(shell, lkfd)
    else:
        fcntl.flock(lkfd, fcntl.LOCK_EX)
    return lkfd


def _unlock(stock, shell, lkfd) -> None:
    if hasattr(stock, "release_op_lock"):
        stock.release_op_lock(shell, lkfd)
    else:
        fcntl.flock(lkfd, fcntl.LOCK_UN)
        lkfd.close()


def main(argv: list[str] | None = None) -> int:
    opts, argv = _options(list(sys.argv[1:] if argv is None else argv))
    if opts.get("help"):
        print(USAGE, file=sys.stderr)
        return 0
    if opts.get("version"):
        print(f"targetcli-cdp version {__version__}", file=sys.stderr)
        return 0
    cdp_only = opts["cdp_only"] or CDPRoot is None
    if CDPRoot is None and not opts["cdp_only"]:
        print(
            f"targetcli-cdp: targetcli is not usable here ({compat.targetcli_error}); "
            "showing /cdp only",
            file=sys.stderr,
        )
    stock = None if cdp_only else compat.stock_main()
    shell_cls = getattr(stock, "TargetCLI", PlainShell)
    shell = shell_cls(os.getenv("TARGETCLI_HOME", "~/.targetcli"))
    is_root = os.getuid() == 0
    lkfd = None if cdp_only else _lock(stock, shell)
    if not cdp_only and shell.prefs["auto_use_daemon"]:
        shell.log.warning("targetcli-cdp ignores auto_use_daemon: targetclid has no /cdp branch.")
    client = ControlClient(opts["socket"] or default_socket())
    errors = (ExecutionError, *compat.rtslib_error_types())
    try:
        root_cls = CDPOnlyRoot if cdp_only else CDPRoot
        try:
            root = root_cls(shell, as_root=is_root, client=client)
            root.refresh()
        except Exception as exc:  # what targetcli does: one line, then out
            shell.con.display(shell.con.render_text(str(exc), "red"))
            if not is_root:
                shell.con.display(shell.con.render_text("Retry as root.", "red"))
            elif not cdp_only:
                shell.con.display("(targetcli-cdp --cdp-only works without LIO)")
            return 255
        if argv:
            try:
                shell.run_cmdline(" ".join(argv))
            except errors as exc:
                print(str(exc), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 130
            return 0
        shell.con.display(
            f"targetcli-cdp shell version {__version__}"
            + ("" if cdp_only else " (targetcli with /cdp)")
            + "\nFor help on commands, type 'help'.\n"
        )
        if not is_root:
            shell.con.display("You are not root, disabling privileged commands.\n")
        while not shell._exit:
            try:
                shell.run_interactive()
            except errors as exc:
                shell.log.error(str(exc))
        if shell.prefs["auto_save_on_exit"] and is_root:
            shell.log.info("Global pref auto_save_on_exit=true")
            try:
                root.ui_command_saveconfig()
            except errors as exc:
                shell.log.error(str(exc))
        return 0
    finally:
        client.close()
        if lkfd is not None:
            _unlock(stock, shell, lkfd)


if __name__ == "__main__":
    raise SystemExit(main())
