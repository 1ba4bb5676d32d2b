"""A small etcd v3 client over the JSON gateway (grpc-gateway), as Patroni's etcd3.py does.

The request and answer shapes are pure functions (sans-I/O, unit-tested without a server):
each `*_request` returns the gateway path and JSON body, each `parse_*` reads the answer.
`EtcdClient` is the only part that does I/O, with httpx (it runs under trio through anyio).

Gateway facts this relies on (measured with Debian's etcd 3.4.23, spec/ha.md §6):
- keys and values are base64; int64 fields (revisions, lease IDs, TTLs) are JSON strings;
- fields with their zero value are omitted: a failed txn has no `succeeded`, an empty range no
  `kvs`, and a keepalive of a dead lease answers `{"result": {"ID": ...}}` without `TTL`;
- an error is `{"error": ..., "message": ..., "code": N}` (gRPC codes: 5 not found, 14
  unavailable), with an HTTP status >= 400;
- `/v3/watch` streams one JSON object per line: `{"result": {"created": true, ...}}` first,
  then `{"result": {"events": [...]}}` per change; a DELETE event says `"type": "DELETE"`, a
  PUT has no `type`; a watch etcd ends (e.g. its start revision was compacted) says
  `"canceled": true`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import attrs
import httpx

#: gRPC status code 5: the lease (or key) does not exist
NOT_FOUND: Final = 5


class EtcdError(Exception):
    """etcd answered with an error, or no endpoint answered at all (`code` None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Call:
    """One gateway request: POST `path` with `body` as JSON."""

    path: str
    body: dict[str, Any]


@attrs.frozen
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@attrs.frozen
class RangeResult:
    revision: int
    kvs: tuple[KeyValue, ...]


@attrs.frozen
class TxnResult:
    succeeded: bool
    #: the store's revision after the txn: a successful create's create_revision
    revision: int
    #: what the failure branch read (the key that was in the way), if it read anything
    kvs: tuple[KeyValue, ...]


@attrs.frozen
class WatchEvent:
    #: "PUT" or "DELETE"
    type: str
    #: a DELETE's kv has only the key and the mod_revision of the deletion
    kv: KeyValue


@attrs.frozen
class Lease:
    id: int
    ttl: int


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with `prefix` (etcd's clientv3 rule)."""
    data = bytearray(prefix.encode())
    for i in reversed(range(len(data))):
        if data[i] < 0xFF:
            data[i] += 1
            return _b64(bytes(data[: i + 1]))
    return _b64(b"\x00")  # every key


# --- requests ---------------------------------------------------------------------------------
def range_request(key: str, *, prefix: bool = False) -> Call:
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _prefix_end(key)
    return Call("/v3/kv/range", body)


def put_request(key: str, value: bytes, *, lease: int = 0) -> Call:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return Call("/v3/kv/put", body)


def delete_request(key: str) -> Call:
    return Call("/v3/kv/deleterange", {"key": _b64(key)})


def grant_request(ttl: int) -> Call:
    return Call("/v3/lease/grant", {"TTL": str(ttl)})


def keepalive_request(lease: int) -> Call:
    return Call("/v3/lease/keepalive", {"ID": str(lease)})


def revoke_request(lease: int) -> Call:
    return Call("/v3/lease/revoke", {"ID": str(lease)})


def create_request(key: str, value: bytes, *, lease: int) -> Call:
    """Put `key` only if it does not exist (create_revision == 0); else read what is there.

    Patroni's `_do_attempt_to_acquire_leader`: the one way a leader key comes to be.
    """
    encoded = _b64(key)
    return Call(
        "/v3/kv/txn",
        {
            "compare": [
                {"key": encoded, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            ],
            "success": [
                {"request_put": {"key": encoded, "value": _b64(value), "lease": str(lease)}}
            ],
            "failure": [{"request_range": {"key": encoded}}],
        },
    )


def guarded_put_request(key: str, value: bytes, *, guard: str, create_revision: int) -> Call:
    """Put `key` only while `guard` still exists with this create_revision (our term)."""
    return Call(
        "/v3/kv/txn",
        {
            "compare": [
                {
                    "key": _b64(guard),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": str(create_revision),
                }
            ],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            "failure": [],
        },
    )


def delete_if_request(key: str, *, create_revision: int) -> Call:
    """Delete `key` only if it is still the one created at `create_revision` (a clean resign)."""
    encoded = _b64(key)
    return Call(
        "/v3/kv/txn",
        {
            "compare": [
                {
                    "key": encoded,
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": str(create_revision),
                }
            ],
            "success": [{"request_delete_range": {"key": encoded}}],
            "failure": [],
        },
    )


def watch_request(key: str, *, start_revision: int) -> Call:
    """Watch `key` from `start_revision` on (a range's revision + 1 misses nothing after it)."""
    return Call(
        "/v3/watch",
        {"create_request": {"key": _b64(key), "start_revision": str(start_revision)}},
    )


# --- answers ----------------------------------------------------------------------------------
def check(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """`answer`, or EtcdError when it is an error answer."""
    if "error" in answer or ("code" in answer and "message" in answer):
        code = answer.get("code")
        raise EtcdError(
            str(answer.get("message") or answer.get("error")),
            int(code) if code is not None else None,
        )
    return answer


def _kv(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _revision(answer: Mapping[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def parse_range(answer: Mapping[str, Any]) -> RangeResult:
    check(answer)
    return RangeResult(_revision(answer), tuple(_kv(raw) for raw in answer.get("kvs", ())))


def parse_txn(answer: Mapping[str, Any]) -> TxnResult:
    check(answer)
    kvs: list[KeyValue] = []
    for response in answer.get("responses", ()):
        kvs.extend(_kv(raw) for raw in response.get("response_range", {}).get("kvs", ()))
    return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), tuple(kvs))


def parse_grant(answer: Mapping[str, Any]) -> Lease:
    check(answer)
    return Lease(int(answer["ID"]), int(answer["TTL"]))


def parse_keepalive(answer: Mapping[str, Any]) -> int | None:
    """The lease's remaining TTL in seconds, or None when the lease is gone.

    Only an answer carrying TTL counts (the gateway omits it for a dead lease; Patroni reads
    `.get('result', {}).get('TTL')`). A TTL of 0 is a dead lease too.
    """
    check(answer)
    result = answer.get("result", answer)
    check(result)
    ttl = result.get("TTL")
    if ttl is None or int(ttl) <= 0:
        return None
    return int(ttl)


def parse_watch(answer: Mapping[str, Any]) -> tuple[WatchEvent, ...]:
    """The events in one line of a watch stream: none for `created` or a progress notice.

    EtcdError when etcd ended the watch (`canceled`: its start revision was compacted, ...).
    """
    check(answer)
    result = answer.get("result", answer)
    check(result)
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "canceled"
        compacted = result.get("compact_revision")
        raise EtcdError(
            f"watch ended: {reason}" + (f" (compacted {compacted})" if compacted else "")
        )
    return tuple(
        WatchEvent(str(raw.get("type", "PUT")), _kv(raw.get("kv", {})))
        for raw in result.get("events", ())
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


# --- I/O --------------------------------------------------------------------------------------
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
    _http: httpx.AsyncClient | None = attrs.field(default=None, init=False)
    _preferred: int = attrs.field(default=0, init=False)

    async def call(self, request: Call) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
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
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
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
