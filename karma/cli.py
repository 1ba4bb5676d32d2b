"""`karma-trio [serve] [--option=value ...]`: parse the configuration, run the server.

Exit codes: 0 after a clean stop, 1 when the data directory cannot be used, 2 for a bad
configuration (one line naming the option; nothing is started).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import IntEnum
from functools import partial

import trio

from karma import config as cfg
from karma.observability.logs import Logger
from karma.server.app import StartupError, serve


class ExitCode(IntEnum):
    OK = 0
    STARTUP_FAILED = 1  # data directory unusable, WAL or snapshot damaged
    BAD_CONFIG = 2  # an option or environment variable has a bad value


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "ingest":
        from karma import importer

        return importer.main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    try:
        config = cfg.load(args, os.environ)
    except cfg.HelpRequested:
        print(cfg.help_text())
        return ExitCode.OK
    except cfg.ConfigError as exc:
        print(f"karma-trio: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_CONFIG
    log = Logger(enabled=config.log, level=config.log_level)
    try:
        trio.run(partial(serve, config, log=log))
    except StartupError as exc:
        log.error("startup.failed", error=str(exc))
        print(f"karma-trio: cannot start: {exc}", file=sys.stderr)
        return ExitCode.STARTUP_FAILED
    except OSError as exc:
        log.error("startup.failed", error=str(exc))
        print(f"karma-trio: cannot start: {exc}", file=sys.stderr)
        return ExitCode.STARTUP_FAILED
    except KeyboardInterrupt:
        return ExitCode.OK
    return ExitCode.OK
