"""A resumable backfill through the ingest API: the file replaces the series when it commits.

    KARMA_URL=karma://127.0.0.1:8080 python examples/csv_backfill.py FILE.csv SERIES [STREAM_ID]

Rows are `key,bucket,value`; a first line that is not a row is a header. The rows are cut into
numbered chunks the same way on every run, so running the same command again after a failure
resumes after the last chunk the server has (`ingest.begin` answers `last_chunk_seq`).
`karma-trio ingest FILE.csv --series S` does the same from the command line, and sizes its
chunks to whatever request limit the server has.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Iterator, Sequence

from karma.client import Client, KarmaError

USAGE = "usage: csv_backfill.py FILE.csv SERIES [STREAM_ID]"
#: Bytes of rows per chunk: a fixed number, so that a rerun cuts the same chunks, and small
#: enough that a request fits the server's default --max-request-bytes=4096 with room for the
#: rest of it (op, stream id, series, token).
CHUNK_BYTES = 3072
Row = tuple[int, int, int]


def read_rows(path: str) -> list[Row]:
    rows: list[Row] = []
    with open(path, newline="") as handle:
        for number, fields in enumerate(csv.reader(handle), 1):
            if not fields:
                continue
            try:
                key, bucket, value = (int(field) for field in fields[:3])
            except ValueError:
                if number == 1:
                    continue  # a header
                raise ValueError(
                    f"{path}:{number}: expected key,bucket,value, got {fields}"
                ) from None
            rows.append((key, bucket, value))
    return rows


def chunks(rows: list[Row]) -> Iterator[list[Row]]:
    """Consecutive rows, as many as fit CHUNK_BYTES once written as JSON `[k,b,v],`."""
    chunk: list[Row] = []
    size = 0
    for row in rows:
        row_bytes = len(f"[{row[0]},{row[1]},{row[2]}],")
        if chunk and size + row_bytes > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_bytes
    if chunk:
        yield chunk


def backfill(path: str, series: str, stream_id: str) -> str:
    rows = read_rows(path)
    with Client.from_env(timeout=30) as karma:
        begun = karma.ingest_begin(stream_id, "replace_series")
        if begun["status"] == "already_committed":
            return "already committed"
        for seq, chunk in enumerate(chunks(rows), 1):
            if seq > begun["last_chunk_seq"]:  # resume after what the server already has
                karma.ingest_chunk(stream_id, series, seq, chunk)
        karma.ingest_commit(stream_id)
    return f"committed {len(rows)} rows"


def main(argv: Sequence[str]) -> int:
    if len(argv) not in (2, 3):
        print(USAGE, file=sys.stderr)
        return 2
    path, series = argv[0], argv[1]
    try:
        with open(path, "rb") as handle:  # the default stream id: this content, this series
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        stream_id = argv[2] if len(argv) == 3 else f"backfill-{series}-{digest[:16]}"
        print(f"{backfill(path, series, stream_id)}: stream {stream_id}")
    except (OSError, ValueError) as exc:
        print(f"csv_backfill: {exc}", file=sys.stderr)
        return 2
    except KarmaError as exc:
        print(f"csv_backfill: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
