"""TCM-USER messages built and parsed with pyroute2's classes (no kernel)."""

from appliance.daemon.netlink import (
    GENL_VERSION,
    Cmd,
    DeviceEvent,
    TcmuMessage,
    build_event,
    build_reply,
    build_set_features,
    parse_event,
)

FAMILY_ID = 0x20


def wire(msg: TcmuMessage) -> TcmuMessage:
    """Encode as it would go on the wire, decode as it would come back."""
    msg["header"]["type"] = FAMILY_ID
    msg["header"]["flags"] = 0
    msg["header"]["sequence_number"] = 0
    msg["header"]["pid"] = 0
    msg.encode()
    back = TcmuMessage(msg.data)
    back.decode()
    return back


def test_event_round_trip():
    ev = DeviceEvent(Cmd.ADDED_DEVICE, "tcm-user/1/cdp0/cdp/vol0;primary=/dev/vdb", 3, 7)
    back = wire(build_event(ev))
    assert back["header"]["type"] == FAMILY_ID and back["version"] == GENL_VERSION
    assert parse_event(back) == ev


def test_reconfig_attributes():
    for kw in ({"dev_size": 1 << 40}, {"writecache": 1}, {"dev_cfg": "cdp/vol1"}):
        ev = DeviceEvent(Cmd.RECONFIG_DEVICE, "tcm-user/1/cdp0/cdp/vol0", 0, 1, **kw)
        assert parse_event(wire(build_event(ev))) == ev


def test_reply_carries_status_and_device_id():
    ev = DeviceEvent(Cmd.REMOVED_DEVICE, "tcm-user/1/cdp0/cdp/vol0", 0, 42)
    back = wire(build_reply(ev, -22))
    assert back["cmd"] == Cmd.REMOVED_DEVICE_DONE
    assert back.get_attr("TCMU_ATTR_CMD_STATUS") == -22
    assert back.get_attr("TCMU_ATTR_DEVICE_ID") == 42
    # The wire bytes: nlmsghdr(16) + genlmsghdr(4) + two 8-byte attributes.
    assert len(back.data) == 16 + 4 + 8 + 8
    assert back.data[16] == Cmd.REMOVED_DEVICE_DONE and back.data[17] == 2
    status_attr = back.data[20:28]
    assert status_attr[:4] == bytes([8, 0, 7, 0])  # len 8, type CMD_STATUS (7)
    assert int.from_bytes(status_attr[4:], "little", signed=True) == -22


def test_done_commands():
    for cmd, done in (
        (Cmd.ADDED_DEVICE, Cmd.ADDED_DEVICE_DONE),
        (Cmd.REMOVED_DEVICE, Cmd.REMOVED_DEVICE_DONE),
        (Cmd.RECONFIG_DEVICE, Cmd.RECONFIG_DEVICE_DONE),
    ):
        assert build_reply(DeviceEvent(cmd, "x", 0, 1), 0)["cmd"] == done


def test_set_features():
    back = wire(build_set_features())
    assert back["cmd"] == Cmd.SET_FEATURES == 7
    assert back.get_attr("TCMU_ATTR_SUPP_KERN_CMD_REPLY") == 1


def test_incomplete_or_foreign_messages_are_ignored():
    msg = TcmuMessage()
    msg["cmd"] = Cmd.ADDED_DEVICE
    msg["version"] = GENL_VERSION
    msg["attrs"] = [("TCMU_ATTR_DEVICE", "tcm-user/1/x/cdp/v"), ("TCMU_ATTR_MINOR", 0)]
    assert parse_event(wire(msg)) is None  # no DEVICE_ID
    assert parse_event(wire(build_set_features())) is None  # not an event
    msg = TcmuMessage()
    msg["cmd"] = 99
    msg["version"] = GENL_VERSION
    msg["attrs"] = []
    assert parse_event(wire(msg)) is None
