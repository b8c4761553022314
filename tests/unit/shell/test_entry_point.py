"""The targetcli-cdp entry point, one-shot, as a process: output, exit codes, one-line errors."""

import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EXT = os.path.join(REPO, "targetcli-ext")


def env(tmp_path, **extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([EXT, REPO, e.get("PYTHONPATH", "")])
    e["TARGETCLI_HOME"] = str(tmp_path / "tchome")
    e.update(extra)
    return e


def cli(tmp_path, sock, *args, python=sys.executable, cdp_only=True):
    cmd = [python, "-m", "targetcli_cdp.main", "--socket", sock]
    if cdp_only:
        cmd.insert(3, "--cdp-only")
    return subprocess.run(
        [*cmd, *args], env=env(tmp_path), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_one_shot_commands(served, vol0, tmp_path):
    p = cli(tmp_path, served.path, "/cdp/vol0", "bookmark", "name=x")
    assert p.returncode == 0, p.stderr
    assert "Bookmark x is seq" in p.stdout
    p = cli(tmp_path, served.path, "ls")
    assert "o- vol0" in p.stdout and "in-sync" in p.stdout
    p = cli(tmp_path, served.path, "/cdp/vol0", "restore", "point=x")
    assert p.returncode == 0 and "done in" in p.stdout
    assert "restore-" in p.stdout and "100.0%" in p.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("/cdp/vol0", "bookmark", "name=first"), "bookmark 'first' already exists"),
        (("/cdp/vol0", "restore", "point=-3650d"), "no point at or before time"),
        (("/cdp/vol0", "restore"), "Missing required parameter point"),
        (("/cdp/nope", "status"), "No such path /cdp/nope"),
    ],
)
def test_one_shot_errors_are_one_line_exit_1(served, vol0, tmp_path, args, words):
    p = cli(tmp_path, served.path, *args)
    assert p.returncode == 1
    assert words in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_daemon_down(tmp_path):
    p = cli(tmp_path, str(tmp_path / "none.sock"), "/cdp", "jobs")
    assert p.returncode == 1
    assert "cannot reach the cdp daemon" in p.stderr and "Traceback" not in p.stderr


def test_help_and_version(tmp_path):
    p = cli(tmp_path, "/x", "--help")
    assert p.returncode == 0 and "--cdp-only" in p.stderr
    p = cli(tmp_path, "/x", "--version")
    assert "targetcli-cdp version" in p.stderr


def test_without_targetcli_it_falls_back_to_cdp_only(served, vol0, tmp_path):
    p = cli(tmp_path, served.path, "ls", "/cdp", cdp_only=False)
    if "showing /cdp only" not in p.stderr:
        pytest.skip("targetcli is importable here: covered by test_debian_targetcli")
    assert p.returncode == 0 and "o- vol0" in p.stdout
