"""Answers built for speed encode exactly as the plain objects karma 1.0 answers with."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from karma.protocol import envelope
from karma.protocol.fields import U64_MAX


@given(pairs=st.lists(st.tuples(st.integers(0, U64_MAX), st.integers(0, U64_MAX)), max_size=50))
def test_key_values_encode_as_dicts(pairs: list[tuple[int, int]]) -> None:
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    expected = msgspec.json.encode([{"key": k, "value": v} for k, v in pairs])
    assert msgspec.json.encode(envelope.key_values(keys, values)) == expected
