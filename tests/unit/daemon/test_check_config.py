"""CheckConfig answers (what targetcli shows before creating a backstore)."""

import json

from appliance.daemon.dbus_service import HandlerInterface, check_config
from appliance.daemon.volumes import VolumeStore


def store_with_volume(tmp_path, **meta) -> VolumeStore:
    state = tmp_path / "volumes"
    (state / "vol0").mkdir(parents=True)
    base = {"primary": "/dev/vdb", "secondary": "/srv/j", "size": 1 << 20, "block_size": 512}
    (state / "vol0" / "volume.json").write_text(json.dumps({**base, **meta}))
    return VolumeStore(state)


def test_existing_volume_needs_only_its_name(tmp_path):
    store = store_with_volume(tmp_path)
    ok, msg = check_config(store, "cdp/vol0")
    assert ok and "existing volume vol0" in msg
    ok, msg = check_config(store, "cdp/vol0;primary=/dev/vdb")
    assert ok


def test_existing_volume_with_other_paths_is_refused(tmp_path):
    store = store_with_volume(tmp_path)
    ok, msg = check_config(store, "cdp/vol0;primary=/dev/vdc")
    assert not ok and "exists with primary /dev/vdb, not /dev/vdc" in msg
    ok, msg = check_config(store, "cdp/vol0;mode=async")
    assert not ok and "mode" in msg


def test_new_volume_needs_primary_and_secondary(tmp_path):
    store = VolumeStore(tmp_path / "volumes")
    ok, msg = check_config(store, "cdp/vol1")
    assert not ok and "give primary= and secondary=" in msg
    cfg = f"cdp/vol1;primary={tmp_path}/p.img;secondary={tmp_path}/journal"
    ok, msg = check_config(store, cfg)
    assert ok and msg.startswith("creates volume vol1")


def test_new_volume_paths_are_checked(tmp_path):
    store = VolumeStore(tmp_path / "volumes")
    ok, msg = check_config(store, "cdp/v;primary=/nonexistent/dir/p;secondary=/srv/j")
    assert not ok and "neither does its folder" in msg
    (tmp_path / "f").write_text("")
    ok, msg = check_config(store, f"cdp/v;primary={tmp_path}/p;secondary={tmp_path}/f")
    assert not ok and "is not a folder" in msg
    (tmp_path / "j" / "journal").mkdir(parents=True)
    (tmp_path / "j" / "journal" / "seg").write_text("x")
    ok, msg = check_config(store, f"cdp/v;primary={tmp_path}/p;secondary={tmp_path}/j")
    assert not ok and "already holds a journal" in msg
    ok, msg = check_config(store, f"cdp/v;primary={tmp_path};secondary={tmp_path}/k")
    assert not ok and "neither a block device nor a file" in msg


def test_syntax_errors_are_answers_not_exceptions(tmp_path):
    store = VolumeStore(tmp_path)
    for bad in ("cdp/", "cdp/a:b", "file/vol0", "cdp/vol0;x=1"):
        ok, msg = check_config(store, bad)
        assert not ok and msg


def test_interface_shape():
    """The D-Bus members targetcli calls: ConfigDesc (s), CheckConfig(s) -> (bs)."""
    iface = HandlerInterface(VolumeStore("/nonexistent")).introspect()
    assert iface.name == "org.kernel.TCMUService1"
    [method] = [m for m in iface.methods if m.name == "CheckConfig"]
    assert [a.signature for a in method.in_args] == ["s"]
    assert [a.signature for a in method.out_args] == ["b", "s"]
    [prop] = [p for p in iface.properties if p.name == "ConfigDesc"]
    assert prop.signature == "s"
