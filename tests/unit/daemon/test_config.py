from pathlib import Path

import pytest

from appliance.daemon.config import HandlerConfig, load_config, parse_config
from appliance.daemon.errors import ConfigError


def test_defaults():
    cfg = parse_config("")
    assert cfg == HandlerConfig()
    assert cfg.state_dir == Path("/var/lib/cdp/volumes")
    assert cfg.queue_timeout < 30  # below the kernel's default cmd_time_out


def test_values_and_overrides():
    cfg = parse_config(
        '[handler]\nstate_dir = "/srv/cdp"\ndbus = false\nlog_level = "debug"\n'
        "[device]\nworkers = 2\nqueue_timeout = 5\ninline_io = false\n",
        workers=3,
    )
    assert cfg.state_dir == Path("/srv/cdp") and not cfg.dbus and cfg.log_level == "debug"
    assert cfg.workers == 3 and cfg.queue_timeout == 5.0 and cfg.inline_io is False


def test_the_shipped_file_is_the_defaults():
    shipped = Path(__file__).resolve().parents[3] / "firmware" / "cdp" / "handler.toml"
    assert parse_config(shipped.read_text()) == HandlerConfig()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[handler]\nstate_dri = '/x'\n", "unknown key 'state_dri'"),
        ("[daemon]\n", "unknown section"),
        ("[handler]\nstate_dir = 'relative'\n", "absolute path"),
        ("[handler]\ndbus = 'yes'\n", "true or false"),
        ("[device]\ninline_io = 1\n", "true or false"),
        ("[device]\nworkers = 1.5\n", "integer"),
        ("[device]\nworkers = 100\n", "workers must be"),
        ("[device]\nqueue_timeout = 0\n", "queue_timeout"),
        ("[handler]\nlog_level = 'loud'\n", "log_level"),
        ("[handler\n", "not valid TOML"),
    ],
)
def test_refused(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert fragment in str(info.value)


def test_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    f = tmp_path / "handler.toml"
    f.write_text("[device]\nworkers = 0\n")
    assert load_config(f).workers == 0
    f.write_text("[device]\nworkers = -1\n")
    with pytest.raises(ConfigError, match=str(f)):
        load_config(f)
