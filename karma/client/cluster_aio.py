"""Cluster mode of the async client (trio or asyncio, through anyio): as karma.client.
cluster_sync, the parts of one call sent from a task group; the etcd read (blocking `urllib`,
rare: at start, after `moved`, after a lost leader) runs in a worker thread."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio

from karma.client.call import Call
from karma.client.cluster import (
    Address,
    ClusterUrl,
    View,
    address_of,
    as_call,
    plan_call,
    read_etcd,
    seed_view,
    to_answer,
    to_reply,
)
from karma.client.cluster_sync import REFRESH_EVERY_S
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.wire import Answer, read_answer
from karma.cluster import drive
from karma.cluster.parts import JsonObject
from karma.cluster.reply import Reply, unreachable

T = TypeVar("T")


class AsyncLink(Protocol):
    """A group leader's plain async client, as cluster mode uses it."""

    async def exchange(self, queued: Sequence[Call[Any]]) -> list[Answer]: ...

    async def aclose(self) -> None: ...


class AsyncClusterRouting:
    def __init__(
        self,
        source: ClusterUrl,
        token: str | None,
        link: Callable[[Address], AsyncLink],
        timeout: float,
        ask: Callable[[Address], Awaitable[Answer | None]],
    ) -> None:
        self.source, self.token, self.timeout = source, token, timeout
        self._link, self._ask = link, ask
        self._links: dict[Address, AsyncLink] = {}
        self._view: View | None = None
        self._stale = False
        self._read_at = 0.0
        self._lock = anyio.Lock()
        self.moved_refreshes = 0

    async def view(self) -> View:
        async with self._lock:
            due = self._stale and time.monotonic() - self._read_at >= REFRESH_EVERY_S
            if self._view is None:
                await self._read()
            elif due:
                try:
                    await self._read()
                except ConnectionFailed:
                    self._read_at = time.monotonic()  # etcd away: keep routing by what we have
            assert self._view is not None
            return self._view

    async def refresh(self) -> View:
        async with self._lock:
            try:
                await self._read()
            except ConnectionFailed:
                if self._view is None:
                    raise
            assert self._view is not None
            return self._view

    async def _read(self) -> None:
        self._read_at = time.monotonic()
        if self.source.etcd:
            read = partial(read_etcd, self.source.etcd, self.source.cluster, self.timeout)
            self._view = await anyio.to_thread.run_sync(read)
        else:
            self._view = await self._from_seeds()
        self._stale = False

    async def _from_seeds(self) -> View:
        for seed in self.source.seeds:
            answer = await self._ask(seed)
            found = None if answer is None else seed_view(answer)
            if found is not None:
                return found
        listed = self.source.describe()
        raise ConnectionFailed(f"no seed answered cluster.topology with a map: {listed}")

    def lost(self) -> None:
        self._stale = True

    async def run(self, call: Call[T]) -> T:
        return read_answer(call, await self.answer(call))

    async def answer(self, call: Call[Any]) -> Answer:
        view = await self.view()
        planned = plan_call(call, self.token)
        if planned.request is None:
            group = view.shardmap.groups()[0]
            return to_answer(await self._send(view, group, planned.obj))
        steps = drive.drive(planned.request, planned.obj, view.shardmap, nonce=uuid.uuid4().hex)
        outcome: drive.Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return to_answer(done.value)
            if isinstance(step, drive.Refresh):
                self.moved_refreshes += 1
                view = await self.refresh()
                outcome = view.shardmap
            else:
                outcome = await self._send_all(view, step.parts)

    async def _send_all(self, view: View, parts: Sequence[tuple[str, JsonObject]]) -> list[Reply]:
        if len(parts) == 1:
            return [await self._send(view, *parts[0])]
        replies: list[Reply | None] = [None] * len(parts)

        async def one(index: int, group: str, obj: JsonObject) -> None:
            replies[index] = await self._send(view, group, obj)

        async with anyio.create_task_group() as tasks:
            for index, (group, obj) in enumerate(parts):
                tasks.start_soon(one, index, group, obj)
        return [reply for reply in replies if reply is not None]

    async def _send(self, view: View, group: str, obj: JsonObject) -> Reply:
        text = view.leaders.get(group)
        where = None if text is None else address_of(text)
        if where is None:
            self.lost()
            return unreachable(group, "no leader known")
        link = self._links.get(where)
        if link is None:
            link = self._links.setdefault(where, self._link(where))
        try:
            answer = (await link.exchange([as_call(obj)]))[0]
        except KarmaError as exc:
            self.lost()
            return unreachable(group, exc.message)
        reply = to_reply(answer)
        if reply.error_code == "not_leader":
            self.lost()
            if not reply.message.startswith("Group "):
                return Reply(False, f"Group {group}: {reply.message}", reply.error_code)
        return reply

    async def aclose(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.aclose()
