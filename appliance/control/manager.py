"""VolumeManager: the protected volumes of one appliance, and the control ops on them.

Layout under the state root (``/var/lib/cdp`` on the appliance)::

    <root>/volumes/<name>/     one engine state folder per volume (volume.json
                               holds primary, secondary, size, mode)
    <root>/cdp.json            the saved cdp configuration (config.py), unless
                               another file is named
    <root>/exposed.json        the images exposed now, with the boot they were
                               exposed in (config.py): re-exposed by a daemon
                               restarted in the same boot

Contract of every public method: it runs on any thread (the server calls it
from a thread pool), returns plain JSON-able data, and fails with
:class:`~.protocol.ControlError` (the request's fault or a missing object) or
with the engine's own :class:`~appliance.engine.CdpError` / ``OSError``,
which the server translates (server.py ``to_control_error``).  A refused call
changes nothing.

A volume is opened once per process: the daemon (``cdp-handlerd`` embeds
this manager) borrows open volumes with :meth:`VolumeManager.attach_volume` /
:meth:`VolumeManager.attach_image` and never opens their folders itself.
While a backstore serves a volume or an image, removing that volume or
unexposing that image is refused (``busy``): delete the LUN first.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import structlog

from appliance import __version__
from appliance.engine import CdpError, ProtectedVolume
from appliance.engine import retention as engine_retention
from appliance.engine.volume import JOURNAL_DIR, VOLUME_FILE

from . import config as cfgfile
from .engine_view import durable_time, out_of_sync_reason, suspect_flags
from .images import ImageRegistry
from .jobs import NOT_CANCELLABLE, JobRegistry, describe
from .points import parse_point
from .protocol import VERSION, ControlError
from .text import check_name, human_bytes, iso

log = structlog.get_logger("cdp.control")

POINT_KINDS = ("baseline", "bookmark", "map")
CONFIG_FILE = "cdp.json"
EXPOSED_STATE = "exposed.json"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> str:
    """This boot's id (the kernel's ``boot_id``); ``""`` where there is none."""
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


class VolumeManager:
    """Owns the volumes under ``root``; see the module docstring."""

    def __init__(
        self,
        root: str,
        *,
        config_file: str | None = None,
        open_options: dict | None = None,
        volumes_dir: str | None = None,
        boot_id: str | None = None,
    ):
        self.root = os.path.abspath(root)
        self.boot_id = current_boot_id() if boot_id is None else boot_id
        self.exposed_state = os.path.join(self.root, EXPOSED_STATE)
        self.volumes_dir = os.path.abspath(volumes_dir or os.path.join(self.root, "volumes"))
        self.config_file = config_file or os.path.join(self.root, CONFIG_FILE)
        self.open_options = dict(open_options or {})
        self.jobs = JobRegistry()
        self._vols: dict[str, ProtectedVolume] = {}
        self._broken: dict[str, str] = {}  # volumes that failed to open: why
        self._served: dict[str, str] = {}  # volume or image name -> backstore serving it
        self._implicit: set[str] = set()  # images exposed only for a backstore
        self.images = ImageRegistry()
        self._lock = threading.RLock()

    # ------------------------------------------------------------ lifecycle

    def start(self, *, apply_config: bool = True) -> dict:
        """Open every volume folder; re-expose the images exposed when a daemon
        of this same boot stopped (``exposed.json``); then re-expose images and
        re-set retention from the saved configuration, if there is one (volumes
        are never created at start)."""
        os.makedirs(self.volumes_dir, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(self.volumes_dir)):
            folder = os.path.join(self.volumes_dir, name)
            if not os.path.exists(os.path.join(folder, VOLUME_FILE)):
                continue
            try:
                self._vols[name] = ProtectedVolume.open(folder, **self.open_options)
                self._track_jobs(name)
            except (CdpError, OSError) as exc:
                self._broken[name] = str(exc)
                log.error("volume.open_failed", volume=name, error=str(exc))
        log.info("control.volumes_opened", volumes=sorted(self._vols), failed=sorted(self._broken))
        self._reexpose_running()
        if apply_config and os.path.exists(self.config_file):
            return self.restoreconfig(create_missing=False)
        return {"file": None, "errors": []}

    def close(self) -> None:
        """Close images (overlays are kept, flushed) and volumes."""
        self.images.close_all()
        with self._lock:
            vols, self._vols = self._vols, {}
        for name, vol in vols.items():
            try:
                vol.close()
            except Exception as exc:  # close the others; say which failed and why
                log.error("volume.close_failed", volume=name, error=repr(exc))

    def get(self, volume: str) -> ProtectedVolume:
        """The open volume named ``volume`` (for the daemon); ``ControlError(not_found)``."""
        with self._lock:
            vol = self._vols.get(volume)
            if vol is not None:
                return vol
            if volume in self._broken:
                raise ControlError(
                    "io_error", f"volume {volume} failed to open: {self._broken[volume]}"
                )
            known = ", ".join(sorted(self._vols)) or "none"
            raise ControlError("not_found", f"no volume named {volume!r} (volumes: {known})")

    # ------------------------------------------------------------ backstores (the daemon)

    def attach_volume(self, volume: str, backstore: str) -> ProtectedVolume:
        """The open volume for a backstore that serves it, opened now if its
        folder exists but was not opened at start (created by another tool).

        :raises ControlError: ``not_found``, ``io_error`` (failed to open), or
            ``busy`` (another backstore serves it).
        """
        with self._lock:
            vol = self._vols.get(volume)
            if vol is None and volume not in self._broken:
                folder = os.path.join(self.volumes_dir, volume)
                if os.path.exists(os.path.join(folder, VOLUME_FILE)):
                    try:
                        vol = ProtectedVolume.open(folder, **self.open_options)
                    except (CdpError, OSError) as exc:
                        self._broken[volume] = str(exc)
                        raise ControlError(
                            "io_error", f"volume {volume} failed to open: {exc}"
                        ) from None
                    self._vols[volume] = vol
                    self._track_jobs(volume)
            vol = self.get(volume)
            self._claim(volume, backstore)
            return vol

    def attach_image(self, volume: str, image: str, backstore: str):
        """The image a ``<volume>@<image>`` backstore serves: the exposed image
        of that name, else the point ``image`` names (bookmark or sequence
        number), exposed read-only now and unexposed by :meth:`release`.

        :returns: ``(Exposed, implicit)``.
        """
        with self._lock:
            ex = self.images.get(image)
            implicit = False
            if ex is None:
                vol = self.get(volume)
                ref = parse_point(int(image) if image.isdigit() else image)
                if ref.kind == "time":
                    raise ControlError(
                        "bad_argument", f"{image!r} is a time: expose it first and name the image"
                    )
                ex = self.images.add(volume, vol, ref, False, None)
                implicit = True
                self._implicit.add(ex.name)
            elif ex.volume != volume:
                raise ControlError("not_found", f"image {image} belongs to {ex.volume}")
            try:
                self._claim(ex.name, backstore)
            except ControlError:
                if implicit:
                    self._implicit.discard(ex.name)
                    self.images.remove(ex.name, volume, discard=True)
                raise
            return ex, implicit

    def _claim(self, name: str, backstore: str) -> None:
        have = self._served.get(name)
        if have is not None and have != backstore:
            raise ControlError("busy", f"{name} is already served by backstore {have}")
        self._served[name] = backstore

    def release(self, name: str, *, implicit_image: bool = False) -> None:
        """A backstore stopped serving ``name`` (a volume or an image).  The
        volume stays open for the control API; an image exposed only for the
        backstore is closed."""
        with self._lock:
            self._served.pop(name, None)
            if implicit_image and self.images.get(name) is not None:
                self._implicit.discard(name)
                self.images.remove(name, None, discard=True)

    def served_by(self, name: str) -> str | None:
        with self._lock:
            return self._served.get(name)

    def _refuse_if_served(self, name: str, what: str) -> None:
        backstore = self._served.get(name)
        if backstore is not None:
            raise ControlError(
                "busy",
                f"{what} {name} is served by backstore {backstore}: delete that backstore "
                "(and its LUNs) first",
            )

    def _track_jobs(self, name: str) -> list[dict]:
        vol = self._vols[name]
        for job in vol.jobs:
            self.jobs.track(name, job)
        return [describe(t) for t in self.jobs.all(name) if not t.job.done]

    # ------------------------------------------------------------ listing

    def hello(self) -> dict:
        from .server import OPS

        return {"protocol": VERSION, "server": f"cdp-appliance {__version__}", "ops": sorted(OPS)}

    def volumes(self) -> list[dict]:
        with self._lock:
            names = sorted(set(self._vols) | set(self._broken))
        out = []
        for name in names:
            try:
                out.append(self._summary(name, self.get(name)))
            except ControlError as exc:
                out.append({"name": name, "state": "failed", "summary": f"failed: {exc}"})
        return out

    def _lag(self, vol) -> tuple[int | None, float]:
        behind = vol.last_seq - vol._journal.durable_seq
        oos = vol.state == "out-of-sync"
        if not behind and not oos:
            return 0, 0.0
        t = durable_time(vol)
        return (None if oos else behind), (0.0 if t is None else max(0.0, time.time() - t))

    def _summary(self, name: str, vol) -> dict:
        lag_records, lag_seconds = self._lag(vol)
        journal = engine_retention.journal_bytes(vol)
        try:
            st = os.statvfs(vol.secondary_path)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        running = [t.id for t in self.jobs.all(name) if not t.job.done]
        for job in vol.jobs:
            jid = self.jobs.track(name, job)
            if jid not in running:
                running.append(jid)
        exposed = [e.name for e in self.images.of(name)]
        text = f"{vol.state}, {vol.mode}, lag {lag_seconds:.0f} s, journal {human_bytes(journal)}"
        text += f", {human_bytes(free)} free"
        if running:
            text += f", {len(running)} job" + ("s" if len(running) > 1 else "")
        if exposed:
            text += f", {len(exposed)} exposed"
        return {
            "name": name,
            "state": vol.state,
            "mode": vol.mode,
            "size": vol.size,
            "lag_records": lag_records,
            "lag_seconds": round(lag_seconds, 3),
            "journal_bytes": journal,
            "secondary_free_bytes": free,
            "jobs": running,
            "exposed": exposed,
            "summary": text,
        }

    def status(self, volume: str) -> dict:
        vol = self.get(volume)
        cap = vol.capacity()
        lag_records, lag_seconds = self._lag(vol)
        points = vol.points()
        newest = points[-1] if points else None
        by_kind: dict[str, int] = {}
        for p in points:
            by_kind[p.kind] = by_kind.get(p.kind, 0) + 1
        exposed = [e.to_dict() for e in self.images.of(volume)]
        return {
            "volume": volume,
            "uuid": str(vol.uuid),
            "state": vol.state,
            "mode": vol.mode,
            "size": vol.size,
            "block_size": vol.block_size,
            "region_size": vol.region_size,
            "primary": vol.primary_path,
            "secondary": vol.secondary_path,
            "last_seq": vol.last_seq,
            "durable_seq": vol._journal.durable_seq,
            "lag_records": lag_records,
            "lag_seconds": round(lag_seconds, 3),
            "out_of_sync_reason": out_of_sync_reason(vol),
            "journal_bytes": cap["journal_bytes"],
            "secondary_free_bytes": cap["secondary_free_bytes"],
            "secondary_total_bytes": cap["secondary_total_bytes"],
            "oldest_point": self._point(points[0], False) if points else None,
            "newest_point": self._point(newest, False) if newest else None,
            "points": cap["points"],
            "points_by_kind": by_kind,
            "points_by_tier": cap["points_by_kind"],
            "drl_dirty_regions": vol.drl_dirty_regions(),
            "retention": cap["retention"],
            "jobs": self._track_jobs(volume),
            "exposed": exposed,
        }

    # ------------------------------------------------------------ create / remove

    def create(
        self,
        volume: str,
        primary: str,
        secondary: str,
        size: int | None = None,
        block_size: int = 512,
        mode: str = "sync",
        region_size: int | None = None,
        segment_size: int | None = None,
    ) -> dict:
        """Protect ``primary`` with a journal in ``secondary``; a primary that holds
        data is copied in the background (the ``baseline`` job)."""
        check_name(volume, "volume")
        for what, path in (("primary", primary), ("secondary", secondary)):
            if not os.path.isabs(path):
                raise ControlError("bad_argument", f"{what} {path!r} is not an absolute path")
        options = dict(self.open_options)
        if region_size is not None:
            options["region_size"] = region_size
        if segment_size is not None:
            options["segment_size"] = segment_size
        with self._lock:
            if volume in self._vols or volume in self._broken:
                raise ControlError("exists", f"volume {volume} exists")
            folder = os.path.join(self.volumes_dir, volume)
            if os.path.exists(folder):
                raise ControlError("exists", f"state folder {folder} exists: remove it first")
            os.makedirs(self.volumes_dir, mode=0o700, exist_ok=True)
            made_secondary = not os.path.exists(secondary)
            os.makedirs(secondary, mode=0o700, exist_ok=True)
            try:
                vol = ProtectedVolume.create(
                    folder,
                    primary=primary,
                    secondary=secondary,
                    size=size,
                    block_size=block_size,
                    mode=mode,
                    **options,
                )
            except BaseException:
                if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, VOLUME_FILE)):
                    shutil.rmtree(folder, ignore_errors=True)
                if made_secondary:
                    shutil.rmtree(secondary, ignore_errors=True)
                raise
            self._vols[volume] = vol
            self._track_jobs(volume)
        log.info("control.volume_created", volume=volume, primary=primary, secondary=secondary)
        return self._summary(volume, vol)

    def remove(self, volume: str, confirm: bool = False) -> dict:
        """Stop protecting ``volume``: close it, delete its state folder and its
        journal.  The primary is never touched.  Needs ``confirm``."""
        if not confirm:
            raise ControlError(
                "bad_argument",
                f"removing {volume} deletes its whole history (journal and points): "
                "confirm it (confirm=true)",
            )
        with self._lock:
            folder = os.path.join(self.volumes_dir, volume)
            if volume in self._broken:
                self._broken.pop(volume)
                shutil.rmtree(folder, ignore_errors=True)
                return {"volume": volume, "removed": True, "journal": None}
            vol = self.get(volume)
            self._refuse_if_served(volume, "volume")
            images = [e.name for e in self.images.of(volume)]
            if images:
                raise ControlError(
                    "busy", f"volume {volume} has exposed images ({', '.join(images)}): unexpose"
                )
            running = [j.kind for j in vol.jobs]
            if running:
                raise ControlError(
                    "busy", f"volume {volume} runs {', '.join(running)}: wait or cancel first"
                )
            del self._vols[volume]
        journal = os.path.join(vol.secondary_path, JOURNAL_DIR)
        vol.close()
        self.jobs.forget_volume(volume)
        shutil.rmtree(journal, ignore_errors=True)
        shutil.rmtree(os.path.join(vol.secondary_path, "checkpoints"), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("control.volume_removed", volume=volume, journal=journal)
        return {"volume": volume, "removed": True, "journal": journal}

    # ------------------------------------------------------------ points

    def _point(self, p, suspect: bool) -> dict:
        return {
            "seq": p.seq,
            "time": p.time,
            "time_iso": iso(p.time),
            "kind": p.kind,
            "name": p.name,
            "suspect": suspect,
        }

    def bookmark(self, volume: str, name: str) -> dict:
        vol = self.get(volume)
        p = vol.bookmark(name)
        log.info("control.bookmark", volume=volume, name=name, seq=p.seq)
        return self._point(p, suspect_flags(vol, [p.seq])[0])

    def delete_bookmark(self, volume: str, name: str) -> dict:
        self.get(volume).delete_bookmark(name)
        log.info("control.bookmark_deleted", volume=volume, name=name)
        return {"volume": volume, "name": name, "deleted": True}

    def _bound(self, vol, text) -> tuple[str, float]:
        """A since/until filter as ("seq", n) or ("time", t)."""
        ref = parse_point(text)
        if ref.kind == "bookmark":
            for p in vol.points():
                if p.kind == "bookmark" and p.name == ref.value:
                    return "seq", p.seq
            raise ControlError("not_found", f"no bookmark named {ref.value!r}")
        return ref.kind, ref.value

    def points(
        self,
        volume: str,
        since: str | int | None = None,
        until: str | int | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Recoverable points, oldest first; ``limit`` keeps the newest N."""
        vol = self.get(volume)
        kinds = None
        if kind is not None:
            kinds = {k.strip() for k in kind.split(",") if k.strip()}
            bad = kinds - set(POINT_KINDS)
            if bad or not kinds:
                raise ControlError(
                    "bad_argument", f"bad kind {kind!r}: one or more of {', '.join(POINT_KINDS)}"
                )
        if limit is not None and limit < 1:
            raise ControlError("bad_argument", f"limit {limit} is not a positive number")
        pts = vol.points()
        if since is not None:
            k, v = self._bound(vol, since)
            pts = [p for p in pts if (p.seq if k == "seq" else p.time) >= v]
        if until is not None:
            k, v = self._bound(vol, until)
            pts = [p for p in pts if (p.seq if k == "seq" else p.time) <= v]
        if kinds is not None:
            pts = [p for p in pts if p.kind in kinds]
        if limit is not None:
            pts = pts[-limit:]
        flags = suspect_flags(vol, [p.seq for p in pts])
        return [self._point(p, s) for p, s in zip(pts, flags, strict=True)]

    # ------------------------------------------------------------ jobs

    def _job(self, volume: str, job) -> dict:
        return describe(self.jobs.get(self.jobs.track(volume, job)))

    def restore(self, volume: str, point: str | int, roll_forward_to: str | int | None = None):
        """Put ``point`` back on the primary (then roll forward to a later point)."""
        vol = self.get(volume)
        ref = parse_point(point)
        fwd = None if roll_forward_to is None else parse_point(roll_forward_to).engine_value()
        job = vol.restore(**ref.engine_kwargs(), roll_forward_to=fwd)
        log.warning("control.restore", volume=volume, point=ref.text, roll_forward_to=fwd)
        return self._job(volume, job)

    def rebaseline(self, volume: str) -> dict:
        return self._job(volume, self.get(volume).rebaseline())

    def resync(self, volume: str) -> dict:
        return self._job(volume, self.get(volume).resync())

    def list_jobs(self, volume: str | None = None, all: bool = False) -> list[dict]:
        names = [volume] if volume is not None else sorted(self._vols)
        for name in names:
            self._track_jobs(name)
        tracked = [t for name in names for t in self.jobs.all(name)]
        return [describe(t) for t in tracked if all or not t.job.done]

    def job(self, job: str) -> dict:
        return describe(self.jobs.get(job))

    def cancel(self, job: str) -> dict:
        t = self.jobs.get(job)
        why = NOT_CANCELLABLE.get(t.job.kind)
        if why is not None:
            raise ControlError("not_cancellable", why)
        if not t.job.done:
            t.job.cancel()
            log.warning("control.job_cancel", job=t.id, volume=t.volume)
        return describe(t)

    # ------------------------------------------------------------ retention

    def retention(
        self,
        volume: str,
        policy: str | None = None,
        clear: bool = False,
        apply: bool = False,
    ) -> dict:
        """Get, set (``policy``) or clear the retention policy; ``apply`` runs it now."""
        vol = self.get(volume)
        if policy is not None and clear:
            raise ControlError("bad_argument", "give either policy or clear, not both")
        if policy is not None:
            vol.set_retention(policy)
            log.info("control.retention_set", volume=volume, policy=vol.retention)
        elif clear:
            vol.set_retention(None)
            log.info("control.retention_cleared", volume=volume)
        out = {"volume": volume, "policy": vol.retention, "job": None}
        if apply:
            out["job"] = self._job(volume, vol.apply_retention())
        return out

    # ------------------------------------------------------------ exposed images

    def expose(
        self, volume: str, point: str | int, writable: bool = False, name: str | None = None
    ) -> dict:
        """Open an image of ``point`` and keep it by ``name`` (default ``<volume>-<seq>``).

        The exposure is durable (``exposed.json``) before this returns; if it
        cannot be written the image is closed again and the call fails."""
        vol = self.get(volume)
        with self._lock:
            ex = self.images.add(volume, vol, parse_point(point), writable, name)
            try:
                self._save_running()
            except BaseException:
                self.images.remove(ex.name, volume, discard=False)
                raise
        return ex.to_dict()

    def unexpose(
        self, name: str | None = None, volume: str | None = None, discard: bool = True
    ) -> dict:
        """Close an exposed image; a writable one's overlay is deleted unless
        ``discard`` is false (then exposing the same name at the same point
        reattaches it)."""
        with self._lock:
            self._refuse_if_served(self.images.find(name, volume).name, "image")
            ex = self.images.remove(name, volume, discard)
            self._implicit.discard(ex.name)
            self._save_running()
        return {**ex.to_dict(), "discarded": bool(ex.writable and discard)}

    def exposed(self, volume: str | None = None) -> list[dict]:
        """The exposed images; ``served_by`` names the backstore serving one."""
        with self._lock:
            return [
                {**e.to_dict(), "served_by": self._served.get(e.name)}
                for e in self.images.of(volume)
            ]

    def _save_running(self) -> None:
        """Rewrite ``exposed.json``: the images exposed by name now (not those
        a backstore exposed for itself: its cfgstring brings them back)."""
        exposed = [
            {"name": e.name, "volume": e.volume, "seq": e.seq, "writable": e.writable}
            for e in self.images.of()
            if e.name not in self._implicit
        ]
        cfgfile.write_atomic(self.exposed_state, cfgfile.dump_exposed(exposed, self.boot_id))

    def _reexpose_running(self) -> None:
        """At start: re-expose what a daemon of this boot had exposed.  Another
        boot's file is ignored (LIO restored its saved configuration; the saved
        ``cdp.json`` is what matches it) and rewritten."""
        try:
            boot_id, exposed = cfgfile.load_exposed(self.exposed_state)
        except ControlError as exc:
            log.error("control.exposed_state_unreadable", file=self.exposed_state, error=str(exc))
            exposed, boot_id = [], ""
        if not self.boot_id or boot_id != self.boot_id:
            exposed = []
        for e in exposed:
            try:
                self.images.add(
                    e["volume"],
                    self.get(e["volume"]),
                    parse_point(e["seq"]),
                    e["writable"],
                    e["name"],
                )
            except (ControlError, CdpError, OSError) as exc:
                log.error("control.reexpose_failed", image=e["name"], error=str(exc))
        if exposed:
            log.info("control.reexposed", images=[e["name"] for e in exposed])
        try:
            self._save_running()
        except OSError as exc:
            log.error("control.exposed_state_write_failed", file=self.exposed_state, error=str(exc))

    # ------------------------------------------------------------ configuration

    def saveconfig(self, file: str | None = None) -> dict:
        path = file or self.config_file
        with self._lock:
            vols = []
            for name, vol in sorted(self._vols.items()):
                vols.append(
                    {
                        "name": name,
                        "uuid": str(vol.uuid),
                        "primary": vol.primary_path,
                        "secondary": vol.secondary_path,
                        "size": vol.size,
                        "block_size": vol.block_size,
                        "mode": vol.mode,
                        "retention": vol.retention,
                    }
                )
            exposed = [
                {"name": e.name, "volume": e.volume, "seq": e.seq, "writable": e.writable}
                for e in self.images.of()
            ]
            self.images.flush()
            cfgfile.write_atomic(path, cfgfile.dump(vols, exposed))
        log.info("control.saveconfig", file=path, volumes=len(vols), exposed=len(exposed))
        return {"file": path, "volumes": len(vols), "exposed": len(exposed)}

    def restoreconfig(self, file: str | None = None, create_missing: bool = True) -> dict:
        """Bring the volumes to the saved configuration: create missing volumes,
        set retention, expose images.  Adds, never removes; each item that
        cannot be restored is one line in ``errors`` and the rest goes on."""
        path = file or self.config_file
        doc = cfgfile.load(path)
        out = {"file": path, "created": [], "retention": [], "exposed": [], "errors": []}
        for v in doc["volumes"]:
            try:
                self._restore_volume(v, create_missing, out)
            except (ControlError, CdpError, OSError) as exc:
                out["errors"].append(f"volume {v['name']}: {exc}")
        for e in doc["exposed"]:
            have = self.images.get(e["name"])
            if have is not None and have.volume == e["volume"] and have.seq == e["seq"]:
                continue
            try:
                self.expose(e["volume"], e["seq"], writable=e["writable"], name=e["name"])
                out["exposed"].append(e["name"])
            except (ControlError, CdpError, OSError) as exc:
                out["errors"].append(f"image {e['name']}: {exc}")
        log.info("control.restoreconfig", **{k: v for k, v in out.items() if v})
        return out

    def _restore_volume(self, v: dict, create_missing: bool, out: dict) -> None:
        name = v["name"]
        with self._lock:
            vol = self._vols.get(name)
        if vol is None:
            if not create_missing:
                raise ControlError("not_found", "in the configuration but not on this appliance")
            self.create(name, v["primary"], v["secondary"], v["size"], v["block_size"], v["mode"])
            out["created"].append(name)
            vol = self.get(name)
        else:
            for key, have in (
                ("uuid", str(vol.uuid)),
                ("primary", vol.primary_path),
                ("secondary", vol.secondary_path),
                ("mode", vol.mode),
            ):
                if v[key] != have and not (key == "uuid" and name in out["created"]):
                    raise ControlError(
                        "exists", f"on this appliance {key} is {have}, not {v[key]}: left as is"
                    )
        if v.get("retention") != vol.retention:
            vol.set_retention(v.get("retention"))
            out["retention"].append(name)
