"""`karma-trio check DIR` on data directories written by a real server, then damaged by hand:
each kind of damage is found and named (file, byte offset or LSN range), and the check never
changes a byte of what it reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from karma.storage import wal_files
from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "usage"
B1 = 20260501


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two snapshots of S and of `other`, then enough writes for two WAL segments and an active
    file after the last one; the server is killed (no final snapshot, the WAL stays)."""
    directory = tmp_path_factory.mktemp("check") / "data"
    directory.mkdir()
    proc = Proc(directory, "--wal-segment-bytes=600", "--log=false").start()
    client = Client(proc.port)
    try:
        for round_ in range(2):
            for key in range(1, 4):
                for series in (S, "other"):
                    answer = client.call("counter.increment", series=series, key=key, bucket=B1)
                    assert answer["success"], answer
            assert client.call("snapshot.create_all")["success"], round_
        for value in range(1, 25):
            answer = client.call("counter.increment", series=S, key=7, value=value, bucket=B1)
            assert answer["success"]
    finally:
        client.close()
        proc.kill()
        proc.close()
    segments = [p for p in wal_files.wal_paths(directory) if p.name != wal_files.ACTIVE]
    assert len(segments) >= 2, sorted(p.name for p in directory.iterdir())
    return directory


@pytest.fixture
def data(written: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(written, copy)
    return copy


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma", "check", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def contents(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def newest_tree(directory: Path, series: str = S) -> Path:
    return max(directory.glob(f"*_{series}.tree"), key=lambda p: int(p.name.split("_")[0]))


def segments(directory: Path) -> list[Path]:
    return [p for p in wal_files.wal_paths(directory) if p.name != wal_files.ACTIVE]


def test_an_intact_directory_checks_ok_and_is_left_as_it_was(data: Path) -> None:
    before = contents(data)
    done = check(data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(
        rf"{re.escape(str(data))}: ok: 4 snapshot files, 2 series, 7 keys; snapshots through"
        r" LSN 12, WAL LSN 13\.\.36 \(24 records\)\n",
        done.stdout,
    ), done.stdout
    assert contents(data) == before


def _truncate_tree(directory: Path) -> str:
    tree = newest_tree(directory)
    tree.write_bytes(tree.read_bytes()[:10])
    return rf"problem: Snapshot metadata bytes mismatch for {re.escape(tree.name)}"


def _garbage_meta(directory: Path) -> str:
    meta = newest_tree(directory, "other").with_suffix(".tree.meta.json")
    meta.write_bytes(b"\x00garbage{{{\n")
    return rf"problem: Invalid snapshot metadata {re.escape(str(meta))}: "


def _delete_newest_tree(directory: Path) -> str:
    tree = newest_tree(directory)
    tree.unlink()
    tree.with_name(tree.name + ".meta.json").unlink()
    older = newest_tree(directory)
    return rf"problem: {re.escape(str(older))}: writes at LSN \d+\.\.\d+ are in no file"


def _damage_a_record_in_the_middle(directory: Path) -> str:
    first = segments(directory)[0]
    data = first.read_bytes()
    second_line = data.index(b"\n") + 1
    first.write_bytes(data[:second_line] + b"#" * 20 + data[second_line + 20 :])
    return rf"problem: {re.escape(str(first))}: damaged record at byte {second_line}: "


def _delete_a_segment(directory: Path) -> str:
    middle = segments(directory)[1]
    middle.unlink()
    after = wal_files.wal_paths(directory)[1]  # the file after the first segment, now
    return (
        rf"problem: {re.escape(str(after))}: writes at LSN (\d+)\.\.(\d+) are in no file \(the"
        r" WAL jumps from LSN \d+ to \d+ at byte 0: a WAL segment is missing\)"
    )


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_tree,
        _garbage_meta,
        _delete_newest_tree,
        _damage_a_record_in_the_middle,
        _delete_a_segment,
    ],
    ids=[
        "tree-truncated",
        "meta-garbage",
        "newest-tree-deleted",
        "wal-record-damaged",
        "segment-gone",
    ],
)
def test_damage_is_found_and_named_and_nothing_is_changed(
    data: Path, damage: Callable[[Path], str]
) -> None:
    expected = damage(data)
    before = contents(data)
    done = check(data)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(expected, done.stdout, re.M), done.stdout
    assert re.search(r": \d+ problems?, \d+ warnings?\n\Z", done.stdout), done.stdout
    assert contents(data) == before


def test_a_truncated_tree_is_also_named_as_unreadable(data: Path) -> None:
    _truncate_tree(data)
    done = check(data)
    assert f"problem: {newest_tree(data)}: not a snapshot" in done.stdout


def test_a_torn_wal_tail_is_a_warning_with_its_offset_and_is_not_cut(data: Path) -> None:
    active = data / wal_files.ACTIVE
    size = active.stat().st_size
    with open(active, "ab") as handle:
        handle.write(b'{"v":2,"lsn":99999,"entry":{"op":"counter.incr')
    before = contents(data)
    done = check(data)
    assert done.returncode == 0, done.stdout
    assert f"warning: {active}: torn last record at byte {size} (46 bytes)" in done.stdout
    assert contents(data) == before
    assert not list(data.glob("*.torn-*"))


def test_a_path_that_is_not_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    done = check(tmp_path / "missing")
    assert done.returncode == 2
    assert "not a directory" in done.stderr


def test_the_checked_directory_starts_a_server_with_the_same_answer(data: Path) -> None:
    # the check's "ok" means what a start means: restore everything the server acknowledged
    assert check(data).returncode == 0
    proc = Proc(data, "--log=false").start()
    try:
        client = Client(proc.port)
        assert client.call("counter.sum", series=S, key=7)["response"] == sum(range(1, 25))
        client.close()
    finally:
        proc.close()
    assert os.path.isdir(data)


def test_the_server_verifies_with_the_same_checks_first_problem_first(data: Path) -> None:
    # an older snapshot damaged: a restore does not need it, so the server starts, but it is
    # the fallback if the newest is lost, and both snapshot.verify and check name it
    oldest = min(data.glob(f"*_{S}.tree"), key=lambda p: int(p.name.split("_")[0]))
    oldest.write_bytes(oldest.read_bytes()[:-1])
    assert f"Snapshot metadata bytes mismatch for {oldest.name}" in check(data).stdout
    proc = Proc(data, "--log=false").start()
    try:
        client = Client(proc.port)
        answer = client.call("snapshot.verify")
        client.close()
    finally:
        proc.close()
    assert answer["error_code"] == "validation_error"
    assert answer["response"].startswith(f"Snapshot metadata bytes mismatch for {oldest.name}")
