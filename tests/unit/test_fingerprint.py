"""The request fingerprint is karma 1.0's, byte for byte: its records keep matching retries."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karma.core import mutations as m
from karma.core.fingerprint import Canon
from tests.helpers import SHARED

FIXTURE = SHARED / "conformance/fixtures/karma-1.0-datadir/karma.idempotency.json"


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"karma 1.0's data directory not at {FIXTURE}")
def test_keyed_increment_fingerprints_equal_karma_1_0s() -> None:
    # conformance/crossrestore.py wrote ev-0..ev-19 as increments of api_requests, key i,
    # bucket 20260505, value 3, through karma 1.0
    records = json.loads(FIXTURE.read_text())["records"]
    wanted = {r["key"]: r["fingerprint"] for r in records if r["key"].startswith("ev-")}
    assert len(wanted) == 20
    for i in range(20):
        mutation = m.Increment(series="api_requests", key=i, bucket=20260505, value=3)
        assert mutation.canon().digest() == wanted[f"ev-{i}"]


@given(
    st.sampled_from([m.Increment, m.Decrement]),
    st.text(min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=19700101, max_value=99991231),
    st.integers(min_value=0, max_value=2**63),
)
def test_point_canon_is_the_builders_text(
    cls: type[m.PointMutation], series: str, key: int, bucket: int, value: int
) -> None:
    mutation = cls(series=series, key=key, bucket=bucket, value=value)
    built = (
        Canon(cls.COMMAND)
        .text("series", series)
        .unsigned("key", key)
        .unsigned("bucket", bucket)
        .unsigned("value", value)
    )
    fast = mutation.canon()
    assert fast.command == built.command
    assert fast.digest() == built.digest()
