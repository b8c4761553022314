"""The built appliance image: where it is, what its inputs hash to, how to boot it.

Shared by ``images/build_image.py`` (``make image``), ``images/demo.py``
(``make demo``) and ``tests/vm/test_appliance.py``.  Standard library only
(plus ``tests.vm.vmctl`` for booting).

An image folder, ``${CDP_CACHE:-~/.cache/cdp-appliance}/image-<hash>/``::

    cdp-appliance-<version>.qcow2   the appliance's root disk (ext4, whole disk)
    root.qcow2                      symlink to it (so vmctl.Base can boot it)
    vmlinuz, initrd.img             booted with -kernel/-initrd (no boot loader)
    id_ed25519                      root's SSH key (the base's; key login only)
    manifest.json                   inputs, versions, timings, kernel command line
    SHA256SUMS                      sha256sum -c format

``<hash>`` covers the base image's key, ``packer/``, ``ansible/``,
``firmware/``, the build scripts and the sources of the project's wheels, so
an unchanged tree maps to the same folder and ``make image`` does nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.vm import vmctl  # noqa: E402  (after the path fix above)

CACHE = Path(os.environ.get("CDP_CACHE") or Path.home() / ".cache" / "cdp-appliance")
ANSIBLE_VENV = CACHE / "ansible-venv"
KERNEL_CMDLINE = vmctl.GUEST_CMDLINE

# Inputs of the image, relative to the repository.  Folders are walked.
HASHED_INPUTS = (
    "packer",
    "ansible",
    "firmware",
    "images/build_image.py",
    "images/build-image.sh",
    "images/appliance_image.py",
    "tests/vm/handler_wheelhouse.py",
    # What goes into the two wheels (README.md only feeds the metadata text).
    "pyproject.toml",
    "setup.py",
    "appliance",
    "targetcli-ext/pyproject.toml",
    "targetcli-ext/targetcli_cdp",
)
_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".cache"}
# .so: the compiled extensions, built in the tree by `pip install -e` (their
# sources, _fastring.c and _writerun.c, are hashed; the build embeds the
# clone's path).
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".egg-info", ".retry")


def project_version() -> str:
    """``__version__`` of appliance/__init__.py (the firmware version)."""
    text = (REPO / "appliance" / "__init__.py").read_text()
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise RuntimeError("no __version__ in appliance/__init__.py")
    return m.group(1)


def _input_files() -> list[Path]:
    files = []
    for rel in HASHED_INPUTS:
        p = REPO / rel
        candidates = [p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []
        for f in candidates:
            parts = f.relative_to(REPO).parts
            if not f.is_file() or _SKIP_PARTS & set(parts):
                continue
            if any(part.endswith(_SKIP_SUFFIXES) for part in parts):
                continue
            files.append(f)
    return files


def inputs_hash(base_key: str) -> str:
    """16 hex digits over the base's key and every input file (path, mode, bytes)."""
    h = hashlib.sha256(f"base={base_key}\n".encode())
    for f in _input_files():
        rel = f.relative_to(REPO).as_posix()
        mode = "x" if os.access(f, os.X_OK) else "-"
        h.update(f"{rel}\0{mode}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Image(vmctl.Base):
    """A built image folder; boots like a base (``root.qcow2`` links to the image)."""

    @property
    def qcow2(self) -> Path:
        return self.root.resolve()

    def complete(self) -> bool:
        try:
            self.check()
        except vmctl.VMError:
            return False
        return (self.path / "manifest.json").is_file() and (self.path / "SHA256SUMS").is_file()


def image_dir(key: str) -> Path:
    return CACHE / f"image-{key}"


def current_image(build: bool = False, timeout: float = 7200) -> Image:
    """The image matching the current inputs (``$CDP_APPLIANCE_IMAGE`` overrides).

    ``build=True`` runs ``images/build-image.sh`` (a no-op when it is cached);
    otherwise a missing image is an error."""
    override = os.environ.get("CDP_APPLIANCE_IMAGE")
    if override:
        return Image(Path(override)).check()
    script = REPO / "images" / "build-image.sh"
    argv = [str(script)] if build else [str(script), "--print-path"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                       timeout=timeout)  # fmt: skip
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise vmctl.VMError(f"no built appliance image (run make image): {' '.join(lines)}")
    return Image(Path(lines[-1])).check()


# The appliance's disks, in PCI order after the root disk: vdb, vdc, vdd.
APPLIANCE_DISKS = (("primary", "/dev/vdb"), ("secondary", "/dev/vdc"), ("data", "/dev/vdd"))


def appliance_disks(folder: Path, sizes: dict[str, int] | None = None) -> list[vmctl.Disk]:
    """The three data disks as qcow2 files in ``folder`` (kept between boots)."""
    sizes = {"primary": 1 << 30, "secondary": 2 << 30, "data": 1 << 30, **(sizes or {})}
    return [
        vmctl.Disk(name, size=sizes[name], path=folder / f"{name}.qcow2", fmt="qcow2")
        for name, _dev in APPLIANCE_DISKS
    ]


@dataclass
class ApplianceVM(vmctl.VM):
    """A vmctl.VM for the appliance image.

    ``fixed_ports`` (vmctl.VM's) binds the forwards to given host ports (the
    demo's 3260 and 2222) instead of free ones; ``keep_root`` keeps an existing root
    overlay (the demo's machine survives ``demo-stop``/``demo``); ``detach``
    leaves qemu running when the object is dropped (the caller stops it later
    through the pid file and QMP)."""

    keep_root: bool = False
    memory_mb: int = 2048
    cpu: str | None = "Nehalem"
    disks: list[vmctl.Disk] = field(default_factory=list)

    def _prepare(self) -> None:
        if self.keep_root and self.workdir is not None and self.overlay.exists():
            saved = self.overlay.with_suffix(".keep")
            self.overlay.rename(saved)
            try:
                super()._prepare()
            finally:
                self.overlay.unlink(missing_ok=True)
                saved.rename(self.overlay)
            return
        super()._prepare()

    def qemu_argv(self) -> list[str]:
        argv = super().qemu_argv()
        return [a if a != "cdp-testvm" else "cdp-appliance" for a in argv]
