"""Named fault-injection points.

The engine calls ``faults.point("name", **context)`` at the steps that
docs/DURABILITY.md names; a test registers a callback for a point (to raise,
sleep, or SIGKILL the process there) with :func:`inject`.  With nothing
registered a point costs one dict lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_callbacks: dict[str, Callable[..., None]] = {}


def armed() -> bool:
    """Any callback injected: hot loops call :func:`point` only then."""
    return bool(_callbacks)


def point(name: str, **context) -> None:
    cb = _callbacks.get(name)
    if cb is not None:
        cb(**context)


@contextlib.contextmanager
def inject(name: str, callback: Callable[..., None]) -> Iterator[None]:
    old = _callbacks.get(name)
    _callbacks[name] = callback
    try:
        yield
    finally:
        if old is None:
            _callbacks.pop(name, None)
        else:
            _callbacks[name] = old


def set_point(name: str, callback: Callable[..., None] | None) -> None:
    """Register (or with None remove) a callback for the life of the process."""
    if callback is None:
        _callbacks.pop(name, None)
    else:
        _callbacks[name] = callback
