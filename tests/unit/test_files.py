"""Data directory files are created and read without following links planted at their names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from karma.storage import files

SECRET = b"outside the directory\n"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.write_bytes(SECRET)
    return path


def test_reading_refuses_a_symlink_a_fifo_and_a_directory(tmp_path: Path, target: Path) -> None:
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")  # would block an open without O_NONBLOCK
    (tmp_path / "dir").mkdir()
    for name in ("link", "fifo", "dir", "missing", "x" * 300, "nul\0"):
        with pytest.raises(files.NotRegularFileError):
            files.read_regular(tmp_path / name)
        assert not files.is_regular(tmp_path / name)
    assert files.read_regular(target) == SECRET
    assert files.is_regular(target)


def test_a_new_file_is_never_created_through_a_link(tmp_path: Path, target: Path) -> None:
    link = tmp_path / ".karma.wal.1.tmp"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        files.create_new(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(FileExistsError):
        files.create_new(dangling)
    assert not (tmp_path / "would-be-created").exists()
    files.write_new(link, b"ours", fsync=False, replace=True)  # the link goes, not its target
    assert not link.is_symlink()
    assert link.read_bytes() == b"ours"
    assert target.read_bytes() == SECRET


def test_a_hard_link_at_the_name_is_replaced_not_written_through(
    tmp_path: Path, target: Path
) -> None:
    hard = tmp_path / "hard"
    os.link(target, hard)
    files.write_new(hard, b"ours", fsync=False, replace=True)
    assert target.read_bytes() == SECRET
    assert hard.read_bytes() == b"ours"


def test_planted_names_only_karma_names_holding_something_else(
    tmp_path: Path, target: Path
) -> None:
    (tmp_path / "1_a.tree").symlink_to(target)
    (tmp_path / "karma.wal").write_bytes(b"")
    (tmp_path / "karma.idempotency.json").mkdir()
    (tmp_path / "notes.txt").symlink_to(target)  # not a name karma uses
    assert files.planted(tmp_path) == [tmp_path / "1_a.tree", tmp_path / "karma.idempotency.json"]
