"""Line editing for `karma-trio cli`: history, Tab completion and `help`, all from the op table
(`karma.protocol.optable`), so an op added there completes here with no change.

Without the `readline` module (Windows) the prompt still works, without history or completion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, Protocol

from karma.protocol import requests
from karma.protocol.optable import CLASS_BY_TAG

HISTORY_LINES: Final = 1000
#: fields every request accepts; `help OP` lists the op's own
COMMON_FIELDS: Final = frozenset(requests.Request.__struct_fields__)
#: words after which an op name comes
OP_PREFIXES: Final = ("call", "help")


class HasUsage(Protocol):
    @property
    def usage(self) -> str: ...


def enable(history: Path, commands: Iterable[str]) -> None:
    """History from `history`, and Tab completing op names and `commands` (the shorthands)."""
    try:
        import readline
    except ImportError:
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LINES)
    readline.set_completer_delims(" \t\n")  # op names hold dots, fields hold `=`
    readline.set_completer(Completer(commands).complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
        # list the candidates at once: an operator looking for an op does not know the names
        readline.parse_and_bind("set show-all-if-ambiguous on")


def save(history: Path) -> None:
    try:
        import readline
    except ImportError:
        return
    with contextlib.suppress(OSError):
        readline.write_history_file(history)


class Completer:
    def __init__(self, commands: Iterable[str]) -> None:
        self.ops = sorted(CLASS_BY_TAG)
        self.first = sorted({*self.ops, *commands, *OP_PREFIXES, "quit"})
        self.matches: list[str] = []

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            before = readline.get_line_buffer()[: readline.get_begidx()].split()
            self.matches = self.candidates(before, text)
        return self.matches[state] if state < len(self.matches) else None

    def candidates(self, before: list[str], text: str) -> list[str]:
        """What may follow the words `before` and start with `text`."""
        if not before:
            words = self.first
        elif before == [before[0]] and before[0] in OP_PREFIXES:
            words = self.ops
        else:
            words = []
        return [word for word in words if word.startswith(text)]


def help_text(words: list[str], shorthands: Mapping[str, HasUsage]) -> str:
    if words:
        return op_help(words[0])
    lines = ["commands:"]
    lines += [f"  {shorthand.usage}" for shorthand in shorthands.values()]
    lines += [
        "  call OP [field=value ...]   or just   OP [field=value ...]",
        '  {"op": "...", ...}          a raw request ("v": 2 is added)',
        "  help OP                     the fields of OP",
        "  quit",
        "values are JSON when they parse as JSON, else strings. Tab completes op names.",
    ]
    return "\n".join(lines)


def op_help(op: str) -> str:
    cls = CLASS_BY_TAG.get(op)
    if cls is None:
        return f"unknown op {op!r}; Tab lists them"
    own = [name for name in cls.__struct_fields__ if name not in COMMON_FIELDS]
    return f"{op}: " + (", ".join(own) if own else "no fields")
