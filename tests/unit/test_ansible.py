"""The appliance playbook parses, and ansible-lint (production profile) finds nothing.

Fast and VM-free: ``ansible-playbook --syntax-check`` reads the playbook, the
roles, their tasks, handlers and defaults, without connecting anywhere.  The
tools come from ``$PATH`` or from the build's Ansible venv
(``~/.cache/cdp-appliance/ansible-venv``, made by ``make image``); without
them the tests skip and say how to get them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
CACHE = Path(os.environ.get("CDP_CACHE") or Path.home() / ".cache" / "cdp-appliance")
VENV_BIN = CACHE / "ansible-venv" / "bin"


def _tool(name: str) -> str | None:
    """``name`` from the build's venv if it has it, else from $PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "ANSIBLE_LOCAL_TEMP": "/tmp/cdp-ansible-tmp",
        # ansible-lint refuses to run when PATH does not hold its own venv.
        "PATH": f"{Path(argv[0]).parent}:{os.environ.get('PATH', '')}",
    }
    return subprocess.run(argv, cwd=ANSIBLE, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip


def test_roles_have_the_standard_layout():
    for role in ("lio", "cdp", "hardening"):
        for part in ("tasks", "handlers", "defaults", "meta"):
            assert (ANSIBLE / "roles" / role / part / "main.yml").is_file(), (role, part)
    assert any((ANSIBLE / "roles").glob("*/templates/*.j2"))


def test_playbook_syntax():
    playbook = _tool("ansible-playbook")
    if playbook is None:
        pytest.skip("ansible-playbook not installed: `make image` puts it in " + str(VENV_BIN))
    r = _run([playbook, "--syntax-check", "-i", "localhost,", "appliance.yml"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "playbook: appliance.yml" in r.stdout


def test_playbook_syntax_rejects_a_broken_role(tmp_path):
    """The check is real: a task with an unknown module fails it."""
    playbook = _tool("ansible-playbook")
    if playbook is None:
        pytest.skip("ansible-playbook not installed: `make image` puts it in " + str(VENV_BIN))
    role = tmp_path / "roles" / "broken" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text("---\n- name: Nope\n  no.such.module_xyz: {}\n")
    (tmp_path / "play.yml").write_text("---\n- hosts: all\n  roles: [broken]\n")
    r = _run([playbook, "--syntax-check", "-i", "localhost,", str(tmp_path / "play.yml")])
    assert r.returncode != 0
    assert "no.such.module_xyz" in r.stdout + r.stderr


@pytest.mark.slow  # ~15 s (a minute on its first run, filling its cache)
def test_ansible_lint_production_profile():
    lint = _tool("ansible-lint")
    if lint is None:
        pytest.skip("ansible-lint not installed: `make image` puts it in " + str(VENV_BIN))
    r = _run([lint, "--offline", "-p", "appliance.yml"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
