"""Point names: sequence numbers, bookmarks, relative and absolute times."""

from datetime import UTC, datetime

import pytest

from appliance.control.points import parse_duration, parse_point
from appliance.control.protocol import ControlError

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("1234", "seq", 1234),
        (1234, "seq", 1234),
        ("  42 ", "seq", 42),
        ("pre-upgrade", "bookmark", "pre-upgrade"),
        ("a:b@c+d", "bookmark", "a:b@c+d"),
        ("-15m", "time", NOW - 900),
        ("-2h", "time", NOW - 7200),
        ("-1d12h", "time", NOW - 86400 - 43200),
        ("-90s", "time", NOW - 90),
        ("-1w", "time", NOW - 7 * 86400),
        ("-1.5h", "time", NOW - 5400),
        ("@1764000000.5", "time", 1764000000.5),
        ("2026-03-01T12:00:00Z", "time", datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()),
        ("2026-03-01T13:00:00+01:00", "time", datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()),
        ("seq:7", "seq", 7),
        ("bookmark:2026-03-01", "bookmark", "2026-03-01"),
        ("bookmark:123", "bookmark", "123"),
        ("time:2026-03-01T12:00:00Z", "time", datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()),
    ],
)
def test_parse(text, kind, value):
    ref = parse_point(text, now=NOW)
    assert ref.kind == kind
    assert ref.value == pytest.approx(value) if kind == "time" else ref.value == value
    assert ref.engine_kwargs() == {kind: ref.value}


def test_naive_iso_time_is_local_time():
    ref = parse_point("2026-03-01 12:00")
    assert ref.value == datetime(2026, 3, 1, 12).astimezone().timestamp()


def test_date_alone_is_midnight():
    assert parse_point("2026-03-01").value == datetime(2026, 3, 1).astimezone().timestamp()


def test_relative_uses_the_clock_by_default():
    import time

    before = time.time()
    ref = parse_point("-10s")
    assert before - 10 - 1 <= ref.value <= time.time() - 10


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-15", "relative time"),
        ("-15x", "relative time"),
        ("-", "relative time"),
        ("2026-13-45T99:00", "ISO 8601"),
        ("seq:abc", "seq: takes a number"),
        (-3, "not negative"),
        (True, "give a sequence number"),
        (1.5, "give a sequence number"),
        (None, "give a sequence number"),
    ],
)
def test_bad_points(value, words):
    with pytest.raises(ControlError) as info:
        parse_point(value, now=NOW)
    assert info.value.type == "bad_argument"
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_duration():
    assert parse_duration("2h30m") == 9000
    with pytest.raises(ControlError):
        parse_duration("2h30")
