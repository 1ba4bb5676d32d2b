"""A small etcd v3 client over the JSON gateway, as Patroni's etcd3.py does: the only HA part
that does I/O, with httpx (it runs under trio through anyio).

It sends the shapes of `karma.ha.etcd_wire` to the first member that answers, preferring the
last good one, within one time bound per call over all members.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import httpx

from karma.ha.etcd_wire import (
    NOT_FOUND,
    Call,
    EtcdError,
    Lease,
    RangeResult,
    TxnResult,
    WatchEvent,
    check,
    create_request,
    delete_if_request,
    grant_request,
    guarded_put_request,
    keepalive_request,
    parse_grant,
    parse_keepalive,
    parse_range,
    parse_txn,
    parse_watch,
    put_request,
    range_request,
    revoke_request,
    watch_request,
)


async def _first_events(reply: httpx.Response, url: str) -> tuple[WatchEvent, ...]:
    """Read a watch stream up to the first line with events (or an error) in it.

    httpx's line iterator is a stack of async generators: leaving the loop early would strand
    the inner ones (trio warns as it collects them). Cancelling instead makes the next read
    raise inside the innermost one, so the exception unwinds and closes every level.
    """
    found: tuple[WatchEvent, ...] | EtcdError | None = None
    with anyio.CancelScope() as reading:
        async for line in reply.aiter_lines():
            if found is not None or not line.strip():
                continue  # found: waiting for the cancellation to arrive at the next read
            try:
                answer = json.loads(line)
                if not isinstance(answer, dict):
                    raise EtcdError(f"{url}: unexpected watch answer {line:.80}")
                events = parse_watch(answer)
            except ValueError as exc:
                found = EtcdError(f"{url}: unreadable watch answer {line:.80}: {exc}")
            except EtcdError as exc:
                found = exc
            else:
                found = events or None
            if found is not None:
                reading.cancel()
    if found is None:
        raise EtcdError(f"{url}: the watch stream ended")
    if isinstance(found, EtcdError):
        raise found
    return found


@attrs.define(eq=False)
class EtcdClient:
    """POSTs gateway calls to the first endpoint that answers, preferring the last good one.

    One call takes at most `timeout_s` over all endpoints: each gets an equal share of what is
    left, so one that refuses at once leaves its share to the next (Patroni divides its
    retry_timeout among the members the same way). Without that bound a call would take up to
    one timeout per member: 3 s with three members that hang (an etcd election, a lost quorum,
    a black hole) while a test's master has 2.25 s between a keepalive and its deadline.
    """

    urls: Sequence[str]
    timeout_s: float = 1.0
    #: for https:// members: the CA to trust and the client certificate to present
    #: (karma.tls.client_context); None: httpx's default verification
    tls: ssl.SSLContext | None = None
    _http: httpx.AsyncClient | None = attrs.field(default=None, init=False)
    _preferred: int = attrs.field(default=0, init=False)

    def _client(self) -> httpx.AsyncClient:
        if self.tls is None:
            return httpx.AsyncClient(timeout=self.timeout_s)
        return httpx.AsyncClient(timeout=self.timeout_s, verify=self.tls)

    async def call(self, request: Call) -> dict[str, Any]:
        if self._http is None:
            self._http = self._client()
        failures: list[str] = []
        count = len(self.urls)
        deadline = anyio.current_time() + self.timeout_s
        for step in range(count):
            index = (self._preferred + step) % count
            url = self.urls[index]
            share = (deadline - anyio.current_time()) / (count - step)
            reply = None
            with anyio.move_on_after(share):
                try:
                    reply = await self._http.post(url + request.path, json=request.body)
                    answer = reply.json()
                except (httpx.HTTPError, ValueError) as exc:
                    failures.append(f"{url}: {str(exc) or type(exc).__name__}")
                    continue
            if reply is None:
                failures.append(f"{url}: no answer within {max(share, 0):.2f} s")
                continue
            if not isinstance(answer, dict):
                failures.append(f"{url}: unexpected answer {answer!r:.80}")
                continue
            if answer.get("code") == 14:  # unavailable (no quorum): another member may do
                failures.append(f"{url}: {answer.get('message')}")
                continue
            self._preferred = index
            return answer
        raise EtcdError("etcd unavailable: " + "; ".join(failures))

    async def watch(self, key: str, *, start_revision: int) -> tuple[WatchEvent, ...]:
        """Wait for the first change to `key` at or after `start_revision`; return its events.

        One streamed `POST /v3/watch` on the preferred endpoint (the next ones if it cannot be
        opened or breaks). It waits as long as nothing changes: the caller bounds it with a
        cancel scope, and leaving it closes the stream (the gateway then cancels the watch in
        etcd). EtcdError when no endpoint keeps a stream open, or etcd cancels the watch.
        """
        if self._http is None:
            self._http = self._client()
        request = watch_request(key, start_revision=start_revision)
        # opening is as quick as any call; waiting for a change is not bounded here
        timeout = httpx.Timeout(self.timeout_s, read=None)
        failures: list[str] = []
        count = len(self.urls)
        for step in range(count):
            index = (self._preferred + step) % count
            url = self.urls[index]
            try:
                async with self._http.stream(
                    "POST", url + request.path, json=request.body, timeout=timeout
                ) as reply:
                    if reply.status_code >= 400:
                        await reply.aread()
                        failures.append(f"{url}: HTTP {reply.status_code} {reply.text:.80}")
                        continue
                    return await _first_events(reply, url)
            except httpx.HTTPError as exc:
                failures.append(f"{url}: {str(exc) or type(exc).__name__}")
        raise EtcdError("etcd watch unavailable: " + "; ".join(failures))

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult:
        return parse_range(await self.call(range_request(key, prefix=prefix)))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> None:
        check(await self.call(put_request(key, value, lease=lease)))

    async def grant(self, ttl: int) -> Lease:
        return parse_grant(await self.call(grant_request(ttl)))

    async def keepalive(self, lease: int) -> int | None:
        return parse_keepalive(await self.call(keepalive_request(lease)))

    async def revoke(self, lease: int) -> None:
        answer = await self.call(revoke_request(lease))
        if answer.get("code") != NOT_FOUND:
            check(answer)

    async def create(self, key: str, value: bytes, *, lease: int) -> TxnResult:
        return parse_txn(await self.call(create_request(key, value, lease=lease)))

    async def guarded_put(
        self, key: str, value: bytes, *, guard: str, create_revision: int
    ) -> bool:
        answer = await self.call(
            guarded_put_request(key, value, guard=guard, create_revision=create_revision)
        )
        return parse_txn(answer).succeeded

    async def delete_if(self, key: str, *, create_revision: int) -> bool:
        return parse_txn(
            await self.call(delete_if_request(key, create_revision=create_revision))
        ).succeeded

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
