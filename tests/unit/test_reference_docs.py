"""Reference pages list exactly what the tables in the code hold (one fact, one place)."""

from __future__ import annotations

import re
from pathlib import Path

from karma.errors import ErrorCode
from karma.protocol import optable

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference"


def test_ops_page_lists_every_op_and_alias() -> None:
    text = (DOCS / "ops.md").read_text()
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", text))
    assert documented == set(optable.CLASS_BY_TAG)


def test_errors_page_lists_every_code() -> None:
    text = (DOCS / "errors.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", text, re.M))
    assert documented == {str(code) for code in ErrorCode}
    # karma 1.0's 14, storage_unavailable, capacity_exceeded, not_leader, replication_timeout,
    # replication_diverged, moved
    assert len(documented) == 20
