"""Regression tests for the engine bugs this tier found (all fixed; see bugs.py).

Each reproducer returns None when the engine behaves, else what went wrong.
``test_damaged_catalog_page_is_rebuilt`` (test_io_errors.py) is the ninth.
"""

import pytest

from . import bugs

FIXED = [
    "unsynced_tail_after_kill",
    "segment_header_never_synced",
    "pooled_segment_reused_then_power_loss",
    "clean_flag_outlives_power_loss",
    "failed_open_leaks_threads",
    "primary_fsync_error_retried",
    "journal_failure_during_rollover",
    "journal_eio_then_restart",
    "journal_eio_before_first_durable_group",
    "primary_write_error_never_resynced",
    "rollover_header_unsynced_at_kill",
    "failed_group_keeps_its_drl_pins",
    "unpinned_write_across_journal_restart",
]


@pytest.mark.known_bug
@pytest.mark.parametrize("name", FIXED)
def test_bug(name, root):
    problem = getattr(bugs, name)(root)
    assert problem is None, problem
