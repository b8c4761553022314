"""Text for the console: tables, the status block, job lines.  Pure functions."""

from __future__ import annotations

from appliance.control.text import human_bytes, human_seconds, local_time


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, a dashed rule under the headers."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def points_table(points: list[dict]) -> str:
    rows = [
        [
            str(p["seq"]),
            local_time(p["time"]),
            p["kind"],
            p["name"] or "",
            "SUSPECT" if p["suspect"] else "",
        ]
        for p in points
    ]
    text = table(["SEQ", "TIME", "KIND", "NAME", "FLAGS"], rows)
    if any(p["suspect"] for p in points):
        text += (
            "\nSUSPECT: the journal may disagree with what the host saw at that point "
            "(written while out of sync, resyncing or restoring)."
        )
    return text


def jobs_table(jobs: list[dict]) -> str:
    rows = [
        [
            j["id"],
            j["volume"],
            j["kind"],
            j["state"],
            f"{100 * j['progress']:.1f}%",
            rate(j),
            human_seconds(j["eta_seconds"]) if j["state"] == "running" else "",
        ]
        for j in jobs
    ]
    return table(["JOB", "VOLUME", "KIND", "STATE", "DONE", "RATE", "ETA"], rows)


def rate(job: dict) -> str:
    r = job.get("rate_bytes_per_s")
    return "" if r is None else f"{human_bytes(r)}/s"


def progress_line(job: dict) -> str:
    """``restore-3  42.0%  1.7 GiB/4.0 GiB  85.3 MiB/s  ETA 0:27``"""
    parts = [job["id"], f"{100 * job['progress']:5.1f}%"]
    if job.get("total_bytes") is not None:
        parts.append(f"{human_bytes(job['done_bytes'])}/{human_bytes(job['total_bytes'])}")
        parts.append(rate(job))
    if job["state"] in ("running", "cancelling"):
        parts.append(f"ETA {human_seconds(job['eta_seconds'])}")
    if job["state"] != "running":
        parts.append(job["state"])
    return "  ".join(parts)


def point_text(p: dict | None) -> str:
    if p is None:
        return "none"
    name = f" {p['kind']} {p['name']}" if p.get("name") else f" {p['kind']}"
    return f"seq {p['seq']} at {local_time(p['time'])}{name}" + (
        " (suspect)" if p.get("suspect") else ""
    )


def status_text(st: dict) -> str:
    lag = f"{st['lag_seconds']:.1f} s"
    if st["lag_records"]:
        lag += f" ({st['lag_records']} writes not yet journaled)"
    lines = [
        (
            "state",
            st["state"] + (f" ({st['out_of_sync_reason']})" if st["out_of_sync_reason"] else ""),
        ),
        ("mode", st["mode"]),
        ("size", f"{human_bytes(st['size'])} ({st['block_size']}-byte blocks)"),
        ("primary", st["primary"]),
        ("secondary", st["secondary"]),
        ("RPO lag", lag),
        (
            "journal",
            f"{human_bytes(st['journal_bytes'])}, {human_bytes(st['secondary_free_bytes'])} free"
            f" of {human_bytes(st['secondary_total_bytes'])}",
        ),
        (
            "points",
            f"{st['points']} "
            + ", ".join(f"{k} {n}" for k, n in sorted(st["points_by_kind"].items())),
        ),
        ("oldest point", point_text(st["oldest_point"])),
        ("newest point", point_text(st["newest_point"])),
        ("DRL dirty", f"{st['drl_dirty_regions']} regions of {human_bytes(st['region_size'])}"),
        ("retention", st["retention"] or "none (everything is kept)"),
        ("last seq", f"{st['last_seq']} (durable {st['durable_seq']})"),
    ]
    for j in st["jobs"]:
        lines.append(("job", progress_line(j)))
    for e in st["exposed"]:
        mode = "writable" if e["writable"] else "read-only"
        lines.append(("exposed", f"{e['name']}: seq {e['seq']}, {mode}"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
