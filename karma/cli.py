"""`karma-trio [serve] [--option=value ...]`: parse the configuration, run the server.

Exit codes: 0 after a clean stop, 1 when the server cannot start (the data directory cannot be
used, an address is in use or does not resolve), 2 for a bad configuration (one line naming the
option; nothing is started).
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
    STARTUP_FAILED = 1  # data directory unusable, WAL or snapshot damaged, address unusable
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
    except KeyboardInterrupt:
        return ExitCode.OK
    except (StartupError, OSError, BaseExceptionGroup) as exc:
        reason = startup_failure(exc)
        if reason is None:
            raise  # a bug, not a refusal to start: keep the traceback
        log.error("startup.failed", error=reason)
        print(f"karma-trio: cannot start: {reason}", file=sys.stderr)
        return ExitCode.STARTUP_FAILED
    return ExitCode.OK


def startup_failure(exc: BaseException) -> str | None:
    """One line for a start refused by the data directory or the network, else None.

    Listeners and the metrics endpoint open inside the server's nursery, so their errors arrive
    wrapped in exception groups; the operator needs the cause, not the nesting.
    """
    if isinstance(exc, BaseExceptionGroup):
        reasons = [startup_failure(inner) for inner in exc.exceptions]
        if not reasons or any(reason is None for reason in reasons):
            return None
        return "; ".join(dict.fromkeys(r for r in reasons if r is not None))
    if isinstance(exc, OSError) and exc.filename is None and exc.strerror:
        return exc.strerror  # without the "[Errno N]" prefix
    if isinstance(exc, StartupError | OSError):
        return str(exc)
    return None
