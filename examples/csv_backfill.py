"""A backfill through the ingest API: numbered chunks make it safe to rerun after a failure.

(`karma-trio ingest FILE.csv --series S` does the same from the command line.)
"""

from __future__ import annotations

import csv
import sys

from karma.client import Client


def backfill(path: str, series: str, stream_id: str, chunk_rows: int = 1000) -> None:
    karma = Client.from_env(timeout=30)
    status = karma.ingest_begin(stream_id, "replace_series")
    if status["status"] == "already_committed":
        return
    done = status["last_chunk_seq"]  # resume after what the server already has
    with open(path, newline="") as handle:
        rows = [(int(k), int(b), int(v)) for k, b, v in csv.reader(handle)]
    for seq, start in enumerate(range(0, len(rows), chunk_rows), 1):
        if seq > done:
            karma.ingest_chunk(stream_id, series, seq, rows[start : start + chunk_rows])
    karma.ingest_commit(stream_id)


if __name__ == "__main__":
    backfill(sys.argv[1], sys.argv[2], sys.argv[3])
