"""Fixtures and markers of the durability tests."""

import pytest

from .helpers import scratch_root


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "known_bug: regression test of an engine bug found here (tests/durability/bugs.py); "
        "XPASS means fixed: remove the mark",
    )


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> str:
    """Where the tiny volumes go: tmpfs when there is one (see helpers.scratch_root)."""
    return scratch_root(str(tmp_path_factory.mktemp("durability")))
