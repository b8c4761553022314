"""The control API: how the shell (and any local tool) drives the appliance.

Modules, one idea each:

* :mod:`.protocol`: the versioned newline-delimited JSON protocol, error types;
* :mod:`.points`: naming a point (``1234``, ``pre-upgrade``, ``-15m``, ISO time);
* :mod:`.manager`: :class:`~.manager.VolumeManager`, the volumes under a state
  root and every op on them;
* :mod:`.jobs`: ids and progress reports for the engine's background jobs;
* :mod:`.config`: the saved cdp configuration file;
* :mod:`.server`: the asyncio Unix-socket server (root only, 0600);
* :mod:`.client`: a small synchronous client;
* :mod:`.engine_view`: figures read from engine internals until the engine
  exposes them.

docs/CONTROL.md is the protocol reference.  Importing this package (and
``protocol``, ``points``, ``client``) does not import the engine: the shell
uses them alone.
"""

from .client import ControlClient
from .protocol import DEFAULT_SOCKET, VERSION, ControlError

__all__ = ["DEFAULT_SOCKET", "VERSION", "ControlClient", "ControlError"]
