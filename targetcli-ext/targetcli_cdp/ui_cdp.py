"""``/cdp``: the protected volumes, one child node each."""

from __future__ import annotations

from appliance.control.protocol import ControlError

from .compat import ExecutionError
from .lio import LioExport
from .node import UICDPNode, one, parse_size
from .render import jobs_table
from .ui_volume import UIVolume


class UICDP(UICDPNode):
    """
    The CDP appliance's protected volumes.  Each child is a volume; its
    commands take bookmarks, list points, restore, and expose images.
    """

    help_intro = """
                 CDP
                 ===
                 Continuous data protection: every write to a protected volume is
                 journaled, and any point in its history can be read (expose) or
                 put back (restore).  Each child node is one volume.
                 """

    def __init__(self, parent, client):
        UICDPNode.__init__(self, "cdp", parent)
        self.cdp_client = client
        self.cdp_lio = getattr(parent, "cdp_lio", None) or LioExport()
        self.error: str | None = None
        self.refresh()

    def refresh(self):
        """Rebuild the volume nodes from the daemon; never raises (an unreachable
        daemon shows in the summary, the rest of targetcli keeps working)."""
        self._children = set()
        try:
            volumes = self.cdp_client.call("volumes")
        except ControlError as exc:
            self.error = str(exc)
            return
        self.error = None
        for info in volumes:
            UIVolume(self, info)

    def summary(self):
        if self.error is not None:
            return (self.error, False)
        n = len(self.children)
        health = [c.summary()[1] for c in self.children]
        healthy = False if False in health else (True if all(health) else None)
        return (f"Volumes: {n}", healthy if n else None)

    def volume_names(self) -> list[str]:
        return sorted(c.name for c in self.children)

    def ui_command_create(self, volume, primary, secondary, size=None, block_size=None, mode=None):
        """
        Protects a volume: every write to PRIMARY (a block device or a file) is
        journaled in the folder SECONDARY.  A primary that already holds data is
        copied into the journal in the background (the baseline job); points are
        offered once it completes.  A missing primary file is created with SIZE
        (K, M, G, T suffixes).  MODE is sync (a write is acknowledged once primary
        and journal hold it; the default) or async (once the primary holds it).

        EXAMPLE
        =======
        create vol0 primary=/dev/vdb secondary=/var/lib/cdp/sec/vol0
        create test primary=/srv/test.img secondary=/srv/test-journal size=1G

        SEE ALSO
        ========
        delete, saveconfig
        """
        self.assert_root()
        args = {"volume": volume, "primary": primary, "secondary": secondary, "mode": mode}
        if size is not None:
            args["size"] = parse_size(size)
        if block_size is not None:
            if not str(block_size).isdigit():
                raise ExecutionError(f"block_size must be 512 or 4096, not {block_size!r}")
            args["block_size"] = int(block_size)
        info = self.call("create", **args)
        self.shell.log.info(f"Created volume {volume}: {info['summary']}.")
        return self.new_node(UIVolume(self, info))

    def ui_complete_create(self, parameters, text, current_param):
        if current_param == "mode":
            return one([m for m in ("sync", "async") if m.startswith(text)])
        if current_param == "block_size":
            return one([b for b in ("512", "4096") if b.startswith(text)])
        return []

    def ui_command_delete(self, volume, confirm=None):
        """
        Stops protecting VOLUME and deletes its whole history: the journal, the
        points, the bookmarks.  The primary (the live data) is not touched.  An
        exposed image or a running job refuses it.  Needs confirm=true.

        EXAMPLE
        =======
        delete test confirm=true

        SEE ALSO
        ========
        create
        """
        self.assert_root()
        confirm = self.bool_param(confirm, "confirm", False)
        self.call("remove", volume=volume, confirm=confirm)
        self.refresh()
        self.shell.log.info(f"Deleted volume {volume} and its journal.")

    def ui_complete_delete(self, parameters, text, current_param):
        if current_param == "volume":
            return one([v for v in self.volume_names() if v.startswith(text)])
        if current_param == "confirm":
            return one([b for b in ("true", "false") if b.startswith(text)])
        return []

    def ui_command_jobs(self, all=None):
        """
        Lists the running jobs of every volume (baseline, restore, resync,
        rebaseline, retention) with their progress; all=true also lists the
        recently finished ones.

        SEE ALSO
        ========
        /cdp/VOLUME jobs, /cdp/VOLUME wait
        """
        jobs = self.call("jobs", all=self.bool_param(all, "all", False))
        self.shell.con.display(jobs_table(jobs) if jobs else "No jobs.")

    def ui_command_saveconfig(self, savefile=None):
        """
        Saves the cdp configuration (volumes, modes, retention policies, exposed
        images) to SAVEFILE, by default the daemon's own file, which it reads at
        start.  The root's saveconfig saves it as well as the LIO configuration.

        SEE ALSO
        ========
        restoreconfig
        """
        self.assert_root()
        out = self.call("saveconfig", file=savefile)
        self.shell.log.info(
            f"CDP configuration saved to {out['file']} "
            f"({out['volumes']} volumes, {out['exposed']} exposed images)."
        )

    def ui_command_restoreconfig(self, savefile=None):
        """
        Brings the appliance to the saved cdp configuration in SAVEFILE (by
        default the daemon's file): missing volumes are created, retention
        policies set, images exposed.  Nothing is removed.

        SEE ALSO
        ========
        saveconfig
        """
        self.assert_root()
        out = self.call("restoreconfig", file=savefile)
        self.refresh()
        done = [f"{len(out[k])} {k}" for k in ("created", "retention", "exposed") if out[k]]
        if out["errors"]:
            raise ExecutionError(
                f"CDP configuration restored from {out['file']}, {len(out['errors'])} errors: "
                + "; ".join(out["errors"])
            )
        self.shell.log.info(
            f"CDP configuration restored from {out['file']}"
            + (f" ({', '.join(done)})." if done else " (nothing to change).")
        )
