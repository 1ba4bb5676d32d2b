"""etcd v3's JSON gateway (grpc-gateway), as data: the request and answer shapes, sans-I/O.

Each `*_request` returns the gateway path and JSON body (a `Call`), each `parse_*` reads the
answer; all pure functions, unit-tested without a server. The I/O, with its failover across
members, is `karma.ha.etcd_client`.

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
from collections.abc import Mapping
from typing import Any, Final

import attrs

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


def put_if_mod_revision_request(key: str, value: bytes, *, mod_revision: int) -> Call:
    """Put `key` only if its mod_revision is still `mod_revision` (0: only if it is absent).

    The compare-and-swap of a value many writers may change (the shard map): of two writers
    that read the same revision, one wins and the other's compare fails.
    """
    encoded = _b64(key)
    return Call(
        "/v3/kv/txn",
        {
            "compare": [
                {
                    "key": encoded,
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(mod_revision),
                }
            ],
            "success": [{"request_put": {"key": encoded, "value": _b64(value)}}],
            "failure": [{"request_range": {"key": encoded}}],
        },
    )


def ranges_request(keys: list[str]) -> Call:
    """Read several single keys at one revision, in one round trip (a txn of ranges)."""
    return Call(
        "/v3/kv/txn",
        {"compare": [], "success": [{"request_range": {"key": _b64(k)}} for k in keys]},
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
