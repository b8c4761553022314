"""The fio-in-the-VM report (tests/bench/fio_vm.py) without a VM: rounds,
medians and the ratio table from made-up figures."""

from __future__ import annotations

import json

import pytest

from tests.bench import fio_vm


def boot(iops: float, load: float = 1.0) -> dict:
    run = {"timings": {"boot": 30.0}, "load": (load, load, load)}
    for name, _ in fio_vm.WORKLOADS:
        run[name] = {"iops": iops, "mbs": iops / 250, "p50_ms": 5.0, "p99_ms": 9.0, "errors": 0}
    return run


def test_rounds_alternate_the_boot_order():
    assert fio_vm.round_order(["cdp", "fileio", "tcmu"], 3) == [
        (0, "cdp"), (0, "fileio"), (0, "tcmu"),
        (1, "tcmu"), (1, "fileio"), (1, "cdp"),
        (2, "cdp"), (2, "fileio"), (2, "tcmu"),
    ]  # fmt: skip


def test_the_median_round_is_a_real_round_and_every_round_is_kept():
    runs = [boot(900), boot(1300, load=2.5), boot(1100)]
    runs[2]["4k-randread-qd16"]["p99_ms"] = 7.0  # the median round's own columns
    out = fio_vm.combine(runs)
    r = out["4k-randread-qd16"]
    assert r["iops"] == 1100 and r["p99_ms"] == 7.0
    assert r["round_iops"] == [900, 1300, 1100]
    assert [b["load"] for b in out["boots"]] == [(1.0,) * 3, (2.5,) * 3, (1.0,) * 3]
    assert fio_vm.combine([runs[0]]) is runs[0]  # one round: as before


def test_the_report_gives_median_ratios_and_their_round_by_round_range():
    results = {
        "cdp": fio_vm.combine([boot(1000), boot(1200), boot(1100)]),
        "tcmu": fio_vm.combine([boot(1000), boot(1000), boot(1000)]),
        "fileio": fio_vm.combine([boot(2000), boot(2000), boot(2000)]),
    }
    text = fio_vm.section(results, 20, "now", 60)
    assert "`python -m tests.bench.fio_vm --runtime 20 --rounds 3`" in text
    assert "| 4k-randwrite-qd16 | cdp | 1100 (1000, 1200, 1100) |" in text
    assert (
        "| 64k-seqwrite-qd8 | 1.10x (round by round 1.00-1.20) | 0.55x (goal >= 0.7) (round" in text
    )
    assert "* tcmu round 3: boot 30; load 1.0/1.0/1.0" in text
    assert "With 3 rounds (every backstore booted 3 times" in text


def test_an_even_number_of_rounds_is_refused():
    with pytest.raises(SystemExit):
        fio_vm.main(["--rounds", "2", "--report-only"])


def test_a_report_only_rewrite_keeps_the_measuring_runs_header(tmp_path):
    """--report-only (new notes on old figures) says when the figures were
    measured and how long that took, not "0 min" of its own."""
    results = {
        kind: fio_vm.combine([boot(1000), boot(1000), boot(1000)])
        for kind in ("cdp", "tcmu", "fileio")
    }
    results["run"] = {"runtime": 20, "when": "2026-11-27 09:47 UTC", "took_s": 1980}
    merge, out = tmp_path / "r.json", tmp_path / "PERF.md"
    merge.write_text(json.dumps(results))
    assert (
        fio_vm.main(["--report-only", "--merge", str(merge), "--out", str(out), "--notes", "N"])
        == 0
    )
    text = out.read_text()
    assert (
        "--runtime 20 --rounds 3` (finished 2026-11-27 09:47 UTC; the last invocation took 33 min)"
        in text
    )
    assert text.rstrip().endswith("N\n<!-- fio-vm:end -->")
