"""The cdp configuration file (``saveconfig`` / ``restoreconfig``), format 1.

What an administrator set up, not the data: the volumes (where primary and
secondary are, size, mode), each volume's retention policy, and the images
exposed from points.  The journal, catalog and DRL are the volume's state
and stay in its state folder.  LIO's own ``saveconfig.json`` is regenerated
from configfs by rtslib and cannot carry extra keys, hence a file of our own.

::

    {"format": 1, "saved": "2026-03-01T12:00:00Z",
     "volumes": [{"name": "vol0", "uuid": "…", "primary": "/dev/vdb",
                  "secondary": "/var/lib/cdp/sec/vol0", "size": 1073741824,
                  "block_size": 512, "mode": "sync",
                  "retention": "all:48h,1h:14d,1d:90d"}],
     "exposed": [{"name": "vol0-1200", "volume": "vol0", "seq": 1200,
                  "writable": true}]}

The images exposed *now* are also kept in ``<root>/exposed.json`` (same
format number; ``{"format": 1, "boot_id": "…", "exposed": [...]}``), rewritten
on every expose and unexpose.  A daemon restarted in the same boot (same
``/proc/sys/kernel/random/boot_id``) re-exposes them, because LIO still has
the backstores that serve them; after a reboot LIO restores its *saved*
configuration, so the daemon applies the saved ``cdp.json`` instead and the
file is ignored -- the same rule LIO follows.

Written like rtslib's ``save_to_file`` but without its flaws: a temp file
created exclusively with mode 0600 (no umask change), fsync, rename over the
old file, fsync of the folder.
"""

from __future__ import annotations

import json
import os
import time

from .protocol import ControlError

FORMAT = 1
VOLUME_KEYS = {
    "name": str,
    "uuid": str,
    "primary": str,
    "secondary": str,
    "size": int,
    "block_size": int,
    "mode": str,
}
EXPOSED_KEYS = {"name": str, "volume": str, "seq": int, "writable": bool}


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Temp file (exclusive, ``mode``), fsync, rename, fsync of the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def dump(volumes: list[dict], exposed: list[dict]) -> bytes:
    doc = {
        "format": FORMAT,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "volumes": volumes,
        "exposed": exposed,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def dump_exposed(exposed: list[dict], boot_id: str) -> bytes:
    """The running exposures (``<root>/exposed.json``): see the module docstring."""
    doc = {"format": FORMAT, "boot_id": boot_id, "exposed": exposed}
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def load_exposed(path: str) -> tuple[str, list[dict]]:
    """``(boot_id, exposed)`` of a running-exposures file; ``("", [])`` if there
    is none; ``ControlError`` if it is not one."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return "", []
    except OSError as exc:
        raise ControlError("io_error", f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ControlError("bad_argument", f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ControlError("bad_argument", f"{path}: not a format {FORMAT} exposures file")
    boot_id, exposed = doc.get("boot_id"), doc.get("exposed")
    if not isinstance(boot_id, str) or not isinstance(exposed, list):
        raise ControlError("bad_argument", f"{path}: 'boot_id' or 'exposed' missing")
    for i, e in enumerate(exposed):
        _check(e, EXPOSED_KEYS, f"{path}: exposed[{i}]")
    return boot_id, exposed


def _check(item: object, keys: dict, where: str) -> dict:
    if not isinstance(item, dict):
        raise ControlError("bad_argument", f"{where} is not an object")
    for key, typ in keys.items():
        value = item.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ControlError("bad_argument", f"{where}: '{key}' missing or not {typ.__name__}")
    return item


def load(path: str) -> dict:
    """Read and check a configuration file; raises ``ControlError``."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise ControlError("not_found", f"no cdp configuration file {path}") from None
    except OSError as exc:
        raise ControlError("io_error", f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ControlError("bad_argument", f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise ControlError("bad_argument", f"{path}: format {got!r} not supported (want {FORMAT})")
    vols = doc.get("volumes", [])
    exposed = doc.get("exposed", [])
    if not isinstance(vols, list) or not isinstance(exposed, list):
        raise ControlError("bad_argument", f"{path}: 'volumes' and 'exposed' must be lists")
    for i, v in enumerate(vols):
        _check(v, VOLUME_KEYS, f"{path}: volumes[{i}]")
        if v.get("retention") is not None and not isinstance(v["retention"], str):
            raise ControlError("bad_argument", f"{path}: volumes[{i}]: 'retention' not a string")
    for i, e in enumerate(exposed):
        _check(e, EXPOSED_KEYS, f"{path}: exposed[{i}]")
    return doc
