"""Failed accepts are counted each time and logged at most once per LOG_EVERY_SECONDS."""

from __future__ import annotations

import errno
import io
import json

from karma.core.counters import Counters
from karma.observability.logs import Logger
from karma.server.accept import LOG_EVERY_SECONDS, RETRY_SECONDS, AcceptFailures


def test_failed_accepts_are_all_counted_and_logged_once_per_period() -> None:
    stream = io.StringIO()
    counters = Counters()
    failures = AcceptFailures(counters, Logger(stream=stream))
    emfile = OSError(errno.EMFILE, "Too many open files")
    retries = round(2.5 * LOG_EVERY_SECONDS / RETRY_SECONDS)  # 2.5 periods of retrying
    for attempt in range(retries):
        failures.failed(emfile, 1000.0 + attempt * RETRY_SECONDS)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert counters.accept_error_count == retries
    assert [line["event"] for line in lines] == ["accept.failed"] * 3
    assert [line["errno"] for line in lines] == ["EMFILE"] * 3
    # each line tells how many failures it stands for: the first, then one period's worth
    assert lines[0]["failures"] == 1
    assert sum(line["failures"] for line in lines) <= retries
    assert lines[1]["failures"] >= LOG_EVERY_SECONDS / RETRY_SECONDS - 1
