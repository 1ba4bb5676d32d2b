"""The etcd client against a real etcd member (no mocks): the calls an election needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from karma.ha.etcd import EtcdClient, EtcdError
from tests.process.etcd import ETCD, Etcd

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    member = Etcd(tmp_path / "etcd").start()
    try:
        yield member
    finally:
        member.stop()


async def test_only_one_create_wins_and_the_key_dies_with_its_lease(etcd: Etcd) -> None:
    client = EtcdClient(["http://127.0.0.1:1", etcd.url])  # a dead endpoint is skipped
    try:
        lease = await client.grant(2)
        first = await client.create("/karma/t/leader", b"a", lease=lease.id)
        second = await client.create("/karma/t/leader", b"b", lease=lease.id)
        assert first.succeeded
        assert not second.succeeded
        assert second.kvs[0].value == b"a"
        assert second.kvs[0].create_revision == first.revision  # the term
        assert await client.guarded_put(
            "/karma/t/status", b"s", guard="/karma/t/leader", create_revision=first.revision
        )
        assert not await client.guarded_put(
            "/karma/t/status", b"s", guard="/karma/t/leader", create_revision=first.revision + 1
        )
        assert await client.keepalive(lease.id) == 2
        found = await client.range("/karma/t/", prefix=True)
        assert {kv.key for kv in found.kvs} == {"/karma/t/leader", "/karma/t/status"}
        await trio.sleep(3.5)
        assert await client.keepalive(lease.id) is None  # dead: no TTL in the answer
        found = await client.range("/karma/t/", prefix=True)
        assert {kv.key for kv in found.kvs} == {"/karma/t/status"}
        with pytest.raises(EtcdError):
            await client.put("/karma/t/x", b"x", lease=lease.id)
    finally:
        await client.aclose()


async def test_no_endpoint_answering_is_an_etcd_error() -> None:
    client = EtcdClient(["http://127.0.0.1:1"], timeout_s=0.5)
    try:
        with pytest.raises(EtcdError, match="unavailable"):
            await client.range("/x")
    finally:
        await client.aclose()
