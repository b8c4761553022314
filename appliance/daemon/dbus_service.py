"""D-Bus: ``org.kernel.TCMUService1``, so the stock targetcli knows ``user:cdp``.

targetcli lists user-backed backstore types by calling
``org.freedesktop.DBus.ObjectManager.GetManagedObjects`` on
``/org/kernel/TCMUService1`` of the system bus service
``org.kernel.TCMUService1``: each child object ``/org/kernel/TCMUService1/<x>``
becomes a ``user:<x>`` backstore type.  Before creating one it calls
``CheckConfig("cdp/<cfgstring>") -> (ok, message)`` on that object, and
``help create`` prints its ``ConfigDesc`` property.  This is the contract
tcmu-runner implements; we own the name ourselves (tcmu-runner must not run:
see docs/HANDLER.md), with the policy file ``firmware/dbus/``.

dbus-fast answers ``GetManagedObjects`` for any exported path from what is
exported below it, so exporting the ``cdp`` object is all it takes.

(No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus
signatures from the evaluated annotations.)
"""

from typing import Annotated

import structlog
from dbus_fast import BusType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property

from . import cfgstring
from .errors import AlreadyRunning, CfgStringError, HandlerError
from .volumes import VolumeStore

log = structlog.get_logger("cdp.handler.dbus")

BUS_NAME = "org.kernel.TCMUService1"
ROOT_PATH = "/org/kernel/TCMUService1"
INTERFACE = "org.kernel.TCMUService1"
HANDLER_PATH = f"{ROOT_PATH}/{cfgstring.SUBTYPE}"

CheckResult = Annotated[tuple[bool, str], DBusSignature("bs")]


def check_config(store: VolumeStore, config: str) -> tuple[bool, str]:
    """``CheckConfig``: is ``config`` (``cdp/<cfgstring>``) usable, and why not."""
    try:
        cfg = cfgstring.parse(config, subtype=True)
        return True, store.check(cfg)
    except CfgStringError as exc:
        return False, str(exc)
    except HandlerError as exc:
        return False, str(exc)
    except Exception as exc:  # a D-Bus caller gets an answer, we get the trace
        log.exception("dbus.check_config_failed", config=config)
        return False, f"internal error: {exc}"


class HandlerInterface(ServiceInterface):
    """``org.kernel.TCMUService1`` on ``/org/kernel/TCMUService1/cdp``."""

    def __init__(self, store: VolumeStore) -> None:
        super().__init__(INTERFACE)
        self._store = store

    @dbus_property(access=PropertyAccess.READ)
    def ConfigDesc(self) -> DBusStr:  # noqa: N802 - D-Bus member names
        return cfgstring.CONFIG_DESC

    @dbus_method()
    def CheckConfig(self, configstr: DBusStr) -> CheckResult:  # noqa: N802
        ok, message = check_config(self._store, configstr)
        log.info("dbus.check_config", config=configstr, ok=ok, message=message)
        return ok, message


async def serve(store: VolumeStore, bus_address: str | None = None) -> MessageBus:
    """Connect to the system bus (or ``bus_address``), export, own the name.

    :raises AlreadyRunning: someone else (tcmu-runner?) owns the name.
    """
    if bus_address is None:
        bus = MessageBus(bus_type=BusType.SYSTEM)
    else:
        bus = MessageBus(bus_address=bus_address)
    await bus.connect()
    bus.export(HANDLER_PATH, HandlerInterface(store))
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        bus.disconnect()
        raise AlreadyRunning(
            f"D-Bus name {BUS_NAME} is owned by another process (is tcmu-runner running?)"
        )
    log.info("dbus.serving", name=BUS_NAME, path=HANDLER_PATH)
    return bus
