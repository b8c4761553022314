"""The control plane: generic netlink family ``TCM-USER``, group ``config``.

The kernel multicasts an event per device life-cycle step and, once any
daemon has sent ``SET_FEATURES(SUPP_KERN_CMD_REPLY=1)``, waits (without a
timeout) for the matching ``*_DONE`` reply, whose ``CMD_STATUS`` becomes the
result of the configfs write that caused it:

=====================  ==========================  =============================
event (kernel -> us)   attributes                  reply (us -> kernel)
=====================  ==========================  =============================
ADDED_DEVICE (1)       DEVICE, MINOR, DEVICE_ID    ADDED_DEVICE_DONE (4)
REMOVED_DEVICE (2)     DEVICE, MINOR, DEVICE_ID    REMOVED_DEVICE_DONE (5)
RECONFIG_DEVICE (3)    ... + one of DEV_CFG,       RECONFIG_DEVICE_DONE (6)
                       DEV_SIZE, WRITECACHE
=====================  ==========================  =============================

A reply carries ``CMD_STATUS`` (s32: 0 or ``-errno``) and the event's
``DEVICE_ID``; it is sent with ``NLM_F_ACK`` so that a reply the kernel
refuses (unknown device, wrong command) shows in our log.  Messages are
pyroute2 :class:`genlmsg` objects (:class:`TcmuMessage`), built and parsed by
the pure functions below; :class:`TcmuNetlink` is the socket, on pyroute2's
asyncio core, in the daemon's event loop.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum

import structlog
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket

log = structlog.get_logger("cdp.handler.netlink")

FAMILY = "TCM-USER"
GROUP = "config"
GENL_VERSION = 2


class Cmd(IntEnum):
    UNSPEC = 0
    ADDED_DEVICE = 1
    REMOVED_DEVICE = 2
    RECONFIG_DEVICE = 3
    ADDED_DEVICE_DONE = 4
    REMOVED_DEVICE_DONE = 5
    RECONFIG_DEVICE_DONE = 6
    SET_FEATURES = 7


DONE = {
    Cmd.ADDED_DEVICE: Cmd.ADDED_DEVICE_DONE,
    Cmd.REMOVED_DEVICE: Cmd.REMOVED_DEVICE_DONE,
    Cmd.RECONFIG_DEVICE: Cmd.RECONFIG_DEVICE_DONE,
}


class TcmuMessage(genlmsg):
    """A TCM-USER message; ``nla_map`` is ``enum tcmu_genl_attr`` in order."""

    nla_map = (
        ("TCMU_ATTR_UNSPEC", "none"),
        ("TCMU_ATTR_DEVICE", "asciiz"),
        ("TCMU_ATTR_MINOR", "uint32"),
        ("TCMU_ATTR_PAD", "none"),
        ("TCMU_ATTR_DEV_CFG", "asciiz"),
        ("TCMU_ATTR_DEV_SIZE", "uint64"),
        ("TCMU_ATTR_WRITECACHE", "uint8"),
        ("TCMU_ATTR_CMD_STATUS", "int32"),
        ("TCMU_ATTR_DEVICE_ID", "uint32"),
        ("TCMU_ATTR_SUPP_KERN_CMD_REPLY", "uint8"),
    )


@dataclass(frozen=True)
class DeviceEvent:
    """One kernel event about one device."""

    cmd: Cmd
    device: str  # the UIO name, tcm-user/<hba>/<dev>/<subtype>/<cfg>
    minor: int
    device_id: int
    dev_cfg: str | None = None
    dev_size: int | None = None
    writecache: int | None = None


def parse_event(msg) -> DeviceEvent | None:
    """The event in a received message; None for anything else (as libtcmu,
    events without DEVICE, MINOR or DEVICE_ID are ignored)."""
    try:
        cmd = Cmd(msg["cmd"])
    except ValueError:
        return None
    if cmd not in DONE:
        return None
    device = msg.get_attr("TCMU_ATTR_DEVICE")
    minor = msg.get_attr("TCMU_ATTR_MINOR")
    device_id = msg.get_attr("TCMU_ATTR_DEVICE_ID")
    if device is None or minor is None or device_id is None:
        log.warning("netlink.event_incomplete", cmd=cmd.name, device=device, minor=minor)
        return None
    return DeviceEvent(
        cmd,
        device,
        minor,
        device_id,
        msg.get_attr("TCMU_ATTR_DEV_CFG"),
        msg.get_attr("TCMU_ATTR_DEV_SIZE"),
        msg.get_attr("TCMU_ATTR_WRITECACHE"),
    )


def build_reply(event: DeviceEvent, status: int) -> TcmuMessage:
    """The ``*_DONE`` reply to ``event`` (``status``: 0 or ``-errno``)."""
    msg = TcmuMessage()
    msg["cmd"] = DONE[event.cmd]
    msg["version"] = GENL_VERSION
    msg["attrs"] = [
        ("TCMU_ATTR_CMD_STATUS", status),
        ("TCMU_ATTR_DEVICE_ID", event.device_id),
    ]
    return msg


def build_set_features(kern_cmd_reply: bool = True) -> TcmuMessage:
    msg = TcmuMessage()
    msg["cmd"] = Cmd.SET_FEATURES
    msg["version"] = GENL_VERSION
    msg["attrs"] = [("TCMU_ATTR_SUPP_KERN_CMD_REPLY", int(kern_cmd_reply))]
    return msg


def build_event(event: DeviceEvent) -> TcmuMessage:
    """An event as the kernel sends it (for tests and simulations)."""
    msg = TcmuMessage()
    msg["cmd"] = event.cmd
    msg["version"] = GENL_VERSION
    attrs = [
        ("TCMU_ATTR_DEVICE", event.device),
        ("TCMU_ATTR_MINOR", event.minor),
        ("TCMU_ATTR_DEVICE_ID", event.device_id),
    ]
    if event.dev_cfg is not None:
        attrs.append(("TCMU_ATTR_DEV_CFG", event.dev_cfg))
    if event.dev_size is not None:
        attrs.append(("TCMU_ATTR_DEV_SIZE", event.dev_size))
    if event.writecache is not None:
        attrs.append(("TCMU_ATTR_WRITECACHE", event.writecache))
    msg["attrs"] = attrs
    return msg


class TcmuNetlink:
    """The TCM-USER socket, joined to ``config``; use in one event loop."""

    def __init__(self) -> None:
        self._sock: AsyncGenericNetlinkSocket | None = None

    async def open(self) -> None:
        """Resolve the family and join the group.

        :raises NetlinkError: ENOENT when ``target_core_user`` is not loaded.
        """
        sock = AsyncGenericNetlinkSocket()
        try:
            await sock.bind(FAMILY, TcmuMessage)
            sock.add_membership(GROUP)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        log.info("netlink.joined", family=FAMILY, family_id=sock.prid, group=GROUP)

    async def _request(self, msg: TcmuMessage) -> None:
        sock = self._sock
        resp = await sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
        async for _ in resp:
            pass

    async def set_features(self) -> bool:
        """Ask the kernel to wait for our replies; False on a kernel without it."""
        try:
            await self._request(build_set_features(True))
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.EINVAL):
                log.warning("netlink.no_set_features", error=str(exc))
                return False
            raise
        log.info("netlink.features", kern_cmd_reply=True)
        return True

    async def reply(self, event: DeviceEvent, status: int) -> bool:
        """Send the ``*_DONE`` reply; False (logged) if the kernel refused it."""
        try:
            await self._request(build_reply(event, status))
        except NetlinkError as exc:
            log.warning(
                "netlink.reply_refused",
                cmd=event.cmd.name,
                device=event.device,
                device_id=event.device_id,
                error=exc.code,
            )
            return False
        return True

    async def events(self) -> AsyncIterator[DeviceEvent]:
        """Kernel events, forever (until the socket is closed)."""
        while self._sock is not None:
            try:
                async for msg in self._sock.get():
                    event = parse_event(msg)
                    if event is not None:
                        yield event
            except NetlinkError as exc:  # an error for a request nobody waits for
                log.warning("netlink.stray_error", error=exc.code)

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
