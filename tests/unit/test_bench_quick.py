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
    for name in ("journal appends", "random vol.write", "read 1 MiB", "peak RSS"):
        assert name in text
