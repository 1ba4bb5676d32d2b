"""What limits remember per reservation, compactly (issue 23).

A settled reservation is kept so that a retried reserve, commit or void replays its answer and a
different one is caught. It used to keep both answers as Python dicts and the fingerprints as hex
strings: about 2.2 KB each, for a week. Here it is one `bytes` object:

- a fingerprint becomes an 8-byte key (blake2b of the fingerprint string), whatever the
  fingerprint was (a sha256 hex, "void", ""). Two different requests for one id whose keys
  collide (odds of 2^-64) would get the saved answer instead of idempotency_conflict: a
  replay writes nothing, so no collision can charge or release anything;
- an answer becomes the index of its *shape* (its keys and strings, in order, held once per
  process in `_SHAPES`) followed by its numbers, booleans and nulls, so replaying it rebuilds
  exactly the dict that was answered, key order included. An answer with more than
  `MAX_SHAPE_VALUES` values, or of a new shape once the table is full, is kept whole instead
  (still correct, only larger);
- the record is the MessagePack array [outcome, at, reserve key, settle key, reserve answer,
  settle answer, items].

Only memory uses these forms: `karma.limits.json` holds the answers as JSON, as before.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import attrs
import msgspec

from karma.core import mutations as m

#: Outcomes of a settled reservation; "denied" is a reserve that held nothing.
SETTLED_OUTCOMES: Final = ("committed", "committed_late", "voided", "expired", "denied")
_OUTCOME_CODE: Final = {outcome: code for code, outcome in enumerate(SETTLED_OUTCOMES)}
KEY_BYTES: Final = 8
#: distinct answer shapes remembered, and the values of the largest: beyond them an answer is
#: kept whole (see the module doc), so that many-item answers cannot grow the shape table
MAX_SHAPES: Final = 1024
MAX_SHAPE_VALUES: Final = 128

_NUMBER: Final = "#"
_SAME_ID: Final = "@"  # the reservation's own id: it is the table's key, not stored twice
_WHOLE: Final = -1  # a packed answer kept whole: [-1, answer]

Shape = tuple[Any, ...] | str
Builder = Callable[[list[Any], str], Any]
_SHAPES: list[Shape] = []
_BUILDERS: list[Builder] = []  # _builder(_SHAPES[i])
_SHAPE_INDEX: dict[Shape, int] = {}
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()


def fingerprint_key(fingerprint: str | None) -> bytes:
    """The 8 bytes a fingerprint is remembered as; b"" for none (nothing matches it)."""
    if not fingerprint:
        return b""
    return hashlib.blake2b(fingerprint.encode(), digest_size=KEY_BYTES).digest()


# --- answers -----------------------------------------------------------------------------------
def pack_answer(answer: Any, ident: str) -> bytes:
    return _encoder.encode(_packed(answer, ident))


def unpack_answer(packed: bytes, ident: str) -> Any:
    return _unpacked(_decoder.decode(packed), ident)


def _packed(answer: Any, ident: str) -> list[Any]:
    numbers: list[Any] = []
    shape = _shape(answer, ident, numbers)
    index = _SHAPE_INDEX.get(shape)
    if index is None:
        if len(_SHAPES) >= MAX_SHAPES or len(numbers) > MAX_SHAPE_VALUES:
            return [_WHOLE, answer]
        index = _SHAPE_INDEX[shape] = len(_SHAPES)
        _BUILDERS.append(_builder(shape))
        _SHAPES.append(shape)
    return [index, *numbers]


def _unpacked(packed: list[Any], ident: str) -> Any:
    if packed[0] == _WHOLE:
        return packed[1]
    return _BUILDERS[packed[0]](packed, ident)


def _shape(value: Any, ident: str, numbers: list[Any]) -> Shape:
    kind = type(value)
    if kind is int or kind is bool or value is None:  # a bool is kept as itself, not 1
        numbers.append(value)
        return _NUMBER
    if kind is dict:
        return ("{", *[(key, _shape(item, ident, numbers)) for key, item in value.items()])
    if kind is list:
        return ("[", *[_shape(item, ident, numbers) for item in value])
    if kind is str and value == ident:
        return _SAME_ID
    return ("=", value)  # a string (a status: few of them), or a float (answers have none)


def _builder(shape: Shape) -> Builder:
    """A function that rebuilds an answer of `shape` from its packed list in one expression.

    Every settled id is rebuilt when `snapshot.create_all` captures karma.limits.json, on the
    event loop: walking the shape for each of a million records took several seconds more
    than the dicts they replaced. The expression is made of nothing but the shape's keys and
    strings through `repr` (a valid literal for any str) and indexes into the packed list.
    """
    index = itertools.count(1)  # the packed list starts with the shape's own index

    def expression(part: Shape) -> str:
        if part == _NUMBER:
            return f"packed[{next(index)}]"
        if part == _SAME_ID:
            return "ident"
        assert isinstance(part, tuple)
        kind = part[0]
        if kind == "{":
            pairs = (f"{_literal(key)}: {expression(item)}" for key, item in part[1:])
            return "{" + ", ".join(pairs) + "}"
        if kind == "[":
            return "[" + "".join(f"{expression(item)}, " for item in part[1:]) + "]"
        return _literal(part[1])

    try:
        source = f"lambda packed, ident: {expression(shape)}"
    except TypeError:  # a float or a key that is not a string: walk the shape instead
        return lambda packed, ident: _build(shape, iter(packed[1:]), ident)
    built: Builder = eval(source, {"__builtins__": {}})  # only literals: see the docstring
    return built


def _literal(value: object) -> str:
    if type(value) is not str:
        raise TypeError(value)
    return repr(value)


def _build(shape: Shape, numbers: Iterator[Any], ident: str) -> Any:
    if shape == _NUMBER:
        return next(numbers)
    if shape == _SAME_ID:
        return ident
    assert isinstance(shape, tuple)
    kind = shape[0]
    if kind == "{":
        return {key: _build(item, numbers, ident) for key, item in shape[1:]}
    if kind == "[":
        return [_build(item, numbers, ident) for item in shape[1:]]
    return shape[1]


# --- settled reservations ----------------------------------------------------------------------
@attrs.frozen
class Settled:
    """A settled reservation, decoded from its compact record when a retry or a read asks."""

    id: str
    outcome: str
    at: int
    reserve_key: bytes
    settle_key: bytes
    reserve_answer: Any
    answer: Any
    items: list[m.Add]

    def same_reserve(self, fingerprint: str) -> bool:
        return self.reserve_key == fingerprint_key(fingerprint)

    def same_settle(self, fingerprint: str) -> bool:
        return self.settle_key == fingerprint_key(fingerprint)

    def document(self) -> dict[str, Any]:
        """Its entry in `karma.limits.json` (keys, not fingerprints: see `load_settled`)."""
        return {
            "id": self.id,
            "outcome": self.outcome,
            "items": [list(item) for item in self.items],
            "reserve_key": self.reserve_key.hex(),
            "reserve_answer": self.reserve_answer,
            "settle_key": self.settle_key.hex(),
            "answer": self.answer,
            "at": self.at,
        }


def pack_settled(
    outcome: str,
    at: int,
    keys: tuple[bytes, bytes],
    answers: tuple[bytes | None, bytes | None],
    items: Iterable[m.Add],
) -> bytes:
    """One record; `answers` are already packed (`pack_answer`), None when there is none."""
    reserve, settle = (None if a is None else msgspec.Raw(a) for a in answers)
    return _encoder.encode([_OUTCOME_CODE[outcome], at, *keys, reserve, settle, list(items)])


def settled_at(record: bytes) -> int:
    at: int = _decoder.decode(record)[1]
    return at


def reserve_answer_of(record: bytes) -> bytes | None:
    """The packed reserve answer, to carry into a later record (a late commit)."""
    packed = _decoder.decode(record)[4]
    return None if packed is None else _encoder.encode(packed)


def unpack_settled(ident: str, record: bytes) -> Settled:
    code, at, reserve_key, settle_key, reserve, settle, items = _decoder.decode(record)
    reserve_answer = None if reserve is None else _unpacked(reserve, ident)
    # a denied reserve's answer is its reserve answer, kept once
    answer = reserve_answer if settle is None else _unpacked(settle, ident)
    return Settled(
        ident,
        SETTLED_OUTCOMES[code],
        at,
        reserve_key,
        settle_key,
        reserve_answer,
        answer if code == _OUTCOME_CODE["denied"] or settle is not None else None,
        [(str(s), int(k), int(b), int(a)) for s, k, b, a in items],
    )


def load_settled(raw: dict[str, Any]) -> tuple[str, bytes]:
    """An entry of `karma.limits.json`: today's form (keys) or the one before issue 23, which
    kept the fingerprints themselves (`reserve_fingerprint`, `settle_fingerprint`)."""
    ident = str(raw["id"])
    outcome = str(raw["outcome"])
    if "reserve_key" in raw:
        keys = (bytes.fromhex(str(raw["reserve_key"])), bytes.fromhex(str(raw["settle_key"])))
    else:
        keys = (
            fingerprint_key(raw.get("reserve_fingerprint")),
            fingerprint_key(raw.get("settle_fingerprint")),
        )
    reserve, settle = raw.get("reserve_answer"), raw.get("answer")
    if outcome == "denied":
        settle = None  # the same answer as the reserve's: kept once
    answers = (
        None if reserve is None else pack_answer(reserve, ident),
        None if settle is None else pack_answer(settle, ident),
    )
    items = [add_of(item) for item in raw.get("items") or []]
    return ident, pack_settled(outcome, int(raw.get("at", 0)), keys, answers, items)


def add_of(item: Iterable[Any]) -> m.Add:
    series, key, bucket, amount = item
    return (str(series), int(key), int(bucket), int(amount))
