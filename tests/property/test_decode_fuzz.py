"""Any bytes decode to a request or a KarmaError that is not internal_error."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from karma.errors import ErrorCode, KarmaError
from karma.protocol import optable
from karma.protocol.decode import decode
from karma.protocol.framing import LineBuffer
from karma.protocol.gate import Gate

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "series",
        "tree",
        "key",
        "keys",
        "value",
        "bucket",
        "date",
        "items",
        "range",
        "limit",
        "cursor",
        "token",
        "file",
        "after_lsn",
        "before",
    ]
)


def _decodes_or_refuses(data: bytes) -> None:
    try:
        decode(data, Gate())
    except KarmaError as exc:
        assert exc.code is not ErrorCode.INTERNAL_ERROR


@given(st.binary(max_size=200))
def test_any_bytes_never_escape_as_another_exception(data: bytes) -> None:
    _decodes_or_refuses(data)


@given(st.sampled_from(sorted(optable.CLASS_BY_TAG)), st.dictionaries(FIELDS, JSON, max_size=5))
def test_any_json_in_any_field_of_any_op_is_answered(op: str, fields: dict[str, object]) -> None:
    _decodes_or_refuses(json.dumps({"v": 2, "op": op, **fields}).encode())


@given(
    st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=6), st.integers(1, 7)
)
def test_framing_is_the_same_whole_or_in_pieces(lines: list[bytes], step: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    whole = LineBuffer(1000).feed(data)
    pieces = LineBuffer(1000)
    split: list[bytes] = []
    for start in range(0, len(data), step):
        split += pieces.feed(data[start : start + step])
    assert (
        whole == split == [ln.removesuffix(b"\r") for ln in lines if ln.removesuffix(b"\r").strip()]
    )
    assert not pieces.pending


def test_a_begun_line_is_pending_until_its_newline() -> None:
    buffer = LineBuffer(100)
    assert not buffer.pending
    assert buffer.feed(b'{"v"') == []
    assert buffer.pending
    assert buffer.feed(b":2}\n{") == [b'{"v":2}']
    assert buffer.pending  # the next line has begun
    assert buffer.feed(b"}\n") == [b"{}"]
    assert not buffer.pending


def test_an_oversized_line_stops_the_stream() -> None:
    buffer = LineBuffer(10)
    assert buffer.feed(b"short\n" + b"x" * 11 + b"\nlater\n") == [b"short"]
    assert buffer.too_large
    assert buffer.feed(b"more\n") == []


def test_an_oversized_partial_line_is_caught_before_its_newline() -> None:
    buffer = LineBuffer(10)
    assert buffer.feed(b"x" * 11) == []
    assert buffer.too_large
