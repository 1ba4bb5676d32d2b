"""The client's seed lists without I/O: URLs, not_leader hints, the search, terms."""

from __future__ import annotations

import pytest
from msgspec import Raw

from karma.client import calls
from karma.client.errors import ConnectionFailed, NotLeader
from karma.client.seeds import (
    LeaderAddress,
    Search,
    Seeds,
    Topology,
    address,
    hint,
    read_topology,
)
from karma.client.wire import Answer, encode_call, parse_url


def test_a_single_host_url_reads_as_before() -> None:
    assert parse_url("karma://s3cret@10.0.0.5:9000") == {
        "host": "10.0.0.5",
        "port": 9000,
        "token": "s3cret",
    }
    assert parse_url("karma://") == {"host": "127.0.0.1", "port": 8080, "token": None}


def test_several_hosts_are_a_seed_list_with_the_first_as_host() -> None:
    assert parse_url("karma://tok@h1:1,h2:2,h3:3") == {
        "host": "h1",
        "port": 1,
        "token": "tok",
        "seeds": [("h1", 1), ("h2", 2), ("h3", 3)],
    }
    assert parse_url("karma://h1,[::1]:9")["seeds"] == [("h1", 8080), ("::1", 9)]
    assert parse_url("karma://h1:1,h2:2")["token"] is None


@pytest.mark.parametrize("url", ["karma://h1:1,,h2:2", "karma://h1:1,h2:99999", "http://a,b"])
def test_a_bad_seed_list_is_refused(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        parse_url(url)


def test_a_not_leader_message_names_the_leader_to_retry_at() -> None:
    # karma/errors.py KarmaError.not_leader, both forms
    named = NotLeader("Not the leader: the leader is 127.0.0.1:8081; retry there")
    assert hint(named) == ("127.0.0.1", 8081)
    assert hint(NotLeader("Not the leader: no leader is known yet; retry there")) is None
    assert hint(ConnectionFailed("the leader is 127.0.0.1:8081; retry there")) is None
    assert address("[::1]:80") == ("::1", 80)
    assert address("nohost") is None


def test_a_topology_answer_says_who_takes_writes() -> None:
    replica = read_topology(
        Answer(
            True,
            Raw(
                b'{"ha":true,"node":"n1","role":"replica","term":4,'
                b'"leader":{"node":"n0","addr":"127.0.0.1:7"},"members":[]}'
            ),
        )
    )
    assert replica is not None
    assert (replica.role, replica.term) == ("replica", 4)
    assert not replica.takes_writes
    assert replica.leader_address == ("127.0.0.1", 7)
    assert read_topology(Answer(False, Raw(b'"Unknown command"'), "unknown_command")) is None
    assert read_topology(Answer(True, Raw(b'"pong"'))) is None


def test_a_search_asks_in_order_and_follows_a_named_leader_once() -> None:
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    search = Search([a, b])
    asked = []
    for node in search:
        asked.append(node)
        if node == a:
            search.heard(a, Topology("replica", 1, None))
        elif node == b:  # names c, which is not a seed: asked next
            search.heard(b, Topology("replica", 1, _leader("c:1")))
        else:
            search.heard(c, Topology("master", 1, _leader("c:1")))
    assert asked == [a, b, c]
    assert (search.found, search.answered) == (c, a)


def test_a_search_asks_no_node_twice_when_replicas_name_each_other() -> None:
    a, b = ("a", 1), ("b", 1)
    search = Search([a, b])
    asked = []
    for node in search:
        asked.append(node)
        other = "b:1" if node == a else "a:1"
        search.heard(node, Topology("replica", 1, _leader(other)))
    assert asked == [a, b]
    assert search.found is None


def test_an_unreachable_seed_is_skipped() -> None:
    a, b = ("a", 1), ("b", 1)
    search = Search([a, b])
    for node in search:
        search.heard(node, None if node == a else Topology("master", 2, None))
    assert (search.found, search.answered) == (b, b)


def test_a_hint_is_asked_first_and_seeds_are_not_repeated() -> None:
    seeds = Seeds.of([("a", 1), ("b", 1)])
    assert seeds.candidates(("b", 1)) == [("b", 1), ("a", 1)]
    assert seeds.candidates() == [("a", 1), ("b", 1)]


def test_the_highest_term_seen_goes_on_writes_only() -> None:
    seeds = Seeds.of([("a", 1), ("b", 1)])
    seeds.elect(("a", 1))
    seeds.heard(seeds.generation, [Answer(True, Raw(b"1"), term=5, lsn=9), Answer(True, Raw(b"1"))])
    seeds.saw_term(3)
    assert seeds.term == 5
    assert seeds.term_for(calls.increment("s", 1)) == 5
    assert seeds.term_for(calls.sum("s", 1)) is None
    assert seeds.term_for(calls.topology()) is None
    assert b'"term":5' in encode_call(calls.increment("s", 1), None, 5)
    assert b"term" not in encode_call(calls.increment("s", 1), None)


def test_not_leader_from_the_chosen_leader_forgets_it_once() -> None:
    seeds = Seeds.of([("a", 1), ("b", 1)])
    seeds.elect(("a", 1))
    chosen = seeds.generation
    seeds.heard(chosen, [Answer(False, Raw(b'"Not the leader"'), "not_leader")])
    assert seeds.leader is None
    seeds.elect(("b", 1))  # found by another caller meanwhile
    seeds.forget(chosen)  # a late failure from the old choice changes nothing
    assert seeds.leader == ("b", 1)


def _leader(addr: str) -> LeaderAddress:
    return LeaderAddress("n", addr)
