"""Every op of docs/reference/ops.md, under every token configuration, with every kind of token.

The rule (karma 1.0's): with no token configured anyone may run anything; as soon as either token
is configured every request must carry a valid one, the read token runs read-only ops only, and
the write token runs everything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

from karma.protocol import optable
from tests.conftest import Connect
from tests.helpers import start_server

WRITE, READ = "w-s3cret", "r-s3cret"
OPS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "ops.md"
DOCUMENTED = sorted(set(re.findall(r"`([a-z_]+\.[a-z_]+)`", OPS_PAGE.read_text())))

CONFIGS = {
    "unset": {},
    "read only": {"read_auth_token": READ},
    "write only": {"auth_token": WRITE},
    "both": {"auth_token": WRITE, "read_auth_token": READ},
}
PRESENTED: dict[str, Any] = {
    "no token": None,
    "wrong token": "not-a-token",
    "read token": READ,
    "write token": WRITE,
    "wrong JSON type": 5,
    "a list": [WRITE],
}


def expected(config: dict[str, str], token: Any, read_only_op: bool) -> str | None:
    """The error code the rule gives, or None when the request passes the gate."""
    if not config:
        return None
    if isinstance(token, str) and token == config.get("auth_token"):
        return None
    if isinstance(token, str) and token == config.get("read_auth_token"):
        return None if read_only_op else "forbidden"
    return "unauthorized"


def test_the_ops_page_is_the_op_table() -> None:
    assert set(DOCUMENTED) == set(optable.CLASS_BY_TAG)


@pytest.mark.parametrize("name", list(CONFIGS))
async def test_every_op_with_every_token(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect, name: str
) -> None:
    config = CONFIGS[name]
    server = await start_server(nursery, tmp_path, **config)
    client = await connect(server.port)
    wrong: list[str] = []
    for op in DOCUMENTED:
        spec = optable.SPEC_BY_CLASS[optable.CLASS_BY_TAG[op]]
        read_only_op = spec.access is optable.Access.READ
        if spec.internal:  # a WAL effect entry: no client may send it, whatever its token
            for token in PRESENTED.values():
                answer = await client.call(op, **({} if token is None else {"token": token}))
                assert answer["error_code"] == "unknown_command", (op, answer)
            continue
        for label, token in PRESENTED.items():
            fields = {} if token is None else {"token": token}
            answer = await client.call(op, **fields)
            want = expected(config, token, read_only_op)
            got = (
                answer["error_code"]
                if answer["error_code"] in ("unauthorized", "forbidden")
                else None
            )
            if got != want:
                wrong.append(f"{op} with {label}: want {want}, got {answer}")
                continue
            if want == "unauthorized":
                assert answer["response"] == "Unauthorized"
            if want == "forbidden":
                assert answer["response"] == (
                    f"Read-only token cannot execute command {spec.internal_name}"
                )
    assert not wrong, "\n".join(wrong[:20])
