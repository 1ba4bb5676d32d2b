"""The importer's input: CSV rows read and checked, named by content, cut into chunks by size.

Nothing here talks to a server. The chunking is a pure function of the file's bytes and one
chunk size taken from `CHUNK_SIZES`, which is what lets a resumed import continue exactly where
the server stopped (see `CHUNK_SIZES`).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import attrs
import msgspec

from karma import days

Item = tuple[int, int, int]
U64_MAX: Final = 2**64 - 1
BLOCK_BYTES: Final = 1 << 20
_encode = msgspec.json.Encoder().encode
#: The longest row as JSON: `[18446744073709551615,99991231,18446744073709551615]`.
ROW_MAX_BYTES: Final = 52
#: The sizes (bytes of a chunk's JSON `items` array) chunks are cut to. Any two differ by more
#: than a row and its comma, so a chunk cut to one size can never come out identical when cut
#: to another, unless it holds the whole file (a greedy cut to the larger size would have taken
#: at least one more row). A stream's first chunk therefore names the size all its chunks were
#: cut to: resending chunk 1 at a candidate size and hearing "skipped" proves the size.
#: At most 65536 bytes, a chunk never reaches the server's 10,000-item cap (a row takes 15 bytes
#: at least, `[0,10000101,0],`), so that cap never decides a boundary.
CHUNK_SIZES: Final = (
    256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
    6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536,
)  # fmt: skip


class InputError(Exception):
    """The file cannot be imported as it is; the message names it (and the line)."""


@attrs.frozen
class Scanned:
    digest: str  # sha256 of the file's bytes
    rows: int


def stream_id_for(scanned: Scanned, series: str, mode: str) -> str:
    """The same content, series and mode always make the same stream, wherever the file is:
    a copy of a file resumes (or finds committed) the stream of the original."""
    seed = f"{scanned.digest}|{series}|{mode}"
    return "import-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def scan(path: Path, *, positive: bool) -> Scanned:
    """Hash the file and check every row before anything is sent: a bad row found half-way
    through an `add` import would leave the rows before it counted under a stream that the
    corrected file (new content, new stream) cannot resume."""
    digest = hashlib.sha256()
    count = 0
    for rows in read_blocks(path, positive=positive, seen=digest.update):
        count += len(rows)
    if not count:
        raise InputError(f"{path}: no key,bucket,value rows")
    return Scanned(digest.hexdigest(), count)


def read_rows(
    path: Path, *, positive: bool, seen: Callable[[bytes], None] | None = None
) -> Iterator[Item]:
    """The rows of `path`, in order. A first line that is not a row is a header; blank lines
    are skipped. `seen` is given every byte read (for hashing in the same pass)."""
    for rows in read_blocks(path, positive=positive, seen=seen):
        yield from rows


def read_blocks(
    path: Path, *, positive: bool, seen: Callable[[bytes], None] | None = None
) -> Iterator[list[Item]]:
    """`read_rows`, a block (about a MiB of the file) at a time."""
    with open(path, "rb") as handle:
        before = 0  # lines in earlier blocks
        for lines in _blocks(handle, seen):
            rows: list[Item] = []
            if not before:
                rows = _first_line(lines[0], positive=positive)
                before, lines = 1, lines[1:]
            quick = _rows_at_once(lines, positive=positive)
            if quick is None:  # something unusual in this block: line by line, naming errors
                quick = _rows_one_by_one(path, lines, before, positive=positive)
            rows.extend(quick)
            before += len(lines)
            yield rows


def cut(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive rows, as many per chunk as fit `size` bytes of JSON `[[k,b,v],...]`."""
    # A chunk of rows r1..rn is 2 + sum(len(ri)) + (n - 1) bytes: 1 + the sum of each row's
    # length plus its comma. Rows are measured a batch at a time (JSON-encoded at once) and
    # the greedy cut points found by bisecting running sums, not by a loop per row.
    room = size - 1
    chunk: list[Item] = []
    used = 0
    rows = iter(items)
    while batch := list(itertools.islice(rows, 1 << 16)):
        sums = _running_widths(batch)
        start = 0
        while start < len(batch):
            end = bisect.bisect_right(sums, room - used + sums[start]) - 1
            if end == start and not chunk:
                end = start + 1  # unreachable: every size holds several of the longest rows
            chunk.extend(batch[start:end])
            used += sums[end] - sums[start]
            start = end
            if start < len(batch):  # the next row does not fit
                yield chunk
                chunk, used = [], 0
    if chunk:
        yield chunk


def largest_size(room: int) -> int | None:
    """The largest chunk size that fits `room` bytes, if any does."""
    fitting = [size for size in CHUNK_SIZES if size <= room]
    return fitting[-1] if fitting else None


def _blocks(handle: BinaryIO, seen: Callable[[bytes], None] | None) -> Iterator[list[bytes]]:
    """Complete lines, a block of the file at a time."""
    rest = b""
    while block := handle.read(BLOCK_BYTES):
        if seen is not None:
            seen(block)
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        if lines:
            yield lines
    if rest:
        yield [rest]


def _first_line(line: bytes, *, positive: bool) -> list[Item]:
    """The first line's row, or none: blank, or a header (anything that is not a row)."""
    text = line.strip().removeprefix(b"\xef\xbb\xbf").strip()  # a UTF-8 byte order mark
    try:
        return [_row(text, positive=positive)] if text else []
    except ValueError:
        return []


def _rows_at_once(lines: list[bytes], *, positive: bool) -> list[Item] | None:
    """The common case — every line exactly `int,int,int` and in range — checked by whole
    columns; None when any line is anything else (blank, quoted, wrong), to go line by line."""
    if not lines:
        return []
    if set(map(bytes.count, lines, itertools.repeat(b","))) != {2}:
        return None
    try:
        numbers = list(map(int, b",".join(lines).split(b",")))
    except ValueError:
        return None
    keys, buckets, values = numbers[0::3], numbers[1::3], numbers[2::3]
    lowest = 1 if positive else 0
    if min(keys) < 0 or max(keys) > U64_MAX or min(values) < lowest or max(values) > U64_MAX:
        return None
    if not all(map(days.is_day, set(buckets))):
        return None
    return list(zip(keys, buckets, values, strict=True))


def _rows_one_by_one(path: Path, lines: list[bytes], before: int, *, positive: bool) -> list[Item]:
    rows: list[Item] = []
    for number, line in enumerate(lines, before + 1):
        text = line.strip()
        if not text:
            continue
        try:
            rows.append(_row(text, positive=positive))
        except ValueError as exc:
            raise InputError(
                f"{path}:{number}: expected key,bucket,value ({exc}), got {line[:80]!r}"
            ) from None
    return rows


def _running_widths(batch: list[Item]) -> list[int]:
    """0, then the running sum of each row's JSON length plus one (its comma)."""
    inner = _encode(batch)[2:-2].split(b"],[")  # "[[k,b,v],[k,b,v]]" -> "k,b,v", ...
    return list(
        itertools.accumulate(map(operator.add, map(len, inner), itertools.repeat(3)), initial=0)
    )


def _row(text: bytes, *, positive: bool) -> Item:
    fields = text.split(b",", 3)
    if len(fields) < 3:
        raise ValueError("three fields")
    try:  # int() takes surrounding spaces itself; quotes are the rare case
        key, bucket, value = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        key, bucket, value = _unquoted(fields)
    if not 0 <= key <= U64_MAX:
        raise ValueError("key out of range")
    if not days.is_day(bucket):
        raise ValueError("bucket is not a YYYYMMDD day")
    if not (1 if positive else 0) <= value <= U64_MAX:
        raise ValueError("value must be above 0" if positive else "value out of range")
    return key, bucket, value


def _unquoted(fields: list[bytes]) -> Item:
    try:
        key, bucket, value = (int(field.strip(b' \t"')) for field in fields[:3])
    except ValueError:
        raise ValueError("integers") from None
    return key, bucket, value
