"""Finding and opening TCMU devices through UIO.

Every TCMU backstore is a UIO device.  ``/sys/class/uio/uioN/name`` reads
``tcm-user/<hba>/<device>/<subtype>/<cfgstring>`` (only ``tcm-user/<hba>/<device>``
while ``dev_config`` is unset; the cfgstring may itself contain ``/``), and
``maps/map0/size`` is the exact length to mmap (the kernel refuses any other).
The device node opens exclusively (a second open gets ``EBUSY``); reads and
writes on it are 4 bytes: a read waits for (and clears) the event counter, a
write makes the kernel collect completions.

Every function takes ``root`` (default ``/``) so tests can point it at a fake
``sys``/``dev`` tree.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from .ring import CommandRing

UIO_PREFIX = "tcm-user"
_KICK = b"\0\0\0\0"


@dataclass(frozen=True, slots=True)
class UioName:
    """The parsed ``name`` attribute of a TCMU UIO device."""

    hba: int
    device: str
    subtype: str | None = None
    cfgstring: str | None = None

    def configfs_dir(self, root: Path | str = "/") -> Path:
        """``.../target/core/user_<hba>/<device>`` (where ``action/reset_ring`` lives)."""
        return Path(root, "sys/kernel/config/target/core", f"user_{self.hba}", self.device)


def parse_uio_name(name: str) -> UioName | None:
    """Parse a UIO ``name``; None if it is not a TCMU device or is malformed."""
    parts = name.strip().split("/", 4)
    if len(parts) < 3 or parts[0] != UIO_PREFIX or not parts[1].isdigit() or not parts[2]:
        return None
    subtype = parts[3] if len(parts) > 3 and parts[3] else None
    cfgstring = parts[4] if len(parts) > 4 else None
    return UioName(int(parts[1]), parts[2], subtype, cfgstring)


@dataclass(frozen=True, slots=True)
class UioInfo:
    """One TCMU UIO device as sysfs describes it."""

    index: int
    name: UioName
    map_size: int
    dev_path: Path


def _uio_class(root: Path | str) -> Path:
    return Path(root, "sys/class/uio")


def read_uio_info(index: int, root: Path | str = "/") -> UioInfo | None:
    """Describe ``uio<index>``; None if it is not (or no longer) a TCMU device."""
    sysdir = _uio_class(root) / f"uio{index}"
    try:
        name = parse_uio_name((sysdir / "name").read_text())
        if name is None:
            return None
        size = int((sysdir / "maps/map0/size").read_text().strip(), 0)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return UioInfo(index, name, size, Path(root, "dev", f"uio{index}"))


def list_tcmu_devices(root: Path | str = "/", subtype: str | None = None) -> list[UioInfo]:
    """Every TCMU UIO device, by index; only ``subtype``'s if given."""
    try:
        entries = os.listdir(_uio_class(root))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if not entry.startswith("uio") or not entry[3:].isdigit():
            continue
        info = read_uio_info(int(entry[3:]), root)
        if info is not None and (subtype is None or info.name.subtype == subtype):
            found.append(info)
    return sorted(found, key=lambda i: i.index)


class UioDevice:
    """An open ``/dev/uioN`` and its shared mapping.

    Use :meth:`open`; the constructor takes an already open fd and mapping.
    """

    def __init__(self, fd: int, mapping: mmap.mmap | None, info: UioInfo | None = None) -> None:
        self.fd = fd
        self.map = mapping
        self.info = info

    @classmethod
    def open(cls, info: UioInfo, *, nonblocking: bool = True) -> UioDevice:
        """Open the device read-write and map all of it, shared, at offset 0.

        :raises OSError: ``EBUSY`` if another handler has it open.
        """
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        fd = os.open(info.dev_path, flags)
        try:
            mapping = mmap.mmap(
                fd, info.map_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, mapping, info)

    def fileno(self) -> int:
        return self.fd

    def kick(self) -> None:
        """Tell the kernel to collect completions (any 4-byte write)."""
        os.write(self.fd, _KICK)

    @property
    def kick_fd(self) -> int:
        """The fd :meth:`kick` writes to (the compiled loop kicks it itself)."""
        return self.fd

    def wait_event(self) -> int | None:
        """Consume the UIO event count; None if nothing is pending (non-blocking fd)."""
        try:
            data = os.read(self.fd, 4)
        except BlockingIOError:  # EAGAIN: no event since the last read
            return None
        return int.from_bytes(data, "little") if len(data) == 4 else None

    def ring(self, *, out_of_order: bool | None = None) -> CommandRing:
        """A :class:`CommandRing` over this mapping that kicks this fd."""
        return CommandRing(self.map, self.kick, out_of_order=out_of_order)

    def close(self) -> None:
        """Unmap and close; close any ring over the mapping first."""
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> UioDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
