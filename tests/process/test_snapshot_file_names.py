"""Snapshot file names the OS cannot look up answer like any other bad name, on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "usage"

#: longer than NAME_MAX (255 bytes): the OS answers ENAMETOOLONG to any question about them
LONG_NAMES = [
    "1_" + "é" * 300 + ".tree",  # 600 bytes of UTF-8 in 300 characters
    "1_" + "x" * 400 + ".tree",
    "1_" + "\U0001f600" * 70 + ".tree",  # 280 bytes in 70 characters
    "x" * 400 + ".tree",  # not <unix>_<series>.tree at all
    "x" * 400,
    "1_" + "a" * 249 + ".tree",  # 256 bytes: one over
]
OPS = ["snapshot.fetch", "snapshot.fetch_chunk", "snapshot.load"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--log=true")
    proc.start()
    client = Client(proc.port)
    try:
        yield client
    finally:
        client.close()
        proc.close()


def test_long_snapshot_names_answer_validation_error_or_not_found(client: Client) -> None:
    assert client.call("counter.increment", series=S, key=1, value=3)["success"]
    assert client.call("snapshot.create_all")["success"]
    real = Path(client.call("snapshot.list")["response"][0]).name
    for name in LONG_NAMES:
        for op in OPS:
            answer = client.call(op, file=name)
            assert answer["success"] is False, (op, name, answer)
            assert answer["error_code"] in ("validation_error", "not_found"), (op, name, answer)
            # the connection keeps working, and so do the same ops with a real name
            assert client.call("system.ping")["response"] == "pong"
    assert client.call("snapshot.fetch", file=real)["success"]
    assert client.call("snapshot.fetch_chunk", file=real)["success"]
    assert client.call("snapshot.load", file=real)["response"] == f'Tree "{S}" loaded'


def test_a_name_of_exactly_255_bytes_is_simply_not_found(client: Client) -> None:
    name = "1_" + "a" * 248 + ".tree"
    assert len(name.encode()) == 255
    for op in OPS:
        answer = client.call(op, file=name)
        assert answer["error_code"] == "not_found", (op, answer)


def test_a_name_with_a_nul_byte_is_simply_not_found(client: Client) -> None:
    for op in OPS:
        answer = client.call(op, file="1_a\u0000b.tree")
        assert answer["error_code"] in ("validation_error", "not_found"), (op, answer)
    assert client.call("system.ping")["response"] == "pong"
