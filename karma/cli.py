"""`karma-trio [serve] [--option=value ...]`: parse the configuration, run the server; or one of
the other subcommands (`karma-trio SUBCOMMAND --help`), each a module of its own.

Exit codes of `serve`: 0 after a clean stop, 1 when the server cannot start (the data directory
cannot be used, an address is in use or does not resolve), 2 for a bad configuration (one line
naming the option; nothing is started). The operator tools' codes are in karma.tools.session.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import partial
from typing import Final

import trio

import karma
from karma import config_cli
from karma.observability.logs import Logger
from karma.server.app import StartupError, serve


class ExitCode(IntEnum):
    OK = 0
    STARTUP_FAILED = 1  # data directory unusable, WAL or snapshot damaged, address unusable
    BAD_CONFIG = 2  # an option or environment variable has a bad value


#: subcommand → (module whose `main(argv) -> int` runs it, its arguments, what it does). Imported
#: only when named: the server never loads the tools.
SUBCOMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "ingest": ("karma.importer", "FILE.csv --series S", "stream a CSV into a series, resumably"),
    "cli": ("karma.tools.cli_client", "[COMMAND]", "send commands, or an interactive prompt"),
    "check": ("karma.tools.check", "DIR", "verify a data directory offline, changing nothing"),
    "backup": ("karma.tools.backup", "[DIR] DEST", "snapshot a running server, copy the files"),
    "cluster": (
        "karma.tools.cluster",
        "create|show|check|add-group --etcd=URLS --cluster=C",
        "a sharded cluster's map in etcd",
    ),
    "print-unit": ("karma.tools.unit", "[--env]", "print the systemd unit (or its env file)"),
    "router": ("karma.server.router", "--etcd=URLS --cluster=C", "route a sharded cluster"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        run: Callable[[list[str]], int] = importlib.import_module(SUBCOMMANDS[args[0]][0]).main
        return run(args[1:])
    if args and args[0] == "--version":
        print(f"karma-trio {karma.__version__}")
        return ExitCode.OK
    if args and args[0] == "serve":
        args = args[1:]
    try:
        config = config_cli.load(args, os.environ)
    except config_cli.HelpRequested:
        print(config_cli.help_text())
        print(subcommands_help())
        return ExitCode.OK
    except config_cli.ConfigError as exc:
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


def subcommands_help() -> str:
    rows = [("serve [OPTIONS]", "run the server (the default)")]
    rows += [(f"{name} {arguments}", what) for name, (_, arguments, what) in SUBCOMMANDS.items()]
    rows.append(("--version", "print the version"))
    lines = ["", "Subcommands (karma-trio SUBCOMMAND --help):"]
    return "\n".join(lines + [f"  {command:<32} {what}" for command, what in rows])
