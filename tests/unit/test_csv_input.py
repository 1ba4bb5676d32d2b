"""The importer's input: rows read and checked, and chunks whose boundaries a resume can trust."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karma import csv_input
from karma.csv_input import CHUNK_SIZES, ROW_MAX_BYTES, InputError

U64 = st.integers(min_value=0, max_value=2**64 - 1)
DAYS = st.sampled_from([20260501, 20260502, 20261231, 99991231, 10000101])
ROWS = st.lists(st.tuples(U64, DAYS, U64), max_size=3000)


def as_json(chunk: list[csv_input.Item]) -> bytes:
    return json.dumps([list(item) for item in chunk], separators=(",", ":")).encode()


def test_the_longest_row_is_row_max_bytes() -> None:
    assert len(as_json([(2**64 - 1, 99991231, 2**64 - 1)])) - 2 == ROW_MAX_BYTES


def test_any_two_chunk_sizes_differ_by_more_than_a_row_and_its_comma() -> None:
    assert all(b - a > ROW_MAX_BYTES + 1 for a, b in itertools.pairwise(CHUNK_SIZES))


def test_the_largest_chunk_cannot_reach_the_servers_item_cap() -> None:
    shortest_row = len(b"[0,10000101,0],")  # a bucket is a day: always 8 digits
    assert CHUNK_SIZES[-1] // shortest_row < 10_000


@given(ROWS, st.sampled_from(CHUNK_SIZES))
def test_chunks_fit_their_size_and_keep_every_row_in_order(
    rows: list[csv_input.Item], size: int
) -> None:
    chunks = list(csv_input.cut(rows, size))
    assert all(len(as_json(chunk)) <= size for chunk in chunks)
    assert [item for chunk in chunks for item in chunk] == rows
    # greedy: no chunk could have taken the next one's first row
    assert all(len(as_json([*a, b[0]])) > size for a, b in itertools.pairwise(chunks))


@given(ROWS, st.sampled_from(CHUNK_SIZES), st.sampled_from(CHUNK_SIZES))
def test_a_first_chunk_that_matches_means_every_chunk_matches(
    rows: list[csv_input.Item], one: int, other: int
) -> None:
    """What resuming relies on: resending chunk 1 cut to a candidate size proves the size."""
    first = list(csv_input.cut(rows, one))
    second = list(csv_input.cut(rows, other))
    if first[:1] == second[:1]:
        assert first == second


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.csv"
    path.write_bytes(text.encode())
    return path


def test_a_header_a_byte_order_mark_blank_lines_and_quotes_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path, '\ufeffkey,bucket,value\r\n1,20260501,2\r\n\r\n"3", 20260502 ,4\n5,20260503,6'
    )
    assert list(csv_input.read_rows(path, positive=True)) == [
        (1, 20260501, 2),
        (3, 20260502, 4),
        (5, 20260503, 6),
    ]


@given(rows=st.lists(st.tuples(U64, DAYS, U64.filter(bool)), max_size=200), header=st.booleans())
def test_rows_written_as_csv_read_back_the_same(
    rows: list[csv_input.Item], header: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = "key,bucket,value\n" * header + "".join(f"{k},{b},{v}\n" for k, b, v in rows)
    path = write(tmp_path_factory.mktemp("rows"), text)
    assert list(csv_input.read_rows(path, positive=True)) == rows


def test_a_bad_row_far_into_a_large_file_is_named_by_its_line(tmp_path: Path) -> None:
    good = "".join(f"{key},20260501,1\n" for key in range(200_000))  # several read blocks
    path = write(tmp_path, f"key,bucket,value\n{good}7,20260501,x\n")
    assert path.stat().st_size > 2 * csv_input.BLOCK_BYTES
    with pytest.raises(InputError, match=r"rows.csv:200002: expected key,bucket,value \(integ"):
        csv_input.scan(path, positive=True)
    path = write(tmp_path, f"key,bucket,value\n{good}")
    assert csv_input.scan(path, positive=True).rows == 200_000


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("1,20260501", "three fields"),
        ("1,2026-05-01,1", "integers"),
        ("1,20261301,1", "bucket is not a YYYYMMDD day"),
        ("-1,20260501,1", "key out of range"),
        ("1,20260501,0", "value must be above 0"),
    ],
)
def test_a_bad_row_is_refused_with_its_line_number(tmp_path: Path, line: str, why: str) -> None:
    path = write(tmp_path, f"key,bucket,value\n1,20260501,1\n{line}\n")
    with pytest.raises(InputError, match=rf"rows.csv:3: expected key,bucket,value \({why}"):
        csv_input.scan(path, positive=True)


def test_a_zero_value_is_a_row_outside_add_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "1,20260501,0\n")
    assert csv_input.scan(path, positive=False).rows == 1


def test_the_stream_id_depends_on_content_series_and_mode_only(tmp_path: Path) -> None:
    one = write(tmp_path, "1,20260501,1\n")
    (tmp_path / "copy").mkdir()
    other = tmp_path / "copy" / "elsewhere.csv"
    other.write_bytes(one.read_bytes())
    same = csv_input.stream_id_for(csv_input.scan(one, positive=True), "s", "add")
    assert csv_input.stream_id_for(csv_input.scan(other, positive=True), "s", "add") == same
    assert csv_input.stream_id_for(csv_input.scan(one, positive=True), "s", "set") != same
    assert csv_input.stream_id_for(csv_input.scan(one, positive=True), "t", "add") != same
