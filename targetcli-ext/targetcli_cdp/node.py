"""What every ``/cdp`` node shares: the daemon call, and completion helpers."""

from __future__ import annotations

import re

from appliance.control.protocol import ControlError

from .compat import ExecutionError, UINode

SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)
POINT_FORMS = ("-15m", "-1h", "-1d")


def parse_size(text: str) -> int:
    """``10G`` -> 10737418240 (binary units, as targetcli's ``size=``)."""
    m = SIZE.match(text.strip())
    if not m:
        raise ExecutionError(f"bad size {text!r}: a number with K, M, G or T (e.g. 10G)")
    return int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper()))


def one(completions: list[str]) -> list[str]:
    """targetcli's habit: a single completion gets its trailing space."""
    return [completions[0] + " "] if len(completions) == 1 else completions


class UICDPNode(UINode):
    """A node under ``/cdp``: ``self.client`` talks to the daemon."""

    def inherited(self, attr: str):
        """``attr`` of this node or of the nearest node above that has it."""
        node = self
        while not hasattr(node, attr):
            node = node.parent
        return getattr(node, attr)

    @property
    def client(self):
        """The ``ControlClient`` of the ``/cdp`` node above (or this one)."""
        return self.inherited("cdp_client")

    @property
    def lio(self):
        """The LIO side of image LUNs (``lio.LioExport``; tests replace it)."""
        return self.inherited("cdp_lio")

    def call(self, op: str, **args):
        """One control request; a failure is one ExecutionError line."""
        try:
            return self.client.call(op, **args)
        except ControlError as exc:
            raise ExecutionError(str(exc)) from None

    def quiet_call(self, op: str, **args):
        """For completion: never raises, None on failure."""
        try:
            return self.client.call(op, timeout=5.0, **args)
        except ControlError:
            return None

    def bool_param(self, value, name: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1"):
            return True
        if str(value).lower() in ("false", "no", "0"):
            return False
        raise ExecutionError(f"{name} must be true or false, not {value!r}")

    def complete_points(self, volume: str, text: str) -> list[str]:
        """Bookmark names and sequence numbers of ``volume`` that start with ``text``."""
        points = self.quiet_call("points", volume=volume) or []
        names = [p["name"] for p in points if p["kind"] == "bookmark"]
        names += [str(p["seq"]) for p in reversed(points)]
        if text.startswith("-"):
            names = list(POINT_FORMS)
        return one([n for n in dict.fromkeys(names) if n.startswith(text)])
