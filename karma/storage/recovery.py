"""Startup restore: replay the WAL into an engine (snapshots join in with issue 3).

A torn last line is cut (its bytes saved beside the WAL) and logged; damage followed by more
records stops startup with the file and offset. A record that fails to apply (karma 1.0 logged
some failing writes: DEFECTS.md #2) is skipped with a warning: it changed nothing then either.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from karma.core.engine import Engine
from karma.errors import KarmaError
from karma.observability.logs import Logger
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from karma.storage import wal_files

_OPEN = Gate()


@attrs.frozen
class Restored:
    last_lsn: int
    records: list[wal_files.Record]
    replayed: int


def restore(
    directory: Path, engine: Engine, *, today: int, replay: bool, log: Logger, after_lsn: int = 0
) -> Restored:
    result = wal_files.scan(directory)
    for path, good_end, size in result.torn:
        saved = wal_files.cut_torn_tail(path, good_end)
        log.warning(
            "wal.torn_tail",
            path=str(path),
            offset=good_end,
            dropped_bytes=size - good_end,
            saved_to=str(saved),
        )
    last_lsn = max(
        [wal_files.read_lsn_file(directory)] + [r.lsn for r in result.records if r.lsn is not None]
    )
    replayed = 0
    if replay:
        for record in result.records:
            if record.lsn is not None and record.lsn <= after_lsn:
                continue  # already in the snapshot (karma 1.0 replayed these twice: DEFECTS.md #1)
            replayed += _replay_one(record, engine, today, log)
        log.info("wal.replay", records=replayed, last_lsn=last_lsn)
    return Restored(last_lsn, result.records, replayed)


def _replay_one(record: wal_files.Record, engine: Engine, today: int, log: Logger) -> int:
    try:
        request = decode(record.entry, _OPEN)
        mutation = engine.mutation_for(request, today)
        engine.apply(mutation)
    except LookupError:
        log.warning(
            "wal.replay_skipped",
            path=str(record.path),
            offset=record.offset,
            lsn=record.lsn,
            message="not a mutation",
        )
        return 0
    except KarmaError as exc:
        log.warning(
            "wal.replay_skipped",
            path=str(record.path),
            offset=record.offset,
            lsn=record.lsn,
            code=str(exc.code),
            message=exc.message,
        )
        engine.counters.record(0.0, failed=True)
        return 0
    engine.counters.record(0.0, failed=False)
    return 1
