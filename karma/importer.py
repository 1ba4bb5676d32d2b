"""`karma-trio ingest FILE.csv --series S --mode add|set|replace_series`: a resumable importer.

Rows are `key,bucket,value` (a first line that is not a row is a header). The whole file is
checked and hashed first; then it is streamed through `ingest.begin` / `ingest.chunk` /
`ingest.commit` in numbered chunks. The stream id comes from the file's content, the series and
the mode, so running the same command again — after a broken connection, a server restart, a
Ctrl-C, or on a copy of the file — asks the server how far the stream got (`last_chunk_seq`)
and carries on from the next chunk.

Chunks are cut by size, to fit the server's `--max-request-bytes`. The server states its limit
when it refuses a line as too large ("Request exceeds 4096 bytes", then it hangs up): the
importer starts with 64 KiB chunks, and on that answer reconnects and cuts smaller ones. Chunk
boundaries depend only on the file and the chunk size (`karma.csv_input`), and once a stream
holds a chunk its size is settled: a later run finds it again by resending chunk 1 (a chunk the
server already has is answered "skipped"), and refuses, saying why, if the server no longer
accepts chunks that size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import TextIO

import attrs

from karma import csv_input
from karma.client import calls
from karma.client.errors import IdempotencyConflict, KarmaError, RequestTooLarge
from karma.client.sync import Client
from karma.client.wire import encode_call
from karma.csv_input import InputError, Scanned

HELP_EPILOG = """\
exit status:
  0    committed (or it already was)
  1    the server refused the import, could not be reached after --retries attempts, or the
       stream cannot be resumed as the server is now configured (the message says why)
  2    bad arguments, or a file that cannot be read or holds a bad row (nothing was sent)
  130  interrupted (Ctrl-C): run the same command again to resume
"""


#: Chunks sent together in one pipeline (karma-trio answers them after one WAL batch).
WINDOW = 8


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


class IngestRefusedError(Exception):
    """The import cannot go on; the message says why (the server's answer, or ours)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="karma-trio ingest",
        description="Stream a CSV of key,bucket,value rows into karma, resumably.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", type=Path, help="key,bucket,value rows; a first line that is not one is a header"
    )
    parser.add_argument("--series", required=True, help="the series to import into")
    parser.add_argument(
        "--mode",
        choices=("add", "set", "replace_series"),
        default="add",
        help="add to the counts (default), overwrite them, or replace the whole series at commit",
    )
    parser.add_argument("--host", default=os.environ.get("KARMA_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("KARMA_PORT", "8080")))
    parser.add_argument(
        "--token", default=os.environ.get("KARMA_AUTH_TOKEN"), help="default: $KARMA_AUTH_TOKEN"
    )
    parser.add_argument(
        "--stream-id", help="default: derived from the file's content, the series and the mode"
    )
    parser.add_argument(
        "--max-chunk-bytes",
        type=int,
        default=csv_input.CHUNK_SIZES[-1],
        help="largest chunk to send (default and most %(default)s; smaller when the server's "
        "--max-request-bytes requires it)",
    )
    parser.add_argument("--chunk-rows", type=int, help=argparse.SUPPRESS)  # gone: see main()
    parser.add_argument(
        "--retries", type=int, default=20, help="reconnect attempts after a broken connection"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per answer")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="when stderr is not a terminal, a progress line every N chunks (default 100)",
    )
    return parser.parse_args(argv)


class Progress:
    """What the import has sent: a bar on a terminal, a plain line every `every` chunks
    otherwise (a log file or a CI job should not fill with carriage returns)."""

    BAR = 30

    def __init__(
        self, stream: TextIO, enabled: bool, total_rows: int = 0, every: int = 100
    ) -> None:
        self.stream, self.enabled = stream, enabled
        self.terminal = enabled and stream.isatty()
        self.total, self.every = total_rows, every
        self.started = time.monotonic()
        self.rows = 0
        self.chunks = 0
        self.shown = False

    def update(self, rows: int, chunk_seq: int) -> None:
        self.rows += rows
        self.chunks += 1
        if not self.enabled:
            return
        if self.terminal:
            self.stream.write("\r" + self.line(chunk_seq))
            self.shown = True
        elif self.chunks % self.every == 0:
            self.stream.write(self.line(chunk_seq) + "\n")
        else:
            return
        self.stream.flush()

    def line(self, chunk_seq: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.rows / elapsed
        text = f"chunk {chunk_seq:>7}  {self.rows:>12,} rows  {rate:>10,.0f} rows/s"
        if not self.total:
            return "  " + text
        done = min(1.0, self.rows / self.total)
        left = (self.total - self.rows) / rate if rate > 0 and self.rows < self.total else 0.0
        bar = "#" * int(done * self.BAR) + "-" * (self.BAR - int(done * self.BAR))
        return f"  [{bar}] {done:>6.1%}  {text}  ETA {_duration(left)}"

    def done(self) -> float:
        if self.shown:
            self.stream.write("\n")
            self.shown = False
        return time.monotonic() - self.started


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@attrs.define
class Import:
    """One import's state across reconnects: what the server said and what it holds."""

    args: argparse.Namespace
    scanned: Scanned
    stream_id: str
    client: Client
    progress: Progress
    #: the largest chunk size still possible: lowered when the server refuses a chunk as too large
    ceiling: int
    #: the server's --max-request-bytes, once it has said it
    limit: int | None = None
    #: the size the stream's chunks are cut to: settled once a chunk was sent (the server may
    #: hold it even if its answer was lost), or once resending chunk 1 proved it
    settled: int | None = None
    #: sizes resending chunk 1 proved wrong for this stream
    ruled_out: set[int] = attrs.field(factory=set)
    #: the last chunk the server is known to hold
    held: int = 0

    @property
    def positive(self) -> bool:
        return bool(self.args.mode == "add")  # an add stream refuses zero values

    def attempt(self) -> str:
        begun = self.client.ingest_begin(self.stream_id, self.args.mode)
        if begun["status"] == "already_committed":
            return "already committed"
        self.held = int(begun["last_chunk_seq"])
        size = self.chunk_size()
        digest = hashlib.sha256()
        rows = csv_input.read_rows(self.args.file, positive=self.positive, seen=digest.update)
        window: list[tuple[int, list[csv_input.Item]]] = []
        for seq, chunk in enumerate(csv_input.cut(rows, size), 1):
            if seq > self.held:
                window.append((seq, chunk))
            if len(window) == WINDOW:
                self.send_window(window, size)
                window = []
        if window:
            self.send_window(window, size)
        if digest.hexdigest() != self.scanned.digest:
            raise IngestRefusedError(
                f"{self.args.file} changed while it was being imported; stream {self.stream_id}"
                " is not committed"
            )
        self.client.ingest_commit(self.stream_id)
        return "committed"

    def send_window(self, window: list[tuple[int, list[csv_input.Item]]], size: int) -> None:
        """Chunks in one pipeline: one round trip, and one WAL batch on the server, for many."""
        self.settled = size
        with self.client.pipeline() as pipe:
            for seq, chunk in window:
                pipe.ingest_chunk(self.stream_id, self.args.series, seq, chunk)
            results = pipe.execute()
        for (seq, chunk), result in zip(window, results, strict=True):
            if isinstance(result, RequestTooLarge):
                self.lower_ceiling(result, size)
            if isinstance(result, KarmaError):
                raise result  # the chunks after it were refused as out of order, or never read
            self.held = seq
            self.progress.update(len(chunk), seq)

    def send(self, seq: int, chunk: list[csv_input.Item], size: int) -> dict[str, object]:
        try:
            return self.client.ingest_chunk(self.stream_id, self.args.series, seq, chunk)
        except RequestTooLarge as exc:
            self.lower_ceiling(exc, size)
            raise

    def chunk_size(self) -> int:
        """The size to cut at: settled already, the largest that fits a new stream, or (for a
        stream begun by an earlier run) the one resending chunk 1 proves."""
        if not self.held:
            self.settled = None  # the stream holds nothing yet: any size will do
        if self.settled is not None:
            return self.settled
        candidates = [
            size
            for size in reversed(csv_input.CHUNK_SIZES)
            if size <= self.ceiling and size not in self.ruled_out
        ]
        if not candidates:
            raise IngestRefusedError(self.cannot_resume())
        if not self.held:
            return candidates[0]
        rows = csv_input.read_rows(self.args.file, positive=self.positive)
        for size in candidates:
            first = next(csv_input.cut(rows, size))
            try:
                answer = self.send(1, first, size)
            except IdempotencyConflict:
                self.ruled_out.add(size)
                rows = csv_input.read_rows(self.args.file, positive=self.positive)
                continue
            if answer.get("skipped"):
                self.settled = size
                return size
        raise IngestRefusedError(self.cannot_resume())

    def lower_ceiling(self, refusal: RequestTooLarge, refused: int) -> None:
        """Below the refused size, and to what the server's stated limit leaves room for."""
        stated = re.search(r"\d+", refusal.message)
        room = refused - 1
        if stated is not None:
            self.limit = int(stated.group())
            room = min(room, self.limit - self.envelope_bytes())
        self.ceiling = min(self.ceiling, room)
        if self.held and self.settled is not None and self.settled > self.ceiling:
            needed = self.settled + self.envelope_bytes()
            raise IngestRefusedError(
                f"stream {self.stream_id} holds {self.held} chunks cut to {self.settled} bytes, "
                f"and the server now refuses requests that size ({self.said_limit()}); to "
                f"resume, start it with --max-request-bytes={needed} or more"
            )
        if csv_input.largest_size(self.ceiling) is None:
            needed = csv_input.CHUNK_SIZES[0] + self.envelope_bytes()
            raise IngestRefusedError(
                f"the server refuses requests of {needed} bytes ({self.said_limit()}): too "
                "small for a chunk of rows"
            )

    def said_limit(self) -> str:
        if self.limit is None:
            return "it did not say its limit"
        return f"--max-request-bytes={self.limit}"

    def envelope_bytes(self) -> int:
        """A chunk request's bytes besides its items, for the longest chunk number."""
        call = calls.ingest_chunk(self.stream_id, self.args.series, 10**19, [])
        return len(encode_call(call, self.client.token)) - len(b"[]\n")

    def cannot_resume(self) -> str:
        fits = f"{self.limit}-byte requests" if self.limit else f"{self.ceiling}-byte chunks"
        twice = "; a new stream would count them twice" if self.args.mode == "add" else ""
        return (
            f"stream {self.stream_id} holds {self.held} chunks that this file does not reproduce "
            f"when cut to fit {fits}: they were cut for a larger --max-request-bytes (or "
            "--max-chunk-bytes), or from other data. Start the server with the limit the import "
            f"began with and run this again{twice}"
        )


def run(args: argparse.Namespace, scanned: Scanned, out: TextIO = sys.stderr) -> int:
    stream_id = args.stream_id or csv_input.stream_id_for(scanned, args.series, args.mode)
    client = Client(
        args.host, args.port, token=args.token, connect_timeout=5.0, timeout=args.timeout
    )
    progress = Progress(out, not args.quiet, scanned.rows, args.progress_every)
    job = Import(args, scanned, stream_id, client, progress, args.max_chunk_bytes)
    try:
        status = _attempts(job, out)
    except IngestRefusedError:
        progress.done()
        raise
    except KeyboardInterrupt:
        progress.done()
        out.write(
            f"karma-trio ingest: interrupted with {job.held} chunks of stream {stream_id} "
            "acknowledged; run the same command again to resume\n"
        )
        return ExitCode.INTERRUPTED
    finally:
        client.close()
    if status is None:
        return ExitCode.REFUSED
    elapsed = job.progress.done()
    if not args.quiet:
        rate = job.progress.rows / elapsed if elapsed else 0.0
        out.write(
            f"{status}: stream {stream_id}, {job.progress.rows:,} rows sent in {elapsed:.1f} s "
            f"({rate:,.0f} rows/s)\n"
        )
    return ExitCode.OK


def _attempts(job: Import, out: TextIO) -> str | None:
    """The import, reconnecting after broken connections and too-large refusals."""
    failures = 0
    while True:
        try:
            return job.attempt()
        except RequestTooLarge:
            continue  # the ceiling is lower now: begin again, on a new connection
        except KarmaError as exc:
            # ConnectionFailed, and a server that cannot write for now, are worth waiting for
            if not exc.retriable:
                raise IngestRefusedError(f"{exc.code}: {exc.message}") from exc
            failures += 1
            if failures > job.args.retries:
                job.progress.done()
                out.write(f"karma-trio ingest: giving up after {failures} attempts: {exc}\n")
                return None
            time.sleep(min(5.0, 0.2 * 2**failures))  # then ask the server where it got to


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    out = sys.stderr
    if args.chunk_rows is not None:
        out.write(
            "karma-trio ingest: --chunk-rows is gone: chunks are cut by size to what the server "
            "accepts (see --max-chunk-bytes)\n"
        )
        return ExitCode.BAD_INPUT
    if csv_input.largest_size(args.max_chunk_bytes) is None:
        out.write(
            f"karma-trio ingest: --max-chunk-bytes must be {csv_input.CHUNK_SIZES[0]} or more\n"
        )
        return ExitCode.BAD_INPUT
    args.max_chunk_bytes = csv_input.largest_size(args.max_chunk_bytes)
    try:
        scanned = csv_input.scan(args.file, positive=args.mode == "add")
        return run(args, scanned, out)
    except KeyboardInterrupt:
        out.write("karma-trio ingest: interrupted before anything was sent\n")
        return ExitCode.INTERRUPTED
    except OSError as exc:
        out.write(f"karma-trio ingest: {args.file}: {exc.strerror or exc}\n")
        return ExitCode.BAD_INPUT
    except InputError as exc:
        out.write(f"karma-trio ingest: {exc}\n")
        return ExitCode.BAD_INPUT
    except IngestRefusedError as exc:
        out.write(f"karma-trio ingest: {exc}\n")
        return ExitCode.REFUSED
