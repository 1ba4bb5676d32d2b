from __future__ import annotations

import re
from binascii import crc_hqx

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karma.cluster import shardmap
from karma.cluster.slots import SLOTS, slot_of


def test_crc16_is_redis_cluster_crc() -> None:
    # Redis Cluster spec's check value for CRC16/XMODEM
    assert crc_hqx(b"123456789", 0) == 0x31C3


def test_slot_of_known_keys() -> None:
    # read from Redis 7's `CLUSTER KEYSLOT` (cluster-enabled redis-server) for the same strings
    assert slot_of(123456789) == 0x31C3 % SLOTS == 12739
    assert slot_of(0) == 13907
    assert slot_of(1) == 9842
    assert slot_of(42) == 8000


def test_even_split_covers_every_slot_once() -> None:
    m = shardmap.even_split(["a", "b", "c"])
    assert m.ranges == ((0, 5460, "a"), (5461, 10921, "b"), (10922, 16383, "c"))
    assert m.owner_of_slot(0) == "a"
    assert m.owner_of_slot(5461) == "b"
    assert m.owner_of_slot(16383) == "c"
    assert m.groups() == ["a", "b", "c"]
    assert sum(m.slot_count(g) for g in m.groups()) == SLOTS


def test_parse_round_trip_and_merge() -> None:
    m = shardmap.parse(b'{"ranges": [[0, 99, "a"], [100, 199, "a"], [200, 16383, "b"]]}', 7)
    assert m.ranges == ((0, 199, "a"), (200, 16383, "b"))
    assert m.version == 7
    assert shardmap.parse(m.to_json(), 7) == m
    assert m.to_wire() == {"version": 7, "ranges": [[0, 199, "a"], [200, 16383, "b"]]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"nope", "not JSON"),
        (b"[]", '"ranges" list'),
        (b'{"ranges": [[0, 10, "a"]]}', "slots 11..16383 without a group"),
        (b'{"ranges": [[0, 10, "a"], [5, 16383, "b"]]}', "overlaps slot 11"),
        (b'{"ranges": [[0, 10, "a"], [12, 16383, "b"]]}', "gap before slot 11"),
        (b'{"ranges": [[0, 16383, ""]]}', "non-empty string"),
        (b'{"ranges": [[0, 16384, "a"]]}', "not within"),
        (b'{"ranges": [[0, "x", "a"]]}', "integers"),
        (b'{"ranges": [[0, 16383]]}', "not [first, last, group]"),
    ],
)
def test_parse_refuses_bad_maps(text: bytes, message: str) -> None:
    with pytest.raises(shardmap.ShardMapError, match=re.escape(message)):
        shardmap.parse(text)


@given(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=40, unique=True))
def test_even_split_any_groups(groups: list[str]) -> None:
    m = shardmap.even_split(groups)
    counts = [m.slot_count(g) for g in groups]
    assert sum(counts) == SLOTS
    assert max(counts) - min(counts) <= 1


@given(st.integers(min_value=-(2**63), max_value=2**64))
def test_owner_of_matches_ranges(key: int) -> None:
    m = shardmap.even_split(["a", "b", "c", "d"])
    slot = slot_of(key)
    assert any(first <= slot <= last and g == m.owner_of(key) for first, last, g in m.ranges)
