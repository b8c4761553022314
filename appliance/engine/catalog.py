"""The catalog: delta maps, their extents, bookmarks and segments in SQLite.

The journal is the truth for data; the catalog is an index over it that can
be rebuilt from the journal at any time (``ProtectedVolume.open`` does so
when the file is missing or unreadable).  One connection, shared by the
engine's threads under a lock; WAL mode so readers of other processes (the
shell's status) do not block the map engine.  The schema is in
docs/FORMAT.md; migrations are named functions (sqlite-utils ``Migrations``),
and ``PRAGMA user_version`` carries the schema version so that a catalog
written by newer software is refused instead of misread.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

import numpy as np
import sqlite_utils
from sqlite_utils.migrations import Migrations

from .errors import CatalogError, CatalogVersionError
from .extents import ExtentMap

SCHEMA_VERSION = 2

migrations = Migrations("cdp-catalog")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["volume"].create(
        {"uuid": str, "size": int, "block_size": int, "baseline_done_seq": int}, pk="uuid"
    )
    db["delta_map"].create(
        {
            "id": int,
            "level": int,
            "idx": int,
            "first_seq": int,
            "last_seq": int,
            "first_time_ns": int,
            "last_time_ns": int,
            "j_first": int,
            "j_last": int,
            "j_end": int,
            "records": int,
            "extents": int,
            "suspect": int,
        },
        pk="id",
        not_null={"level", "idx", "first_seq", "last_seq"},
        defaults={"suspect": 0},
    )
    db["delta_map"].create_index(["level", "idx"], unique=True)
    db.execute("""CREATE TABLE extent (
        map_id INTEGER NOT NULL, p_start INTEGER NOT NULL, p_end INTEGER NOT NULL,
        addr INTEGER NOT NULL, PRIMARY KEY (map_id, p_start)) WITHOUT ROWID""")
    db["bookmark"].create({"name": str, "seq": int, "time_ns": int}, pk="name")
    db["bookmark"].create_index(["seq"])
    db["segment"].create(
        {"segno": int, "first_seq": int, "last_seq": int, "bytes": int}, pk="segno"
    )
    db.execute("PRAGMA user_version = 1")


@migrations()
def m002_fixup_and_jobs(db: sqlite_utils.Database) -> None:
    """Re-baseline and resync: fix-up maps, and checkpoints of running jobs ([0062])."""
    db.execute("ALTER TABLE delta_map ADD COLUMN fixup INTEGER NOT NULL DEFAULT 0")
    db["job"].create({"name": str, "state": str, "regions": bytes}, pk="name")
    db.execute("PRAGMA user_version = 2")


@dataclass(frozen=True, slots=True)
class MapInfo:
    id: int
    level: int
    idx: int
    first_seq: int
    last_seq: int
    first_time_ns: int
    last_time_ns: int
    j_first: int
    j_last: int
    j_end: int
    records: int
    extents: int
    suspect: bool = False
    fixup: bool = False


_MAP_COLS = (
    "id, level, idx, first_seq, last_seq, first_time_ns, last_time_ns, j_first, "
    "j_last, j_end, records, extents, suspect, fixup"
)

_EXTENTS_IN = """SELECT p_start, p_end, addr FROM extent WHERE map_id = ?1 AND p_start >=
    COALESCE((SELECT p_start FROM extent WHERE map_id = ?1 AND p_start <= ?2
              ORDER BY p_start DESC LIMIT 1), 0)
    AND p_start < ?3 ORDER BY p_start"""


def _extent_rows(map_id: int, extents: ExtentMap) -> list[list[int]]:
    """The ``extent`` table's rows of a map, built by numpy (no Python step per row)."""
    ids = np.full(len(extents), map_id, dtype=np.int64)
    return np.column_stack((ids, extents.starts, extents.ends, extents.addrs)).tolist()


class Catalog:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                conn.close()
                raise CatalogVersionError(version, SCHEMA_VERSION)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self.db = sqlite_utils.Database(conn)
            migrations.apply(self.db)
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != SCHEMA_VERSION:
                raise CatalogError(
                    f"schema version {version} after migrations, expected {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: {exc}") from exc
        self.conn = conn

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def quick_check(self) -> str:
        with self._lock:
            rows = self.conn.execute("PRAGMA quick_check").fetchall()
        return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])

    def integrity_check(self) -> str:
        with self._lock:
            return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------ meta, volume

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )

    def ensure_volume(self, uuid: str, size: int, block_size: int) -> None:
        with self._lock:
            row = self.conn.execute("SELECT uuid, size, block_size FROM volume").fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO volume (uuid, size, block_size) VALUES (?, ?, ?)",
                    (uuid, size, block_size),
                )
                self.set_meta("volume_uuid", uuid)
            elif tuple(row) != (uuid, size, block_size):
                raise CatalogError(
                    f"catalog describes volume {row[0]} ({row[1]} bytes, block "
                    f"{row[2]}), not {uuid} ({size} bytes, block {block_size})"
                )

    def baseline_done_seq(self) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT baseline_done_seq FROM volume").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ maps

    def maps(self) -> list[MapInfo]:
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_MAP_COLS} FROM delta_map ORDER BY level, idx"
            ).fetchall()
        return [MapInfo(*r[:-2], bool(r[-2]), bool(r[-1])) for r in rows]

    def add_map(
        self,
        level: int,
        idx: int,
        first_seq: int,
        last_seq: int,
        first_time_ns: int,
        last_time_ns: int,
        extents: ExtentMap,
        *,
        j_first: int = 0,
        j_last: int = 0,
        j_end: int = 0,
        records: int = 0,
        bookmarks: list[tuple[str, int, int]] = (),
        baseline_done_seq: int | None = None,
        segments: list[tuple[int, int, int, int]] = (),
        meta: dict[str, str] | None = None,
        unbookmarks: list[str] = (),
    ) -> MapInfo:
        """Insert one map with its extents (and what closed with it) atomically."""
        with self._lock:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute(
                    "INSERT INTO delta_map (level, idx, first_seq, last_seq, first_time_ns, "
                    "last_time_ns, j_first, j_last, j_end, records, extents, suspect) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        level,
                        idx,
                        first_seq,
                        last_seq,
                        first_time_ns,
                        last_time_ns,
                        j_first,
                        j_last,
                        j_end,
                        records,
                        len(extents),
                    ),
                )
                map_id = cur.lastrowid
                c.executemany(
                    "INSERT INTO extent (map_id, p_start, p_end, addr) VALUES (?, ?, ?, ?)",
                    _extent_rows(map_id, extents),
                )
                c.executemany(
                    "INSERT OR REPLACE INTO bookmark (name, seq, time_ns) VALUES (?, ?, ?)",
                    bookmarks,
                )
                if baseline_done_seq is not None:
                    c.execute("UPDATE volume SET baseline_done_seq = ?", (baseline_done_seq,))
                c.executemany("DELETE FROM bookmark WHERE name = ?", [(n,) for n in unbookmarks])
                for key, value in (meta or {}).items():
                    c.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
                    )
                for segno, fseq, lseq, nbytes in segments:
                    c.execute(
                        "INSERT INTO segment (segno, first_seq, last_seq, bytes) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (segno) DO UPDATE SET "
                        "last_seq = excluded.last_seq, bytes = excluded.bytes",
                        (segno, fseq, lseq, nbytes),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return MapInfo(
            map_id,
            level,
            idx,
            first_seq,
            last_seq,
            first_time_ns,
            last_time_ns,
            j_first,
            j_last,
            j_end,
            records,
            len(extents),
        )

    def extents_in(self, map_id: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """Extents of a map that may intersect [start, end), unclipped, sorted."""
        with self._lock:
            return self.conn.execute(_EXTENTS_IN, (map_id, start, end)).fetchall()

    def load_map(self, map_id: int) -> ExtentMap:
        with self._lock:
            rows = self.conn.execute(
                "SELECT p_start, p_end, addr FROM extent WHERE map_id = ? ORDER BY p_start",
                (map_id,),
            ).fetchall()
        if not rows:
            return ExtentMap.empty()
        arr = np.array(rows, dtype=np.int64)
        return ExtentMap.from_arrays(arr[:, 0], arr[:, 1], arr[:, 2], check=False)

    # ------------------------------------------------------------ bookmarks

    def bookmarks(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self.conn.execute("SELECT name, seq, time_ns FROM bookmark").fetchall()
        return {name: (seq, t) for name, seq, t in rows}

    def table_counts(self) -> dict[str, int]:
        with self._lock:
            return {
                t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("delta_map", "extent", "bookmark", "segment")
            }

    def set_map_flags(
        self, map_ids: list[int], *, suspect: bool | None = None, fixup: bool | None = None
    ) -> None:
        with self._lock:
            for map_id in map_ids:
                if suspect is not None:
                    self.conn.execute(
                        "UPDATE delta_map SET suspect = ? WHERE id = ?", (int(suspect), map_id)
                    )
                if fixup is not None:
                    self.conn.execute(
                        "UPDATE delta_map SET fixup = ? WHERE id = ?", (int(fixup), map_id)
                    )

    def map_regions(self, map_id: int, region_size: int):
        """The set of regions a map's extents touch (a pyroaring BitMap)."""
        from pyroaring import BitMap

        out = BitMap()
        with self._lock:
            rows = self.conn.execute(
                "SELECT p_start, p_end FROM extent WHERE map_id = ?", (map_id,)
            ).fetchall()
        for s, e in rows:
            out.add_range(s // region_size, (e - 1) // region_size + 1)
        return out

    # ------------------------------------------------------------ job checkpoints

    def save_job(self, name: str, state: str, regions: bytes = b"") -> None:
        with self._lock:
            self.conn.execute(
                "INSERT OR REPLACE INTO job (name, state, regions) VALUES (?, ?, ?)",
                (name, state, regions),
            )

    def load_job(self, name: str) -> tuple[str, bytes] | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT state, regions FROM job WHERE name = ?", (name,)
            ).fetchone()
        return (row[0], bytes(row[1] or b"")) if row else None

    def delete_job(self, name: str) -> None:
        with self._lock:
            self.conn.execute("DELETE FROM job WHERE name = ?", (name,))

    # ------------------------------------------------------------ retention

    def replace_chain(
        self,
        coarse: list[tuple[dict, ExtentMap]],
        keep_ids: list[int],
        drop_ids: list[int],
        drop_bookmarks: list[str],
        meta: dict[str, str],
    ) -> list[MapInfo]:
        """Retention's swap, in one transaction: coarse maps first, then ``keep_ids``.

        Merged levels are dropped (the map engine rebuilds them).  Returns the
        new level-0 chain in order.

        Durable when this returns (``synchronous = FULL`` for this commit: the
        WAL is synced), because the reclaim that follows deletes the segments
        the old chain points at; with ``NORMAL`` a power loss could roll the
        swap back after the reclaim (regression: chain_swap_durable_before_reclaim).
        """
        c = self.conn
        with self._lock:
            c.execute("PRAGMA synchronous = FULL")
            try:
                return self._replace_chain(c, coarse, keep_ids, drop_ids, drop_bookmarks, meta)
            finally:
                c.execute("PRAGMA synchronous = NORMAL")

    def _replace_chain(self, c, coarse, keep_ids, drop_ids, drop_bookmarks, meta):
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "DELETE FROM extent WHERE map_id IN (SELECT id FROM delta_map WHERE level > 0)"
            )
            c.execute("DELETE FROM delta_map WHERE level > 0")
            for map_id in drop_ids:
                c.execute("DELETE FROM extent WHERE map_id = ?", (map_id,))
                c.execute("DELETE FROM delta_map WHERE id = ?", (map_id,))
            c.execute("UPDATE delta_map SET idx = -1 - idx WHERE level = 0")
            for idx, (m, em) in enumerate(coarse):
                cur = c.execute(
                    "INSERT INTO delta_map (level, idx, first_seq, last_seq, first_time_ns, "
                    "last_time_ns, j_first, j_last, j_end, records, extents, suspect, fixup) "
                    "VALUES (0, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?, ?)",
                    (
                        idx,
                        m["first_seq"],
                        m["last_seq"],
                        m["first_time_ns"],
                        m["last_time_ns"],
                        m["j_last"],
                        m["j_end"],
                        len(em),
                        int(m.get("suspect", False)),
                        int(m.get("fixup", False)),
                    ),
                )
                map_id = cur.lastrowid
                c.executemany(
                    "INSERT INTO extent (map_id, p_start, p_end, addr) VALUES (?, ?, ?, ?)",
                    _extent_rows(map_id, em),
                )
            for k, map_id in enumerate(keep_ids):
                c.execute("UPDATE delta_map SET idx = ? WHERE id = ?", (len(coarse) + k, map_id))
            c.executemany("DELETE FROM bookmark WHERE name = ?", [(b,) for b in drop_bookmarks])
            for key, value in meta.items():
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return [m for m in self.maps() if m.level == 0]

    def referenced_segments(self) -> set[int]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT DISTINCT addr >> 32 FROM extent WHERE addr >= 0"
            ).fetchall()
        return {r[0] for r in rows}
