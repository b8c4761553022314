"""The handler's configuration file (TOML), ``/etc/cdp/handler.toml`` by default.

Every key is optional; a missing file means all defaults::

    [handler]
    state_dir = "/var/lib/cdp/volumes"   # one folder per protected volume
    lock_file = "/run/cdp-handlerd.lock" # one daemon per machine
    dbus = true                          # own org.kernel.TCMUService1 (targetcli)
    log_level = "info"                   # debug, info, warning, error
    log_json = true                      # JSON lines (journald); false: console

    [device]
    workers = 4          # threads executing one device's commands
    max_queued = 256     # commands waiting for a worker before TASK SET FULL
    queue_timeout = 20.0 # seconds a command may wait for a worker before BUSY;
                         # keep it below the backstore's cmd_time_out (30 s)
    tmr_notification = true  # ask the kernel for ABORT TASK / LUN RESET entries
    inline_io = true     # reads and writes without FUA run on the ring thread
                         # (no worker hop); false: every command goes to a worker

    [control]
    enabled = true                       # serve the control API (docs/CONTROL.md)
    socket = "/run/cdp/control.sock"     # root only (0600 in a 0700 folder)

The control API's state root is the parent of ``state_dir`` (``/var/lib/cdp``);
its saved configuration (``saveconfig``) is ``<state root>/cdp.json``.

Unknown sections or keys are errors (a typo must not silently change nothing).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError

DEFAULT_PATH = Path("/etc/cdp/handler.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class HandlerConfig:
    state_dir: Path = Path("/var/lib/cdp/volumes")
    lock_file: Path = Path("/run/cdp-handlerd.lock")
    dbus: bool = True
    log_level: str = "info"
    log_json: bool = True
    workers: int = 4
    max_queued: int = 256
    queue_timeout: float = 20.0
    tmr_notification: bool = True
    inline_io: bool = True
    control: bool = True
    control_socket: Path = Path("/run/cdp/control.sock")
    # Where /sys and /dev are: "/" except in tests.
    root: Path = Path("/")

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"workers must be 0-64, not {self.workers}")
        if not 1 <= self.max_queued <= 65536:
            raise ConfigError(f"max_queued must be 1-65536, not {self.max_queued}")
        if not 0 < self.queue_timeout <= 3600:
            raise ConfigError(f"queue_timeout must be in (0, 3600], not {self.queue_timeout}")


_SECTIONS = {
    "handler": ("state_dir", "lock_file", "dbus", "log_level", "log_json"),
    "device": ("workers", "max_queued", "queue_timeout", "tmr_notification", "inline_io"),
    "control": ("enabled", "socket"),
}
# Keys whose name in the file differs from the field's.
_FIELD = {("control", "enabled"): "control", ("control", "socket"): "control_socket"}
_TYPES = {f.name: f.type for f in fields(HandlerConfig)}


def _coerce(key: str, value):
    kind = _TYPES[key]
    if kind == "Path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"{key} must be an absolute path, not {value!r}")
        return Path(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        return value
    if kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, not {value!r}")
    return value


def parse_config(text: str, **overrides) -> HandlerConfig:
    """A :class:`HandlerConfig` from TOML text (``overrides`` win)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    values = {}
    for section, table in data.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"unknown section [{section}]")
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown key {key!r} in [{section}]")
            field = _FIELD.get((section, key), key)
            values[field] = _coerce(field, value)
    values.update(overrides)
    return HandlerConfig(**values)


def load_config(path: Path | str | None = None, **overrides) -> HandlerConfig:
    """Read ``path`` (default ``/etc/cdp/handler.toml``; a missing default is fine)."""
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_PATH
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"configuration file {path} does not exist") from None
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return parse_config(text, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
