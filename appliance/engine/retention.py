"""Retention: tiers of points, and fading old data out ([0026], [0036], [0042]).

**Policy syntax** (``vol.set_retention("all:48h,1h:14d,1d:90d")``): a comma
separated list of tiers ``<every>:<keep>``, youngest first.  ``every`` is
``all`` (every write is a point) or a duration (one point per that much
time: the newest delta-map boundary in each bucket); ``keep`` is how old a
point may get in that tier.  Durations are a number and a unit: ``s``, ``m``,
``h``, ``d``, ``w``.  ``keep`` grows from tier to tier.  An optional
``bookmarks:<keep>`` item keeps bookmarks that long (default: the last tier's
``keep``); a bookmark is kept until then or until it is deleted.

**Applying it** (a background job; also run by the housekeeping timer):

1. *Plan* on the level-0 delta maps: maps younger than the ``all`` tier stay
   as they are (every write reachable).  Older ones are grouped: each group
   ends at a kept boundary (a tier's bucket, a kept bookmark); all maps up to
   the oldest kept boundary form the new **base**; maps older than the
   last tier with no kept bookmark are dropped.
2. *Merge* each group into one **coarse** map (newest-wins); only its end
   point is offered any more (``PointNotAvailable`` inside it).
3. *Checkpoint*: the coarse maps are written to the secondary
   (``checkpoints/<seq>.ckpt``, see docs/FORMAT.md) before anything is deleted,
   so the catalog stays rebuildable: base and coarse maps from the checkpoint,
   the rest from the journal.
4. *Swap* the catalog's chain in one transaction (the merged LSM levels are
   rebuilt in the background) and the map engine's in-memory chain.
5. *Reclaim*: journal segments older than every kept record that no kept
   map references any more go to a small pool of segments for reuse (the
   block allocator of [0042]); the rest are deleted, so the space comes back.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from dataclasses import dataclass

import numpy as np
import structlog
from crc32c import crc32c

from .catalog import MapInfo
from .errors import InvalidArgument, JournalCorrupt
from .extents import ExtentMap

log = structlog.get_logger("cdp.retention")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
CKPT_MAGIC = b"CDPCKPT1"


def parse_duration(text: str) -> float:
    m = DURATION.match(text.strip())
    if not m:
        raise InvalidArgument(f"bad duration {text!r}: a number and one of s, m, h, d, w")
    return float(m.group(1)) * UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{int(seconds // UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Tier:
    every: float  # seconds between kept points; 0 = every write
    keep: float  # seconds of age


@dataclass(frozen=True)
class Policy:
    tiers: tuple[Tier, ...]
    bookmarks: float

    @classmethod
    def parse(cls, text: str) -> Policy:
        tiers, bookmarks = [], None
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise InvalidArgument("empty retention policy: give tiers like all:48h,1h:14d")
        for item in items:
            if item.count(":") != 1:
                raise InvalidArgument(f"bad retention tier {item!r}: write <every>:<keep>")
            every, keep = item.split(":")
            if every.strip() == "bookmarks":
                bookmarks = parse_duration(keep)
                continue
            e = 0.0 if every.strip() == "all" else parse_duration(every)
            k = parse_duration(keep)
            if tiers and (k <= tiers[-1].keep or e < tiers[-1].every or e == 0):
                raise InvalidArgument(
                    f"retention tier {item!r}: each tier must keep longer, with points no "
                    "closer together, than the one before it ('all' only first)"
                )
            if e and e > k:
                raise InvalidArgument(
                    f"retention tier {item!r}: one point per {every} cannot be kept only {keep}"
                )
            tiers.append(Tier(e, k))
        if not tiers:
            raise InvalidArgument("a retention policy needs at least one tier")
        return cls(tuple(tiers), bookmarks if bookmarks is not None else tiers[-1].keep)

    def __str__(self) -> str:
        parts = [
            f"{'all' if t.every == 0 else format_duration(t.every)}:{format_duration(t.keep)}"
            for t in self.tiers
        ]
        if self.bookmarks != self.tiers[-1].keep:
            parts.append(f"bookmarks:{format_duration(self.bookmarks)}")
        return ",".join(parts)

    def tier_of(self, age: float) -> int | None:
        for i, t in enumerate(self.tiers):
            if age <= t.keep:
                return i
        return None


@dataclass
class Plan:
    groups: list[list[int]]  # level-0 indexes merged into one coarse map each; [0] = base
    fine_from: int  # index of the first map kept as it is
    dropped_maps: int
    kept_points: dict[str, int]


def plan(
    maps: list[MapInfo], policy: Policy, now_ns: int, bookmarks: dict[int, int]
) -> Plan | None:
    """Decide the new chain.  ``bookmarks``: seq -> time_ns.  None: nothing to do."""
    n = len(maps)
    if n < 2:
        return None
    age = [max(0.0, (now_ns - m.last_time_ns) / 1e9) for m in maps]
    fine_keep = policy.tiers[0].keep if policy.tiers[0].every == 0 else -1.0
    fine_from = n
    while fine_from > 0 and age[fine_from - 1] <= fine_keep:
        fine_from -= 1
    kept, tiers_count = [], {}
    for i in range(fine_from):
        m = maps[i]
        t = policy.tier_of(age[i])
        keep = False
        if m.last_seq in bookmarks and (now_ns - bookmarks[m.last_seq]) / 1e9 <= policy.bookmarks:
            keep = True
        elif t is not None:
            tier = policy.tiers[t]
            if tier.every == 0:
                keep = True
            else:
                bucket = m.last_time_ns // int(tier.every * 1e9)
                nxt = maps[i + 1] if i + 1 < n else None
                keep = (
                    nxt is None
                    or i + 1 >= fine_from
                    or policy.tier_of(age[i + 1]) != t
                    or nxt.last_time_ns // int(tier.every * 1e9) != bucket
                )
        if keep:
            kept.append(i)
            label = (
                "bookmark"
                if t is None
                else (
                    "all" if policy.tiers[t].every == 0 else format_duration(policy.tiers[t].every)
                )
            )
            tiers_count[label] = tiers_count.get(label, 0) + 1
    if fine_from < n:
        tiers_count["all"] = tiers_count.get("all", 0) + (n - fine_from)
    if not kept:
        if fine_from == 0:
            return None
        kept = [fine_from - 1]  # everything older fades into the base
    groups, start = [], 0
    for k in kept:
        groups.append(list(range(start, k + 1)))
        start = k + 1
    if start < fine_from:  # maps after the last kept boundary, before the fine tier
        groups[-1] = groups[-1] + list(range(start, fine_from))
    if all(len(g) == 1 and maps[g[0]].records == 0 for g in groups):
        return None  # already coarse and nothing dropped
    return Plan(groups, fine_from, sum(len(g) for g in groups) - len(groups), tiers_count)


# ---------------------------------------------------------------- checkpoints


def write_checkpoint(
    io, folder: str, volume_uuid: str, maps: list[tuple[dict, ExtentMap]], extra: dict
) -> str:
    """Coarse maps of the chain, so the catalog can be rebuilt after reclaim."""
    from .fileio import write_file_atomic

    os.makedirs(folder, mode=0o700, exist_ok=True)
    head = {"format": 1, "uuid": volume_uuid, "maps": [m for m, _ in maps], **extra}
    for meta, em in maps:
        meta["extents"] = len(em)
    hjson = json.dumps(head).encode()
    body = b"".join(
        np.stack([em.starts, em.ends, em.addrs], axis=1).astype("<i8").tobytes() for _, em in maps
    )
    blob = CKPT_MAGIC + struct.pack("<I", len(hjson)) + hjson + body
    blob += struct.pack("<I", crc32c(blob))
    last = maps[-1][0]["last_seq"]
    path = os.path.join(folder, f"{last:016x}.ckpt")
    write_file_atomic(io, path, blob)
    for name in os.listdir(folder):  # older checkpoints are superseded
        if name.endswith(".ckpt") and os.path.join(folder, name) != path:
            os.unlink(os.path.join(folder, name))
    return path


def read_checkpoint(folder: str, volume_uuid: str) -> tuple[dict, list[ExtentMap]] | None:
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))
    except FileNotFoundError:
        return None
    if not names:
        return None
    path = os.path.join(folder, names[-1])
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:8] != CKPT_MAGIC or len(blob) < 16:
        raise JournalCorrupt(f"checkpoint {path}: bad magic")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if crc != crc32c(blob[:-4]):
        raise JournalCorrupt(f"checkpoint {path}: crc mismatch")
    (hlen,) = struct.unpack_from("<I", blob, 8)
    head = json.loads(blob[12 : 12 + hlen])
    if head["uuid"] != volume_uuid:
        raise JournalCorrupt(f"checkpoint {path} belongs to volume {head['uuid']}")
    pos, out = 12 + hlen, []
    for meta in head["maps"]:
        k = meta["extents"]
        arr = np.frombuffer(blob, dtype="<i8", count=3 * k, offset=pos).reshape(k, 3)
        out.append(
            ExtentMap.from_arrays(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), check=False)
            if k
            else ExtentMap.empty()
        )
        pos += 24 * k
    return head, out


def now_ns() -> int:
    return time.time_ns()


# ---------------------------------------------------------------- applying


def apply(vol, policy: Policy, now: int | None = None, *, emergency: bool = False) -> dict:
    """Plan, merge, checkpoint, swap, reclaim (steps 1-5 of the module docstring)."""
    now = now_ns() if now is None else now
    maps_engine = vol._maps
    before = journal_bytes(vol)
    vol._journal.sync()
    with maps_engine.structure_lock:
        with maps_engine._lock:
            chain = list(maps_engine.level0)
            marks = dict(maps_engine.bookmarks)
            tail_addr = maps_engine.tail[0].addr if maps_engine.tail else None
        by_seq = {seq: t for seq, t in marks.values()}
        p = plan(chain, policy, now, by_seq)
        if p is not None and emergency and len(p.groups) > 1:
            half = (len(p.groups) + 1) // 2  # the oldest points fade first
            p.groups = [sum(p.groups[:half], [])] + p.groups[half:]
        if p is None:
            return {
                "maps_merged": 0,
                "bytes_reclaimed": 0,
                "segments_reclaimed": 0,
                "journal_bytes": before,
                "kept_points": {},
            }
        coarse = []
        for g in p.groups:
            first, last = chain[g[0]], chain[g[-1]]
            if len(g) == 1 and first.records == 0:
                em = vol._catalog.load_map(first.id)
            else:
                em = ExtentMap.merge([vol._catalog.load_map(chain[i].id) for i in g])
            coarse.append(
                (
                    {
                        "first_seq": first.first_seq,
                        "last_seq": last.last_seq,
                        "first_time_ns": first.first_time_ns,
                        "last_time_ns": last.last_time_ns,
                        "j_last": last.j_last,
                        "j_end": last.j_end,
                        "suspect": last.suspect,
                        "fixup": last.fixup,
                    },
                    em,
                )
            )
        oldest = coarse[0][0]["last_seq"]
        kept_seqs = {m["last_seq"] for m, _ in coarse} | {m.last_seq for m in chain[p.fine_from :]}
        drop_marks = [
            name
            for name, (seq, t) in marks.items()
            if seq < oldest or (seq <= coarse[-1][0]["last_seq"] and seq not in kept_seqs)
        ]
        last_coarse = chain[p.groups[-1][-1]]
        write_checkpoint(
            vol._io,
            os.path.join(vol.secondary_path, "checkpoints"),
            str(vol.uuid),
            coarse,
            {
                "oldest_seq": oldest,
                "resume_addr": last_coarse.j_end,
                "resume_seq": last_coarse.last_seq,
                "resume_time_ns": last_coarse.last_time_ns,
                "baseline_done_seq": maps_engine.baseline_done_seq,
                "baseline_done_time_ns": maps_engine.baseline_done_time_ns,
                "baseline_end": maps_engine.baseline_end,
                "bookmarks": {
                    k: v
                    for k, v in marks.items()
                    if k not in drop_marks and v[0] <= last_coarse.last_seq
                },
            },
        )
        drop_ids = [chain[i].id for g in p.groups for i in g]
        keep_ids = [m.id for m in chain[p.fine_from :]]
        new = vol._catalog.replace_chain(
            coarse, keep_ids, drop_ids, drop_marks, {"oldest_seq": str(oldest)}
        )
        maps_engine.swap_chain(new, drop_marks, oldest)
        protect = [last_coarse.j_last >> 32, vol._journal.current_segment]
        if p.fine_from < len(chain):
            protect.append(chain[p.fine_from].j_first >> 32)
        if tail_addr is not None:
            protect.append(tail_addr >> 32)
    freed = reclaim(vol, min(protect))
    result = {
        "maps_merged": p.dropped_maps,
        "coarse_maps": len(coarse),
        "bookmarks_dropped": len(drop_marks),
        "oldest_seq": oldest,
        "kept_points": p.kept_points,
        "bytes_reclaimed": freed["bytes"],
        "segments_reclaimed": freed["segments"],
        "journal_bytes": journal_bytes(vol),
    }
    log.info(
        "retention.applied",
        policy=str(policy),
        emergency=emergency,
        **{k: v for k, v in result.items() if k != "kept_points"},
    )
    return result


def journal_bytes(vol) -> int:
    from .journal import list_segments, segment_path

    return sum(
        os.path.getsize(segment_path(vol._journal.folder, s))
        for s in list_segments(vol._journal.folder)
    )


def reclaim(vol, protect_from: int) -> dict:
    """Move unreferenced segments older than ``protect_from`` to the pool, or delete them."""
    from .journal import list_segments, segment_path

    folder = vol._journal.folder
    referenced = vol._catalog.referenced_segments()
    pool = os.path.join(folder, "free")
    os.makedirs(pool, exist_ok=True)
    pooled = len(os.listdir(pool))
    nbytes = count = 0
    for segno in list_segments(folder):
        if segno >= protect_from or segno in referenced:
            continue
        path = segment_path(folder, segno)
        vol._journal.forget_segment(segno)
        nbytes += os.path.getsize(path)
        count += 1
        if pooled < vol.segment_pool:
            os.replace(path, os.path.join(pool, f"{segno:016x}.free"))
            pooled += 1
        else:
            os.unlink(path)
    if count:
        vol._io.fsync_dir(folder)
    return {"bytes": nbytes, "segments": count}
