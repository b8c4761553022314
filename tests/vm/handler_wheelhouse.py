"""A wheelhouse of the project and its dependencies, for the offline test VM.

The guest has no network: the host builds the project's wheel, downloads
CPython 3.11 manylinux wheels of every dependency (through pip's cache), and
the guest installs them with ``pip install --no-index`` into a venv made with
``--system-site-packages`` (Debian's rtslib-fb and targetcli stay usable).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = (
    # The project's own wheel: its fast-path extension is built here, for the
    # guest's CPython 3.11 on the same Debian 12 x86-64 (PyPI never serves
    # plain linux_x86_64 wheels, so no dependency comes in this way).
    "linux_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
    "any",
)


def build_wheelhouse(dest: Path, timeout: float = 600) -> list[Path]:
    """Fill ``dest`` with the project wheel and its dependencies' wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(dest), str(REPO)],
        check=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    (wheel,) = dest.glob("cdp_appliance-*.whl")
    # The guest runs CPython 3.11: a wheel for another Python, or one built
    # without a compiler (no fast path), is a broken image, not a slow one.
    compiled = ("appliance/tcmu/_fastring.", "appliance/engine/_writerun.")
    with zipfile.ZipFile(wheel) as zf:
        fast = [n for n in zf.namelist() if n.startswith(compiled) and n.endswith(".so")]
    if "-cp311-" not in wheel.name or len(fast) != len(compiled):
        raise RuntimeError(f"{wheel.name}: not a CPython 3.11 wheel with the fast path ({fast})")
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [*pip, "download", "-d", str(dest), "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", *platforms, str(wheel)],
        check=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


GUEST_INSTALL = """\
set -e
python3 -m venv --system-site-packages /opt/cdp/venv
/opt/cdp/venv/bin/pip install -q --no-index --find-links {wheels} cdp-appliance
install -D -m 0644 {wheels}/org.kernel.TCMUService1.conf \
    /etc/dbus-1/system.d/org.kernel.TCMUService1.conf
systemctl reload dbus
"""


def guest_install_script(wheels: str) -> str:
    """Shell for the guest: venv, install, the D-Bus policy file, reload D-Bus."""
    return GUEST_INSTALL.format(wheels=wheels)
