"""Completion (the ui_complete_* methods), help texts, and docs/SHELL.md against the code."""

import inspect
import os

import pytest
from targetcli_cdp.ui_cdp import UICDP
from targetcli_cdp.ui_volume import UIVolume

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "SHELL.md")
# Parameters that name something the daemon knows get completion.
NEW_NAMES = {("bookmark", "name"), ("create", "volume"), ("expose", "name")}
NAMED = {"volume", "point", "roll_forward_to", "since", "until", "kind", "job", "name", "mode"}


@pytest.fixture
def vsh(sh, vol0):
    sh.root.refresh()
    vol0.bookmark("second")
    return sh


def test_volume_names_complete(vsh):
    cdp = vsh.node("/cdp")
    assert cdp.ui_complete_delete({}, "v", "volume") == ["vol0 "]
    assert cdp.ui_complete_delete({}, "x", "volume") == []
    assert cdp.ui_complete_create({}, "a", "mode") == ["async "]
    # the shell's own path completion sees the volume nodes
    assert [c.name for c in cdp.children] == ["vol0"]


def test_point_names_complete(vsh):
    vol = vsh.node("/cdp/vol0")
    assert vol.ui_complete_restore({}, "fi", "point") == ["first "]
    assert vol.ui_complete_restore({}, "s", "roll_forward_to") == ["second "]
    both = vol.ui_complete_expose({}, "", "point")
    assert both[:2] == ["first", "second"] and all(x.isdigit() for x in both[2:])
    assert vol.ui_complete_points({}, "-", "since") == ["-15m", "-1h", "-1d"]
    assert vol.ui_complete_points({}, "b", "kind") == ["baseline", "bookmark"]
    assert vol.ui_complete_unbookmark({}, "se", "name") == ["second "]
    assert vol.ui_complete_expose({}, "t", "writable") == ["true "]


def test_image_and_job_names_complete(vsh):
    vol = vsh.node("/cdp/vol0")
    vsh.run("/cdp/vol0 expose point=first name=img1")
    assert vol.ui_complete_unexpose({}, "i", "name") == ["img1 "]
    vsh.run("/cdp/vol0 rebaseline")
    assert vol.ui_complete_wait({}, "re", "job")[0].startswith("rebaseline-")
    assert vol.ui_complete_cancel({}, "", "job") == []  # nothing running
    assert sorted(vol.ui_complete_retention({}, "s", "action")) == ["set", "show"]


def test_completion_never_raises_without_daemon(sh, served):
    vol_names = sh.node("/cdp").volume_names()
    served.stop()
    assert vol_names == []
    from targetcli_cdp.ui_volume import UIVolume

    v = UIVolume(sh.node("/cdp"), {"name": "ghost", "state": "in-sync"})
    assert v.ui_complete_restore({}, "", "point") == []


def test_every_command_has_help_with_syntax(vsh):
    for path, cls in (("/cdp", UICDP), ("/cdp/vol0", UIVolume)):
        for name in [m[len("ui_command_") :] for m in cls.__dict__ if m.startswith("ui_command_")]:
            method = getattr(cls, f"ui_command_{name}")
            assert method.__doc__ and len(method.__doc__.split()) > 10, name
            out = vsh.run(f"{path} help {name}")
            assert "SYNTAX" in out and "DESCRIPTION" in out and name in out
            params = list(inspect.signature(method).parameters)[1:]
            named = [p for p in params if p in NAMED and (name, p) not in NEW_NAMES]
            if named:
                assert hasattr(cls, f"ui_complete_{name}"), f"{name} completes {named}"


def test_shell_doc_lists_every_command():
    text = open(DOCS).read()
    for cls in (UICDP, UIVolume):
        for m in cls.__dict__:
            if m.startswith("ui_command_"):
                assert f"`{m[len('ui_command_') :]}" in text, m
