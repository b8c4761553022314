"""Keep the benchmark script working: run it in quick mode (figures meaningless)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_writes_a_report(tmp_path):
    out = tmp_path / "PERFORMANCE.md"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.run",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "--quick",
        ],
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
    )
    text = out.read_text()
    assert "Quick mode" in text
    for name in ("journal appends", "random vol.write", "read 1 MiB", "peak RSS",
                 "through the compiled loop"):  # fmt: skip
        assert name in text


def test_a_full_run_keeps_the_reading_notes_and_the_fio_section(tmp_path):
    """`make bench` rewrites the table; the hand-written notes after it and the
    fio section (another benchmark's) come through unchanged."""
    from tests.bench import fio_section
    from tests.bench.run import write_report

    out = tmp_path / "PERFORMANCE.md"
    reading = "## Reading these figures\n\n* **A note.** Kept.\n"
    fio = f"{fio_section.BEGIN}\n## fio\n\n| a | b |\n{fio_section.END}"
    out.write_text(f"# Performance\n\n| old | table |\n\n{reading}\n{fio}\n")
    rows = [{"name": "new row", "ratio": 1.5, "goal": ">= 1", "detail": "d"}]
    write_report(out, rows, ["--out", str(out)], quick=False)
    text = out.read_text()
    assert "| new row | 1.50x | >= 1 | d |" in text and "| old | table |" not in text
    assert text.count(reading) == 1 and text.count(fio) == 1
    assert text.index("new row") < text.index(reading) < text.index(fio)
    write_report(out, rows, ["--out", str(out)], quick=False)  # and again: nothing doubles
    assert out.read_text() == text
