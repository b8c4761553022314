"""CDP appliance: the engine, the TCMU handler daemon and their glue."""

from .log import ensure_configured as _ensure_log

__version__ = "0.1.0"

_ensure_log()
