"""The fio-in-the-VM section of docs/PERFORMANCE.md, between two markers.

``tests.bench.fio_vm`` writes it; ``tests.bench.run`` regenerates the rest of
the file and must carry it over unchanged.  Both go through these helpers.
"""

from __future__ import annotations

BEGIN = "<!-- fio-vm:begin -->"
END = "<!-- fio-vm:end -->"


def extract(text: str) -> str | None:
    """The marked section, markers included, or None if the text has none."""
    start = text.find(BEGIN)
    end = text.find(END, start)
    if start < 0 or end < 0:
        return None
    return text[start : end + len(END)]


def splice(text: str, section: str) -> str:
    """``text`` with its marked section replaced by ``section`` (appended if missing)."""
    if not section.startswith(BEGIN) or not section.endswith(END):
        raise ValueError("section must start and end with the fio-vm markers")
    old = extract(text)
    if old is not None:
        return text.replace(old, section, 1)
    return text.rstrip("\n") + "\n\n" + section + "\n"
