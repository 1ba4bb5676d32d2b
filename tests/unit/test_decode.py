"""The protocol layer without sockets: every op decodes, every refusal has karma 1.0's words."""

from __future__ import annotations

import json
from typing import Any

import pytest

from karma.errors import ErrorCode, KarmaError
from karma.protocol import optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from tests.helpers import GOLDEN

OPEN = Gate()
WAL = Gate(internal_ops=True)
B1 = 20260501


def line(op: str, **fields: Any) -> bytes:
    return json.dumps({"v": 2, "op": op, **fields}).encode()


def refusal(data: bytes, gate: Gate = OPEN) -> tuple[ErrorCode, str]:
    with pytest.raises(KarmaError) as caught:
        decode(data, gate)
    return caught.value.code, caught.value.message


# one valid example per op; a test below checks that every tag in the union is covered
VALID: dict[str, dict[str, Any]] = {
    "system.ping": {},
    "system.health": {},
    "system.stats": {},
    "system.metrics": {},
    "system.compact": {},
    "system.slowlog": {"limit": 5},
    "tree.list": {},
    "tree.create": {"series": "a"},
    "tree.drop": {"series": "a"},
    "tree.reset": {"series": "a"},
    "tree.info": {"tree": "a"},
    "tree.keys": {"series": "a", "limit": 2, "cursor": 1},
    "tree.summary": {"series": "a"},
    "tree.top": {"series": "a", "limit": 3},
    "tree.series": {"series": "a", "range": {"from": B1, "to": B1}},
    "tree.delete_range": {"series": "a", "range": {"from": B1, "to": B1}},
    "series.compact": {"series": "a"},
    "tree.compact": {"series": "a"},
    "series.delete_before": {"series": "a", "before": B1},
    "tree.delete_before": {"series": "a", "date": B1},
    "counter.increment": {"series": "a", "key": 1},
    "series.increment": {"series": "a", "key": 1, "bucket": "2026-05-01"},
    "counter.decrement": {"series": "a", "key": 1, "value": 2},
    "counter.sum": {"series": "a", "key": 1},
    "series.sum": {"series": "a", "key": 1},
    "counter.series": {"series": "a", "key": 1, "range": {"from": B1, "to": B1}},
    "series.points": {"series": "a", "key": 1, "range": {"from": B1, "to": B1}},
    "counter.delete_range": {"series": "a", "key": 1, "range": {"from": B1, "to": B1}},
    "counter.reset": {"series": "a", "key": 1},
    "counter.batch_sum": {"series": "a", "keys": [1, 2]},
    "series.batch_sum": {"series": "a", "keys": []},
    "counter.batch_reset": {"series": "a", "keys": [1]},
    "counter.batch_delete_range": {"series": "a", "keys": [1], "range": {"from": B1, "to": B1}},
    "counter.multi_sum": {"items": [{"series": "a", "key": 1}]},
    "series.batch_add": {"series": "a", "items": [[1, B1, 1]]},
    "counter.batch_increment": {"series": "a", "items": [[1, B1, 1]]},
    "series.batch_set": {"series": "a", "items": [[1, B1, 0]]},
    "snapshot.create": {"series": "a"},
    "snapshot.create_all": {},
    "snapshot.list": {},
    "snapshot.info": {},
    "snapshot.verify": {},
    "snapshot.manifest": {},
    "snapshot.load": {"file": "1_a.tree"},
    "snapshot.fetch": {"file": "1_a.tree"},
    "snapshot.fetch_chunk": {"file": "1_a.tree", "offset": 0},
    "recovery.checkpoint": {"source": "s", "offset": 5},
    "recovery.status": {},
    "reconciliation.report": {"checked_points": 2, "mismatch_count": 1},
    "replication.entries": {"after_lsn": 0},
    "replication.status": {},
    "cluster.topology": {},
    "ingest.begin": {"stream_id": "s", "mode": "add"},
    "ingest.chunk": {"stream_id": "s", "series": "a", "chunk_seq": 1, "items": [[1, B1, 1]]},
    "ingest.commit": {"stream_id": "s"},
    "ingest.abort": {"stream_id": "s"},
    "idempotency.prune": {"before": "2026-05-29T00:00:00Z", "limit": 10},
    "idempotency.snapshot_fetch_chunk": {"offset": 0},
    "limit.consume": {"series": "a", "key": 1, "max": 10, "window": {"days": 1}},
    "limit.check": {"series": "a", "key": 1, "value": 0, "max": 10, "window": {"days": 1}},
    "limit.reserve": {"id": "r", "series": "a", "key": 1, "max": 10, "window": {"days": 1}},
    "limit.commit": {"id": "r", "value": 1},
    "limit.void": {"id": "r"},
    "limit.reservation": {"id": "r"},
    "limit.status": {},
    "limit.snapshot_fetch_chunk": {"offset": 0},
    "limit.apply": {"add": [["a", 1, B1, 1]]},
    "limit.hold": {"id": "r", "items": [], "expires_at_unix_ms": 1, "created_at_unix": 1},
    "limit.settle": {"id": "r", "outcome": "voided", "add": [], "settled_at_unix": 1},
}
INTERNAL = {"limit.apply", "limit.hold", "limit.settle"}


def test_every_op_of_the_union_has_a_valid_example() -> None:
    assert set(VALID) == set(optable.CLASS_BY_TAG)


@pytest.mark.parametrize("op", sorted(VALID))
def test_each_op_decodes_to_its_struct(op: str) -> None:
    request = decode(line(op, **VALID[op]), WAL if op in INTERNAL else OPEN)
    assert r.op_tag(type(request)) == op


@pytest.mark.parametrize("op", sorted(INTERNAL))
def test_wal_effect_entries_are_unknown_to_clients(op: str) -> None:
    with pytest.raises(KarmaError) as refused:
        decode(line(op, **VALID[op]), OPEN)
    assert refused.value.code == ErrorCode.UNKNOWN_COMMAND
    assert refused.value.message == f"Unknown op {op}"
    assert r.op_tag(type(decode(line(op, **VALID[op]), WAL))) == op


def test_every_request_class_is_reached_by_its_family_name() -> None:
    # `r.` gathers the families' `__all__`; the limit.* family is read as `lr.`
    for cls in optable.ALL_CLASSES:
        family = r.limits if cls.__module__ == r.limits.__name__ else r
        assert getattr(family, cls.__name__) is cls


def test_aliases_share_the_spec_of_their_op() -> None:
    inc = optable.SPEC_BY_CLASS[optable.CLASS_BY_TAG["series.increment"]]
    assert inc.internal_name == "increment"
    assert (
        optable.SPEC_BY_CLASS[optable.CLASS_BY_TAG["counter.batch_increment"]].internal_name
        == "batch_add"
    )


def test_tree_wins_over_series_as_in_karma() -> None:
    request = decode(line("counter.sum", tree="t", series="s", key=1), OPEN)
    assert isinstance(request, r.Sum)
    assert request.name == "t"


def test_string_buckets_are_days() -> None:
    request = decode(line("counter.increment", series="a", key=1, bucket="2026-05-05"), OPEN)
    assert isinstance(request, r.Increment)
    assert request.bucket_or(0) == 20260505


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"not json", ErrorCode.INVALID_JSON, None),
        (b"\xff\xfe{}", ErrorCode.INVALID_JSON, None),
        (b"[" * 5000, ErrorCode.INVALID_JSON, None),
        (b"[1,2]", ErrorCode.VALIDATION_ERROR, None),
        (b'{"op":"system.ping"}', ErrorCode.UNSUPPORTED_PROTOCOL, None),
        (b'{"v":true,"op":"system.ping"}', ErrorCode.UNSUPPORTED_PROTOCOL, None),
        (b'{"v":2,"op":null}', ErrorCode.VALIDATION_ERROR, "Field op is required"),
        (line("nope"), ErrorCode.UNKNOWN_COMMAND, "Unknown op nope"),
        (
            line("counter.increment", series="a", key=2**64),
            ErrorCode.VALIDATION_ERROR,
            "Field key must be less than or equal to 18446744073709551615",
        ),
        (
            line("counter.increment", series="a", key=1, value=None),
            ErrorCode.VALIDATION_ERROR,
            "Field value must be an integer",
        ),
        (
            line("counter.increment", series="a", key=1, bucket=20261345),
            ErrorCode.VALIDATION_ERROR,
            "Field bucket must be a calendar day (YYYYMMDD)",
        ),
        (
            line("counter.increment", series="../x", key=1),
            ErrorCode.VALIDATION_ERROR,
            "Field series must match [A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}",
        ),
        (
            line("counter.sum", series="a", key=1, range={"from": B1}),
            ErrorCode.VALIDATION_ERROR,
            "Field range.to is required",
        ),
        (
            line("counter.sum", series="a", key=1, range={"from": 20260502, "to": B1}),
            ErrorCode.VALIDATION_ERROR,
            "Bucket range start must be less than or equal to range end",
        ),
        (
            line("counter.sum", series="a", key=1, range={"from": 20250101, "to": 20260501}),
            ErrorCode.VALIDATION_ERROR,
            "Range exceeds max days",
        ),
        (
            line("counter.batch_sum", series="a", keys=list(range(10_001))),
            ErrorCode.VALIDATION_ERROR,
            "Field keys exceeds max size",
        ),
        (
            line("counter.multi_sum", items=[{"series": "", "key": 1}]),
            ErrorCode.VALIDATION_ERROR,
            "Field items[].series must not be empty",
        ),
        (
            line("tree.top", series="a", limit=1001),
            ErrorCode.VALIDATION_ERROR,
            "Field limit exceeds max size",
        ),
        (
            line("snapshot.fetch", file="../x.tree"),
            ErrorCode.VALIDATION_ERROR,
            "Field file must be a snapshot basename",
        ),
    ],
)
def test_refusals(data: bytes, code: ErrorCode, message: str | None) -> None:
    got_code, got_message = refusal(data)
    assert got_code is code
    if message is not None:
        assert got_message == message


@pytest.mark.parametrize("value", [None, "1", 1.5, True, [], {}, -1])
@pytest.mark.parametrize("field", ["key", "value", "bucket"])
def test_every_json_type_in_an_int_field_is_a_validation_error(field: str, value: object) -> None:
    fields: dict[str, Any] = {"series": "a", "key": 1, "value": 1, "bucket": B1, field: value}
    if field == "bucket" and isinstance(value, str):
        fields["bucket"] = "x"
    code, message = refusal(line("counter.increment", **fields))
    assert code is ErrorCode.VALIDATION_ERROR
    assert field in message


def test_a_read_token_cannot_write_and_names_the_internal_command() -> None:
    gate = Gate(auth_token="full", read_token="read")
    assert refusal(line("counter.increment", series="a", key=1, token="read"), gate) == (
        ErrorCode.FORBIDDEN,
        "Read-only token cannot execute command increment",
    )
    assert decode(line("counter.sum", series="a", key=1, token="read"), gate)
    assert (
        refusal(line("counter.sum", series="a", key=1, token=5), gate)[0] is ErrorCode.UNAUTHORIZED
    )
    assert refusal(line("counter.sum", series="a", key=1), gate)[0] is ErrorCode.UNAUTHORIZED


def test_a_slave_refuses_writes() -> None:
    code, message = refusal(line("tree.create", series="x"), Gate(slave=True))
    assert (code, message) == (ErrorCode.FORBIDDEN, "Slave role cannot execute command create")


def _golden_refusals() -> list[tuple[str, bytes, str, str]]:
    """(case, line, code, message) for parse-phase refusals karma 1.0 gave in the golden files."""
    rows: list[tuple[str, bytes, str, str]] = []
    parse_phase = {"invalid_json", "unsupported_protocol", "unknown_command", "validation_error"}
    for path in sorted(GOLDEN.glob("*.json")) if GOLDEN.is_dir() else []:
        golden = json.loads(path.read_text())
        steps = golden["case"]["steps"]
        for answer in golden["expect"]:
            step = steps[answer.get("_step", 0)] if answer.get("_step") is not None else None
            if not step or "expect" in step or answer.get("error_code") not in parse_phase:
                continue
            if "send" in step:
                data = json.dumps(step["send"]).encode()
                op = step["send"].get("op", "") if isinstance(step["send"], dict) else ""
            elif "raw" in step and step.get("lines", 1) == 1:
                data, op = step["raw"].rstrip("\n").encode(), ""
            else:
                continue
            message = answer["response"]
            if op.startswith("ingest.") or message.startswith(("Counter overflow", "Invalid dump")):
                continue  # decided by state, not by the decoder
            rows.append((path.stem, data, answer["error_code"], message))
    return rows


GOLDEN_ROWS = _golden_refusals()


@pytest.mark.skipif(not GOLDEN_ROWS, reason="shared/conformance not beside the checkout")
@pytest.mark.parametrize(
    ("case", "data", "code", "message"),
    GOLDEN_ROWS,
    ids=[f"{row[0]}-{i}" for i, row in enumerate(GOLDEN_ROWS)],
)
def test_golden_refusals_match_karma(case: str, data: bytes, code: str, message: str) -> None:
    got_code, got_message = refusal(data, Gate())
    assert str(got_code) == code
    if message != "<message>":
        assert got_message == message
