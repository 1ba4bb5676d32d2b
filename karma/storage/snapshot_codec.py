"""`<unix>_<series>.tree` files: karma 1.0's MessagePack layout, and their `.meta.json` sidecars.

    {"branches_num": 9, "branches": [ {key: {"table": {day: value}, "total": n}}, ... 9 maps ]}

Key `k` lives in branch `k % 9`. karma 1.0 trusts `total` and looks a key up only in its own
branch; we recompute totals from the tables and re-bucket misplaced keys instead of trusting
either, and refuse files whose structure is wrong.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from karma.core.series import BRANCHES, Counter, Series

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()
_meta_encoder: Final = msgspec.json.Encoder()


class SnapshotError(Exception):
    """A snapshot file that cannot be read as a series."""


class Meta(msgspec.Struct, kw_only=True):
    """The `.meta.json` sidecar, in karma 1.0's key order."""

    tree: str
    file: str
    timestamp: int
    last_lsn: int
    bytes: int

    def presented(self) -> dict[str, object]:
        """The order API answers use: tree, file, timestamp, bytes, last_lsn, metadata_file."""
        return {
            "tree": self.tree,
            "file": self.file,
            "timestamp": self.timestamp,
            "bytes": self.bytes,
            "last_lsn": self.last_lsn,
            "metadata_file": self.file + ".meta.json",
        }


def encode_series(series: Series) -> bytes:
    branches: list[dict[int, dict[str, Any]]] = [{} for _ in range(BRANCHES)]
    for key in series.in_branch_order():
        counter = series.counters[key]
        branches[key % BRANCHES][key] = {"table": counter.table, "total": counter.total}
    return _encoder.encode({"branches_num": BRANCHES, "branches": branches})


def decode_series(data: bytes) -> Series:
    try:
        document = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SnapshotError(f"not a snapshot: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("branches"), list):
        raise SnapshotError("not a snapshot: no branches")
    series = Series()
    for branch in document["branches"]:
        if not isinstance(branch, dict):
            raise SnapshotError("not a snapshot: a branch is not a map")
        for key, raw in branch.items():
            series.counters[_u64(key)] = _counter(raw)
    return series


def _counter(raw: object) -> Counter:
    if not isinstance(raw, dict) or not isinstance(raw.get("table"), dict):
        raise SnapshotError("not a snapshot: a counter has no table")
    table = {_u64(day): _u64(value) for day, value in raw["table"].items() if value}
    return Counter(table, sum(table.values()))


def _u64(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**64:
        raise SnapshotError(f"not a snapshot: {value!r} is not an unsigned 64-bit integer")
    return value


def encode_meta(meta: Meta) -> bytes:
    return _meta_encoder.encode(meta) + b"\n"


def decode_meta(data: bytes) -> Meta:
    return msgspec.json.decode(data, type=Meta)
