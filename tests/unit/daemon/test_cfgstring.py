import pytest

from appliance.daemon import cfgstring
from appliance.daemon.cfgstring import CfgString, parse
from appliance.daemon.errors import CfgStringError


def test_name_only():
    assert parse("vol0") == CfgString("vol0")


def test_full_form_and_round_trip():
    text = "vol-1.a_b;primary=/dev/disk/by-id/virtio-primary;secondary=/srv/j/vol0;mode=async"
    cfg = parse(text)
    assert cfg == CfgString("vol-1.a_b", "/dev/disk/by-id/virtio-primary", "/srv/j/vol0", "async")
    assert cfg.render() == text
    assert parse(cfg.dev_config(), subtype=True) == cfg


def test_with_subtype():
    assert parse("cdp/vol0;primary=/a/b", subtype=True) == CfgString("vol0", "/a/b")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "bad volume name"),
        ("-vol", "bad volume name"),
        ("a" * 65, "bad volume name"),
        ("vol/0", "bad volume name"),
        ("vol0;primary=/dev/sdb:1", "':' is not allowed"),
        ("vol0;primary=/a,b", "',' is not allowed"),
        ("vol0;primary=/a b", "' ' is not allowed"),
        ("vol0;size=10", "unknown option 'size'"),
        ("vol0;primary", "not key=value"),
        ("vol0;primary=/a;primary=/b", "given twice"),
        ("vol0;primary=dev/sdb", "absolute path"),
        ("vol0;secondary=/srv/../etc", "without '..'"),
        ("vol0;primary=", "empty or malformed"),
        ("vol0;mode=fast", "mode must be one of"),
        ("vol0;primary=/" + "x" * 260, "the kernel takes 255"),
    ],
)
def test_refused(text, fragment):
    with pytest.raises(CfgStringError, match=None) as info:
        parse(text)
    assert fragment in str(info.value)


def test_subtype_required_when_asked():
    with pytest.raises(CfgStringError, match="must start with 'cdp/'"):
        parse("file/vol0", subtype=True)
    with pytest.raises(CfgStringError, match="must start with 'cdp/'"):
        parse("vol0", subtype=True)


def test_config_desc_mentions_every_key():
    for key in cfgstring.KEYS:
        assert key in cfgstring.CONFIG_DESC
    example = cfgstring.CONFIG_DESC.split("e.g. ")[1].split()[0]
    assert parse(example).primary == "/dev/sdb"
