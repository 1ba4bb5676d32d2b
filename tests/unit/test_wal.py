"""The WAL line format, and recovery from a WAL cut at every byte."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from karma.core import mutations as m
from karma.core.engine import Engine
from karma.observability.logs import Logger
from karma.protocol.fields import DayRange
from karma.storage import recovery, wal_codec, wal_files

SAMPLE: list[m.Mutation] = [
    m.Increment(series="api", key=42, bucket=20260505, value=1),
    m.BatchAdd(
        series="api",
        granularity="day",
        items=[(1, 20260505, 2), (10, 20260506, 5)],
        idempotency_key="ev-2",
    ),
    m.SeriesDeleteRange(series="api", range=DayRange(20260101, 20260102)),
    m.CompactAll(),
]


def test_lines_are_byte_for_byte_karma_1_0() -> None:
    assert wal_codec.encode_line(1, m.encode(SAMPLE[0])) == (
        b'{"v":2,"lsn":1,"entry":{"v":2,"op":"counter.increment","series":"api","key":42,'
        b'"bucket":20260505,"value":1}}\n'
    )
    assert m.encode(SAMPLE[1]) == (
        b'{"v":2,"op":"series.batch_add","series":"api","granularity":"day",'
        b'"items":[[1,20260505,2],[10,20260506,5]],"idempotency_key":"ev-2"}'
    )
    assert m.encode(SAMPLE[2]) == (
        b'{"v":2,"op":"tree.delete_range","series":"api","range":{"from":20260101,"to":20260102}}'
    )
    assert m.encode(SAMPLE[3]) == b'{"v":2,"op":"system.compact"}'


def test_a_wal_cut_at_any_byte_parses_exactly_its_complete_lines() -> None:
    lines = [wal_codec.encode_line(lsn, m.encode(mut)) for lsn, mut in enumerate(SAMPLE, 1)]
    blob, ends = b"".join(lines), list(itertools.accumulate(map(len, lines)))
    for cut in range(len(blob) + 1):
        parsed, good_end, damage = wal_codec.parse(blob[:cut])
        complete = [end for end in ends if end <= cut]
        assert good_end == (complete[-1] if complete else 0)
        assert [line.lsn for line in parsed] == list(range(1, len(complete) + 1))
        assert damage is None


def test_recovery_from_a_cut_wal_keeps_every_complete_record(tmp_path: Path) -> None:
    lines = [
        wal_codec.encode_line(
            lsn, m.encode(m.Increment(series="a", key=1, bucket=20260501, value=lsn))
        )
        for lsn in range(1, 6)
    ]
    blob = b"".join(lines)
    ends = list(itertools.accumulate(map(len, lines)))
    for cut in range(0, len(blob) + 1, 7):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / "karma.wal").write_bytes(blob[:cut])
        engine = Engine()
        restored = recovery.restore(
            directory, engine, today=20260501, now=0, replay=True, log=Logger(enabled=False)
        )
        complete = len([end for end in ends if end <= cut])
        assert restored.last_lsn == complete
        expected = sum(range(1, complete + 1))
        assert (engine.store.series["a"].sum(1) if complete else 0) == expected
        assert (directory / "karma.wal").stat().st_size == (ends[complete - 1] if complete else 0)


def test_damage_followed_by_records_is_refused_with_its_offset(tmp_path: Path) -> None:
    good = wal_codec.encode_line(1, m.encode(SAMPLE[0]))
    (tmp_path / "karma.wal").write_bytes(good + b"{broken\n" + good)
    with pytest.raises(wal_files.WalCorruptError, match=f"byte {len(good)}"):
        wal_files.scan(tmp_path)


def test_rotation_writes_a_segment_and_its_index(tmp_path: Path) -> None:
    wal = wal_files.ActiveWal(tmp_path, fsync=False, segment_bytes=200)
    wal.open([])
    for lsn in range(1, 6):
        line = wal_codec.encode_line(lsn, m.encode(SAMPLE[0]))
        wal.append(line, [(lsn, 0)])
    wal.close()
    segments = sorted(p.name for p in tmp_path.glob("*.segment"))
    assert segments[0] == "karma.wal.00000000000000000001.segment"
    index = (tmp_path / (segments[0] + ".idx")).read_text().splitlines()
    size = (tmp_path / segments[0]).stat().st_size
    assert index[0] == f"KARMA_WAL_INDEX_V1 size={size}"
    assert index[1] == "1 0"
    assert [r.lsn for r in wal_files.scan(tmp_path).records] == [1, 2, 3, 4, 5]
