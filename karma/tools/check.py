"""`karma-trio check DIR`: would a server starting on DIR restore it exactly? Answered offline,
without a server and without changing a byte of DIR.

The checks are `karma.storage.verify`'s, the ones `snapshot.verify` runs on a live server, plus a
read of every older snapshot (the fallback if a newer one is lost). Every problem is printed on
a line of its own naming the file and the byte offset or LSN range; warnings name what the
server repairs by itself at its next start (a torn last WAL record is cut off then, not here).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from karma.storage import verify
from karma.tools.session import Exit


def run(directory: Path) -> Exit:
    """Check `directory`, print the report; OK, or REFUSED when a problem was found."""
    try:
        findings = verify.examine(directory, read_every_snapshot=True)
    except OSError as exc:  # the directory itself cannot be listed or read
        print(f"problem: {exc}")
        return Exit.REFUSED
    for problem in findings.errors:
        print(f"problem: {problem.message}")
    for warning in findings.warnings:
        print(f"warning: {warning.message}")
    print(f"{directory}: {verdict(findings)}")
    return Exit.REFUSED if findings.errors else Exit.OK


def verdict(findings: verify.Findings) -> str:
    errors, warnings = len(findings.errors), len(findings.warnings)
    if errors:
        return f"{errors} problem{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    s = findings.summary
    return (
        f"ok: {s['dump_count']} snapshot files, {s['trees']} series, {s['keys']} keys;"
        f" snapshots through LSN {s['restore_snapshot_lsn']},"
        f" WAL LSN {s['wal_first_lsn']}..{s['wal_last_lsn']} ({s['wal_entries_checked']} records)"
        + (f"; {warnings} warning{'s' * (warnings != 1)}" if warnings else "")
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="karma-trio check",
        description="Verify a karma-trio (or karma 1.0) data directory without starting a"
        " server. Nothing in it is changed.",
        epilog="exit codes: 0 restorable (warnings may be printed), 1 problems found (each"
        " printed), 2 usage error",
    )
    parser.add_argument("directory", type=Path, help="the data directory (--directory of serve)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory}: not a directory")
    return run(args.directory)
