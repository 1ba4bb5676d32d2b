"""Scoped tokens (--tokens-file): every op of the op table x every kind of token x series inside,
outside and a prefix of the prefix x wrong token types, on a real server.

The rule the test holds the server to (written here, not taken from karma.protocol.scopes):
- no token, an unknown one, or not a string: `unauthorized`;
- a token without the op's right (read / write / admin): `forbidden`;
- an op over no one series (stats, snapshots of all, replication, recovery, ingest streams...)
  needs `*`: `forbidden` for a scoped token;
- a series op outside the token's prefixes: `forbidden`, worded the same whether the series
  exists or not, naming neither it nor any other token;
- everything else passes the gate (its answer may still be an error of its own, never these).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from karma.protocol import optable
from tests.conftest import Connect
from tests.helpers import LineClient, start_server

RANGE = {"from": 20260101, "to": 20260102}
ITEMS = [[1, 20260101, 1]]
CHARGE = {"key": 1, "value": 1, "max": 10, "window": {"calendar": "month"}}

#: the fields of a valid request of each op naming one series (aliases included)
ONE_SERIES: dict[str, dict[str, Any]] = {
    "tree.create": {},
    "tree.drop": {},
    "tree.reset": {},
    "tree.info": {},
    "tree.keys": {},
    "tree.summary": {},
    "tree.top": {},
    "tree.series": {"range": RANGE},
    "tree.delete_range": {"range": RANGE},
    "series.compact": {},
    "tree.compact": {},
    "series.delete_before": {"before": 20260101},
    "tree.delete_before": {"before": 20260101},
    "counter.increment": {"key": 1, "value": 1},
    "series.increment": {"key": 1, "value": 1},
    "counter.decrement": {"key": 1, "value": 1},
    "counter.sum": {"key": 1},
    "series.sum": {"key": 1},
    "counter.series": {"key": 1, "range": RANGE},
    "series.points": {"key": 1, "range": RANGE},
    "counter.delete_range": {"key": 1, "range": RANGE},
    "counter.reset": {"key": 1},
    "counter.batch_sum": {"keys": [1]},
    "series.batch_sum": {"keys": [1]},
    "counter.batch_reset": {"keys": [1]},
    "counter.batch_delete_range": {"keys": [1], "range": RANGE},
    "series.batch_add": {"items": ITEMS},
    "counter.batch_increment": {"items": ITEMS},
    "series.batch_set": {"items": ITEMS},
    "snapshot.create": {},
    "ingest.chunk": {"stream_id": "s-1", "chunk_seq": 1, "items": ITEMS},
    "limit.consume": CHARGE,
    "limit.check": CHARGE,
    "limit.reserve": {**CHARGE, "id": "r-1"},
}
#: ops naming several series: the fields for a list of them
MANY_SERIES = {
    "counter.multi_sum": lambda names: {"items": [{"series": n, "key": 1} for n in names]},
    "limit.consume": lambda names: {"items": [{"series": n, **CHARGE} for n in names]},
}
#: ops that touch no series' data: any token holding the right may run them
NO_SERIES = {
    "system.ping",
    "system.health",
    "cluster.topology",
    "tree.list",
    "limit.commit",
    "limit.void",
    "limit.reservation",
}

SECRETS = {
    "billing-rw": ("tok-billing-rw", ["read", "write"], ["billing_", "invoices"]),
    "billing-r": ("tok-billing-r", ["read"], ["billing_"]),
    "billing-w": ("tok-billing-w", ["write"], ["billing_"]),
    "billing-admin": ("tok-billing-admin", ["read", "write", "admin"], ["billing_"]),
    "all-read": ("tok-all-read", ["read"], ["*"]),
    "all-admin": ("tok-all-admin", ["read", "write", "admin"], ["*"]),
}
AUTH, READ_AUTH = "opt-auth-secret", "opt-read-secret"
#: (series, covered by billing_* prefixes)
SERIES = {
    "inside": ("billing_eu", True),
    "the prefix itself": ("billing_", True),
    "outside": ("shipping", False),
    "prefix of the prefix": ("billing", False),
}
WRONG_TYPES: dict[str, Any] = {"no token": None, "unknown": "nope", "int": 5, "list": ["x"]}
ACCESS_RIGHT = {
    optable.Access.READ: "read",
    optable.Access.WRITE: "write",
    optable.Access.ADMIN: "admin",
}
ALL_SECRETS = [secret for secret, _, _ in SECRETS.values()] + [AUTH, READ_AUTH]


def tokens_file(path: Path, entries: dict[str, tuple[str, list[str], list[str]]]) -> Path:
    document = {
        "tokens": [
            {
                "name": name,
                "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                "rights": rights,
                "series": series,
            }
            for name, (secret, rights, series) in entries.items()
        ]
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def expected(op: str, token: Any, series: list[str]) -> str | None:
    """`unauthorized`, `forbidden`, or None (passes the gate) by the rule above."""
    if token == AUTH:
        return None
    if token == READ_AUTH:
        return None if _access(op) == "read" else "forbidden"
    entry = next((e for e in SECRETS.values() if e[0] == token), None)
    if entry is None:
        return "unauthorized"
    _, rights, prefixes = entry
    if _access(op) not in rights:
        return "forbidden"
    if "*" in prefixes or op in NO_SERIES:
        return None
    if op not in ONE_SERIES and op not in MANY_SERIES:
        return "forbidden"
    if all(any(name.startswith(p) for p in prefixes) for name in series):
        return None
    return "forbidden"


def _access(op: str) -> str:
    return ACCESS_RIGHT[optable.SPEC_BY_CLASS[optable.CLASS_BY_TAG[op]].access]


def requests_of(op: str) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(label, fields, series named) for `op`: one per kind of series, and mixed lists."""
    if op in ONE_SERIES:
        cases = [
            (label, {"series": name, **ONE_SERIES[op]}, [name])
            for label, (name, _) in SERIES.items()
        ]
        # karma 1.0's `tree` spelling wins over `series`: the gate must check that one
        cases.append(
            (
                "tree wins",
                {"tree": "shipping", "series": "billing_eu", **ONE_SERIES[op]},
                ["shipping"],
            )
        )
        if op in MANY_SERIES:
            cases.append(
                ("mixed", MANY_SERIES[op](["billing_eu", "shipping"]), ["billing_eu", "shipping"])
            )
        return cases
    if op in MANY_SERIES:
        return [
            ("inside", MANY_SERIES[op](["billing_a", "billing_b"]), ["billing_a", "billing_b"]),
            ("mixed", MANY_SERIES[op](["billing_a", "shipping"]), ["billing_a", "shipping"]),
            ("outside", MANY_SERIES[op](["shipping"]), ["shipping"]),
        ]
    return [("no series", {}, [])]


OPS = [
    op
    for op in optable.CLASS_BY_TAG
    if not optable.SPEC_BY_CLASS[optable.CLASS_BY_TAG[op]].internal
]


def test_the_test_knows_every_series_op() -> None:
    """Every op naming a series is listed above: a new one must be added here (and scoped)."""
    from karma.protocol import requests as r
    from karma.protocol.requests import limits as lr

    for op in OPS:
        cls = optable.CLASS_BY_TAG[op]
        if issubclass(cls, r.SeriesRequest | r.MultiSum | lr.ChargeRequest):
            assert op in ONE_SERIES or op in MANY_SERIES, op


async def test_every_op_with_every_kind_of_scoped_token(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    path = tokens_file(tmp_path / "tokens.json", SECRETS)
    server = await start_server(
        nursery,
        tmp_path / "data",
        tokens_file=str(path),
        auth_token=AUTH,
        read_auth_token=READ_AUTH,
    )
    client = await connect(server.port)
    for name in ("billing_eu", "shipping", "billing"):  # refusals must not depend on existence
        assert (await client.call("counter.increment", series=name, key=1, token=AUTH))["success"]
    wrong: list[str] = []
    presented: dict[str, Any] = {**{n: e[0] for n, e in SECRETS.items()}, **WRONG_TYPES}
    presented |= {"--auth-token": AUTH, "--read-auth-token": READ_AUTH}
    count = 0
    for op in OPS:
        for series_label, fields, named in requests_of(op):
            for token_label, token in presented.items():
                sent = {**fields, **({} if token is None else {"token": token})}
                answer = await client.call(op, **sent)
                count += 1
                want = expected(op, token, named)
                code = answer["error_code"]
                got = code if code in ("unauthorized", "forbidden") else None
                if got != want:
                    wrong.append(f"{op} {series_label} with {token_label}: want {want}, {answer}")
                if token == AUTH and named and code == "validation_error":
                    wrong.append(f"{op} {series_label}: the test's example is invalid: {answer}")
                text = json.dumps(answer)
                wrong.extend(f"{op}: a token in {text}" for s in ALL_SECRETS if s in text)
                if got == "forbidden":
                    wrong.extend(
                        f"{op}: the refusal names {other!r}: {answer}"
                        for other in ("shipping", "billing-", "all-")
                        if other in answer["response"]
                    )
    assert not wrong, f"{len(wrong)} of {count}:\n" + "\n".join(wrong[:30])
    assert count > 1000


async def test_tree_list_shows_a_scoped_token_only_its_series(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    path = tokens_file(tmp_path / "tokens.json", SECRETS)
    server = await start_server(nursery, tmp_path / "data", tokens_file=str(path), auth_token=AUTH)
    client = await connect(server.port)
    for name in ("billing_eu", "billing_us", "invoices", "shipping", "billing"):
        assert (await client.call("counter.increment", series=name, key=1, token=AUTH))["success"]

    async def listed(token: str) -> list[str]:
        answer = await client.call("tree.list", token=token)
        assert answer["success"], answer
        return sorted(answer["response"])

    assert await listed("tok-billing-rw") == ["billing_eu", "billing_us", "invoices"]
    assert await listed("tok-billing-r") == ["billing_eu", "billing_us"]
    everything = ["billing", "billing_eu", "billing_us", "invoices", "shipping"]
    assert await listed("tok-all-read") == everything
    assert await listed(AUTH) == everything


async def _metrics(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b""
        while chunk := await stream.receive_some(65536):
            body += chunk
    return body.decode()


async def test_refusals_are_counted_by_token_name_and_never_show_a_token(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    path = tokens_file(tmp_path / "tokens.json", SECRETS)
    from tests.process.proc import free_port

    metrics_port = free_port()
    server = await start_server(
        nursery,
        tmp_path / "data",
        tokens_file=str(path),
        auth_token=AUTH,
        metrics_port=metrics_port,
    )
    client = await connect(server.port)
    for _ in range(3):
        answer = await client.call(
            "counter.increment", series="shipping", key=1, value=1, token="tok-billing-rw"
        )
        assert answer["error_code"] == "forbidden"
    answer = await client.call("system.stats", token="tok-billing-r")
    assert answer["error_code"] == "forbidden"
    answer = await client.call("counter.sum", series="billing_x", key=1, token="guess-me")
    assert answer["error_code"] == "unauthorized"
    text = await _metrics(metrics_port)
    assert (
        'karma_auth_refusals_total{code="forbidden",op="counter.increment",token="billing-rw"} 3.0'
        in text
    )
    assert (
        'karma_auth_refusals_total{code="forbidden",op="system.stats",token="billing-r"} 1.0'
        in text
    )
    assert 'karma_auth_refusals_total{code="unauthorized",op="counter.sum",token="-"} 1.0' in text
    for secret in [*ALL_SECRETS, "guess-me"]:
        assert secret not in text
    for file in (tmp_path / "data").rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for secret in [*ALL_SECRETS, "guess-me"]:
                assert secret.encode() not in data, (file, secret)


async def test_a_request_from_a_client_keeps_working_over_one_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A scoped token on the hot path: increments and reads over one connection, pipelined."""
    path = tokens_file(tmp_path / "tokens.json", SECRETS)
    server = await start_server(nursery, tmp_path / "data", tokens_file=str(path))
    client = await LineClient.connect(server.port)
    lines = b"".join(
        json.dumps(
            {
                "v": 2,
                "op": "counter.increment",
                "series": "billing_eu",
                "key": k,
                "value": 2,
                "token": "tok-billing-rw",
            }
        ).encode()
        + b"\n"
        for k in range(50)
    )
    await client.send_raw(lines)
    for _ in range(50):
        assert (await client.reply())["success"]
    answer = await client.call("counter.sum", series="billing_eu", key=3, token="tok-billing-r")
    assert answer["success"]
    assert answer["response"] == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "line 1"),
        ('{"tokens": {}}', '{"tokens": [...]}'),
        (
            '{"tokens": [{"name": "a", "sha256": "xyz", "rights": ["read"], "series": ["*"]}]}',
            "sha256",
        ),
        (
            '{"tokens": [{"name": "a", "sha256": "'
            + "0" * 64
            + '", "rights": ["fly"], "series": ["*"]}]}',
            "right",
        ),
        (
            '{"tokens": [{"name": "a", "sha256": "'
            + "0" * 64
            + '", "rights": ["read"], "series": []}]}',
            "series",
        ),
        (
            '{"tokens": [{"name": "a", "sha256": "'
            + "0" * 64
            + '", "rights": ["read"], "series": ["*"], "token": "x"}]}',
            "unknown field",
        ),
        (
            '{"tokens": [{"name": "auth-token", "sha256": "'
            + "0" * 64
            + '", "rights": ["read"], "series": ["*"]}]}',
            "reserved",
        ),
    ],
)
def test_a_bad_tokens_file_is_named_with_its_line_or_entry(text: str, reason: str) -> None:
    from karma.protocol.scopes import TokensFileError, parse

    with pytest.raises(TokensFileError, match=r"tokens\.json") as raised:
        parse(text, "tokens.json")
    assert reason in str(raised.value)
