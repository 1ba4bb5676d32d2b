"""`karma.manifest.json` (issue 26): every snapshot of one series removed, or `karma.limits.json`
removed, after the WAL was truncated past them — nothing else on disk names what was lost, so
the manifest does, and startup refuses naming the file and the LSN range. Directories without a
manifest (karma 1.0's, the previous release's) start as before."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S, T, LIMITED = "usage", "other", "tokens"
B1 = 20260501
MONTH = {"calendar": "month"}
FIXTURE = Path("/work/shared/conformance/fixtures/karma-1.0-datadir")


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--wal-fsync=true", "--log=true")
    yield server
    server.close()


def ok(client: Client, op: str, **fields: Any) -> Any:
    answer = client.call(op, **fields)
    assert answer["success"], (op, fields, answer)
    return answer["response"]


def _history(proc: Proc) -> None:
    """S and T with writes in two snapshots, the WAL truncated past both; a held reservation on
    LIMITED; a WAL tail after the last snapshot. SIGKILL at the end."""
    proc.start()
    client = Client(proc.port)
    for series in (S, T):
        ok(client, "counter.increment", series=series, key=1, value=2, bucket=B1)
    ok(client, "snapshot.create_all")
    ok(client, "counter.increment", series=S, key=1, value=3, bucket=B1)
    held = ok(
        client,
        "limit.reserve",
        id="r-1",
        series=LIMITED,
        key=1,
        value=40,
        max=100,
        window=MONTH,
        ttl_s=3600,
    )
    assert held["status"] == "held"
    ok(client, "snapshot.create_all")
    ok(client, "counter.increment", series=T, key=1, value=1, bucket=B1)
    client.close()
    proc.kill()


def _refusal(proc: Proc) -> str:
    proc.start(wait=False)
    assert proc.wait() == 1
    lines = [x for x in proc.stderr().splitlines() if x.startswith("karma-trio: cannot start")]
    assert len(lines) == 1, proc.stderr()[-2000:]
    assert re.search(r"LSN \d+\.\.\d+", lines[0]), lines[0]
    assert "--restore-accept-loss" in lines[0]
    return lines[0]


def _remove_series(directory: Path, series: str) -> None:
    trees = list(directory.glob(f"*_{series}.tree"))
    assert trees
    for tree in trees:
        tree.unlink()
        tree.with_name(tree.name + ".meta.json").unlink()


def _sum(client: Client, series: str) -> int:
    total: int = ok(client, "counter.sum", series=series, key=1)
    return total


def test_the_manifest_names_each_series_newest_snapshot_and_the_limits(proc: Proc) -> None:
    _history(proc)
    manifest = json.loads((proc.directory / "karma.manifest.json").read_text())
    newest = {
        s: max(proc.directory.glob(f"*_{s}.tree"), key=lambda p: int(p.name.split("_")[0])).name
        for s in (S, T, LIMITED)
    }
    assert {s: e["file"] for s, e in manifest["series"].items()} == newest
    assert {e["last_lsn"] for e in manifest["series"].values()} == {manifest["lsn"]}
    assert manifest["limits"]["file"] == "karma.limits.json"
    # an untouched directory starts as before, with every write
    proc.start()
    client = Client(proc.port)
    assert (_sum(client, S), _sum(client, T)) == (5, 3)
    assert ok(client, "limit.reservation", id="r-1")["status"] == "held"
    client.close()


def test_every_snapshot_of_one_series_removed_refuses_naming_it(proc: Proc) -> None:
    _history(proc)
    _remove_series(proc.directory, S)
    line = _refusal(proc)
    assert f"_{S}.tree" in line
    assert f"series {S!r}" in line
    assert "karma.manifest.json" in line


def test_karma_limits_json_removed_with_open_holds_refuses(proc: Proc) -> None:
    _history(proc)
    (proc.directory / "karma.limits.json").unlink()
    line = _refusal(proc)
    assert "karma.limits.json" in line
    assert "holds" in line


def test_accepting_the_loss_once_starts_logs_it_and_the_next_snapshot_settles_it(
    proc: Proc,
) -> None:
    _history(proc)
    _remove_series(proc.directory, S)
    (proc.directory / "karma.limits.json").unlink()
    proc.start("--restore-accept-loss=true")
    client = Client(proc.port)
    assert _sum(client, T) == 3  # the rest is restored
    assert ok(client, "tree.list") == sorted([T, LIMITED])
    logged = [
        json.loads(line) for line in proc.stderr().splitlines() if '"restore.accepted_loss"' in line
    ]
    assert sorted(Path(e["file"]).name.split("_", 1)[-1] for e in logged) == [
        "karma.limits.json",
        f"{S}.tree",
    ]
    ok(client, "snapshot.create_all")  # a new manifest: what is left is the whole state
    client.close()
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert _sum(client, T) == 3
    client.close()


def test_a_directory_without_a_manifest_starts_as_before(proc: Proc) -> None:
    """The previous release wrote everything but the manifest: such a directory restores as it
    did, with the same blind spot (an entirely removed series is not noticed)."""
    _history(proc)
    (proc.directory / "karma.manifest.json").unlink()
    proc.start()
    client = Client(proc.port)
    assert (_sum(client, S), _sum(client, T)) == (5, 3)
    client.close()
    proc.signal(signal.SIGTERM)  # the shutdown snapshot writes the manifest again
    assert proc.wait() == 0
    assert (proc.directory / "karma.manifest.json").exists()


def test_a_karma_1_0_directory_starts_and_its_first_snapshot_adds_a_manifest(
    proc: Proc,
) -> None:
    if not FIXTURE.is_dir():
        pytest.skip(f"no karma 1.0 fixture at {FIXTURE}")
    shutil.rmtree(proc.directory)
    shutil.copytree(FIXTURE, proc.directory)
    proc.start("--idempotency-max-age-seconds=0")
    client = Client(proc.port)
    series = ok(client, "tree.list")
    assert {"api_requests", "emails_sent", "rebuilt"} <= set(series)
    ok(client, "snapshot.create_all")
    client.close()
    proc.kill()
    manifest = json.loads((proc.directory / "karma.manifest.json").read_text())
    assert set(manifest["series"]) == set(series)
    proc.start("--idempotency-max-age-seconds=0")
    client = Client(proc.port)
    assert set(ok(client, "tree.list")) == set(series)
    client.close()


def test_a_series_created_after_the_truncation_is_rebuilt_from_the_wal(proc: Proc) -> None:
    """Named only by a single-series snapshot taken after the WAL's start: the WAL holds all of
    it, so losing its only snapshot loses nothing and startup goes on."""
    proc.start()
    client = Client(proc.port)
    ok(client, "counter.increment", series=T, key=1, value=2, bucket=B1)
    ok(client, "snapshot.create_all")
    ok(client, "counter.increment", series=S, key=1, value=4, bucket=B1)
    ok(client, "snapshot.create", series=S)
    client.close()
    proc.kill()
    assert S in json.loads((proc.directory / "karma.manifest.json").read_text())["series"]
    _remove_series(proc.directory, S)
    proc.start()
    client = Client(proc.port)
    assert (_sum(client, S), _sum(client, T)) == (4, 2)
    client.close()


def test_the_offline_check_names_the_removed_series(proc: Proc) -> None:
    _history(proc)
    _remove_series(proc.directory, T)
    checked = subprocess.run(
        [sys.executable, "-m", "karma", "check", str(proc.directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode != 0
    assert f"series {T!r}" in checked.stdout + checked.stderr
