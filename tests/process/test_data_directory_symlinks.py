"""Links planted in the data directory lead nothing out of it, on a real server.

Reads served to clients refuse anything but a regular file in the directory; files the server
creates are never written through a link at their name; the restore skips links and says so.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "usage"
B1 = 20260501
SECRET = b"root:$6$not-for-clients:19000:0:99999:7:::\n"


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=true")
    yield server
    server.close()


def outside(tmp_path: Path, name: str, data: bytes | None = SECRET) -> Path:
    """A file beside the data directory (or, with data=None, a name nothing is at yet)."""
    path = tmp_path / "outside" / name
    path.parent.mkdir(exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    return path


def leaks(answer: dict[str, object], secret: bytes) -> bool:
    text = json.dumps(answer)
    return (
        secret.decode(errors="replace")[:12] in text
        or base64.b64encode(secret)[:16].decode() in text
    )


def test_snapshot_reads_serve_only_regular_files_of_the_directory(
    proc: Proc, tmp_path: Path
) -> None:
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.increment", series=S, key=1, value=3, bucket=B1)["success"]
    assert client.call("snapshot.create_all")["success"]
    real = Path(client.call("snapshot.list")["response"][0])
    stamp = int(real.name.split("_", 1)[0])
    # a valid tree outside: followed, snapshot.load would load it
    tree = outside(tmp_path, "payroll.tree", real.read_bytes())
    secret = outside(tmp_path, "shadow")
    (proc.directory / f"{stamp}_evil.tree").symlink_to(tree)
    (proc.directory / f"{stamp + 100}_{S}.tree").symlink_to(secret)  # the "newest" usage
    (proc.directory / f"{stamp + 100}_{S}.tree.meta.json").symlink_to(secret)
    os.mkfifo(proc.directory / f"{stamp}_fifo.tree")  # opening it for reading would block
    for name, data in [
        (f"{stamp}_evil.tree", tree.read_bytes()),
        (f"{stamp + 100}_{S}.tree", SECRET),
        (f"{stamp}_fifo.tree", SECRET),
    ]:
        for op in ("snapshot.fetch", "snapshot.fetch_chunk", "snapshot.load"):
            answer = client.call(op, file=name)
            assert answer["error_code"] in ("not_found", "validation_error"), (op, name, answer)
            assert not leaks(answer, data), (op, name, answer)
    listed = {Path(p).name for p in client.call("snapshot.list")["response"]}
    assert listed == {real.name}
    assert client.call("snapshot.info")["response"]["dump_count"] == 1
    assert client.call("counter.sum", series=S, key=1)["response"] == 3

    idempotency = proc.directory / "karma.idempotency.json"
    kept = idempotency.read_bytes()
    idempotency.unlink()
    idempotency.symlink_to(secret)
    answer = client.call("idempotency.snapshot_fetch_chunk")
    assert answer["error_code"] == "not_found", answer
    assert not leaks(answer, SECRET)
    assert client.call("system.ping")["response"] == "pong"
    client.close()

    # restore skips the links (a snapshot is a regular file) and names them in the log; the
    # idempotency snapshot is put back (without it the restore refuses: test_snapshot_continuity)
    idempotency.unlink()
    idempotency.write_bytes(kept)
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == 3
    assert "evil" not in client.call("tree.list")["response"]
    client.close()
    log = proc.stderr()
    assert f'"event":"storage.ignored","path":"{proc.directory}/{stamp}_evil.tree"' in log
    assert tree.read_bytes() == real.read_bytes()
    assert secret.read_bytes() == SECRET


def test_files_the_server_creates_are_never_written_through_a_planted_link(
    proc: Proc, tmp_path: Path
) -> None:
    # small segments: a rotation, and so an index temp file, comes within a few writes
    proc.start("--wal-segment-bytes=512")
    assert proc.process is not None
    pid = proc.process.pid
    targets = {
        # predictable temp names: the WAL rewrite, karma.wal.lsn and the first segment's index
        f".karma.wal.{pid}.tmp": outside(tmp_path, "wal-temp"),
        f".karma.wal.lsn.{pid}.tmp": outside(tmp_path, "lsn-temp", data=None),  # dangling
        f"karma.wal.{1:020d}.segment.idx.{pid}.tmp": outside(tmp_path, "idx-temp"),
        # names the server replaces whole
        "karma.idempotency.json": outside(tmp_path, "idempotency"),
        "recovery.json": outside(tmp_path, "recovery", data=None),
    }
    for name, target in targets.items():
        (proc.directory / name).symlink_to(target)
    client = Client(proc.port)
    for n in range(20):
        answer = client.call("counter.increment", series=S, key=n % 3, value=1, bucket=B1)
        assert answer["success"], answer
    assert list(proc.directory.glob("*.segment")), "a rotation happened"
    answer = client.call("snapshot.create_all")
    assert answer["success"] or answer["error_code"] == "storage_unavailable", answer
    answer = client.call("recovery.checkpoint", source="importer", offset=7)
    assert answer["success"] or answer["error_code"] == "storage_unavailable", answer
    assert client.call("counter.increment", series=S, key=0, value=1, bucket=B1)["success"]
    client.close()
    for name, target in targets.items():
        if target.name in ("lsn-temp", "recovery"):
            assert not target.exists(), f"{name} was created through its link"
        else:
            assert target.read_bytes() == SECRET, f"{name} was written through its link"
    assert not (proc.directory / "karma.wal").is_symlink()

    proc.kill()
    proc.start()
    client = Client(proc.port)
    sums = client.call("counter.batch_sum", series=S, keys=[0, 1, 2])["response"]
    assert [s["value"] for s in sums] == [8, 7, 6]
    client.close()


# A symlinked karma.wal is followed on purpose (the WAL on another disk): see test_wal_lost.py.


def test_a_link_at_the_torn_tail_name_is_replaced_not_written_through(
    proc: Proc, tmp_path: Path
) -> None:
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.increment", series=S, key=1, value=3, bucket=B1)["success"]
    client.close()
    proc.kill()
    wal = proc.directory / "karma.wal"
    good_end = wal.stat().st_size
    with open(wal, "ab") as handle:
        handle.write(b'{"lsn":2,"entry":{"op":"counter.incr')  # a write cut by the crash
    secret = outside(tmp_path, "shadow")
    saved = proc.directory / f"karma.wal.torn-{good_end}"
    saved.symlink_to(secret)
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == 3
    client.close()
    assert secret.read_bytes() == SECRET
    assert not saved.is_symlink()
    assert saved.read_bytes() == b'{"lsn":2,"entry":{"op":"counter.incr'
