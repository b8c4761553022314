"""The ``user:cdp`` cfgstring: which protected volume a backstore serves.

Syntax (the part after ``cdp/``; targetcli's ``cfgstring=`` argument)::

    <volume>[;<key>=<value>]...

    vol0
    vol0;primary=/dev/disk/by-id/virtio-primary;secondary=/srv/journal/vol0
    vol0;primary=/srv/primary/vol0.img;secondary=/srv/journal/vol0;mode=async

``<volume>`` names the volume's state folder under the handler's state
directory (``/var/lib/cdp/volumes/<volume>``): 1-64 of ``A-Z a-z 0-9 . _ -``,
starting with a letter or digit.

An **image LUN** serves a point in time of a volume instead of the volume::

    <volume>@<image>         vol0@vol0-1200   vol0@pre-upgrade   vol0@1200

``<image>`` names an image exposed through the control API (``expose``; a
writable one is served writable); if no image of that name is exposed, it is
read as a point (a bookmark name or a sequence number) and that point is served
read-only for as long as the backstore exists.  Image LUNs take no keys.

Keys, each at most once:

``primary``   absolute path of the disk (or file) the initiator's data lives on
``secondary`` absolute path of the folder that holds the write journal
``mode``      ``sync`` (default) or ``async``: see the engine

The keys only matter when the volume does not exist yet: the backstore then
creates it (primary and secondary required).  For an existing volume they may
be left out; if given they must match the volume's recorded paths.

Characters refused anywhere: ``:`` (rtslib refuses it), ``,`` and newlines
(the kernel's ``control`` parser splits on them), whitespace, and ``;`` or
``=`` inside values.  The whole ``dev_config`` (``cdp/`` included) must fit
the kernel's 255 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CfgStringError

SUBTYPE = "cdp"
MAX_DEV_CONFIG = 255  # TCMU_CONFIG_LEN - 1
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_NAME = VOLUME_NAME
MODES = ("sync", "async")
KEYS = ("primary", "secondary", "mode")
_FORBIDDEN = set(":,;= \t\r\n\0")

CONFIG_DESC = (
    "<volume>[;primary=<path>][;secondary=<folder>][;mode=sync|async] or <volume>@<image>  "
    "e.g. vol0;primary=/dev/sdb;secondary=/srv/journal/vol0 . "
    "An existing volume needs only its name; a new one is created from primary "
    "(disk or file) and secondary (journal folder). The size comes from the backstore. "
    "vol0@<image> serves an exposed image (or a bookmark/sequence number) of vol0."
)


@dataclass(frozen=True)
class CfgString:
    volume: str
    primary: str | None = None
    secondary: str | None = None
    mode: str | None = None
    image: str | None = None

    @property
    def label(self) -> str:
        """``vol0`` or ``vol0@image``: what the backstore serves."""
        return self.volume if self.image is None else f"{self.volume}@{self.image}"

    def render(self) -> str:
        """The cfgstring (without ``cdp/``) that parses back to ``self``."""
        parts = [self.label]
        parts += [f"{k}={getattr(self, k)}" for k in KEYS if getattr(self, k) is not None]
        return ";".join(parts)

    def dev_config(self) -> str:
        return f"{SUBTYPE}/{self.render()}"


def parse(text: str, *, subtype: bool = False) -> CfgString:
    """Parse a cfgstring; with ``subtype`` it must start with ``cdp/``.

    :raises CfgStringError: with a message fit for the user.
    """
    if not isinstance(text, str):
        raise CfgStringError(f"cfgstring must be a string, not {type(text).__name__}")
    full = text if subtype else f"{SUBTYPE}/{text}"
    if len(full) > MAX_DEV_CONFIG:
        raise CfgStringError(f"config is {len(full)} characters, the kernel takes {MAX_DEV_CONFIG}")
    if subtype:
        head, sep, text = text.partition("/")
        if head != SUBTYPE or not sep:
            raise CfgStringError(f"config must start with '{SUBTYPE}/': {full!r}")
    for bad in ":,\n\r\t \0":
        if bad in text:
            raise CfgStringError(f"character {bad!r} is not allowed in a cfgstring")
    name, *options = text.split(";")
    name, at, image = name.partition("@")
    if at:
        if not IMAGE_NAME.match(image):
            raise CfgStringError(
                f"bad image name {image!r} after '@': 1-64 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit (an exposed image, a bookmark or a "
                "sequence number)"
            )
        if options:
            raise CfgStringError(f"an image LUN ({text.split(';')[0]}) takes no options")
    if not VOLUME_NAME.match(name):
        raise CfgStringError(
            f"bad volume name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    values: dict[str, str] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise CfgStringError(f"option {opt!r} is not key=value")
        if key not in KEYS:
            raise CfgStringError(f"unknown option {key!r} (known: {', '.join(KEYS)})")
        if key in values:
            raise CfgStringError(f"option {key!r} given twice")
        if not value or _FORBIDDEN & set(value):
            raise CfgStringError(f"option {key} has an empty or malformed value {value!r}")
        values[key] = value
    for key in ("primary", "secondary"):
        path = values.get(key)
        if path is not None and (not path.startswith("/") or "/../" in path + "/"):
            raise CfgStringError(f"{key} must be an absolute path without '..': {path!r}")
    mode = values.get("mode")
    if mode is not None and mode not in MODES:
        raise CfgStringError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return CfgString(
        name, values.get("primary"), values.get("secondary"), mode, image if at else None
    )
