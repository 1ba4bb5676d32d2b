"""The response envelope: `{"protocol_version":2,"success":…,"response":…,"error_code":…}\\r\\n`.

The two prefixes are constant, so an answer is three byte strings joined: cheaper than
encoding an envelope Struct, and the key order is karma 1.0's by construction.
"""

from __future__ import annotations

from typing import Final

import msgspec

from karma.errors import ErrorCode, KarmaError

_OK: Final = b'{"protocol_version":2,"success":true,"response":'
_OK_TAIL: Final = b',"error_code":null}\r\n'
_IDEMPOTENT_TAIL: Final = (
    b',"idempotent":false,"error_code":null}\r\n',
    b',"idempotent":true,"error_code":null}\r\n',
)
_ERR: Final = b'{"protocol_version":2,"success":false,"response":'
_encode: Final = msgspec.json.Encoder().encode


def encode_ok(response: object) -> bytes:
    return _OK + _encode(response) + _OK_TAIL


def encode_idempotent(response: object, *, replayed: bool) -> bytes:
    return _OK + _encode(response) + _IDEMPOTENT_TAIL[replayed]


def encode_error(error: KarmaError) -> bytes:
    extra = b""
    if error.extra:  # karma-trio's own fields (`moved`), before error_code as `term` is
        extra = b"".join(b',"%s":%s' % (k.encode(), _encode(v)) for k, v in error.extra.items())
    return (
        _ERR
        + _encode(error.message)
        + extra
        + b',"error_code":'
        + _encode(str(error.code))
        + b"}\r\n"
    )


_NULL_TAIL: Final = b',"error_code":null}\r\n'


def succeeded(data: bytes) -> bool:
    return data.startswith(_OK)


def with_term(data: bytes, term: int, lsn: int | None) -> bytes:
    """A success answer with karma-trio's `term` (and a write's `lsn`) before `error_code`."""
    extra = b',"term":%d' % term if lsn is None else b',"term":%d,"lsn":%d' % (term, lsn)
    return data[: -len(_NULL_TAIL)] + extra + _NULL_TAIL


def encode_ok_checked(response: object, max_response_bytes: int) -> bytes:
    """encode_ok, or a response_too_large error when the answer would exceed the limit."""
    data = encode_ok(response)
    if max_response_bytes and len(data) > max_response_bytes:
        return encode_error(
            KarmaError(ErrorCode.RESPONSE_TOO_LARGE, f"Response exceeds {max_response_bytes} bytes")
        )
    return data


class KeyValue(msgspec.Struct, gc=False):
    """One `{"key":k,"value":v}` of a batch read's answer.

    A Struct, not a dict: made by `map` in C and left out of the garbage collector, it halves
    the cost of answering a 1000-key `counter.batch_sum` (benchmarks/hotpath_bench.py).
    """

    key: int
    value: int


def key_values(keys: list[int], values: list[int]) -> list[KeyValue]:
    return list(map(KeyValue, keys, values))
