"""Cluster mode of the blocking client: one plain `Client` (its own pool) per group leader,
parts of one call sent concurrently from a small thread pool (docs/client.md, "Cluster mode")."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

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
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.wire import Answer, read_answer
from karma.cluster import drive
from karma.cluster.parts import JsonObject
from karma.cluster.reply import Reply, unreachable
from karma.cluster.shardmap import ShardMap

T = TypeVar("T")
#: a map known to be stale (a lost leader) is read again at most this often
REFRESH_EVERY_S = 0.2


class Link(Protocol):
    """A group leader's plain client, as cluster mode uses it."""

    def _exchange(self, queued: Sequence[Call[Any]]) -> list[Answer]: ...

    def close(self) -> None: ...


class ClusterRouting:
    """The map, the leaders, a Link per leader, and the driving of one call through them."""

    def __init__(
        self,
        source: ClusterUrl,
        token: str | None,
        link: Callable[[Address], Link],
        timeout: float,
        ask: Callable[[Address], Answer | None],
    ) -> None:
        self.source, self.token, self.timeout = source, token, timeout
        self._link, self._ask = link, ask
        self._links: dict[Address, Link] = {}
        self._view: View | None = None
        self._stale = False
        self._read_at = 0.0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        #: map reads after a `moved` answer
        self.moved_refreshes = 0

    # --- the view ---------------------------------------------------------------------------
    def view(self) -> View:
        with self._lock:
            due = self._stale and time.monotonic() - self._read_at >= REFRESH_EVERY_S
            if self._view is None:
                self._read()
            elif due:
                try:
                    self._read()
                except ConnectionFailed:
                    self._read_at = time.monotonic()  # etcd away: keep routing by what we have
            assert self._view is not None
            return self._view

    def refresh(self) -> View:
        """Read the map and leaders now; the view before stays when the read fails."""
        with self._lock:
            try:
                self._read()
            except ConnectionFailed:
                if self._view is None:
                    raise
            assert self._view is not None
            return self._view

    def _read(self) -> None:
        self._read_at = time.monotonic()
        if self.source.etcd:
            self._view = read_etcd(self.source.etcd, self.source.cluster, self.timeout)
        else:
            self._view = self._from_seeds()
        self._stale = False

    def _from_seeds(self) -> View:
        for seed in self.source.seeds:
            answer = self._ask(seed)
            found = None if answer is None else seed_view(answer)
            if found is not None:
                return found
        raise ConnectionFailed(
            f"no seed answered cluster.topology with a map: {self.source.describe()}"
        )

    def lost(self) -> None:
        """A leader was lost or refused: read the leaders again before a later call."""
        self._stale = True

    # --- one call ---------------------------------------------------------------------------
    def run(self, call: Call[T]) -> T:
        return read_answer(call, self.answer(call))

    def answer(self, call: Call[Any]) -> Answer:
        view = self.view()
        planned = plan_call(call, self.token)
        if planned.request is None:
            group = view.shardmap.groups()[0]
            return to_answer(self._send(view, group, planned.obj))
        steps = drive.drive(planned.request, planned.obj, view.shardmap, nonce=uuid.uuid4().hex)
        outcome: drive.Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return to_answer(done.value)
            if isinstance(step, drive.Refresh):
                self.moved_refreshes += 1
                view = self.refresh()
                outcome = view.shardmap
            else:
                outcome = self._send_all(view, step.parts)

    def _send_all(self, view: View, parts: Sequence[tuple[str, JsonObject]]) -> list[Reply]:
        if len(parts) == 1:
            return [self._send(view, *parts[0])]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(16, thread_name_prefix="karma-fanout")
        return list(self._pool.map(lambda part: self._send(view, *part), parts))

    def _send(self, view: View, group: str, obj: JsonObject) -> Reply:
        text = view.leaders.get(group)
        where = None if text is None else address_of(text)
        if where is None:
            self.lost()
            return unreachable(group, "no leader known")
        try:
            answer = self._link_to(where)._exchange([as_call(obj)])[0]
        except KarmaError as exc:
            self.lost()
            return unreachable(group, exc.message)
        reply = to_reply(answer)
        if reply.error_code == "not_leader":
            self.lost()
            if not reply.message.startswith("Group "):
                return Reply(False, f"Group {group}: {reply.message}", reply.error_code)
        return reply

    def _link_to(self, where: Address) -> Link:
        link = self._links.get(where)
        if link is None:
            with self._lock:
                link = self._links.setdefault(where, self._link(where))
        return link

    def shardmap(self) -> ShardMap:
        return self.view().shardmap

    def close(self) -> None:
        with self._lock:
            links, self._links = self._links, {}
            pool, self._pool = self._pool, None
        for link in links.values():
            link.close()
        if pool is not None:
            pool.shutdown(wait=False)
