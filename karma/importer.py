"""`karma-trio ingest FILE.csv --series S --mode add|set|replace_series`: a resumable importer.

Rows are `key,bucket,value` (a header line is skipped). The file is cut into numbered chunks
of `--chunk-rows` rows and streamed through `ingest.begin` / `ingest.chunk` / `ingest.commit`.
The stream id is derived from the file's name, size and modification time, the series and the
mode, so running the same command again — after a broken connection, a server restart or a
Ctrl-C — asks the server how far it got (`ingest.begin` answers `last_chunk_seq`) and carries
on from there: chunk numbering makes a resent chunk a no-op, so nothing is counted twice.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

Item = list[int]


class IngestRefusedError(Exception):
    """The server refused the import; the message is its answer."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="karma-trio ingest", description="Stream a CSV of key,bucket,value rows into karma."
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--series", required=True)
    parser.add_argument("--mode", choices=("add", "set", "replace_series"), default="add")
    parser.add_argument("--host", default=os.environ.get("KARMA_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("KARMA_PORT", "8080")))
    parser.add_argument("--token", default=os.environ.get("KARMA_AUTH_TOKEN"))
    parser.add_argument("--stream-id", help="default: derived from the file, series and mode")
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=5000,
        help="rows per chunk (at most 10000; the request must fit the "
        "server's --max-request-bytes)",
    )
    parser.add_argument(
        "--retries", type=int, default=20, help="reconnect attempts after a broken connection"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def default_stream_id(path: Path, series: str, mode: str) -> str:
    stat = path.stat()
    seed = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{series}|{mode}"
    return "import-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def read_chunks(path: Path, rows_per_chunk: int) -> Iterator[list[Item]]:
    with open(path, newline="") as handle:
        chunk: list[Item] = []
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or (number == 1 and not row[0].strip().isdigit()):
                continue  # blank line or header
            try:
                key, bucket, value = (int(field) for field in row[:3])
            except ValueError:
                raise IngestRefusedError(
                    f"{path}:{number}: expected key,bucket,value, got {row}"
                ) from None
            chunk.append([key, bucket, value])
            if len(chunk) == rows_per_chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


class Connection:
    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.token = token

    def call(self, op: str, **fields: Any) -> Any:
        request: dict[str, Any] = {"v": 2, "op": op, **fields}
        if self.token:
            request["token"] = self.token
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        answer = json.loads(line)
        if not answer.get("success"):
            raise IngestRefusedError(f"{op}: {answer.get('error_code')}: {answer.get('response')}")
        return answer["response"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Progress:
    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled and stream.isatty()
        self.started = time.monotonic()
        self.rows = 0

    def update(self, rows: int, chunk_seq: int) -> None:
        self.rows += rows
        if self.enabled:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.stream.write(
                f"\r  chunk {chunk_seq:>7}  {self.rows:>12,} rows  "
                f"{self.rows / elapsed:>10,.0f} rows/s"
            )
            self.stream.flush()

    def done(self) -> float:
        elapsed = time.monotonic() - self.started
        if self.enabled:
            self.stream.write("\n")
        return elapsed


def run(args: argparse.Namespace, out: TextIO = sys.stderr) -> int:
    stream_id = args.stream_id or default_stream_id(args.file, args.series, args.mode)
    progress = Progress(out, not args.quiet)
    attempts = 0
    status = ""
    while True:
        try:
            status = _import(args, stream_id, progress)
            break
        except (ConnectionError, OSError) as exc:
            attempts += 1
            if attempts > args.retries:
                out.write(f"karma-trio ingest: giving up after {attempts} attempts: {exc}\n")
                return 1
            time.sleep(min(5.0, 0.2 * 2**attempts))  # then ask the server where it got to
    elapsed = progress.done()
    if not args.quiet:
        rate = progress.rows / elapsed if elapsed else 0.0
        out.write(
            f"{status}: stream {stream_id}, {progress.rows:,} rows sent in {elapsed:.1f} s "
            f"({rate:,.0f} rows/s)\n"
        )
    return 0


def _import(args: argparse.Namespace, stream_id: str, progress: Progress) -> str:
    connection = Connection(args.host, args.port, args.token)
    try:
        begun = connection.call("ingest.begin", stream_id=stream_id, mode=args.mode)
        if begun["status"] == "already_committed":
            return "already committed"
        done = int(begun["last_chunk_seq"])
        for seq, chunk in enumerate(read_chunks(args.file, args.chunk_rows), 1):
            if seq <= done:
                continue
            connection.call(
                "ingest.chunk", stream_id=stream_id, series=args.series, chunk_seq=seq, items=chunk
            )
            progress.update(len(chunk), seq)
        connection.call("ingest.commit", stream_id=stream_id)
        return "committed"
    finally:
        connection.close()


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not 1 <= args.chunk_rows <= 10_000:
        sys.stderr.write("karma-trio ingest: --chunk-rows must be between 1 and 10000\n")
        return 2
    try:
        return run(args)
    except IngestRefusedError as exc:
        sys.stderr.write(f"karma-trio ingest: {exc}\n")
        return 1
