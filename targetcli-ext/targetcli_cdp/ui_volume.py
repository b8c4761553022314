"""``/cdp/<volume>``: one protected volume and what can be done with its history."""

from __future__ import annotations

from .compat import ExecutionError
from .node import UICDPNode, one
from .progress import finished, follow
from .render import jobs_table, points_table, status_text

HEALTH = {"in-sync": True, "out-of-sync": False, "failed": False}
POINT_KINDS = ("baseline", "bookmark", "map")
RETENTION_ACTIONS = ("show", "set", "clear", "apply")


class UIVolume(UICDPNode):
    """A protected volume; the summary is the daemon's one line about it."""

    help_intro = """
                 PROTECTED VOLUME
                 ================
                 A point is named by a sequence number (1234), a bookmark name,
                 a time before now (-15m, -2h, -1d) or a wall-clock time
                 (2026-03-01T12:00:00, local time unless it ends in Z or +hh:mm).
                 """

    def __init__(self, parent, info: dict):
        UICDPNode.__init__(self, info["name"], parent)
        self.info = info

    def summary(self):
        return (
            self.info.get("summary", self.info.get("state", "")),
            HEALTH.get(self.info["state"]),
        )

    def refresh(self):
        for info in self.quiet_call("volumes") or []:
            if info["name"] == self.name:
                self.info = info

    def _run(self, job: dict, wait) -> None:
        if self.bool_param(wait, "wait", True):
            follow(self, job)
        else:
            self.shell.log.info(
                f"Started {job['kind']} {job['id']}: 'wait job={job['id']}' follows it."
            )

    # ------------------------------------------------------------ looking

    def ui_command_status(self):
        """
        Displays the volume's state (in-sync, out-of-sync, baselining, resyncing,
        rebaselining, restoring), its mode, the RPO lag (how far the journal is
        behind the primary), the journal's size and the free space left on the
        secondary, the oldest and newest points, the dirty regions of the DRL,
        running jobs and exposed images.

        SEE ALSO
        ========
        points, jobs
        """
        self.shell.con.display(status_text(self.call("status", volume=self.name)))

    def ui_command_points(self, since=None, until=None, kind=None):
        """
        Lists the recoverable points, oldest first: the baseline, bookmarks, and
        the boundaries of the journal's delta maps.  SINCE and UNTIL are point
        names (see 'help'); KIND is baseline, bookmark or map (comma-separated
        for several).  A point flagged SUSPECT was journaled while the journal
        and the primary could disagree (out of sync, resync, restore).

        EXAMPLE
        =======
        points since=-1h
        points kind=bookmark
        points since=pre-upgrade until=2026-03-01T18:00

        SEE ALSO
        ========
        bookmark, restore, expose
        """
        if kind is not None:
            bad = {k for k in kind.split(",") if k} - set(POINT_KINDS)
            if bad:
                raise ExecutionError(
                    f"kind must be {', '.join(POINT_KINDS)} (comma-separated), not {kind!r}"
                )
        points = self.call("points", volume=self.name, since=since, until=until, kind=kind)
        self.shell.con.display(points_table(points) if points else "No points.")

    def ui_complete_points(self, parameters, text, current_param):
        if current_param in ("since", "until"):
            return self.complete_points(self.name, text)
        if current_param == "kind":
            return one([k for k in POINT_KINDS if k.startswith(text)])
        return []

    def ui_command_jobs(self, all=None):
        """
        Lists the volume's running jobs with their progress, rate and ETA;
        all=true also lists the recently finished ones.

        SEE ALSO
        ========
        wait, cancel
        """
        jobs = self.call("jobs", volume=self.name, all=self.bool_param(all, "all", False))
        self.shell.con.display(jobs_table(jobs) if jobs else "No jobs.")

    # ------------------------------------------------------------ points

    def ui_command_bookmark(self, name):
        """
        Names the present moment: the point right after the last acknowledged
        write, durable when the command returns.  NAME is 1-128 of A-Z a-z 0-9
        . _ : @ + -, not starting with '-' and not all digits.

        EXAMPLE
        =======
        bookmark name=pre-upgrade

        SEE ALSO
        ========
        points, restore, unbookmark
        """
        self.assert_root()
        p = self.call("bookmark", volume=self.name, name=name)
        self.shell.log.info(f"Bookmark {p['name']} is seq {p['seq']} on {self.name}.")

    def ui_command_unbookmark(self, name):
        """
        Deletes the bookmark NAME (journaled: it does not come back).  The data
        of that moment stays reachable by its sequence number until retention
        fades it out.

        EXAMPLE
        =======
        unbookmark name=pre-upgrade

        SEE ALSO
        ========
        bookmark, points
        """
        self.assert_root()
        self.call("delete_bookmark", volume=self.name, name=name)
        self.shell.log.info(f"Deleted bookmark {name} of {self.name}.")

    def ui_complete_unbookmark(self, parameters, text, current_param):
        if current_param != "name":
            return []
        points = self.quiet_call("points", volume=self.name, kind="bookmark") or []
        return one([p["name"] for p in points if p["name"].startswith(text)])

    def ui_command_restore(self, point, roll_forward_to=None, wait=None):
        """
        Puts POINT back on the primary while the volume stays online: reads see
        the restored data at once, the copy runs in the background.  With
        ROLL_FORWARD_TO (a later point) the journal's changes up to it are
        applied too.  The state just before the restore stays a point, so a
        wrong restore is undone by restoring that one.  A live progress line
        follows the job; Ctrl-C returns to the prompt and the restore goes on
        (wait=false does not follow at all).

        EXAMPLE
        =======
        restore point=pre-upgrade
        restore point=-2h
        restore point=1200 roll_forward_to=1450

        SEE ALSO
        ========
        points, jobs, wait
        """
        self.assert_root()
        job = self.call("restore", volume=self.name, point=point, roll_forward_to=roll_forward_to)
        self._run(job, wait)

    def ui_complete_restore(self, parameters, text, current_param):
        if current_param in ("point", "roll_forward_to"):
            return self.complete_points(self.name, text)
        if current_param == "wait":
            return one([b for b in ("true", "false") if b.startswith(text)])
        return []

    def ui_command_rebaseline(self, wait=None):
        """
        Compares every region of the primary with the journal and copies the
        regions that differ into the journal; points from the interval where
        they differed are flagged suspect.  Runs as a job with a progress line
        (Ctrl-C detaches, the job goes on).

        SEE ALSO
        ========
        resync, points
        """
        self.assert_root()
        self._run(self.call("rebaseline", volume=self.name), wait)

    def ui_command_resync(self, wait=None):
        """
        Compares and fixes only the regions the dirty region log marks (after
        the secondary was out of sync, or an unclean stop).  While out of sync it
        first tries to bring the journal back.  Runs as a job with a progress
        line (Ctrl-C detaches, the job goes on).

        SEE ALSO
        ========
        rebaseline, status
        """
        self.assert_root()
        self._run(self.call("resync", volume=self.name), wait)

    def ui_complete_rebaseline(self, parameters, text, current_param):
        return one([b for b in ("true", "false") if b.startswith(text)])

    ui_complete_resync = ui_complete_rebaseline

    # ------------------------------------------------------------ retention

    def ui_command_retention(self, action=None, policy=None):
        """
        Shows or sets how long points are kept.  A policy is a comma-separated
        list of tiers EVERY:KEEP, youngest first: EVERY is 'all' (every write
        is a point) or a duration (one point per that much time), KEEP how old
        a point may get in that tier; 'bookmarks:KEEP' keeps bookmarks that
        long.  Durations: a number and s, m, h, d or w.  ACTION: show (the
        default), set (needs POLICY; 'retention policy=...' does the same),
        clear (keep everything), apply (run the policy now, as a job).

        EXAMPLE
        =======
        retention
        retention set policy=all:48h,1h:14d,1d:90d
        retention policy=all:24h,1d:30d,bookmarks:1y
        retention apply

        SEE ALSO
        ========
        points, status
        """
        if action is None:
            action = "set" if policy is not None else "show"
        if action not in RETENTION_ACTIONS:
            raise ExecutionError(f"action must be {', '.join(RETENTION_ACTIONS)}, not {action!r}")
        if action == "set" and policy is None:
            raise ExecutionError("retention set needs policy=, e.g. policy=all:48h,1h:14d")
        if action != "set" and policy is not None:
            raise ExecutionError(f"retention {action} takes no policy")
        if action != "show":
            self.assert_root()
        out = self.call(
            "retention",
            volume=self.name,
            policy=policy,
            clear=action == "clear" or None,
            apply=action == "apply" or None,
        )
        shown = out["policy"] or "none (every point is kept)"
        self.shell.con.display(f"Retention of {self.name}: {shown}")
        if out["job"] is not None:
            follow(self, out["job"])

    def ui_complete_retention(self, parameters, text, current_param):
        if current_param == "action":
            return one([a for a in RETENTION_ACTIONS if a.startswith(text)])
        if current_param == "policy":
            return one([p for p in ("all:48h,1h:14d,1d:90d",) if p.startswith(text)])
        return []

    # ------------------------------------------------------------ images

    def ui_command_expose(self, point, writable=None, name=None, target=None, lun=None):
        """
        Opens the volume as it was at POINT, as an image kept by NAME (default
        VOLUME-SEQ).  A writable image takes writes into a scratch overlay (test
        failover, file-level recovery); neither the volume nor its journal ever
        sees them.  Exposed images are part of the saved configuration.

        With TARGET (an iSCSI target's IQN) the image also becomes a LUN there:
        a user:cdp backstore named NAME (cfgstring VOLUME@NAME) and a LUN in
        TARGET/tpg1 (number LUN, default the next free one), mapped to every
        ACL of that TPG.  Without TARGET, export it later with
        /backstores/user:cdp create name=NAME size=<volume size>
        cfgstring=VOLUME@NAME.

        EXAMPLE
        =======
        expose point=-1h
        expose point=pre-upgrade writable=true name=vol0-test
        expose point=before-ransomware target=iqn.2003-01.org.example:restore

        SEE ALSO
        ========
        unexpose, points, status
        """
        self.assert_root()
        writable = self.bool_param(writable, "writable", False)
        ex = self.call("expose", volume=self.name, point=point, writable=writable, name=name)
        kind = "writable" if ex["writable"] else "read-only"
        warn = " It is SUSPECT (see 'help points')." if ex["suspect"] else ""
        where = ""
        if target is not None:
            size = self.call("status", volume=self.name)["size"]
            try:
                path = self.lio.export(self.name, ex["name"], size, target, lun)
            except ExecutionError as exc:
                self.call("unexpose", volume=self.name, name=ex["name"], discard=True)
                raise ExecutionError(f"{exc} (image not exposed)") from None
            where = f" LUN {path} (backstore user:cdp/{ex['name']})."
            self.get_root().refresh()
        self.shell.log.info(
            f"Exposed {ex['name']}: {self.name} at seq {ex['seq']}, {kind}.{warn}{where}"
        )

    def ui_complete_expose(self, parameters, text, current_param):
        if current_param == "point":
            return self.complete_points(self.name, text)
        if current_param == "writable":
            return one([b for b in ("true", "false") if b.startswith(text)])
        if current_param == "target":
            return one([t for t in self._iscsi_targets() if t.startswith(text)])
        return []

    def _iscsi_targets(self) -> list[str]:
        root = self.get_root()
        try:
            return sorted(node.name for node in root.get_node("/iscsi").children)
        except Exception:  # no /iscsi (cdp-only shell)
            return []

    def ui_command_unexpose(self, name=None, discard=None):
        """
        Closes an exposed image of this volume (NAME may be left out when there
        is only one).  A writable image's overlay is deleted, unless
        discard=false: then exposing the same NAME at the same point brings its
        writes back.

        EXAMPLE
        =======
        unexpose
        unexpose name=vol0-test discard=false

        A LUN that exports the image (see 'help expose') is deleted first,
        with its backstore.

        SEE ALSO
        ========
        expose
        """
        self.assert_root()
        discard = self.bool_param(discard, "discard", True)
        images = self.call("exposed", volume=self.name)
        picked = [e for e in images if name is None or e["name"] == name]
        if len(picked) == 1 and picked[0].get("served_by"):
            gone = self.lio.unexport(self.name, picked[0]["name"])
            self.shell.log.info(f"Deleted {', '.join(gone)}.")
            self.get_root().refresh()
        ex = self.call("unexpose", volume=self.name, name=name, discard=discard)
        kept = " (overlay kept)" if ex["writable"] and not ex["discarded"] else ""
        self.shell.log.info(f"Unexposed {ex['name']}{kept}.")

    def ui_complete_unexpose(self, parameters, text, current_param):
        if current_param == "name":
            images = self.quiet_call("exposed", volume=self.name) or []
            return one([e["name"] for e in images if e["name"].startswith(text)])
        if current_param == "discard":
            return one([b for b in ("true", "false") if b.startswith(text)])
        return []

    # ------------------------------------------------------------ jobs

    def ui_command_cancel(self, job):
        """
        Stops a running resync, rebaseline or retention job (it stops at its
        last checkpoint and resumes at the next start).  A restore or a baseline
        cannot be cancelled.

        SEE ALSO
        ========
        jobs
        """
        self.assert_root()
        info = self.call("cancel", job=job)
        self.shell.log.info(f"{info['kind']} {info['id']}: {info['state']}.")

    def ui_command_wait(self, job):
        """
        Follows a job with a live progress line until it ends (Ctrl-C detaches
        again; the job goes on).

        SEE ALSO
        ========
        jobs, cancel
        """
        info = self.call("job", job=job)
        if info["state"] in ("running", "cancelling"):
            follow(self, info)
        else:
            finished(self, info)

    def _complete_jobs(self, text, running: bool) -> list[str]:
        jobs = self.quiet_call("jobs", volume=self.name, all=not running) or []
        return one([j["id"] for j in jobs if j["id"].startswith(text)])

    def ui_complete_cancel(self, parameters, text, current_param):
        return self._complete_jobs(text, running=True) if current_param == "job" else []

    def ui_complete_wait(self, parameters, text, current_param):
        return self._complete_jobs(text, running=False) if current_param == "job" else []
