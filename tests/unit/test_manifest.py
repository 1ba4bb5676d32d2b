"""`karma.manifest.json`: its format, and the continuity rules that read it (issue 26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from karma.storage import manifest, recovery, snapshot_files

B = 10  # the WAL starts after this LSN in these tests


def _manifest(**series: tuple[int, int]) -> manifest.Manifest:
    return manifest.Manifest(
        lsn=B,
        written_at_unix=1,
        series={
            name: manifest.Entry(file=f"1_{name}.tree", last_lsn=last, first_lsn=first)
            for name, (last, first) in series.items()
        },
        limits=manifest.Entry(file=snapshot_files.LIMITS, last_lsn=B, first_lsn=B),
    )


def _limits(directory: Path, last_lsn: int) -> None:
    snapshot_files.write_limits(directory, b"{}", 1, last_lsn)


def test_it_round_trips_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    assert manifest.read(tmp_path) is None
    written = _manifest(a=(B, 2))
    manifest.write(tmp_path, written)
    assert manifest.read(tmp_path) == written
    (tmp_path / manifest.NAME).write_bytes(b"{not json")
    with pytest.raises(manifest.ManifestError):
        manifest.read(tmp_path)
    (tmp_path / manifest.NAME).write_bytes(b'{"format":2,"lsn":1,"written_at_unix":1,"series":{}}')
    with pytest.raises(manifest.ManifestError, match="format 2"):
        manifest.read(tmp_path)


def test_a_named_series_without_a_snapshot_is_a_gap_unless_the_wal_holds_all_of_it(
    tmp_path: Path,
) -> None:
    manifest.write(tmp_path, _manifest(old=(B, 2), new=(B + 5, B + 5)))
    _limits(tmp_path, B)
    gaps = recovery.manifest_gaps(tmp_path, set(), B)
    assert [(Path(g.file).name, g.first, g.last) for g in gaps] == [("1_old.tree", 1, B)]
    assert recovery.manifest_gaps(tmp_path, {"old"}, B) == []


def test_the_limits_snapshot_or_its_sidecar_missing_is_a_gap(tmp_path: Path) -> None:
    manifest.write(tmp_path, _manifest())
    assert [Path(g.file).name for g in recovery.manifest_gaps(tmp_path, set(), B)] == [
        snapshot_files.LIMITS
    ]
    _limits(tmp_path, B)
    assert recovery.manifest_gaps(tmp_path, set(), B) == []
    (tmp_path / (snapshot_files.LIMITS + ".meta.json")).unlink()
    assert len(recovery.manifest_gaps(tmp_path, set(), B)) == 1


def test_an_unreadable_manifest_proves_nothing_and_is_a_gap(tmp_path: Path) -> None:
    (tmp_path / manifest.NAME).write_bytes(b"\x00")
    gaps = recovery.manifest_gaps(tmp_path, set(), B)
    assert [(Path(g.file).name, g.first, g.last) for g in gaps] == [(manifest.NAME, 1, B)]


def test_a_bootstrap_copy_must_reach_what_the_manifest_names(tmp_path: Path) -> None:
    named = _manifest(a=(B, 2), b=(B, 2))
    assert recovery.copied_gaps(tmp_path, named, {"a": B, "b": B + 3}, B) == []
    gaps = recovery.copied_gaps(tmp_path, named, {"a": B - 4}, None)
    assert [(Path(g.file).name, g.first, g.last) for g in gaps] == [
        ("1_a.tree", B - 3, B),
        ("1_b.tree", 1, B),
        (snapshot_files.LIMITS, 1, B),
    ]
