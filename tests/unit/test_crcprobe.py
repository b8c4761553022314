"""appliance.crcprobe: the daemon measures both CRC32C implementations and
takes the faster; both give the same checksums."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from appliance import crcprobe

from .helpers import info_logs


def fake_measure(rates):
    def measure(mode, python=sys.executable):
        return rates[mode]

    return measure


@pytest.mark.parametrize(
    ("rates", "want"),
    [
        # real hardware: the instruction wins by far
        ({"hardware": (True, 14e9), "force": (False, 1.5e9)}, "hardware"),
        # qemu TCG: the instruction is emulated bit by bit
        ({"hardware": (True, 40e6), "force": (False, 300e6)}, "force"),
        # close: the package's own choice stands
        ({"hardware": (True, 100e6), "force": (False, 120e6)}, "hardware"),
        # no instruction: one measurement, nothing to choose
        ({"hardware": (False, 1.5e9)}, "hardware"),
    ],
)
def test_choose_takes_the_clearly_faster(monkeypatch, rates, want):
    monkeypatch.setattr(crcprobe, "measure", fake_measure(rates))
    mode, figures = crcprobe.choose()
    assert mode == want
    assert figures["instruction"] is rates["hardware"][0]


def test_measure_runs_the_package_in_each_mode():
    hw, rate = crcprobe.measure(crcprobe.SOFTWARE)
    assert hw is False and rate > 0


def run_configure(tmp_path, env_extra, cache_text=None):
    cache = tmp_path / "mode"
    if cache_text is not None:
        cache.write_text(cache_text)
    code = (
        "import os, sys; from appliance import crcprobe; "
        f"r = crcprobe.configure({str(cache)!r}); import crc32c; "
        "print(r, os.environ.get('CRC32C_SW_MODE'), int(crc32c.hardware_based), "
        "crc32c.crc32c(b'123456789'), crcprobe.CHOSEN['source'].replace(' ', '_'))"
    )
    env = {k: v for k, v in os.environ.items() if k != crcprobe.ENV}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    *fields, source = out.stdout.split()
    return fields, cache, source


CHECK = str(0xE3069283)  # CRC-32C of "123456789"


def test_configure_uses_the_cache_before_the_package_is_imported(tmp_path):
    (result, env, hardware, crc), cache, source = run_configure(tmp_path, {}, "force\n")
    assert (result, env, hardware, crc, source) == ("force", "force", "0", CHECK, str(cache))
    (result, env, _, crc), _, _ = run_configure(tmp_path, {}, "hardware\n")
    assert (result, env, crc) == ("hardware", "None", CHECK)


def test_configure_measures_and_keeps_the_result(tmp_path):
    (result, env, hardware, crc), cache, source = run_configure(tmp_path, {})
    assert result in (crcprobe.HARDWARE, crcprobe.SOFTWARE) and source == "measured"
    # software: the variable says so; the instruction: the variable stays unset
    assert env == ("force" if result == crcprobe.SOFTWARE else "None")
    assert cache.read_text().strip() == result
    assert crc == CHECK


def test_configure_leaves_the_administrators_choice(tmp_path):
    (result, env, hardware, crc), cache, source = run_configure(tmp_path, {crcprobe.ENV: "force"})
    assert (result, env, hardware, crc, source) == ("None", "force", "0", CHECK, "environment")
    assert not cache.exists()


def test_configure_ignores_a_bad_cache(tmp_path):
    (result, env, _, _), cache, _ = run_configure(tmp_path, {}, "garbage")
    assert result in (crcprobe.HARDWARE, crcprobe.SOFTWARE)
    assert cache.read_text().strip() == result


def test_the_daemon_entry_point_does_not_import_the_package():
    """``cdp-handlerd`` (appliance.daemon:handlerd) calls configure() first;
    importing that package must not import crc32c already (configure would be
    too late)."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, appliance.daemon; print('crc32c' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "False"


def test_the_choice_is_logged_once_logging_is_set_up(monkeypatch):
    """configure() runs before the daemon configures its logs (JSON under
    systemd), so it only records; main() logs ``crc32c.chosen`` afterwards."""
    monkeypatch.setattr(crcprobe, "CHOSEN", {"implementation": "software", "source": "measured"})
    logs = info_logs(crcprobe.log_choice)
    assert logs == [
        {
            "event": "crc32c.chosen",
            "implementation": "software",
            "source": "measured",
            "log_level": "info",
        }
    ]
