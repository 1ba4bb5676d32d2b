"""The replica's poll/bootstrap bookkeeping that replication.status, stats and metrics report."""

from __future__ import annotations

import time

import pytest

from karma.core.counters import Attempts, ReplicationState


def test_attempt_counts_success_then_error_and_clears_the_error_on_success() -> None:
    steps = Attempts()
    with steps.attempt(time.time):
        pass
    with pytest.raises(ConnectionError), steps.attempt(time.time):
        raise ConnectionError("master gone")
    assert (steps.attempts, steps.successes, steps.errors) == (2, 1, 1)
    assert steps.last_error == "master gone"
    assert steps.last_error_unix >= steps.last_success_unix > 0
    with steps.attempt(time.time):
        pass
    assert steps.last_error is None
    assert (steps.attempts, steps.successes, steps.errors) == (3, 2, 1)


def test_replication_fields_keep_karma_names_and_order() -> None:
    state = ReplicationState(source_lsn=10)
    with state.bootstrap.attempt(time.time):
        pass
    names = [name for name, _ in state.fields(replayed_lsn=4)]
    steps = ["attempt_count", "success_count", "error_count"]
    times = ["attempt_unix", "success_unix", "error_unix"]
    expected = ["replication_replayed_lsn", "replication_lag_entries"]
    expected += ["replication_entries_applied", "replication_last_received_unix"]
    for step in ("poll", "bootstrap"):
        expected += [f"replication_{step}_{s}" for s in steps]
        expected += [f"replication_last_{step}_{t}" for t in times]
        expected += [f"replication_last_{step}_error"]
    assert names == expected
    values = dict(state.fields(replayed_lsn=4))
    assert values["replication_lag_entries"] == 6
    assert values["replication_bootstrap_success_count"] == 1
    assert values["replication_poll_attempt_count"] == 0
